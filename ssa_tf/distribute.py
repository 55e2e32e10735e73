"""Distributed training: strategies, logical CPUs, the multi-worker loop and its backups.

    placement = distribute.setup("mirrored", logical_cpus=2, workdir="runs/x", batch_size=64)
    with placement.strategy.scope():
        model = ...; compile_model(model); callbacks = [...]
    placement.fit(model, train, validation, epochs, callbacks)
    placement.evaluate(model, test)
    placement.close()

Datasets are batched at the global batch size; the strategy splits every
batch between replicas, and each replica's loss is divided by the number of
replicas so that the summed gradients are the single-device ones (Keras loss
objects do this; the trainer's hand-written local losses do it themselves).

``one_device`` and ``mirrored`` train through ``model.fit``.
``multi_worker`` (MultiWorkerMirroredStrategy, one process per worker, the
cluster in ``TF_CONFIG``) cannot: Keras 3's ``fit`` and ``evaluate`` convert
a ``PerReplica`` batch to a tensor while building the model
(keras-team/keras#20585). ``fit_loop`` replaces them: the same
``model.train_step`` and ``test_step`` under ``strategy.run``, the same
callbacks (rank cuts, CSV and TensorBoard logs; written by the chief only,
the other workers write into a temporary folder) and the same outputs.

Fault tolerance (multi_worker): after every epoch each worker writes its own
backup (weights, optimizer state, ranks, history) to
``<workdir>/backup/<task>``; a restarted worker group agrees on the last
epoch every worker finished and resumes there. A rank cut gives variables
new shapes, so a restore first cuts the model to the saved ranks. The
resumed run is the uninterrupted one: the input pipelines reshuffle on each
pass, so the restore also skips as many passes as epochs were done.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np
import keras
import tensorflow as tf

from ssa_tf import rank as rank_lib
from ssa_tf.config import STRATEGIES, UsageError

# Keras 3.15's fit starts a pass over the training data at the end of every
# epoch and then starts another for the next epoch (its EpochIterator, when
# the dataset's length is known), and each pass reshuffles: epoch e sees the
# order of pass 1 + 2e (pass 0 built the model). The loop does the same, so
# that a multi-worker run sees the data of the one-device run with that seed.
PASSES_PER_EPOCH = 2
# a worker silent this long is dead (TensorFlow's default, 10 s, is too short on busy hosts)
HEARTBEAT_TIMEOUT_S = 60
BACKUP_KEEP = 2  # workers can be one checkpoint apart when they die (see _agree_on_checkpoint)


# --------------------------------------------------------------------------
# Devices and strategies.
# --------------------------------------------------------------------------

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
    BUILD.md for the one difference: the data order).
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
        rank_lib.retrace(model)


# --------------------------------------------------------------------------
# A run's placement: strategy, chief, output folder, fit/evaluate dispatch.
# --------------------------------------------------------------------------

class Placement:
    """Where and how a run trains; built by ``setup``."""

    def __init__(self, strategy, workdir, batch_size=None, log=print, checkpoint_steps=0,
                 keep_checkpoints=BACKUP_KEEP):
        self.strategy = strategy
        self.multi_worker = is_multi_worker(strategy)
        self.chief = is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync
        self.log = log if self.chief else (lambda *a, **k: None)
        # the chief writes the outputs; the others write the same files (saving can
        # take part in collectives) into a folder that close() removes
        self._temp = None
        if self.chief or workdir is None:
            self.workdir = workdir
        else:
            self._temp = tempfile.mkdtemp(prefix=f"ssa_tf_{task_name(strategy)}_")
            self.workdir = self._temp
            atexit.register(shutil.rmtree, self._temp, ignore_errors=True)
        self.backup_dir = None
        if workdir is not None:
            self.backup_dir = os.path.join(workdir, "backup", task_name(strategy))
        self.checkpoint_steps = int(checkpoint_steps)
        self.keep_checkpoints = int(keep_checkpoints)
        self.resumed_from = 0
        self.resumed_at = (0, 0)  # (epochs done, steps into the next) of the checkpoint used
        if batch_size is not None and batch_size % self.replicas:
            raise UsageError(f"--batch_size={batch_size} is the global batch; it must be a "
                             f"multiple of the {self.replicas} replicas")

    def fit(self, model, train, validation_data=None, epochs=1, callbacks=(), verbose=1,
            timer=None):
        """The training loop with checkpoints (``fit_loop``) when the run has a
        workdir, else ``model.fit``; returns the History."""
        guard_jit_compile(model, self.strategy, self.log)
        verbose = verbose if self.chief else 0
        if self.backup_dir is None:
            if self.multi_worker:
                raise UsageError("--strategy=multi_worker needs a workdir (for its backups)")
            return model.fit(train, validation_data=validation_data, epochs=epochs,
                             callbacks=list(callbacks), verbose=verbose)
        backup = EpochBackup(self.backup_dir, timer=timer, steps=self.checkpoint_steps,
                             keep=self.keep_checkpoints)
        history = fit_loop(model, train, validation_data, epochs, list(callbacks), verbose,
                           backup=backup, log=self.log)
        self.resumed_from = backup.resumed_from
        self.resumed_at = backup.resumed_at
        if self.multi_worker:
            # every worker says where it ended: equal fingerprints, workers in sync
            print(f"{task_name(self.strategy)}: weights fingerprint {fingerprint(model)}",
                  flush=True)
        return history

    def evaluate(self, model, dataset):
        if not self.multi_worker:
            return model.evaluate(dataset, verbose=0, return_dict=True)
        return evaluate_loop(model, dataset)

    def close(self):
        """Once the run is done: remove the backups and a non-chief's temporary outputs."""
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
        if self.backup_dir:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            parent = os.path.dirname(self.backup_dir)
            if os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)


