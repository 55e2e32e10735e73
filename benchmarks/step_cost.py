"""Where SSA's training step goes at ImageNet size: resnet18, 1000 classes, side by side.

    python -m benchmarks.step_cost                        # 224x224, batch 8
    python -m benchmarks.step_cost --batch=32 --out=benchmarks/reports/STEP_COST.md

The breakdown is by ablation: every row is one model, timed in turn in one process
(the order rotated every round, median of the rounds), and each row differs from the
one it is compared with in one thing:

- ``bp`` and ``dfa`` (plain layers; dfa recomputes each module's forward as ssa does);
- ``svd-bp``: BP on the SVD layers (what the factored form costs by itself);
- ``ssa`` at its defaults on the global route with one error per channel (the route
  whose feedback costs what dfa's does), now and as before the two changes of this
  benchmark's commit: every SVD convolution merged (the automatic form counted no
  merge cost) and the orthogonality term computed at gamma 0 (``gamma=1e-12`` here:
  the same ops);
- each SVD convolution forced to one form (merged, factored);
- ``ssa`` with every layer cut to 50% of its full rank, in the spatial view (the paper's) and
  the channel view (``model.conv_factorization=channel``: a kh x kw convolution to r
  channels, then 1 x 1, whose pair costs r (9C + N) a pixel against 9CN);
- the direct rules holding every module's activations (no recompute), and holding the
  modules whose tapes fit in the largest module's (``rule.hold_within_peak``), the
  largest replayed in slices of the batch (``rule.replay_slices``).

``--memory`` also measures each row's peak training memory, a process a row (the
allocator's peak is per process). ``--against=ROW`` (default bp) adds each row's time over
ROW's round by round: the median and range of the rounds' ratios (how far one round's
comparison strays; on this machine single batch-256 steps vary by about 15%).

Synthetic inputs already normalized, one batch held in memory; the ratio to BP is what
counts on a shared machine. Ablation times what a user can change; the same rows broken
down by op type with TensorFlow's profiler: ``python -m benchmarks.step_profile``.
"""

from __future__ import annotations

import statistics

from absl import flags

from benchmarks.timing import (child_peak_mb, chosen_rows, fraction_ranks, paired,
                               peak_step_mb, print_peak, publish, time_rounds, warm_up)
from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 224, "input height and width")
flags.DEFINE_integer("classes", 1000, "classes")
flags.DEFINE_integer("batch", 8, "batch size")
flags.DEFINE_integer("repeats", 3, "rounds of timing")
flags.DEFINE_integer("steps", 2, "steps per row and round")
flags.DEFINE_multi_string("row", [], "time only this row, by its full name (repeat; bp is "
                          "always timed)")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")
flags.DEFINE_boolean("memory", False, "also measure each row's peak training memory (a "
                     "process of its own a row)")
flags.DEFINE_boolean("time", True, "time the steps (--notime with --memory: peak memory "
                     "only)")
flags.DEFINE_string("against", "bp", "also give each row's time over this row's, round by "
                    "round (median and range of the rounds' ratios; a timed row)")
flags.DEFINE_string("child", None, "internal: measure the peak memory of this row")

G = dict(rule="ssa", feedback="global", feedback_spatial="broadcast")
# SSA's chain held within the peak, every input gradient in bfloat16 (the control's precision)
HELD_BF16 = dict(rule="ssa", hold_within_peak=True, chain_dtype="bfloat16",
                 error_dtype="bfloat16")
CHAINED_BF16 = dict(HELD_BF16, replay_slices=2, replay_chained=True)
# the held bfloat16 step in two slices, its replays chained, at full rank and at 50%
CHAINED = (
    ("ssa (chain), held within the peak, every input gradient in bfloat16, replays in 2 "
     "slices, chained", CHAINED_BF16, None, None),
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak, every input "
     "gradient in bfloat16, replays in 2 slices, chained",
     dict(CHAINED_BF16, conv_factorization="channel", keep_ends=True), None, 0.5),
    # the same setting before its cut: the channel view at full rank (its merges r = N)
    ("ssa (chain), channel view, ends kept, held within the peak, every input gradient in "
     "bfloat16, replays in 2 slices, chained",
     dict(CHAINED_BF16, conv_factorization="channel", keep_ends=True), None, None))
