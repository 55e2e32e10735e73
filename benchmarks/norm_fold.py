"""The layer-norm fold of the ONNX export, side by side with tf2onnx's own graph.

    python -m benchmarks.norm_fold [--runs=40]

Builds smallconv (BP, and SSA at the ranks its tau 0.9 and 0.7 one-cut runs
ended with, ends kept) and resnet32 (BP), merges them as the export does
(``benchmarks.rebuild``: form auto, raw-pixel input), converts each twice with
``ssa_tf.export.deploy.to_onnx`` (``fold_norms`` on and off) and times all
the sessions in turn in one process (2 threads each, the order reversed every
round), at batch 64 and 1. Prints each export's folded / unfolded latency
ratio. Latency depends on the architecture and ranks only, so the weights are
an untrained model's.
"""

from __future__ import annotations

from absl import flags

from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 40, "timed runs per export at batch 64 (5x as many at batch 1)")

CASES = {"smallconv BP": ("smallconv", "bp", {}),
         "smallconv SSA, tau 0.9 cut": ("smallconv", "ssa",
                                        {"m1_conv": 50, "m2_conv": 102, "m3_dense": 127}),
         "smallconv SSA, tau 0.7 cut": ("smallconv", "ssa",
                                        {"m1_conv": 22, "m2_conv": 45, "m3_dense": 11}),
         "resnet32 BP": ("resnet32", "bp", {})}


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.runs < 1:
        cli.usage_error(f"--runs must be at least 1, got {FLAGS.runs}")
    cli.import_tensorflow()
    import numpy as np

    from benchmarks import rebuild
    from ssa_tf.export.deploy import latency_ms, onnx_session

    sessions = {}
    for tag, (architecture, rule, ranks) in CASES.items():
        print(f"exporting {tag} ...", flush=True)
        model = rebuild.model_at_ranks(architecture, rule, ranks, norm="layer")
        for fold in (True, False):
            proto, _, _ = rebuild.export_onnx(model, fold_norms=fold)
            sessions[(tag, fold)] = onnx_session(proto.SerializeToString(), threads=2)
    for batch, runs in ((64, FLAGS.runs), (1, 5 * FLAGS.runs)):
        x = np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32)
        lat = latency_ms(sessions, x, runs)
        for tag in CASES:
            folded, plain = lat[(tag, True)][0], lat[(tag, False)][0]
            print(f"batch {batch:2d}  {tag:28s} folded {folded:7.2f} ms  tf2onnx's "
                  f"{plain:7.2f} ms  ratio {folded / plain:.2f}", flush=True)


if __name__ == "__main__":
    cli.run(main)