def setup(strategy="auto", logical_cpus=None, workdir=None, batch_size=None, log=print,
          checkpoint_steps=0, keep_checkpoints=BACKUP_KEEP):
    """The run's ``Placement``; call it before any other TensorFlow work
    (MultiWorkerMirroredStrategy must exist before the first op)."""
    placement = Placement(make_strategy(strategy, logical_cpus), workdir, batch_size, log,
                          checkpoint_steps, keep_checkpoints)
    if strategy != "auto" or placement.replicas > 1:
        placement.log(describe(placement.strategy))
    return placement


# --------------------------------------------------------------------------
# The multi-worker loop: model.fit's work, without its symbolic build.
# --------------------------------------------------------------------------

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


def build_for(model, dataset):
    """Build the compiled loss, metrics and optimizer from one (undistributed) batch.

    Keras's fit does this under a strategy, from its own first pass over the
    data; doing the same here keeps the data order the same as fit's.
    """
    batch = next(iter(dataset))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)


class _StepFunctions:
    """``strategy.run(model.train_step)`` and ``test_step`` as tf.functions.

    Traced again when the model's variables change (a rank cut replaces them:
    a traced function would keep training the old ones). Not XLA-compiled.
    """

    def __init__(self, model, element_spec):
        self.model, self.spec = model, element_spec
        self._key, self._train, self._test = None, None, None

    def _refresh(self):
        model = self.model
        key = (id(model.optimizer), tuple(id(v) for v in model.variables))
        if key == self._key:
            return
        strategy = model.distribute_strategy

        def train(batch):
            strategy.run(model.train_step, args=(batch,))

        def test(batch):
            return strategy.run(model.test_step, args=(batch,))

        self._train = tf.function(train, input_signature=[self.spec])
        self._test = tf.function(test, input_signature=[self.spec])
        self._key = key

    def train(self, batch):
        self._refresh()
        return self._train(batch)

    def test(self, batch):
        self._refresh()
        return self._test(batch)


def _epoch_logs(model, keys=None):
    """The metrics over everything seen since the last reset, summed over all replicas."""
    logs = {}
    for name, value in model.get_metrics_result().items():
        value = np.asarray(value)
        if (keys is None or name in keys) and value.ndim == 0:
            logs[name] = float(value)
    return logs


def _run_eval(model, functions, distributed):
    model.reset_metrics()
    outputs = None
    for batch in distributed:
        outputs = functions.test(batch)
    # test_step decides which metrics it reports (SSAModel drops the *_term ones)
    return _epoch_logs(model, None if outputs is None else set(outputs))


def evaluate_loop(model, dataset):
    strategy = model.distribute_strategy
    dataset = shard_by_data(dataset)
    build_for(model, dataset)
    distributed = strategy.experimental_distribute_dataset(dataset)
    return _run_eval(model, _StepFunctions(model, distributed.element_spec), distributed)