# (name, rule options, SVD convolutions' form, rank fraction)
ROWS = [
    ("bp", dict(rule="bp"), None, None),
    ("dfa, broadcast", dict(rule="dfa", feedback_spatial="broadcast"), None, None),
    ("svd-bp", dict(rule="svd-bp"), None, None),
    ("svd-bp, every convolution merged", dict(rule="svd-bp"), "merged", None),
    ("ssa, global broadcast", G, None, None),
    ("ssa, global broadcast, as before (merged, ortho term at gamma 0)",
     dict(G, gamma=1e-12), "merged", None),
    ("ssa, global broadcast, every convolution merged", G, "merged", None),
    ("ssa, global broadcast, every convolution factored", G, "factored", None),
    ("ssa, global broadcast, 50% rank", G, None, 0.5),
    ("ssa, global broadcast, channel view", dict(G, conv_factorization="channel"), None, None),
    ("ssa, global broadcast, channel view, 50% rank", dict(G, conv_factorization="channel"),
     None, 0.5),
    ("bp, 50% of the channel view's rank (svd-bp)", dict(rule="svd-bp",
                                                        conv_factorization="channel"), None, 0.5),
    ("ssa (chain, the default route)", dict(rule="ssa"), None, None),
    # every module's activations held through the step instead of one module's (no
    # recompute): what the memory target costs in time
    ("dfa, broadcast, every module held", dict(rule="dfa", feedback_spatial="broadcast",
                                               recompute=False), None, None),
    ("ssa, global broadcast, every module held", dict(G, recompute=False), None, None),
    ("ssa (chain), every module held", dict(rule="ssa", recompute=False), None, None),
    # the modules whose tapes fit in the largest module's held, the rest replayed
    ("dfa, broadcast, held within the peak", dict(rule="dfa", feedback_spatial="broadcast",
                                                  hold_within_peak=True), None, None),
    ("ssa, global broadcast, held within the peak", dict(G, hold_within_peak=True), None,
     None),
    ("ssa (chain), held within the peak", dict(rule="ssa", hold_within_peak=True), None, None),
    ("ssa, global broadcast, channel view, 50% rank, held within the peak",
     dict(G, conv_factorization="channel", hold_within_peak=True), None, 0.5),
    ("ssa (chain), channel view, 50% rank, held within the peak",
     dict(rule="ssa", conv_factorization="channel", hold_within_peak=True), None, 0.5),
    # the replays in module order, every boundary (and the chain's signal) held until its
    # module's turn, as before the step replayed the last module first
    ("dfa, broadcast, replays first to last", dict(rule="dfa", feedback_spatial="broadcast",
                                                   replay_order="forward"), None, None),
    ("ssa, global broadcast, replays first to last", dict(G, replay_order="forward"), None,
     None),
    ("ssa (chain), replays first to last", dict(rule="ssa", replay_order="forward"), None, None),
    # the chain's signals by a tape's backward pass through its linear network (whose
    # forward pass on zeros costs as much again), as before its transpose
    ("ssa (chain), by a tape", dict(rule="ssa", chain_transpose=False), None, None),
    ("ssa (chain), held within the peak, by a tape",
     dict(rule="ssa", hold_within_peak=True, chain_transpose=False), None, None),
    ("ssa, global broadcast, held within the peak, replays first to last",
     dict(G, hold_within_peak=True, replay_order="forward"), None, None),
    # a cut as the rank callback makes it by default (rank.keep_ends): the stem and the
    # classifier keep full rank, so the stem runs merged and holds no r-channel map at
    # 112x112 (the largest module's activations set the peak)
    ("ssa, global broadcast, channel view, 50% rank, ends kept",
     dict(G, conv_factorization="channel", keep_ends=True), None, 0.5),
    ("ssa (chain), channel view, 50% rank, ends kept",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True), None, 0.5),
    # the step compiled with XLA (train.jit_compile), BP's too
    ("bp, XLA", dict(rule="bp", jit=True), None, None),
    ("ssa (chain), held within the peak, XLA", dict(rule="ssa", hold_within_peak=True,
                                                    jit=True), None, None),
    ("ssa, global broadcast, held within the peak, XLA", dict(G, hold_within_peak=True,
                                                              jit=True), None, None),
    ("ssa (chain), channel view, 50% rank, ends kept, XLA",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True, jit=True), None, 0.5),
    # the chain's linear network in bfloat16 (rule.chain_dtype): the feedback path only
    ("ssa (chain), chain in bfloat16", dict(rule="ssa", chain_dtype="bfloat16"), None, None),
    ("ssa (chain), held within the peak, chain in bfloat16",
     dict(rule="ssa", hold_within_peak=True, chain_dtype="bfloat16"), None, None),
    ("ssa (chain), channel view, 50% rank, ends kept, chain in bfloat16",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True, chain_dtype="bfloat16"),
     None, 0.5),
    # a cut as the rank callback makes it, in the ImageNet preset's step (held within the
    # peak), the chain in float32 and bfloat16
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True, hold_within_peak=True),
     None, 0.5),
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak, chain in "
     "bfloat16", dict(rule="ssa", conv_factorization="channel", keep_ends=True,
                      hold_within_peak=True, chain_dtype="bfloat16"), None, 0.5),
    # SSA under the control's precision (train.error_dtype=bfloat16): every convolution's
    # input gradient in bfloat16 inside the modules too, and the chain, weight gradients
    # in float32
    ("ssa (chain), held within the peak, every input gradient in bfloat16",
     dict(rule="ssa", hold_within_peak=True, chain_dtype="bfloat16", error_dtype="bfloat16"),
     None, None),
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak, every input "
     "gradient in bfloat16", dict(rule="ssa", conv_factorization="channel", keep_ends=True,
                                  hold_within_peak=True, chain_dtype="bfloat16",
                                  error_dtype="bfloat16"), None, 0.5),
    # the replays of the modules larger than half (a third of) the stem's tape in 2 (3)
    # slices of the batch (rule.replay_slices), the held modules within a slice's tape
    ("ssa (chain), held within the peak, every input gradient in bfloat16, replays in 2 "
     "slices", dict(HELD_BF16, replay_slices=2), None, None),
    *((f"ssa (chain), channel view, 50% rank, ends kept, held within the peak, every input "
       f"gradient in bfloat16, replays in {n} slices",
       dict(HELD_BF16, conv_factorization="channel", keep_ends=True, replay_slices=n), None,
       0.5) for n in (2, 3)),
    # the same with each replay fed the one before's output (rule.replay_chained): the first
    # pass keeps no boundary beside the held tapes, which fill the largest module's tape;
    # then each with the chain's signal term elementwise, as before ChainRoute.fused_term
    *CHAINED,
    *((f"{name}, elementwise signal term", dict(options, fused_term=False), form, fraction)
      for name, options, form, fraction in CHAINED),
    # the replays' layer norms computing their statistics again (``Local.keep_moments``)
    *((f"{name}, norms' statistics computed again", dict(options, keep_moments=False), form,
       fraction) for name, options, form, fraction in CHAINED),
    # (in float32: --preset=imagenet's settings)
    ("ssa (chain), held within the peak, replays in 2 slices, chained",
     dict(rule="ssa", hold_within_peak=True, replay_slices=2, replay_chained=True), None,
     None),
    # the chain's step for each replayed module's signal made in its own replay instead of
    # the replay before (``Local.signals_ahead``), or every signal made before the replays
    # (as before routes.Signals)
    ("ssa (chain), held within the peak, every input gradient in bfloat16, signals made in "
     "their replays", dict(rule="ssa", hold_within_peak=True, chain_dtype="bfloat16",
                           error_dtype="bfloat16", signals_ahead=0), None, None),
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak, every input "
     "gradient in bfloat16, signals made in their replays",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True, hold_within_peak=True,
          chain_dtype="bfloat16", error_dtype="bfloat16", signals_ahead=0), None, 0.5),
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak, every input "
     "gradient in bfloat16, every signal made before the replays",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True, hold_within_peak=True,
          chain_dtype="bfloat16", error_dtype="bfloat16", signals_ahead=99), None, 0.5),
    # the same without the recompute (every module's activations held: BP's memory): what
    # the memory target costs at 50% under one precision
    ("ssa (chain), channel view, 50% rank, ends kept, every module held, every input "
     "gradient in bfloat16", dict(rule="ssa", conv_factorization="channel", keep_ends=True,
                                  recompute=False, chain_dtype="bfloat16",
                                  error_dtype="bfloat16"), None, 0.5),
    # BP with every layer computing in bfloat16 (Keras's mixed_bfloat16 policy, weights in
    # float32): what bfloat16 buys BP, for the row above's fairness
    ("bp, mixed bfloat16", dict(rule="bp", policy="mixed_bfloat16"), None, None),
    # the control that differs from BP in what the chain's setting changes: its error path
    # (every convolution's input gradient, train.error_dtype) in bfloat16, its weight
    # gradients in float32
    ("bp, input gradients in bfloat16", dict(rule="bp", error_dtype="bfloat16"), None, None),
    # Keras's own layer norm and leaky ReLU, as every model had them before nn.fast (the
    # same functions; their gradients keep twice the activations)
    ("bp, Keras's layer norm", dict(rule="bp", keras_layers=True), None, None),
    ("bp, input gradients in bfloat16, Keras's layer norm",
     dict(rule="bp", error_dtype="bfloat16", keras_layers=True), None, None),
    ("ssa (chain), held within the peak, every input gradient in bfloat16, Keras's layer "
     "norm", dict(rule="ssa", hold_within_peak=True, chain_dtype="bfloat16",
                  error_dtype="bfloat16", keras_layers=True), None, None),
    ("ssa (chain), channel view, 50% rank, ends kept, held within the peak, every input "
     "gradient in bfloat16, Keras's layer norm",
     dict(rule="ssa", conv_factorization="channel", keep_ends=True, hold_within_peak=True,
          chain_dtype="bfloat16", error_dtype="bfloat16", keras_layers=True), None, 0.5),
]


