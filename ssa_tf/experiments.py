"""Experiment grids on real data: resumable, appended, tabled and plotted.

    python -m ssa_tf.experiments --grid=routes --data_dir=../shared/tfds
    python -m ssa_tf.experiments --grid=routes --report_only

Each grid is a base configuration plus named variants (``GRIDS`` below). A
finished run appends one JSON line to ``benchmarks/results/<grid>.jsonl``;
rerunning the command skips every variant already there, so a grid that takes
hours can be stopped and resumed. The report is ``benchmarks/<grid>.md`` (one
table: accuracy per epoch, final and best accuracy, seconds, parameters,
final ranks) and ``benchmarks/<grid>.png`` (validation accuracy curves).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

from ssa_tf import config as cfg_lib
from ssa_tf.config import SPEC_SSA

# CIFAR-10 from ../shared/tfds: train on its `train` split, report on its
# `test` split (a validation split carved from the official training set).
_CIFAR = dict(dataset="cifar10", batch_size=64)
# each mode at its defaults: the baseline rows of a grid
_MODES = {m: dict(mode=m) for m in ("bp", "dfa", "ssa")}

GRIDS = {
    # error route x mode at a small budget (smallconv, 10k images, 3 epochs, no augmentation)
    "routes": dict(
        base=dict(_CIFAR, model="smallconv", epochs=3, max_train_examples=10000, augment=False),
        variants={
            "bp": dict(mode="bp"),
            "dfa-global": dict(mode="dfa"),
            "dfa-local": dict(mode="dfa", feedback="local"),
            "dfa-chain": dict(mode="dfa", feedback="chain"),
            "dfa-chain-fwdinit": dict(mode="dfa", feedback="chain", feedback_init="forward"),
            "ssa-global": dict(SPEC_SSA, mode="ssa"),
            "ssa-global-full": dict(SPEC_SSA, mode="ssa", feedback_spatial="full"),
            "ssa-local": dict(SPEC_SSA, mode="ssa", feedback="local"),
            "ssa-chain": dict(SPEC_SSA, mode="ssa", feedback="chain"),
            "ssa-chain-fwdinit": dict(SPEC_SSA, mode="ssa", feedback="chain",
                                      feedback_init="forward"),
        }),
    # the best route's knobs: learning rate, norm, loss coefficients
    "ssa_knobs": dict(
        base=dict(_CIFAR, **{**SPEC_SSA, "feedback": "chain", "feedback_init": "forward"},
                  model="smallconv", epochs=3, max_train_examples=10000, augment=False,
                  mode="ssa"),
        variants={
            # most promising first: the grid runs in this order
            "track0.1": dict(feedback_tracking=0.1),
            "gated-track0.1": dict(chain_gating=True, feedback_tracking=0.1),
            "gated": dict(chain_gating=True),
            "gamma0": dict(gamma=0.0),
            "lr1e-3": dict(learning_rate=1e-3),
            "track0.01": dict(feedback_tracking=0.01),
            "random-track0.1": dict(feedback_init="random", feedback_tracking=0.1),
            "beta0": dict(beta=0.0),
            "beta0.1": dict(beta=0.1),
            "beta0-gamma0": dict(beta=0.0, gamma=0.0),
            "gamma0.01": dict(gamma=0.01),
            "lr1e-4": dict(learning_rate=1e-4),
            "norm-batch": dict(norm="batch"),
            "norm-none": dict(norm="none"),
            "rank0.95": dict(rank_tau=0.95, rank_interval=1, rank_final_cut=True),
        }),
    # towards the targets: all 45k augmented images (20 epochs did not fit
    # in one session on 2 cores next to everything else; --epochs overrides)
    "long_smallconv": dict(
        base=dict(_CIFAR, model="smallconv", epochs=10, augment=True),
        variants={
            "bp": dict(mode="bp"),
            "dfa": dict(mode="dfa"),
            "ssa-spec": dict(SPEC_SSA, mode="ssa"),
            "ssa-chain-fwdinit": dict(SPEC_SSA, mode="ssa", feedback="chain",
                                      feedback_init="forward"),
            "ssa-gated-track0.1": dict(mode="ssa", feedback="chain", feedback_init="forward",
                                       chain_gating=True, feedback_tracking=0.1),
        }),
    # issue 4: how should a cut treat the feedback factors, and does a short
    # warm-up of the rate after each cut help?
    "rank_warmup": dict(
        base=dict(_CIFAR, model="smallconv", epochs=4, max_train_examples=10000, augment=False,
                  mode="ssa", rank_tau=0.95, rank_start=0, rank_interval=1,
                  rank_final_cut=True),  # the last epoch's val accuracy is the uncut one
        variants={
            "no-cuts": dict(rank_tau=None),
            "cuts-first": dict(rank_feedback_cut="first"),
            "cuts-svd": dict(rank_feedback_cut="svd"),
            "cuts-first-warmup100": dict(rank_feedback_cut="first", rank_warmup_steps=100),
            "cuts-svd-warmup100": dict(rank_feedback_cut="svd", rank_warmup_steps=100),
        }),
    # issue 5's training length: one 50-epoch run per mode gives the gap after 5,
    # 20 and 50 epochs (no decay, so epoch k of it is a k-epoch run); 10k images
    # with augmentation, to fit the 2 cores
    "length_smallconv": dict(
        base=dict(_CIFAR, model="smallconv", epochs=50, max_train_examples=10000, augment=True),
        variants={
            **_MODES,
            # before normalizations and max-pools applied their Jacobians in the chain
            "ssa-nojacobians": dict(mode="ssa", chain_jacobians=False),
        }),
    # resnet32 at the small budget of the routes grid: do the smallconv findings hold?
    "resnet32_small": dict(
        base=dict(_CIFAR, model="resnet32", epochs=3, max_train_examples=10000, augment=False),
        variants={
            **_MODES,
            # why SSA lags here: BP's rate, or the drifting orthogonality term?
            "ssa-lr1e-3": dict(mode="ssa", learning_rate=1e-3),
            "ssa-gamma0": dict(mode="ssa", gamma=0.0),
            # the cause: a chain whose layer norms were identities (SPEC's linear
            # network) lost 27-77 degrees to BP over 15 residual blocks
            "ssa-nojacobians": dict(mode="ssa", chain_jacobians=False),
            "ssa-nojacobians-gamma0": dict(mode="ssa", chain_jacobians=False, gamma=0.0),
            # smallconv's best at 3 epochs (ssa_exact): retraction lets BP's rate train
            "ssa-stiefel-lr1e-3": dict(mode="ssa", stiefel_retraction=True, learning_rate=1e-3),
        }),
    # issue 5's training length on resnet32 (16 modules): a 45k-image SSA epoch
    # takes ~25 min here, so the first 5,000 images with augmentation, 20 epochs
    # at a constant rate (epoch k of it is a k-epoch run)
    "length_resnet32": dict(
        base=dict(_CIFAR, model="resnet32", epochs=20, max_train_examples=5000, augment=True),
        variants={
            **_MODES,
        }),
    # the shipped recipe once the chain applies the norms' and max-pools'
    # Jacobians: which knobs still matter (routes' budget)
    "ssa_exact": dict(
        base=dict(_CIFAR, model="smallconv", epochs=3, max_train_examples=10000, augment=False),
        variants={
            "bp": dict(mode="bp"),
            "ssa": dict(mode="ssa"),
            "ssa-nojacobians": dict(mode="ssa", chain_jacobians=False),
            "ssa-stiefel": dict(mode="ssa", stiefel_retraction=True),
            "ssa-lr1e-3": dict(mode="ssa", learning_rate=1e-3),
            "ssa-stiefel-lr1e-3": dict(mode="ssa", stiefel_retraction=True, learning_rate=1e-3),
            "ssa-notrack": dict(mode="ssa", feedback_tracking=0.0),
            "ssa-norm-batch": dict(mode="ssa", norm="batch"),
            "ssa-beta0-gamma0": dict(mode="ssa", beta=0.0, gamma=0.0),
            "ssa-s-rate10": dict(mode="ssa", s_rate_scale=10.0),
            "ssa-s-rate0.1": dict(mode="ssa", s_rate_scale=0.1),
        }),
    "long_resnet32": dict(
        base=dict(_CIFAR, model="resnet32", epochs=20, augment=True),
        variants={
            **_MODES,
            "ssa-spec": dict(SPEC_SSA, mode="ssa"),
        }),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("grid", None, f"one of {', '.join(GRIDS)}")
flags.DEFINE_string("data_dir", os.path.join("..", "shared", "tfds"), "TFDS data_dir")
flags.DEFINE_string("out", "benchmarks", "folder for results/<grid>.jsonl, <grid>.md, <grid>.png")
flags.DEFINE_list("only", [], "run only these variants")
flags.DEFINE_integer("seed", 1, "seed for every run")
flags.DEFINE_integer("epochs", None, "override the grid's epochs")
flags.DEFINE_boolean("report_only", False, "write the table and plot from finished runs")


def variant_config(grid, name, data_dir, seed, epochs=None) -> cfg_lib.RunConfig:
    spec = GRIDS[grid]
    values = {**spec["base"], **spec["variants"][name], "seed": seed, "data_dir": data_dir}
    if epochs:
        values["epochs"] = epochs
    return cfg_lib.RunConfig(**values)


def run_key(cfg) -> str:
    """Canonical JSON of the settings that differ from RunConfig's defaults.

    Only non-default values count, so adding a new option (with a default)
    to RunConfig leaves the keys of finished runs valid.
    """
    if isinstance(cfg, dict):
        known = {f.name for f in dataclasses.fields(cfg_lib.RunConfig)}
        # a record written before an option existed ran with SPEC's value of it;
        # before rank_final_cut existed, a cut also followed the last epoch
        cfg = {**SPEC_SSA, "rank_final_cut": True, **cfg}
        cfg = cfg_lib.RunConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                   for k, v in cfg.items() if k in known})
    # compare resolved settings, so that a run recorded before a default
    # changed keeps its key as long as what it ran is what the variant says
    cfg = cfg.resolved()
    if cfg.rank_tau is None:  # no cuts: how they would have been made does not matter
        cfg = dataclasses.replace(cfg, rank_feedback_cut=cfg_lib.RunConfig(
            mode=cfg.mode).resolved().rank_feedback_cut, rank_final_cut=False)
    d = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(cfg_lib.RunConfig(mode=cfg.mode).resolved())
    ignored = ("workdir", "data_dir", "restart", "checkpoint_steps", "keep_checkpoints",
               "skip_nonfinite_steps", "diagnostics_every")  # not what is trained
    d = {k: v for k, v in d.items() if k not in ignored and k in defaults
         and (k == "mode" or json.dumps(v, default=list) != json.dumps(defaults[k], default=list))}
    return json.dumps(d, sort_keys=True, default=list)


def load_results(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_grid(grid, data_dir, out, seed, only=(), epochs=None):
    from ssa_tf import run

    results_path = os.path.join(out, "results", f"{grid}.jsonl")
    os.makedirs(os.path.dirname(results_path), exist_ok=True)
    done = {run_key(r["config"]) for r in load_results(results_path)}
    names = [n for n in GRIDS[grid]["variants"] if not only or n in only]
    for k, name in enumerate(names):
        cfg = variant_config(grid, name, data_dir, seed, epochs)
        key = run_key(cfg)
        if key in done:
            print(f"[{k + 1}/{len(names)}] {name}: already done, skipped", flush=True)
            continue
        cfg.workdir = os.path.join("runs", "experiments", grid, f"{name}-s{seed}")
        cfg.restart = True  # the results file, not the workdir, says what is done
        print(f"[{k + 1}/{len(names)}] {name}: {cfg.mode} {cfg.model}, {cfg.epochs} epochs",
              flush=True)
        start = time.time()
        summary = run.train(cfg, verbose=2)
        record = {
            "grid": grid, "name": name, "key": key, "seed": seed,
            "config": {k: v for k, v in dataclasses.asdict(cfg.resolved()).items()
                       if k not in ("workdir", "data_dir")},
            "val_accuracy": summary["history"]["val_accuracy"],
            "final_accuracy": summary["test_accuracy"],
            "split": summary["test_split"],
            "seconds": round(time.time() - start, 1),
            "epoch_seconds": summary["epoch_seconds"],
            "trainable_params": summary["trainable_params"],
            "final_trainable_params": summary["final_trainable_params"],
            "ranks": summary["ranks"],
        }
        with open(results_path, "a") as f:  # one whole line per finished run
            f.write(json.dumps(record) + "\n")
        print(f"    {name}: accuracy {record['final_accuracy']:.4f} in {record['seconds']:.0f} s",
              flush=True)
    report(grid, out)


def report(grid, out):
    results = load_results(os.path.join(out, "results", f"{grid}.jsonl"))
    if not results:
        print(f"no finished runs for grid {grid!r}")
        return
    base = GRIDS[grid]["base"]
    lines = [f"# Grid `{grid}`", "",
             f"Base: `{json.dumps(base)}`; accuracy on the validation split "
             f"(`{results[0]['split']}`).",
             f"Command: `python -m ssa_tf.experiments --grid={grid}`", "",
             "| variant | seed | accuracy per epoch | final | best | s/epoch | params (start -> end) |",
             "|---|---|---|---|---|---|---|"]
    # a record is named by the variant it matches now; a default that changed
    # since it ran leaves it under its old name, starred
    names = {}
    for name in GRIDS[grid]["variants"]:
        for seed in {r["seed"] for r in results}:
            names[run_key(variant_config(grid, name, None, seed))] = name
    stale = False
    for r in results:
        name = names.get(run_key(r["config"]))
        if name is None:
            name, stale = f"{r['name']}*", True
        curve = " ".join(f"{a:.3f}" for a in r["val_accuracy"])
        sec = sum(r["epoch_seconds"]) / max(len(r["epoch_seconds"]), 1)
        params = f"{r['trainable_params']:,}"
        if r["final_trainable_params"] != r["trainable_params"]:
            params += f" -> {r['final_trainable_params']:,}"
        lines.append(f"| {name} | {r['seed']} | {curve} | {r['final_accuracy']:.3f} | "
                     f"{max(r['val_accuracy']):.3f} | {sec:.0f} | {params} |")
    if stale:
        lines += ["", "\\* ran under an earlier default: its settings no longer match the "
                  "variant of that name (the record's config says what ran)."]
    ranked = [r for r in results if r["final_trainable_params"] != r["trainable_params"]]
    if ranked:
        lines += ["", "Final ranks of rank-cut runs:", ""]
        for r in ranked:
            lines.append(f"- {r['name']}: " + ", ".join(f"{k} {v}" for k, v in r["ranks"].items()))
    md = os.path.join(out, f"{grid}.md")
    with open(md + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(md + ".tmp", md)
    _plot(results, os.path.join(out, f"{grid}.png"), grid)
    print("\n".join(lines))


def _plot(results, path, grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        acc = r["val_accuracy"]
        mode = r["config"].get("mode", "ssa")  # early records left out the default mode
        style = "-" if mode == "ssa" else ("--" if mode == "dfa" else ":")
        ax.plot(range(1, len(acc) + 1), acc, style, marker="o", ms=3, label=f"{r['name']} s{r['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"grid {grid} (solid SSA, dashed DFA, dotted BP)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv):
    del argv
    if FLAGS.grid not in GRIDS:
        print(f"error: --grid={FLAGS.grid!r} is not valid; choose from: {', '.join(GRIDS)}",
              file=sys.stderr)
        sys.exit(2)
    unknown = set(FLAGS.only) - set(GRIDS[FLAGS.grid]["variants"])
    if unknown:
        print(f"error: --only names unknown variants {sorted(unknown)}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.report_only:
        report(FLAGS.grid, FLAGS.out)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_grid(FLAGS.grid, FLAGS.data_dir, FLAGS.out, FLAGS.seed, FLAGS.only, FLAGS.epochs)


if __name__ == "__main__":
    app.run(main)
