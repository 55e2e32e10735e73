"""An epoch right after a rank cut against BP's epoch: what a user pays for a cut.

    python -m benchmarks.cut_epoch                       # resnet32, 10,000 images, batch 64
    python -m benchmarks.cut_epoch --model=smallconv --examples=3000 --out=FILE.md

Each round trains BP one epoch (its step already traced: a run's later epochs) and, for
every SSA row, a model built at full rank and traced there, then timed from the cut to
the end of the next epoch: the cut to ``--fraction`` of each layer's full rank
(``training.rank.apply_ranks``: new variables, the optimizer rebuilt, the step retraced),
the retrace on the first batch, and the epoch. The rows "no cut" time the epoch alone,
at full rank and traced before: the floor a free cut would leave; the rows "cut in place"
cut with ``rank.cut_form=in_place`` (``apply_ranks(..., in_place=True)``: the shapes kept,
nothing rebuilt or retraced). Rows are timed in turn in one
process, the order rotated every round; the ratio to BP's epoch is the figure (the machine
is shared). Synthetic CIFAR-shaped inputs held in memory (the input pipeline is timed elsewhere,
``DATA_THROUGHPUT.md``), batched by ``tf.data`` as training's pipeline batches them: every
batch, the short last one too, has the batch size unknown to the trace, so a model traces
its step once after a cut (a ragged last batch fed as arrays, whose first batches have the
size known, traced the step a second time inside the epoch; BP's rounds after the first
never paid it), with tf.data's autotuning off, as training's (with it on, an epoch sometimes
ended only at the autotuning thread's next wake-up: 41.0 s for BP's 24 s epoch).
"""

from __future__ import annotations

import contextlib
import statistics
import time

from absl import flags

from benchmarks.timing import chosen_rows, fraction_ranks, publish
from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet32", "built-in model")
flags.DEFINE_integer("examples", 10000, "images in the epoch")
flags.DEFINE_integer("batch", 64, "batch size")
flags.DEFINE_float("fraction", 0.5, "the cut: this fraction of each layer's full rank")
flags.DEFINE_integer("repeats", 3, "rounds")
flags.DEFINE_multi_string("row", [], "time only this row, by its full name (repeat; bp is "
                          "always timed)")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")

MODELS = ("resnet32", "smallconv")
CHANNEL = dict(rule="ssa", conv_factorization="channel")
# (name, rule options; None: BP, no cut)
ROWS = [
    ("bp", dict(rule="bp")),
    ("ssa", dict(rule="ssa")),
    # the optimizer as before FusedAdam: Keras's Adam, ~25 traced ops a variable
    ("ssa, Keras's Adam", dict(rule="ssa", keras_adam=True)),
    ("ssa, held within the peak", dict(rule="ssa", hold_within_peak=True)),
    ("ssa, channel view", CHANNEL),
    ("ssa, channel view, held within the peak", dict(CHANNEL, hold_within_peak=True)),
    # the factor algebra with NumPy's BLAS threads as they are (before nn.svd.serial_blas)
    ("ssa, NumPy's BLAS threads", dict(rule="ssa", threaded_blas=True)),
    # every module's activations held (BP's memory): no replayed forward
    ("ssa, no recompute", dict(rule="ssa", recompute=False)),
    ("ssa, global broadcast, no recompute",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast", recompute=False)),
    # the floor: the same model's epoch with no cut and no retrace (its step traced
    # before, as BP's): what the cut model's epoch would cost if a cut were free and
    # bought nothing
    ("ssa, no recompute, no cut", dict(rule="ssa", recompute=False, no_cut=True)),
    ("ssa, global broadcast, no recompute, no cut",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast", recompute=False,
          no_cut=True)),
    # rank.cut_form=in_place: the shapes kept, no retrace
    ("ssa, cut in place", dict(rule="ssa", in_place=True)),
    ("ssa, no recompute, cut in place", dict(rule="ssa", recompute=False, in_place=True)),
    # the configuration that meets resnet18's step and memory targets (STEP_COST.md)
    ("ssa, global broadcast, held within the peak",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast", hold_within_peak=True)),
    ("ssa, global broadcast, held within the peak, cut in place",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast", hold_within_peak=True,
          in_place=True)),
    # the step compiled with XLA (train.jit_compile), and BP's epoch so compiled (no cut):
    # compiled once per input shape, warmed up on the short last batch too
    ("bp, XLA", dict(rule="bp", jit=True, no_cut=True)),
    ("ssa, XLA", dict(rule="ssa", jit=True)),
    ("ssa, XLA, cut in place", dict(rule="ssa", jit=True, in_place=True)),
    ("ssa, global broadcast, no recompute, XLA, cut in place",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast", recompute=False,
          jit=True, in_place=True)),
    ("ssa, global broadcast, no recompute, cut in place",
     dict(rule="ssa", feedback="global", feedback_spatial="broadcast", recompute=False,
          in_place=True)),
]


def data():
    """The epoch's batches (``tf.data``, in memory, unshuffled), as training's pipeline
    batches: the batch dimension unknown to the trace, the last batch short, no
    autotuning."""
    import numpy as np
    import tensorflow as tf

    from ssa_tf.data.core import without_autotune

    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.examples, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, FLAGS.examples)
    return without_autotune(tf.data.Dataset.from_tensor_slices((x, y)).batch(FLAGS.batch).cache())