def build(options, form, fraction, shape):
    import keras

    from ssa_tf.nn import SVDConv2D, fast
    from ssa_tf.training.model import build_model
    from ssa_tf.training.rank import apply_ranks

    keras.utils.set_random_seed(1)
    options = dict(options)
    keep_ends = options.pop("keep_ends", False)
    order = options.pop("replay_order", None)
    ahead = options.pop("signals_ahead", None)
    transpose = options.pop("chain_transpose", True)
    fused = options.pop("fused_term", True)
    moments = options.pop("keep_moments", True)
    jit = options.pop("jit", False)
    policy = options.pop("policy", None)
    stock = options.pop("keras_layers", False)
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    fast.ENABLED = not stock
    try:
        model = build_model("resnet18", shape, FLAGS.classes, jit_compile=jit, **options)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        fast.ENABLED = True
    if order:
        model.rule.replay_order = order
    if ahead is not None:
        model.rule.signals_ahead = ahead
    if not transpose:
        model.rule.route.transpose = False
    if not fused:
        model.rule.route.fused_term = False
    if not moments:
        model.rule.keep_moments = False
    if fraction is not None:
        apply_ranks(model, fraction_ranks(model, fraction, keep_ends))
    for layer in model.svd_layers():
        if isinstance(layer, SVDConv2D):
            layer.batch_hint = FLAGS.batch
            if form:
                layer.forward = form
    return model