def fit_loop(model, train, validation_data=None, epochs=1, callbacks=(), verbose=1, backup=None,
             log=print):
    """``model.fit(train, validation_data=..., epochs=...)`` for any strategy, in a plain loop.

    With ``backup`` (an ``EpochBackup``) the run resumes from the last epoch
    its backups agree on and writes a new one after every epoch.
    """
    strategy = model.distribute_strategy
    train = shard_by_data(train)
    build_for(model, train)
    dist_train = strategy.experimental_distribute_dataset(train)
    dist_val = None
    if validation_data is not None:
        dist_val = strategy.experimental_distribute_dataset(shard_by_data(validation_data))
    steps = int(train.cardinality())
    # History before the backup, so that a backup holds its own epoch's logs
    history = keras.callbacks.History()
    callbacks = [*callbacks, history, *([backup] if backup is not None else [])]
    cb = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, verbose=verbose,
                                      epochs=epochs, steps=steps if steps > 0 else None,
                                      model=model)

    initial_epoch, initial_step = 0, 0
    if backup is not None:
        initial_epoch, initial_step = backup.restore(model, cb.callbacks, history)
        if initial_step:
            log(f"resuming from the checkpoint at step {initial_step} of epoch "
                f"{initial_epoch + 1} (of {epochs})")
        elif initial_epoch:
            log(f"resuming from the backup of epoch {initial_epoch} (of {epochs})")
        for _ in range(PASSES_PER_EPOCH * initial_epoch):
            iter(dist_train)  # every pass reshuffles: skip those the finished epochs took

    functions = _StepFunctions(model, dist_train.element_spec)
    model.stop_training = False
    cb.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        # a mid-epoch checkpoint restored the metrics of the steps it covers
        skip = initial_step if epoch == initial_epoch else 0
        if not skip:
            model.reset_metrics()
        cb.on_epoch_begin(epoch)
        for step, batch in enumerate(dist_train):
            if step < skip:
                continue  # trained before the checkpoint: same batches, same order
            cb.on_train_batch_begin(step)
            functions.train(batch)
            cb.on_train_batch_end(step, {})
            if model.stop_training:
                break
        for _ in range(PASSES_PER_EPOCH - 1):
            iter(dist_train)  # the pass fit would start and drop
        logs = _epoch_logs(model)
        if dist_val is not None:
            val = _run_eval(model, functions, dist_val)
            logs.update({f"val_{k}": v for k, v in val.items()})
        cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    cb.on_train_end(logs)
    return history


# --------------------------------------------------------------------------
# Backups: one folder per finished epoch, written atomically.
# --------------------------------------------------------------------------

def _by_path(variables, what):
    table = {}
    for v in variables:
        if v.path in table:
            raise RuntimeError(f"two {what} variables share the path {v.path!r}; "
                               "a backup could not tell them apart")
        table[v.path] = v
    return table


