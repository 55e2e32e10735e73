"""Step time, training memory, parameters and multiply-adds of every rule, side by side.

    python -m benchmarks.efficiency                       # smallconv and resnet32, batch 64
    python -m benchmarks.efficiency --models=resnet32 --xla --out=benchmarks/reports/EFFICIENCY.md

One table per model, one row per rule (the defaults of each, then SSA's
variants). Ratios are to BP in the same run:

- step time: median milliseconds of a training step on one batch already in
  memory, all rules timed in one process in turn (``--repeats`` rounds of
  ``--steps`` steps, the order rotated every round), so a noisy shared
  machine slows them alike;
- peak memory: what TensorFlow's allocator holds at its peak during a step,
  above what it held before (weights, optimizer state): one child process per
  rule, with ``TF_CPU_ALLOCATOR_USE_BFC=true`` so that the CPU allocator keeps
  the statistics;
- parameters: trainable; MACs: multiply-adds of the training forward pass per
  example (an SVD convolution runs the factored pair or the merged kernel,
  whichever is cheaper, ``SVDConv2D.uses_merged_forward``);
- inference: median milliseconds of one batch through the deployable model
  (``ssa_tf.export.merge``, form auto: SVD layers merged or factored, the
  feedback dropped), in Keras timed in the same rounds, and exported to ONNX
  (``ssa_tf.export.deploy.to_onnx``) in onnxruntime, every export timed in
  turn in one process, 2 threads each (``--onnx``, needs the ``export`` extra).

SSA's rows at lower ranks cut every SVD layer to a fraction of its full rank
(``--rank_fractions``) to show what a rank cut buys; what a trained model's
energy cut keeps is in ``benchmarks/reports/EXPORT.md`` (``benchmarks.export_frontier``).
``--channel`` adds SSA with channel-factorized convolutions
(``model.conv_factorization=channel``) at full rank and the same fractions.

``--rows=profile`` asks where the direct SSA step's time goes: BP and SSA
with one piece removed per row (the layer norms, the recompute forward, the
global forward), and the channel view cut to each of ``--rank_fractions``
with and without its norms; ``--nomemory`` skips the memory children.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

from absl import flags

from benchmarks.timing import child_peak_mb, fraction_ranks, peak_step_mb, print_peak
from ssa_tf import atomic_files, cli
from ssa_tf.cli import usage_error

SHAPE = (32, 32, 3)
# (row name, rule options)
ROWS = [
    ("bp", dict(rule="bp")),
    ("svd-bp", dict(rule="svd-bp")),
    ("dfa", dict(rule="dfa")),
    ("ssa", dict(rule="ssa")),
    ("ssa, all activations held", dict(rule="ssa", recompute=False)),
    ("ssa, local route", dict(rule="ssa", feedback="local")),
    ("fa", dict(rule="fa")),
    ("dkp", dict(rule="dkp")),
    ("ssa-dkp", dict(rule="ssa-dkp")),
]

# the local heads' costs beside BP's (the heads train, then are dropped at export)
HEAD_ROWS = [
    ("bp", dict(rule="bp")),
    ("dfa", dict(rule="dfa")),
    ("local linear heads, plain layers", dict(rule="dfa", feedback="local",
                                              readout_trained=True)),
    ("local conv heads, plain layers", dict(rule="dfa", feedback="local", readout_head="conv")),
    ("ssa", dict(rule="ssa")),
    ("ssa, local conv heads", dict(rule="ssa", feedback="local", readout_head="conv")),
    # the heads of heads_20ep's later rows: deeper (DGL's), predsim's, the 4x4 grid
    ("local conv heads, depth 2, plain layers", dict(rule="dfa", feedback="local",
                                                     readout_head="conv", readout_depth=2)),
    ("local predsim heads (linear pred + sim 0.99), plain layers",
     dict(rule="dfa", feedback="local", readout_trained=True, readout_sim=0.99)),
    ("local conv heads, 4x4 grid, plain layers", dict(rule="dfa", feedback="local",
                                                      readout_head="conv", readout_grid=4)),
    ("ssa, local conv heads, 4x4 grid", dict(rule="ssa", feedback="local", readout_head="conv",
                                             readout_grid=4)),
    # AugLocal's: shaped like the later modules, depth 3 (module 0's head has the shape of
    # the whole later network)
    ("local later-shaped heads (AugLocal-style), depth 3, plain layers",
     dict(rule="dfa", feedback="local", readout_head="later", readout_depth=3)),
    ("ssa, local later-shaped heads, depth 3", dict(rule="ssa", feedback="local",
                                                    readout_head="later", readout_depth=3)),
]

# where the direct SSA step's time goes: each row removes one piece of it (or of BP's)
PROFILE_ROWS = [
    ("bp", dict(rule="bp")),
    ("bp, no layer norms", dict(rule="bp", norm="none")),
    ("ssa", dict(rule="ssa")),
    ("ssa, no recompute (all activations held)", dict(rule="ssa", recompute=False)),
    ("ssa, no global forward (local route)", dict(rule="ssa", feedback="local")),
    ("ssa, no layer norms", dict(rule="ssa", norm="none")),
    ("ssa, no layer norms, no recompute", dict(rule="ssa", norm="none", recompute=False)),
]

FLAGS = flags.FLAGS
flags.DEFINE_enum("rows", "rules", ["rules", "profile", "heads"],
                  "heads: the local heads against BP and DFA; rules: every rule and the rank cuts; "
                  "profile: BP and SSA with one piece of the step removed per row")
flags.DEFINE_boolean("memory", True, "also measure each row's peak training memory")
flags.DEFINE_list("models", ["smallconv", "resnet32"], "architectures")
flags.DEFINE_integer("batch", 64, "batch size")
flags.DEFINE_integer("repeats", 5, "rounds of timing")
flags.DEFINE_integer("steps", 5, "steps per rule and round")
flags.DEFINE_list("rank_fractions", ["0.5", "0.25"], "SSA also at these fractions of full rank")
flags.DEFINE_boolean("xla", False, "also time BP and SSA compiled with XLA (jit_compile)")
flags.DEFINE_boolean("channel", True, "also SSA with channel-factorized convolutions")
flags.DEFINE_boolean("onnx", True, "also time the deployable models in onnxruntime")
flags.DEFINE_integer("onnx_runs", 30, "timed onnxruntime runs per export")
flags.DEFINE_string("out", None, "also write the tables to this Markdown file")
flags.DEFINE_string("child", None, "internal: measure one rule's memory (JSON spec)")


def build(model_name, options, fraction=None, jit=False):
    import keras

    from ssa_tf.training.model import build_model

    keras.utils.set_random_seed(1)
    model = build_model(model_name, SHAPE, 10, jit_compile=jit, **options)
    if fraction is not None:
        from ssa_tf.training.rank import apply_ranks

        apply_ranks(model, fraction_ranks(model, fraction))
    return model


def batch(n):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.standard_normal((n, *SHAPE)).astype("float32"), rng.integers(0, 10, n)


def training_macs(model):
    """Multiply-adds per example of the training forward pass (weight layers only)."""
    import keras

    from ssa_tf.nn.graph import costs
    from ssa_tf.nn import SVDConv2D, SVDLayer

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D, SVDLayer)):
            continue
        # the input shape the layer is called on in its module's graph (an SVD layer
        # converted from a plain one is built for any map size: (None, None, None, C))
        nodes = layer._inbound_nodes
        in_shape = (tuple(nodes[-1].input_tensors[0].shape) if nodes
                    else next(iter(layer._build_shapes_dict.values())))
        merged, factored = costs(layer, (None, *in_shape[1:]))
        if isinstance(layer, SVDConv2D):
            total += merged if layer.uses_merged_forward() else factored
        elif isinstance(layer, SVDLayer):  # SVDDense runs its factors
            total += factored
        else:
            total += merged
    return int(total)


def head_costs(model):
    """(parameters, multiply-adds per example) of the local route's trained heads (0, 0
    without them): they train with their modules and are dropped at export."""
    route = getattr(model.rule, "route", None)
    if route is None or not getattr(route, "trained", False):
        return 0, 0
    params = sum(int(v.numpy().size) for i in range(len(model.local_modules))
                 for v in route.extra_variables(model, i))
    macs = 0
    for i, shape in enumerate(model.module_output_shapes[:-1]):
        positions = 1
        if route.hidden and route.head == "later":
            # each layer at its input's positions (a convolution's map, then its later
            # module's size; 1 for a dense layer)
            for kernel, target in zip(route.hidden[i][::2], route.targets[i]):
                at = shape[0] * shape[1] if len(kernel.shape) == 4 else 1
                macs += at * int(kernel.numpy().size)
                shape = target
        elif route.hidden:
            if len(shape) == 3:  # 3x3 convolutions at every position of the map
                positions = shape[0] * shape[1]
            macs += positions * sum(int(k.numpy().size) for k in route.hidden[i][::2])
        macs += int(route.matrices[i].numpy().size)  # the linear read-out of the pooled grid
    return params, macs


def time_rules(model_name, rows):
    """{row: median ms per step}, the rules timed in turn in this process."""
    import tensorflow as tf

    from ssa_tf.export.merge import merge

    x, y = batch(FLAGS.batch)
    models, deployed = {}, {}
    for name, spec in rows:
        models[name] = build(model_name, spec["options"], spec.get("fraction"), spec.get("jit"))
        for _ in range(2):  # trace and warm up
            models[name].train_on_batch(x, y)
        if not spec.get("jit"):
            plain = merge(models[name])[0]
            deployed[name] = tf.function(lambda t, m=plain: m(t, training=False))
            deployed[name](x)
            deployed[name].keras_model = plain
    times = {name: [] for name in models}
    infer = {name: [] for name in deployed}
    names = list(models)
    for r in range(FLAGS.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                models[name].train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / FLAGS.steps * 1000)
            if name in deployed:
                start = time.perf_counter()
                for _ in range(FLAGS.steps):
                    deployed[name](x).numpy()
                infer[name].append((time.perf_counter() - start) / FLAGS.steps * 1000)
    onnx_ms = onnx_latency(deployed, x) if FLAGS.onnx else {}
    facts = {}
    for name, model in models.items():
        facts[name] = dict(ms=statistics.median(times[name]),
                           infer_ms=statistics.median(infer[name]) if name in infer else None,
                           onnx_ms=onnx_ms.get(name),
                           params=int(sum(v.numpy().size for v in model.trainable_variables)),
                           macs=training_macs(model) + head_costs(model)[1],
                           heads=head_costs(model),
                           exported=(deployed[name].keras_model.count_params()
                                     if name in deployed else None),
                           card=model.card().columns(), feedback=model.card().feedback)
    return facts


def onnx_latency(deployed, x):
    """{row: median ms of one batch in onnxruntime}, every export timed in turn."""
    from ssa_tf.export.deploy import median_latency_ms, onnx_session, to_onnx

    sessions = {}
    for name, fn in deployed.items():
        sessions[name] = onnx_session(to_onnx(fn.keras_model).SerializeToString(), threads=2)
    return median_latency_ms(sessions, x, FLAGS.onnx_runs)


def memory_child(spec):
    model = build(spec["model"], spec["options"], spec.get("fraction"))
    print_peak(peak_step_mb(model, *batch(FLAGS.batch)))


def measure_memory(model_name, spec):
    child = {"model": model_name, "options": spec["options"], "fraction": spec.get("fraction")}
    return child_peak_mb("benchmarks.efficiency",
                         [f"--batch={FLAGS.batch}", f"--child={json.dumps(child)}"],
                         f"{model_name} {spec}")


def rows_for():
    if FLAGS.rows == "heads":
        return [(name, {"options": options}) for name, options in HEAD_ROWS]
    if FLAGS.rows == "profile":  # and the cut channel view with and without its norms
        rows = [(name, {"options": options}) for name, options in PROFILE_ROWS]
        for f in (float(v) for v in FLAGS.rank_fractions):
            for label, extra in (("", {}), (", no layer norms", dict(norm="none"))):
                rows.append((f"ssa, channel, ranks at {f:.0%} of full{label}",
                             {"options": dict(rule="ssa", conv_factorization="channel", **extra),
                              "fraction": f}))
        return rows
    rows = [(name, {"options": options}) for name, options in ROWS]
    for f in (float(v) for v in FLAGS.rank_fractions):
        rows.append((f"ssa, ranks at {f:.0%} of full", {"options": dict(rule="ssa"),
                                                        "fraction": f}))
    if FLAGS.channel:
        channel = dict(rule="ssa", conv_factorization="channel")
        rows.append(("ssa, channel factorization", {"options": channel}))
        for f in (float(v) for v in FLAGS.rank_fractions):
            rows.append((f"ssa, channel, ranks at {f:.0%} of full",
                         {"options": channel, "fraction": f}))
    if FLAGS.xla:
        rows += [("bp, XLA", {"options": dict(rule="bp"), "jit": True}),
                 ("ssa, XLA", {"options": dict(rule="ssa"), "jit": True})]
    return rows


def heads_table(model_name, rows, facts, memory):
    """The heads' own costs: trainable parameters with and without them, their multiply-
    adds, the exported model's parameters, step time and memory against BP."""
    bp = facts["bp"]
    lines = [f"### {model_name}, batch {FLAGS.batch}: local heads", "",
             "| rule | feedback | trained params | of them heads | exported params | vs BP | "
             "training MACs/example | of them heads | ms/step | vs BP | peak MB | vs BP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, _ in rows:
        f = facts[name]
        mem_cells = _memory_cells(memory, name)
        head_params, head_macs = f["heads"]
        lines.append(f"| {name} | {f['feedback']} | {f['params']:,} | {head_params:,} | "
                     f"{f['exported']:,} | {f['exported'] / bp['exported']:.2f}x | "
                     f"{f['macs'] / 1e6:.2f}M | {head_macs / 1e6:.2f}M | {f['ms']:.0f} | "
                     f"{f['ms'] / bp['ms']:.2f}x | {mem_cells} |")
    return lines


def _memory_cells(memory, name):
    """'peak MB | vs BP' for a row (two empty cells when not measured)."""
    mem, bp_mem = memory.get(name), memory.get("bp")
    return f"{mem:.0f} | {mem / bp_mem:.2f}x" if mem is not None and bp_mem else "| "


def table(model_name, rows, facts, memory):
    bp = facts["bp"]
    lines = [f"### {model_name}, batch {FLAGS.batch}", "",
             "| rule | sequential | transport | held | ms/step | vs BP | peak MB | vs BP | "
             "params | vs BP | MACs/example | vs BP | Keras ms | vs BP | onnxruntime ms | vs BP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, _ in rows:
        f = facts[name]
        mem_cells = _memory_cells(memory, name)
        infer = (f"{f['infer_ms']:.1f} | {f['infer_ms'] / bp['infer_ms']:.2f}x"
                 if f["infer_ms"] is not None else "| ")
        infer += (f" | {f['onnx_ms']:.1f} | {f['onnx_ms'] / bp['onnx_ms']:.2f}x"
                  if f.get("onnx_ms") is not None and bp.get("onnx_ms") else " | | ")
        lines.append(f"| {name} | {' | '.join(f['card'])} | {f['ms']:.0f} | "
                     f"{f['ms'] / bp['ms']:.2f}x | {mem_cells} | {f['params']:,} | "
                     f"{f['params'] / bp['params']:.2f}x | {f['macs'] / 1e6:.1f}M | "
                     f"{f['macs'] / bp['macs']:.2f}x | {infer} |")
    return lines


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.child:
        memory_child(json.loads(FLAGS.child))
        return
    try:
        fractions = [float(v) for v in FLAGS.rank_fractions]
    except ValueError:
        usage_error(f"--rank_fractions must be numbers, got {','.join(FLAGS.rank_fractions)}")
    if any(not 0 < f <= 1 for f in fractions):
        usage_error("--rank_fractions must be in (0, 1]")
    if FLAGS.onnx:
        missing = [m for m in ("onnxruntime", "tf2onnx") if importlib.util.find_spec(m) is None]
        if missing:
            usage_error(f"--onnx needs {' and '.join(missing)} (pip install -e '.[export]'), "
                        "or pass --noonnx")
    cli.import_tensorflow()
    rows = rows_for()
    stamp = (f"Command: `python -m benchmarks.efficiency {' '.join(sys.argv[1:])}`; "
             f"{os.cpu_count()} CPU cores ({platform.machine()}), {datetime.date.today()}.")
    out = [stamp, ""]
    for model_name in FLAGS.models:
        print(f"{model_name}: timing {len(rows)} rules in turn ...", flush=True)
        facts = time_rules(model_name, rows)
        memory = {}
        for name, spec in rows:
            if FLAGS.memory and not spec.get("jit"):
                print(f"{model_name}: peak memory of {name} ...", flush=True)
                memory[name] = measure_memory(model_name, spec)
        render = heads_table if FLAGS.rows == "heads" else table
        out += render(model_name, rows, facts, memory) + [""]
        print("\n".join(out[-len(rows) - 5:]), flush=True)
    if FLAGS.out:
        atomic_files.write_text(FLAGS.out, "\n".join(out) + "\n")


if __name__ == "__main__":
    cli.run(main)
