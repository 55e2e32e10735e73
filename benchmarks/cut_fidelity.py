"""How much of each layer a cut to a given rank keeps: the slot cut, the exact cut, the
outputs' cut, on the same trained weights.

    python -m benchmarks.cut_fidelity --data_dir=DIR [--grid=deploy_cut --variant="no cut"
        --seed=1 --epochs=4 --fraction=0.5 --out=FILE.md]

Trains a grid's run (``benchmarks/grids.py``; its own cut turned off) for ``--epochs``,
then for every SVD layer at ``--fraction`` of its rank reports how far U and V are from
orthonormal (||U^T U - I|| / sqrt(r)), the share of the weight's energy each cut loses
(||W - W_cut||^2 / ||W||^2) and the share of its output energy on ``--batches`` training
batches (E||(W - W_cut) x||^2 / E||W x||^2, x what the layer's matrix multiplies). The
slot cut (``rank.feedback_cut=slots``) keeps the r components of largest energy as they
are; the exact cut (``first``/``svd``) is the best rank-r weight (Eckart-Young); the
outputs' cut (``rank.energy=outputs``) the best rank-r weight on those inputs. Nothing is
cut in the model: the three are computed from its factors.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import flags

from benchmarks.timing import publish
from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset")
flags.DEFINE_string("grid", "deploy_cut", "the grid whose run is trained")
flags.DEFINE_string("variant", "no cut", "the grid's variant")
flags.DEFINE_integer("seed", 1, "the run's seed")
flags.DEFINE_integer("epochs", 4, "epochs trained before the cuts are compared")
flags.DEFINE_float("fraction", 0.5, "the rank compared, as a fraction of each layer's")
flags.DEFINE_integer("batches", 8, "training batches for the input statistics")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")


def orthogonality(factor) -> float:
    """||F^T F - I||_F / sqrt(r) of an (n, r) factor: 0 when its columns are orthonormal."""
    f = np.asarray(factor, np.float64)
    return float(np.linalg.norm(f.T @ f - np.eye(f.shape[1])) / np.sqrt(f.shape[1]))


def fidelity(U, s, V, input_cov, rank) -> dict:
    """Shares lost by the three cuts of W = U diag(s) V^T to ``rank`` (``input_cov``: the
    second moment of what W multiplies): {"weight": {cut: share}, "outputs": {cut: share}}."""
    from ssa_tf.nn.svd import exact_singular_values, output_cut, slot_cut

    U, s, V = (np.asarray(a, np.float64) for a in (U, s, V))
    C = np.asarray(input_cov, np.float64)
    W = (U * s) @ V.T

    def weight(u, sig, v):  # the first ``rank`` components, as the layer's truncate keeps
        return (u[:, :rank] * sig[:rank]) @ v[:, :rank].T

    # the three as the layer's own cuts compute them (``SVDLayer.truncate``)
    cuts = {"slots": weight(*slot_cut(U, s, V, rank)[:3]),
            "exact": weight(*exact_singular_values(U, s, V)),
            "outputs": weight(*output_cut(W, C, rank)[:3])}
    out_energy = np.trace(W @ C @ W.T)
    return {"weight": {k: float(np.linalg.norm(W - c) ** 2 / np.linalg.norm(W) ** 2)
                       for k, c in cuts.items()},
            "outputs": {k: float(np.trace((W - c) @ C @ (W - c).T) / out_energy)
                        for k, c in cuts.items()}}


def measure():
    import keras

    from benchmarks.records import variant_config
    from ssa_tf.training import run as run_lib
    from ssa_tf.training.rank import input_covariances

    rows = []

    class Compare(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            model = self.model
            cov = input_covariances(model, data.take(FLAGS.batches))
            for layer in model.svd_layers():
                U, s, V = (np.asarray(keras.ops.convert_to_numpy(v), np.float64)
                           for v in (layer.U, layer.s, layer.V))
                r = max(1, int(round(FLAGS.fraction * layer.rank)))
                rows.append((layer.name, layer.rank, r, orthogonality(U), orthogonality(V),
                             fidelity(U, s, V, cov[layer.name], r)))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = variant_config(FLAGS.grid, FLAGS.variant, FLAGS.seed, FLAGS.data_dir)
        cfg = cfg.with_overrides([f"train.epochs={FLAGS.epochs}", "rank.tau=null",
                                  f"runtime.workdir={os.path.join(tmp, 'run')}"])
        data = run_lib.load_data(cfg).train
        run_lib.train(cfg, verbose=2, extra_callbacks=[Compare()])
    return rows


def table(rows) -> str:
    lines = [f"Grid {FLAGS.grid}, {FLAGS.variant!r}, seed {FLAGS.seed}, after {FLAGS.epochs} "
             f"epochs; each layer cut to {FLAGS.fraction:.0%} of its rank; output energy on "
             f"{FLAGS.batches} training batches.", "",
             "| layer | rank | cut to | U orth. | V orth. | weight energy lost: slots | exact "
             "| output energy lost: slots | exact | outputs' cut |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rank, r, ou, ov, f in rows:
        w, o = f["weight"], f["outputs"]
        lines.append(f"| {name} | {rank} | {r} | {ou:.2f} | {ov:.2f} | {w['slots']:.3f} | "
                     f"{w['exact']:.3f} | {o['slots']:.3f} | {o['exact']:.3f} | "
                     f"{o['outputs']:.3f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    from benchmarks.grids import unknown
    problem = unknown(FLAGS.grid, FLAGS.variant)
    if problem:
        cli.usage_error(problem)
    if not 0 < FLAGS.fraction <= 1 or FLAGS.epochs < 1 or FLAGS.batches < 1:
        cli.usage_error("--fraction must be in (0, 1], --epochs and --batches >= 1")
    if not FLAGS.data_dir:
        cli.usage_error("--data_dir is required (the grids train on CIFAR-10)")
    cli.import_tensorflow()
    publish(table(measure()), FLAGS.out, "What a cut keeps of each layer",
            "benchmarks.cut_fidelity")


if __name__ == "__main__":
    cli.run(main)