class EpochBackup(keras.callbacks.Callback):
    """Saves after every epoch (and every ``steps`` steps) what a restarted run
    needs to carry on exactly.

    ``<backup_dir>/epoch-<k>/`` (k epochs done) or ``epoch-<k>-step-<s>/``
    (k epochs and s steps of the next done) holds ``variables.npz`` (the
    model's weights, the optimizer's variables and the metrics' running
    totals, by path) and ``state.json`` (k, s, the SVD ranks, the History so
    far, the rank callback's history and the epoch times of ``timer``). Each
    is written into a temporary folder and renamed into place, so a process
    killed mid-write leaves the previous ones intact; the newest ``keep`` are
    kept.
    """

    def __init__(self, backup_dir, timer=None, steps=0, keep=BACKUP_KEEP):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.backup_dir = backup_dir
        self.timer = timer
        self.steps = int(steps)
        self.keep = int(keep)
        self.resumed_from = 0
        self.resumed_at = (0, 0)
        self._history = None
        self._rankers = []
        self._epoch = 0

    # -- saving ---------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.steps and (batch + 1) % self.steps == 0:
            self._save(self._epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0)

    def _save(self, epoch, step):
        model = self.model
        arrays = {f"model/{p}": v.numpy() for p, v in _by_path(model.weights, "model").items()}
        arrays.update({f"optimizer/{p}": v.numpy()
                       for p, v in _by_path(model.optimizer.variables, "optimizer").items()})
        if step:  # the epoch's running metrics continue after a mid-epoch restore
            arrays.update({f"metrics/{p}": np.asarray(v.numpy()) for p, v in
                           _by_path(model.metrics_variables, "metrics").items()})
        state = {
            "epoch": epoch,
            "step": step,
            "ranks": model.ranks() if hasattr(model, "ranks") else {},
            "history": self._history.history if self._history is not None else {},
            "rank_history": [r.history for r in self._rankers],
            "epoch_seconds": list(getattr(self.timer, "seconds", [])),
        }
        os.makedirs(self.backup_dir, exist_ok=True)
        final = os.path.join(self.backup_dir, _folder(epoch, step))
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.backup_dir)
        try:
            np.savez(os.path.join(tmp, "variables.npz"), **arrays)
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f, default=float)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(e.errno, f"cannot write a checkpoint into {self.backup_dir}: "
                          f"{e.strerror}") from e
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints_in(self.backup_dir)[:-self.keep]:
            shutil.rmtree(os.path.join(self.backup_dir, _folder(*old)), ignore_errors=True)

    # -- restoring ------------------------------------------------------------
    def restore(self, model, callbacks, history):
        """Bring ``model`` and the callbacks to the last agreed checkpoint; return its
        (epochs done, steps into the next epoch), (0, 0) when there is none."""
        self.set_model(model)
        self._history = history
        self._rankers = [c for c in callbacks if isinstance(c, rank_lib.RankPruning)]
        mine = _checkpoints_in(self.backup_dir) if os.path.isdir(self.backup_dir) else []
        at = _agree_on_checkpoint(model.distribute_strategy, mine[-1] if mine else (0, 0))
        if at == (0, 0):
            return at
        if at not in mine:
            raise RuntimeError(f"the workers agree to resume from {_folder(*at)}, but "
                               f"{self.backup_dir} holds only {[_folder(*m) for m in mine]}")
        epoch, step = at
        folder = os.path.join(self.backup_dir, _folder(epoch, step))
        try:
            with open(os.path.join(folder, "state.json")) as f:
                state = json.load(f)
            with np.load(os.path.join(folder, "variables.npz")) as npz:
                arrays = dict(npz)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {folder} is unreadable ({e}); remove it to "
                                  "resume from an older one, or pass --restart") from None
        _cut_to(model, state["ranks"])
        _assign(_by_path(model.weights, "model"), arrays, "model/")
        _assign(_by_path(model.optimizer.variables, "optimizer"), arrays, "optimizer/")
        if step:
            _assign(_by_path(model.metrics_variables, "metrics"), arrays, "metrics/")

        history.history = {k: list(v) for k, v in state["history"].items()}
        for ranker, saved in zip(self._rankers, state["rank_history"]):
            ranker.history = [(e, dict(r)) for e, r in saved]
        if self.timer is not None and hasattr(self.timer, "seconds"):
            self.timer.seconds[:0] = state["epoch_seconds"]
        _trim_logs(callbacks, epoch, int(model.optimizer.iterations.numpy()))
        self.resumed_from = epoch
        self.resumed_at = (epoch, step)
        return epoch, step


class CheckpointError(Exception):
    """A checkpoint that cannot be read."""


def _folder(epoch, step):
    return f"epoch-{epoch}" if not step else f"epoch-{epoch}-step-{step}"


def _checkpoints_in(folder):
    """(epochs done, steps into the next) of every complete checkpoint, oldest first."""
    found = []
    for path in glob.glob(os.path.join(folder, "epoch-*", "state.json")):
        parts = os.path.basename(os.path.dirname(path)).split("-")
        try:
            found.append((int(parts[1]), int(parts[3]) if len(parts) == 4 else 0))
        except (ValueError, IndexError):
            continue  # not one of ours
    return sorted(found)


def _agree_on_checkpoint(strategy, mine):
    """The newest checkpoint every worker has.

    A worker writes its checkpoint before it takes part in the next step,
    which needs every worker; so when some hold checkpoint c+1 the others
    hold at least c, and keeping two keeps c everywhere.
    """
    if not is_multi_worker(strategy):
        return tuple(mine)
    code = mine[0] * 10**9 + mine[1]

    @tf.function
    def gather():
        value = strategy.run(lambda: tf.constant([code], tf.int64))
        return tf.reduce_min(strategy.gather(value, axis=0))

    agreed = int(gather())
    return agreed // 10**9, agreed % 10**9


