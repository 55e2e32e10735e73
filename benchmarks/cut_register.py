"""Is the feedback still in register with the forward factors after a rank cut?

    python -m benchmarks.cut_register --data_dir=DIR [--steps=20 --tau=0.95 --out=FILE.md]

Trains SSA (smallconv, its defaults, on CIFAR-10's first training images; the embedded
MNIST without ``--data_dir``) for ``--steps`` steps, then cuts the same trained weights
once per ``rank.feedback_cut`` mode and prints, per layer, the alignment term
||U - B_U||^2 + ||s - B_s||^2 + ||V - B_V||^2 (eq. 5) just before and just after the cut,
the share of kept U columns that point against their B_U column, and how much the
cut moved the weight (the exact cuts move it least: sqrt(1 - tau) at most). A cut keeps the
feedback in register when the term after it is no larger than before (it sums over
fewer components).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

MODES = ("first", "svd", "slots")


def _alignment(layer):
    from ssa_tf.methods import losses

    return float(losses.alignment_loss(layer))


def _against(layer):
    """Fraction of U's columns whose inner product with their B_U column is negative."""
    U, B = (np.asarray(layer.U), np.asarray(layer.B_U))
    return float(np.mean(np.sum(U * B, axis=0) < 0))


def _change(before, after):
    return float(np.linalg.norm(before - after) / np.linalg.norm(before))


def measure(data_dir=None, steps=20, tau=0.95, seed=1, mode_options=None):
    """{feedback_cut: [(layer, rank before, rank after, term before, term after,
    share against after)]} for one trained model cut in each mode."""
    import keras

    from ssa_tf import data as data_lib
    from ssa_tf.training.model import SSAModel, compile_model
    from ssa_tf.training.rank import apply_cut, end_layers

    name = "cifar10" if data_dir else "mnist5k"
    spec = data_lib.load(name, 64, data_dir=data_dir, seed=seed, augment=False,
                         max_train_examples=64 * steps)
    options = dict(mode_options or {})

    def fresh():
        keras.utils.set_random_seed(seed)
        return compile_model(SSAModel("smallconv", spec.input_shape, spec.num_classes,
                                      rule="ssa", seed=seed, **options))

    trained = fresh()
    trained.fit(spec.train, epochs=1, steps_per_epoch=steps, verbose=0)
    weights = trained.get_weights()
    out = {}
    for mode in MODES:
        model = fresh()
        model.set_weights(weights)
        before = {l.name: (l.rank, _alignment(l), l.merged_matrix())
                  for l in model.svd_layers()}
        apply_cut(model, tau, exempt=end_layers(model), feedback=mode)
        out[mode] = [(l.name, before[l.name][0], l.rank, before[l.name][1], _alignment(l),
                      _against(l), _change(before[l.name][2], l.merged_matrix()))
                     for l in model.svd_layers() if l.rank < before[l.name][0]]
    return out


def table(results, steps, tau, data_dir):
    command = ("python -m benchmarks.cut_register" + (" --data_dir=DIR" if data_dir else "")
               + f" --steps={steps} --tau={tau:g}")
    lines = ["# The feedback factors across a rank cut", "", f"`{command}`", "",
             f"SSA smallconv at its defaults, {steps} training steps on "
             f"{'CIFAR-10' if data_dir else 'the embedded MNIST'}, then one cut at tau "
             f"{tau:g} (the first layer and the classifier kept, rank.keep_ends); the same "
             "trained weights cut in each mode.", "",
             "| rank.feedback_cut | layer | rank | alignment before | after | U columns "
             "against B_U after | relative weight change |",
             "|---|---|---|---|---|---|---|"]
    for mode, rows in results.items():
        for layer, r0, r1, a0, a1, against, change in rows:
            lines.append(f"| {mode} | {layer} | {r0} -> {r1} | {a0:.1f} | {a1:.1f} | "
                         f"{against:.0%} | {change:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir with cifar10")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tau", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="an SSA option, e.g. beta=0.01 (repeat)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    options = {}
    for item in args.set:
        key, _, value = item.partition("=")
        options[key] = float(value) if value.replace(".", "", 1).isdigit() else value
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = measure(args.data_dir, args.steps, args.tau, args.seed, options)
    text = table(results, args.steps, args.tau, args.data_dir)
    print(text)
    if args.out:
        from ssa_tf import atomic_files

        atomic_files.write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
