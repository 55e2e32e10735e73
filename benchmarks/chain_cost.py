"""What the direct rules' feedback costs at ImageNet size: resnet18, 1000 classes, side by side.

    python -m benchmarks.chain_cost                      # 224x224, batch 8, every row
    python -m benchmarks.chain_cost --image_size=112 --out=benchmarks/reports/CHAIN_COST.md

At 224x224 with 1000 classes SSA's chain cannot be cached as one matrix per module (the
matrices J_i^T would hold about 928M entries), so every SSA step runs the whole linear
feedback network. The rows time that against BP and against direct matrices that need
no such pass: the global route with one error per channel (``feedback_spatial=
broadcast``: a (channels, K) matrix per module), fixed (``ssa`` global, ``dfa``) or
learned (``dkp``, ``ssa-dkp`` global). Synthetic inputs already normalized, one batch in
memory, every row timed in turn in one process, the order rotated every round; the
ratio to BP is what counts on a shared machine.

    python -m benchmarks.chain_cost --signals_only --batch=64

times the chain's signals alone, for SSA's resnet18 at its defaults: by the linear
network's transpose (``chain.adjoint_signals``, what the step runs) and by a tape's
backward pass through the network (``chain.chain_signals``, whose forward pass on zeros
costs as much again), in turn, ``--repeats`` calls each, medians.
"""

from __future__ import annotations

import sys

from absl import flags

from benchmarks.timing import time_side_by_side, warm_up
from ssa_tf import atomic_files, cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 224, "input height and width")
flags.DEFINE_integer("classes", 1000, "classes")
flags.DEFINE_integer("batch", 8, "batch size")
flags.DEFINE_integer("repeats", 3, "rounds of timing")
flags.DEFINE_integer("steps", 2, "steps per row and round")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")
flags.DEFINE_boolean("signals_only", False, "time the chain's signals alone: by its "
                     "transpose and by a tape")

ROWS = [
    ("bp", dict(rule="bp")),
    ("ssa (chain, not cached: the linear feedback network every step)", dict(rule="ssa")),
    ("ssa, global route, broadcast (fixed, from the feedback factors)",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast")),
    ("dfa, broadcast", dict(rule="dfa", feedback_spatial="broadcast")),
    ("dkp, broadcast (learned)", dict(rule="dkp", feedback_spatial="broadcast")),
    ("ssa-dkp, global route, broadcast (learned)",
     dict(rule="ssa-dkp", feedback="global", feedback_spatial="broadcast")),
]


def measure():
    """{row: (median ms per step, the rule's route detail)}."""
    import keras
    import numpy as np

    from ssa_tf.training.model import build_model

    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.batch, *shape)).astype("float32")
    y = rng.integers(0, FLAGS.classes, FLAGS.batch)
    models, notes = {}, {}
    for name, options in ROWS:
        keras.utils.set_random_seed(1)
        models[name] = build_model("resnet18", shape, FLAGS.classes, **options)
        route = getattr(models[name].rule, "route", None)
        cached = getattr(route, "matrices", None)
        notes[name] = ("" if route is None else
                       "chain cached" if cached and hasattr(route, "kernels") else
                       "chain run every step" if hasattr(route, "kernels") else
                       f"{sum(int(np.prod(v.shape)) for v in cached):,} feedback entries")
        warm_up(models[name], name, x, y)
    times = time_side_by_side(models, x, y, FLAGS.repeats, FLAGS.steps)
    return {name: (ms, notes[name]) for name, ms in times.items()}


def signals_only() -> str:
    """The chain's signals for one batch's error, by the transpose and by a tape."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from ssa_tf.methods import chain
    from ssa_tf.nn import SVDConv2D
    from ssa_tf.training.model import build_model

    keras.utils.set_random_seed(1)
    model = build_model("resnet18", (FLAGS.image_size, FLAGS.image_size, 3), FLAGS.classes,
                        rule="ssa")
    for layer in model.svd_layers():
        if isinstance(layer, SVDConv2D):
            layer.batch_hint = FLAGS.batch
    modules, kernels = model.local_modules, model.rule.route.kernels
    shapes = [(None, *model.input_dims), *((None, *s) for s in model.module_output_shapes[:-1])]
    spec = [tf.TensorSpec((None, FLAGS.classes))]

    @tf.function(input_signature=spec)
    def transpose(e):
        return chain.adjoint_signals(modules, e, shapes, kernels)

    @tf.function(input_signature=spec)
    def tape(e):
        zeros = [tf.zeros(tf.concat([tf.shape(e)[:1], s], 0))
                 for s in model.module_output_shapes]
        return chain.chain_signals(modules, zeros, e, kernels)

    @tf.function(input_signature=spec)
    def transpose_bf16(e):  # rule.chain_dtype=bfloat16
        low = chain.adjoint_signals(modules, tf.cast(e, tf.bfloat16), shapes, kernels)
        return [tf.cast(d, tf.float32) for d in low]

    e = tf.random.normal((FLAGS.batch, FLAGS.classes))
    calls = {"by the transpose (the step's)": transpose, "by a tape": tape,
             "by the transpose in bfloat16 (rule.chain_dtype)": transpose_bf16}
    seconds = {name: [] for name in calls}
    for f in calls.values():
        f(e)  # the trace
    for _ in range(FLAGS.repeats):
        for name, f in calls.items():
            start = time.perf_counter()
            [d.numpy() for d in f(e)]
            seconds[name].append(time.perf_counter() - start)
    first = float(np.median(seconds[next(iter(calls))]))
    lines = [f"The chain's signals alone, resnet18 at {FLAGS.image_size}x{FLAGS.image_size}, "
             f"{FLAGS.classes} classes, batch {FLAGS.batch}; median of {FLAGS.repeats} "
             "calls each, in turn.", "", "| signals | ms a call | x the transpose |",
             "|---|---|---|"]
    for name, times in seconds.items():
        ms = float(np.median(times)) * 1e3
        lines.append(f"| {name} | {ms:.0f} | {ms / first / 1e3:.2f} |")
    return "\n".join(lines)


def table(results) -> str:
    bp = results["bp"][0]
    lines = [f"resnet18 at {FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.classes} classes, "
             f"batch {FLAGS.batch}; median of {FLAGS.repeats} rounds of {FLAGS.steps} steps.",
             "", "| row | feedback | ms per step | x BP |", "|---|---|---|---|"]
    for name, (ms, note) in results.items():
        lines.append(f"| {name} | {note} | {ms:.0f} | {ms / bp:.2f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("image_size", "classes", "batch", "repeats", "steps"):
        if FLAGS[name].value < 1:
            cli.usage_error(f"--{name} must be >= 1, got {FLAGS[name].value}")
    cli.import_tensorflow()
    text = signals_only() if FLAGS.signals_only else table(measure())
    print(text)
    if FLAGS.out:
        atomic_files.write_text(FLAGS.out, f"# The direct rules' feedback at ImageNet size\n\n"
                         f"`python -m benchmarks.chain_cost {' '.join(sys.argv[1:])}`\n\n"
                         f"{text}\n")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