def _cut_to(model, ranks):
    """Cut SVD layers down to the saved ranks (new variables), as RankPruning did."""
    if not ranks:
        return
    layers = {l.name: l for l in model.svd_layers()}
    with model.distribute_strategy.scope():
        pairs = []
        for name, r in ranks.items():
            layer = layers[name]
            if r < layer.rank:
                old = (layer.U, layer.s, layer.V)
                layer.truncate(int(r))
                pairs.extend(zip((layer.U, layer.s, layer.V), old))
            elif r > layer.rank:
                raise RuntimeError(f"backup has {name} at rank {r} > the model's {layer.rank}")
        if pairs:
            model.optimizer = rank_lib.rebuild_optimizer(model, pairs)
            rank_lib.retrace(model)


def _assign(variables, arrays, prefix):
    saved = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if set(saved) != set(variables):
        raise RuntimeError(f"backup and model differ in {prefix[:-1]} variables: "
                           f"{sorted(set(saved) ^ set(variables))[:6]}")
    for path, var in variables.items():
        if tuple(var.shape) != saved[path].shape:
            raise RuntimeError(f"backup has {path} at shape {saved[path].shape}, "
                               f"the model {tuple(var.shape)}")
        var.assign(saved[path])


def _trim_logs(callbacks, epoch, step=None):
    """Drop log rows of epochs after ``epoch`` (the dead run may have written some)
    and make the CSV logger append to the rest; alignment rows after optimizer
    step ``step``."""
    for c in callbacks:
        if type(c).__name__ == "AlignmentMonitor" and c.workdir and step is not None:
            _keep_rows(os.path.join(c.workdir, "alignment.csv"),
                       lambda row: int(row["step"]) <= step)
        if isinstance(c, keras.callbacks.CSVLogger):
            _keep_rows(c.filename, lambda row: int(row["epoch"]) < epoch)
            c.append = True
        if isinstance(c, rank_lib.RankPruning) and c.workdir:
            _keep_rows(os.path.join(c.workdir, "ranks.csv"), lambda row: int(row["epoch"]) <= epoch)


def _keep_rows(path, keep):
    """Rewrite the CSV at ``path`` with the rows ``keep`` accepts; a row a killed
    process left half-written is dropped."""
    import csv

    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, []
        for row in reader:
            try:
                if None not in row.values() and keep(row):
                    rows.append(row)
            except (TypeError, ValueError):
                continue
    tmp = path + ".tmp"
    if fields is None:  # killed before the header was written
        os.remove(path)
        return
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Step times: python -m ssa_tf.distribute --strategy=mirrored --logical_cpus=2
# --------------------------------------------------------------------------

class _StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def step_times(strategy="one_device", logical_cpus=1, model="smallconv", mode="ssa",
               batch_size=64, shape=(32, 32, 3), steps=30, warmup=5):
    """Seconds of each of ``steps`` training steps on synthetic data, after ``warmup``."""
    from ssa_tf import data as data_lib
    from ssa_tf.config import RunConfig
    from ssa_tf.run import make_model
    from ssa_tf.trainer import compile_model

    placement = setup(strategy, logical_cpus, batch_size=batch_size)
    cfg = RunConfig(model=model, mode=mode, batch_size=batch_size)
    spec = data_lib.load("synthetic", batch_size, max_train_examples=(steps + warmup) * batch_size,
                         synthetic_shape=shape)
    with placement.strategy.scope():
        net = make_model(cfg, spec.input_shape, spec.num_classes)
        compile_model(net)
    timer = _StepTimer()
    placement.fit(net, spec.train, epochs=1, callbacks=[timer], verbose=0)
    return timer.seconds[warmup:]


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="median training step time under a strategy")
    parser.add_argument("--strategy", default="one_device", choices=STRATEGIES)
    parser.add_argument("--logical_cpus", type=int, default=1)
    parser.add_argument("--model", default="smallconv")
    parser.add_argument("--mode", default="ssa")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--shape", default="32,32,3")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    seconds = step_times(args.strategy, args.logical_cpus, args.model, args.mode, args.batch_size,
                         tuple(int(d) for d in args.shape.split(",")), args.steps)
    ms = np.asarray(seconds) * 1000
    print(json.dumps({**vars(args), "median_ms": round(float(np.median(ms)), 1),
                      "min_ms": round(float(ms.min()), 1),
                      "p90_ms": round(float(np.percentile(ms, 90)), 1)}))


if __name__ == "__main__":
    main()
