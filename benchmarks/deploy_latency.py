"""Exported models at ImageNet size: parameters and onnxruntime latency against BP's.

    python -m benchmarks.deploy_latency                     # resnet18, 224x224, batch 1 and 8
    python -m benchmarks.deploy_latency --batches=1 --out=FILE.md

Every row is resnet18 (1000 classes) merged out of SVD form (``export.merge``, one
form a layer: ``--form``) and converted to ONNX as ``python export/to_onnx.py`` converts
(tf2onnx, the layer norms folded); SSA's rows are cut to a fraction of each layer's full
rank, untrained (latency and size follow from the ranks; accuracy at a cut is
``EXPORT.md``'s). The exports are timed in turn in one process, run by run
(``export.deploy.latency_ms``), onnxruntime on 2 threads: the ratio to BP's export is
the figure.
"""

from __future__ import annotations


from absl import flags

from benchmarks.timing import chosen_rows, fraction_ranks, publish
from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 224, "input height and width")
flags.DEFINE_integer("classes", 1000, "classes")
flags.DEFINE_list("batches", ["1", "8"], "batch sizes to time")
flags.DEFINE_integer("runs", 20, "timed runs per export and batch")
flags.DEFINE_enum("form", "auto", ["auto", "merged", "factored"], "the export's form (rows "
                  "that name theirs keep it)")
flags.DEFINE_multi_string("row", [], "export only this row, by its full name (repeat; bp "
                          "is always exported)")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")

CHANNEL = dict(rule="ssa", conv_factorization="channel")
# (name, rule options, rank fraction, the export's form: None for --form)
ROWS = [
    ("bp", dict(rule="bp"), None, None),
    ("ssa, full rank", dict(rule="ssa"), None, None),
    ("ssa, 50% rank", dict(rule="ssa"), 0.5, None),
    ("ssa, 25% rank", dict(rule="ssa"), 0.25, None),
    ("ssa, channel view, 50% rank", CHANNEL, 0.5, None),
    ("ssa, channel view, 50% rank, every layer factored", CHANNEL, 0.5, "factored"),
    ("ssa, channel view, 25% rank", CHANNEL, 0.25, None),
    # export --form=measured: each layer's forms timed alone in onnxruntime at batch 1, that
    # mix then timed against the whole model merged and factored, the fastest kept (the
    # tables before 2026-12-07's tenth session had the per-layer mix alone)
    ("ssa, 50% rank, measured", dict(rule="ssa"), 0.5, "measured"),
    ("ssa, channel view, 50% rank, measured", CHANNEL, 0.5, "measured"),
    # deploy_cut's best cut on smallconv (tau 0.7 for the convolutions, ends kept) kept 45-52%
    # of its middle convolutions' ranks, 48% on average: every convolution but the first at
    # that, the first and the classifier at full rank, as rank.keep_ends keeps them
    ("ssa, channel view, 48% rank, ends kept, measured", dict(CHANNEL, keep_ends=True), 0.48,
     "measured"),
    # --preset=compact's exact cut kept 53-55% and 45-46% of smallconv's two middle
    # convolutions (deploy_cut): 50% with the ends kept
    ("ssa, channel view, 50% rank, ends kept, measured", dict(CHANNEL, keep_ends=True), 0.5,
     "measured"),
    # the same in one form that no timer chooses: every SVD layer factored (the two kept at
    # full rank too, where the pair does a little more work than one layer)
    ("ssa, channel view, 50% rank, ends kept, factored", dict(CHANNEL, keep_ends=True), 0.5,
     "factored"),
]


def export(options, fraction, form):
    """(the ONNX bytes, the exported parameters, the merged model's forms) of one row."""
    import keras

    from ssa_tf.export.deploy import count_params, fastest_merge, to_onnx
    from ssa_tf.export.merge import merge
    from ssa_tf.training.model import build_model
    from ssa_tf.training.rank import apply_ranks

    keras.utils.set_random_seed(1)
    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    options = dict(options)
    keep_ends = options.pop("keep_ends", False)
    model = build_model("resnet18", shape, FLAGS.classes, **options)
    if fraction is not None:
        apply_ranks(model, fraction_ranks(model, fraction, keep_ends))
    form = form or FLAGS.form
    chosen = ""
    if form == "measured":  # as export/to_onnx.py --form=measured: the fastest whole model
        merged, records, chosen, _ = fastest_merge(model, threads=2)
        chosen = f" ({chosen})"
    else:
        merged, records = merge(model, form)
    forms = sorted({r.form for r in records}) if records else ["plain"]
    return to_onnx(merged).SerializeToString(), count_params(merged), "/".join(forms) + chosen


def measure(rows):
    import numpy as np

    from ssa_tf.export.deploy import median_latency_ms, onnx_session

    sessions, facts = {}, {}
    for name, options, fraction, form in rows:
        proto, params, forms = export(options, fraction, form)
        sessions[name] = onnx_session(proto, threads=2)
        facts[name] = {"params": params, "forms": forms}
        print(f"exported: {name} ({params:,} parameters, {forms})", flush=True)
    rng = np.random.default_rng(0)
    for b in (int(v) for v in FLAGS.batches):
        x = rng.standard_normal((b, FLAGS.image_size, FLAGS.image_size, 3)).astype("float32")
        for name, ms in median_latency_ms(sessions, x, FLAGS.runs).items():
            facts[name][b] = ms
        print(f"timed batch {b}", flush=True)
    return facts


def table(facts) -> str:
    batches = [int(v) for v in FLAGS.batches]
    bp = facts["bp"]
    lines = [f"resnet18 at {FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.classes} classes, "
             f"export form {FLAGS.form} unless the row says; onnxruntime on 2 threads, median of {FLAGS.runs} "
             "runs.", "",
             "| export | forms | parameters | x BP | "
             + " | ".join(f"ms, batch {b} | x BP" for b in batches) + " |",
             "|---|---|---|---|" + "---|---|" * len(batches)]
    for name, f in facts.items():
        cells = " | ".join(f"{f[b]:.1f} | {f[b] / bp[b]:.2f}" for b in batches)
        lines.append(f"| {name} | {f['forms']} | {f['params']:,} | "
                     f"{f['params'] / bp['params']:.2f} | {cells} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        batches = [int(v) for v in FLAGS.batches]
    except ValueError:
        cli.usage_error(f"--batches must be whole numbers, got {','.join(FLAGS.batches)}")
    if not batches or min(batches) < 1 or FLAGS.runs < 1 or FLAGS.image_size < 32:
        cli.usage_error("--batches and --runs must be >= 1 and --image_size >= 32")
    rows = chosen_rows(ROWS, FLAGS.row)
    cli.import_tensorflow()
    publish(table(measure(rows)), FLAGS.out, "Exports at ImageNet size against BP's",
            "benchmarks.deploy_latency")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
