"""At a rank cut, should the forward energy or the feedback's own energy choose the slots?

    python -m benchmarks.cut_choice --data_dir=DIR \\
        [--epochs=20 --tau=0.8 --start=0 --interval=10 --seeds=1,2,3 \\
         --set data.max_train_examples=10000 --out=benchmarks/reports/cut_choice.md]

The default cut (``rank.feedback_cut=slots``, docs/ALGORITHM.md §5) keeps each layer's r
components of largest forward energy s_k^2 |u_k|^2 |v_k|^2 and the feedback factors'
columns at the same slots, so forward-weight information (which columns, and r) enters the
feedback at every cut; the card says so (``card.CUT_FLOWS``). The alternative
measured here keeps the r slots of largest *feedback* energy B_s,k^2 |B_u,k|^2 |B_v,k|^2,
for the forward factors and the feedback factors alike: the feedback's own quantities
choose which columns stay.

For each seed the forward-energy run (SSA at its defaults, smallconv, CIFAR-10, validated
on the split carved from train) goes first; the feedback-energy run then cuts every layer to
the ranks the first run cut it to, after the same epochs (its ``ranks.csv``): equal ranks,
only the choice of slots differs. Prints (and with ``--out`` writes) the validation
accuracy after the last epoch, per seed and as mean +- sd over seeds. ``--dataset=synthetic
--set data.synthetic_shape=8,8,3`` makes a smoke run of the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os

import numpy as np

CHOICES = ("forward", "feedback")


@contextlib.contextmanager
def feedback_energy_cuts(targets):
    """Inside: every slot cut keeps the slots of largest feedback energy, and the n-th cut
    of the run cuts each layer to ``targets[n]`` ({layer: rank}) instead of tau's rank."""
    from ssa_tf.nn import svd
    from ssa_tf.training import rank

    order, truncate, cut_model = svd.slot_order, svd.SVDLayer.truncate, rank.cut_model
    cutting, queue = [], list(targets)

    def feedback_order(U, s, V):
        if not cutting:
            return order(U, s, V)
        layer = cutting[-1]
        return order(*(np.asarray(v.numpy(), np.float64)
                       for v in (layer.B_U, layer.B_s, layer.B_V)))

    def truncating(self, *args, **kwargs):
        cutting.append(self)
        try:
            return truncate(self, *args, **kwargs)
        finally:
            cutting.pop()

    def to_recorded_ranks(model, tau, min_rank=1, exempt=(), feedback=None, covariances=None):
        if not queue:
            raise RuntimeError("this run cuts more often than the forward-energy run did")
        return rank.truncate_layers(model, queue.pop(0), feedback, covariances)

    svd.slot_order, svd.SVDLayer.truncate, rank.cut_model = (
        feedback_order, truncating, to_recorded_ranks)
    try:
        yield
    finally:
        svd.slot_order, svd.SVDLayer.truncate, rank.cut_model = order, truncate, cut_model


def recorded_cuts(workdir) -> list:
    """[{layer: new rank}] of each cut of a run, in order (its ranks.csv)."""
    cuts = {}
    with open(os.path.join(workdir, "ranks.csv")) as f:
        for row in csv.DictReader(f):
            cuts.setdefault(int(row["epoch"]), {})[row["layer"]] = int(row["new_rank"])
    return [cuts[e] for e in sorted(cuts)]


def run_one(args, seed, choice, targets=None) -> dict:
    from ssa_tf.config import RunConfig
    from ssa_tf.training import run

    workdir = os.path.join(args.workdir, f"{choice}-seed{seed}")
    sets = [f"data.dataset={args.dataset}", "model.model=smallconv", "rule.name=ssa",
            f"train.epochs={args.epochs}", f"seed={seed}", f"rank.tau={args.tau}",
            f"rank.start={args.start}", f"rank.interval={args.interval}",
            "rank.feedback_cut=slots", f"runtime.workdir={workdir}", "runtime.restart=true",
            "runtime.progress=epoch", *args.set]
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    cfg = RunConfig().with_overrides(sets)
    if choice == "forward":
        summary = run.train(cfg)
    else:
        with feedback_energy_cuts(targets):
            summary = run.train(cfg)
    return {"seed": seed, "choice": choice, "workdir": workdir, "ranks": summary["ranks"],
            "val_accuracy": summary["history"]["val_accuracy"][-1]}


def table(results) -> str:
    seeds = [r["seed"] for r in results if r["choice"] == "forward"]
    lines = ["| slots chosen by | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- sd |",
             "|---" * (len(seeds) + 2) + "|"]
    for choice in CHOICES:
        values = [r["val_accuracy"] for r in results if r["choice"] == choice]
        sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
        lines.append(f"| {choice} energy | " + " | ".join(f"{v:.3f}" for v in values) +
                     f" | {np.mean(values):.3f} +- {sd:.3f} |")
    ranks = {r["seed"]: r["ranks"] for r in results if r["choice"] == "forward"}
    lines += ["", "Final ranks (the same in both runs of a seed): " +
              "; ".join(f"seed {s}: {rk}" for s, rk in ranks.items())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--tau", type=float, default=0.8)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--workdir", default=os.path.join("runs", "cut_choice"))
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if not any(s.startswith("data.max_train_examples=") for s in args.set):
        args.set.append("data.max_train_examples=10000")
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        first = run_one(args, seed, "forward")
        results.append(first)
        results.append(run_one(args, seed, "feedback", recorded_cuts(first["workdir"])))
        if results[-1]["ranks"] != first["ranks"]:
            raise RuntimeError(f"seed {seed}: the runs' ranks differ: {first['ranks']} and "
                               f"{results[-1]['ranks']}")
    text = table(results)
    print(text)
    if args.out:
        from ssa_tf import atomic_files
        atomic_files.write_text(args.out, f"# Slots at a cut: forward or feedback energy\n\n"
                                   f"`python -m benchmarks.cut_choice {' '.join(argv or [])}`"
                                   f"\n\n{text}\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
