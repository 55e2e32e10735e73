"""Devices and ``tf.distribute`` strategies: logical CPUs, one device, mirrored, multi-worker.

Datasets are batched at the global batch size; the strategy splits every
batch between replicas, and each replica's loss is divided by the number of
replicas so that the summed gradients are the single-device ones (Keras loss
objects do this; the learning rules' hand-written local losses do it
themselves). The training loop that runs under these strategies is
``ssa_tf.training.loop``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from ssa_tf.config import STRATEGIES
from ssa_tf.training.model import retrace

# a worker silent this long is dead (TensorFlow's default, 10 s, is too short on busy hosts)
HEARTBEAT_TIMEOUT_S = 60


def configure_logical_cpus(n):
    """Split the first CPU into ``n`` logical devices; must run before TF uses any device."""
    if not n or n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise RuntimeError(f"logical_cpus={n}: TensorFlow already initialized its devices "
                               f"with {have} CPU device(s); split the CPU before any other "
                               "TensorFlow call (python -m ssa_tf.train does)") from None


def make_strategy(name, logical_cpus=None):
    """The ``tf.distribute.Strategy`` called ``name`` (config.STRATEGIES).

    ``auto`` on one device is TensorFlow's default strategy, i.e. what this
    project did before strategies existed; ``one_device`` is an explicit
    ``OneDeviceStrategy``, the reference the distributed runs equal (see
    docs/ARCHITECTURE.md, "Distributed training", for the one difference: the data
    order).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        # before anything initializes the runtime (listing logical devices does);
        # the cluster comes from TF_CONFIG; collectives: NCCL on GPUs, a ring on CPUs
        _configure_coordination(HEARTBEAT_TIMEOUT_S)
        return tf.distribute.MultiWorkerMirroredStrategy()
    configure_logical_cpus(logical_cpus)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) <= 1:
            return tf.distribute.get_strategy()
        name = "mirrored"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    # mirrored: MirroredStrategy() takes every GPU, or CPU:0 alone; logical CPUs must be named
    devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _configure_coordination(heartbeat_timeout_s):
    """MultiWorkerMirroredStrategy's coordination service, with a longer heartbeat timeout.

    The strategy configures the service itself unless it already is, with
    TensorFlow's 10 s heartbeat; on a loaded machine a heartbeat RPC can take
    longer, and the whole group then aborts (DEADLINE_EXCEEDED, "tasks stopped
    sending heartbeats"), measured here with 2 workers on 2 busy cores. The
    same settings as the strategy's (tensorflow 2.21,
    collective_all_reduce_strategy.py), but for the timeout.
    """
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    if context.context().coordination_service is not None:
        return
    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    if not jobs:
        return  # no cluster in TF_CONFIG: a single local worker
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000))


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task_name(strategy):
    """``chief-0``, ``worker-1``... for multi-worker, ``local`` otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}-{resolver.task_id}"


def is_chief(strategy):
    """The worker that writes the outputs: task ``chief``, else worker 0 (TF_CONFIG's rule)."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type in (None, "chief"):
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def describe(strategy):
    devices = strategy.extended.worker_devices
    kind = type(strategy).__name__
    if is_multi_worker(strategy):
        return (f"{kind}: {strategy.num_replicas_in_sync} replicas, this process is "
                f"{task_name(strategy)} ({', '.join(devices)})")
    return f"{kind}: {strategy.num_replicas_in_sync} replica(s) on {', '.join(devices)}"


def jit_supported(strategy):
    """XLA under a multi-replica strategy on CPUs fails ("Trying to access resource
    ... located in device CPU:1 from device CPU:0") or hangs; GPUs are fine."""
    if strategy.num_replicas_in_sync <= 1:
        return True
    return not any("CPU" in d.upper() for d in strategy.extended.worker_devices)


def guard_jit_compile(model, strategy, log=print):
    """Turn XLA off, with a one-line notice, where the strategy cannot run it."""
    if model.jit_compile and not jit_supported(strategy):
        log(f"notice: jit_compile turned off: XLA does not run under {type(strategy).__name__} "
            "with several CPU devices")
        model.jit_compile = False
        retrace(model)


# CPU flags of bfloat16 arithmetic (x86: AVX-512 BF16, AMX; Arm: BF16): without one,
# bfloat16 convolutions are emulated and slower than float32's
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU lists a bfloat16 arithmetic flag (None: no flags to read)."""
    try:
        with open(cpuinfo) as f:
            flags = {w for line in f if line.startswith(("flags", "Features"))
                     for w in line.split(":", 1)[1].split()}
    except OSError:
        return None
    return bool(flags & set(BF16_CPU_FLAGS)) if flags else None


def gpus_without_bfloat16() -> list:
    """The GPUs TensorFlow sees whose compute capability is under 8.0 (before Ampere: no
    bfloat16 tensor-core arithmetic)."""
    slow = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability is not None and tuple(capability) < (8, 0):
            slow.append(f"{gpu.name} (compute capability {capability[0]}.{capability[1]})")
    return slow


def notice_slow_bfloat16(model, strategy, log=print, cpuinfo="/proc/cpuinfo"):
    """A one-line notice when the chain or the convolutions' input gradients are asked
    to run in bfloat16 (``rule.chain_dtype``, ``train.error_dtype``) on CPUs whose flags
    show no bfloat16 arithmetic, or on GPUs older than Ampere: the setting would cost
    time."""
    route = getattr(getattr(model, "rule", None), "route", None)
    asked = [f"{name}=bfloat16" for name, dtype in (
        ("rule.chain_dtype", getattr(route, "dtype", "float32")),
        ("train.error_dtype", getattr(model, "error_dtype", "float32"))) if dtype != "float32"]
    if not asked:
        return
    what = " and ".join(asked)
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default device
        devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]]
    if any("GPU" in d.upper() for d in devices):
        slow = gpus_without_bfloat16()
        if slow:
            log(f"notice: {what} on GPUs without bfloat16 arithmetic "
                f"({', '.join(slow)}): it will likely run slower than in float32")
        return
    if cpu_has_bfloat16(cpuinfo) is False:
        log(f"notice: {what} on a CPU without bfloat16 arithmetic (none of "
            f"{', '.join(BF16_CPU_FLAGS)} in {cpuinfo}): it will likely run slower than in "
            "float32")


def fingerprint(model):
    """A digest of every weight's bytes: equal on workers that hold identical weights."""
    digest = hashlib.sha256()
    for v in model.weights:
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return digest.hexdigest()[:16]


def shard_by_data(dataset):
    """Every worker reads the whole pipeline and keeps its part of each global batch,
    so that a global batch holds the examples it holds on one device (file
    sharding would regroup them, and needs as many files as workers)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