def build(options):
    import keras

    from ssa_tf.training.model import build_model, compile_model

    keras.utils.set_random_seed(1)
    options = dict(options)
    keras_adam = options.pop("keras_adam", False)
    jit = options.pop("jit", False)
    for key in ("threaded_blas", "no_cut", "in_place"):  # how one_round cuts, not the model
        options.pop(key, None)
    model = compile_model(build_model(FLAGS.model, (32, 32, 3), 10, **options),
                          jit_compile=jit)
    if keras_adam:
        model.compile(optimizer=keras.optimizers.Adam(float(model.optimizer.learning_rate)),
                      loss=model.loss, jit_compile=False,
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def one_round(rows, batches, bp, order):
    """{row: (seconds, (cut, retrace and first step, the rest of the epoch))}: BP's traced
    epoch (no parts); each SSA row's cut, retrace and epoch."""
    from ssa_tf.training.rank import apply_ranks

    out = {}
    for name in order:
        if name == "bp":
            start = time.perf_counter()
            bp.fit(batches, epochs=1, verbose=0, shuffle=False)
            out[name] = time.perf_counter() - start, None
            continue
        model = build(rows[name])
        model.fit(batches.take(1), verbose=0, shuffle=False)  # traced at full rank
        if rows[name].get("jit"):  # XLA compiles per shape: the short last batch too
            model.fit(batches.skip(-(-FLAGS.examples // FLAGS.batch) - 1), verbose=0)
        with blas_threads(rows[name].get("threaded_blas", False)):
            start = time.perf_counter()
            if not rows[name].get("no_cut"):
                apply_ranks(model, fraction_ranks(model, FLAGS.fraction),
                            in_place=rows[name].get("in_place", False))
            cut = time.perf_counter()
            # the retrace, and the epoch's first step (by fit, as the rest)
            model.fit(batches.take(1), verbose=0, shuffle=False)
            traced = time.perf_counter()
            model.fit(batches.skip(1), verbose=0, shuffle=False)
            end = time.perf_counter()
            out[name] = end - start, (cut - start, traced - cut, end - traced)
    return out


@contextlib.contextmanager
def blas_threads(threaded):
    """With ``threaded``, the factor algebra leaves NumPy's BLAS threads as they are."""
    from ssa_tf.nn import svd

    if not threaded:
        yield
        return

    class AsTheyAre:
        def limit(self, **_):
            return contextlib.nullcontext()

    real = svd._blas
    svd._blas = lambda: AsTheyAre()
    try:
        yield
    finally:
        svd._blas = real


def measure(rows):
    batches = data()
    bp = build(rows["bp"])
    bp.fit(batches.take(4), verbose=0, shuffle=False)
    names, times = list(rows), {name: [] for name in rows}
    parts = {name: [] for name in rows}
    for r in range(FLAGS.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name, (seconds, split) in one_round(rows, batches, bp, order).items():
            times[name].append(seconds)
            parts[name].append(split)
        print(f"round {r + 1}/{FLAGS.repeats}: "
              + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()), flush=True)
    # each round's ratio to BP's epoch of the same round: the machine's speed drifts
    # between rounds (BP's own epoch took 25 s and 42 s in one run), less within one
    ratios = {name: statistics.median(a / b for a, b in zip(t, times["bp"]))
              for name, t in times.items()}
    return {name: (statistics.median(t), None if parts[name][0] is None else
                   tuple(statistics.median(p[k] for p in parts[name]) for k in range(3)),
                   ratios[name])
            for name, t in times.items()}


def table(results) -> str:
    """The rows' totals against BP's epoch, and each SSA row's parts: the cut itself, the
    retrace with the epoch's first step, and the rest of the epoch (against BP's epoch
    scaled to the same steps: what the cut model's steady steps cost)."""
    bp = results["bp"][0]
    steps = -(-FLAGS.examples // FLAGS.batch)
    lines = [f"{FLAGS.model}, {FLAGS.examples:,} synthetic 32x32x3 images, batch {FLAGS.batch}, "
             f"the cut to {FLAGS.fraction:.0%} of each layer's full rank; median of "
             f"{FLAGS.repeats} rounds (each part's median on its own; \"x BP, per round\": "
             "the median of each round's ratio to that round's BP epoch).", "",
             "| row | seconds: cut, retrace and epoch (BP: its epoch) | x BP | x BP, per round "
             "| cut s | retrace and first step s | rest of the epoch s | rest x BP's same "
             "steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (seconds, split, ratio) in results.items():
        cells = "| | | | |" if split is None else (
            f"| {split[0]:.1f} | {split[1]:.1f} | {split[2]:.1f} | "
            f"{split[2] / (bp * (steps - 1) / steps):.2f} |")
        lines.append(f"| {name} | {seconds:.1f} | {seconds / bp:.2f} | {ratio:.2f} {cells}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("examples", "batch", "repeats"):
        if FLAGS[name].value < 1:
            cli.usage_error(f"--{name} must be >= 1, got {FLAGS[name].value}")
    if not 0 < FLAGS.fraction <= 1:
        cli.usage_error(f"--fraction must be in (0, 1], got {FLAGS.fraction}")
    if FLAGS.model not in MODELS:
        cli.usage_error(f"--model must be one of {', '.join(MODELS)} (CIFAR-sized), "
                        f"got {FLAGS.model!r}")
    rows = dict(chosen_rows(ROWS, FLAGS.row))
    cli.import_tensorflow()
    publish(table(measure(rows)), FLAGS.out, "An epoch right after a rank cut, against BP's",
            "benchmarks.cut_epoch")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