def inputs():
    import numpy as np

    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.batch, *shape)).astype("float32")
    return x, rng.integers(0, FLAGS.classes, FLAGS.batch)


def measure(rows):
    """({row: median ms per step}, {row: its rounds' ratios to ``--against``'s})."""
    x, y = inputs()
    models = {}
    for name, options, form, fraction in rows:
        models[name] = build(options, form, fraction, x.shape[1:])
        warm_up(models[name], name, x, y)
    rounds = time_rounds(models, x, y, FLAGS.repeats, FLAGS.steps)
    return ({name: statistics.median(t) for name, t in rounds.items()},
            paired(rounds, FLAGS.against))


def memory(rows):
    """{row: peak MB of a training step}, each row in a process of its own."""
    args = [f"--{n}={FLAGS[n].value}" for n in ("image_size", "classes", "batch")]
    out = {}
    for name, *_ in rows:
        print(f"peak memory of {name} ...", flush=True)
        out[name] = child_peak_mb("benchmarks.step_cost", [*args, f"--child={name}"], name)
    return out


def table(results, peaks=None, ratios=None) -> str:
    """The Markdown table of step times (``results``, None: not timed), peaks, and each
    row's rounds' ratios to ``--against``'s (``ratios``: median, lowest, highest)."""
    head = f"resnet18 at {FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.classes} classes, " \
        f"batch {FLAGS.batch}"
    if results is None:
        lines = [f"{head}; peak training memory only.", "", "| row | peak MB | x BP |",
                 "|---|---|---|"]
        lines += [f"| {n} | {mb:.0f} | {mb / peaks['bp']:.2f} |" for n, mb in peaks.items()]
        return "\n".join(lines)
    bp = results["bp"]
    against = (f" x {FLAGS.against}, round by round: median (range) |" if ratios else "")
    lines = [f"{head}; median of {FLAGS.repeats} rounds of {FLAGS.steps} steps.",
             "", "| row | ms per step | x BP |" + against
             + (" peak MB | x BP |" if peaks else ""),
             "|---|---|---|" + ("---|" if ratios else "") + ("---|---|" if peaks else "")]
    for name, ms in results.items():
        cells = (" {:.3f} ({:.3f}-{:.3f}) |".format(*ratios[name]) if ratios else "")
        cells += (f" {peaks[name]:.0f} | {peaks[name] / peaks['bp']:.2f} |" if peaks else "")
        lines.append(f"| {name} | {ms:.0f} | {ms / bp:.2f} |{cells}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("image_size", "classes", "batch", "repeats", "steps"):
        if FLAGS[name].value < 1:
            cli.usage_error(f"--{name} must be >= 1, got {FLAGS[name].value}")
    if FLAGS.child and FLAGS.child not in {r[0] for r in ROWS}:
        cli.usage_error(f"--child names no row: {FLAGS.child!r}")
    if FLAGS.child:
        cli.import_tensorflow()
        _, options, form, fraction = next(r for r in ROWS if r[0] == FLAGS.child)
        x, y = inputs()
        print_peak(peak_step_mb(build(options, form, fraction, x.shape[1:]), x, y))
        return
    if not (FLAGS.time or FLAGS.memory):
        cli.usage_error("--notime measures nothing without --memory")
    rows = chosen_rows(ROWS, FLAGS.row)
    if FLAGS.time and FLAGS.against not in {r[0] for r in rows}:
        cli.usage_error(f"--against names no timed row: {FLAGS.against!r} (bp, or a --row)")
    cli.import_tensorflow()
    times, ratios = measure(rows) if FLAGS.time else (None, None)
    publish(table(times, memory(rows) if FLAGS.memory else None, ratios), FLAGS.out,
            "SSA's training step at ImageNet size, by ablation", "benchmarks.step_cost")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
