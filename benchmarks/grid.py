"""Experiment grids on real data: several seeds per variant, resumable, tabled and plotted.

    python -m benchmarks.grid --grid=rules_smallconv --data_dir=DIR
    python -m benchmarks.grid --grid=rules_smallconv --report_only

A grid (``benchmarks/grids.py``) is a base configuration, named variants and
seeds. Every run validates on a split carved from train (``validation_split``)
and evaluates the test split once, at its end; a variant is judged by the
validation numbers. A finished run appends one JSON line to
``benchmarks/results/<grid>.jsonl``; rerunning skips every (variant, seed)
already there and resumes a run that was interrupted (its workdir's
checkpoints). The report is ``benchmarks/reports/<grid>.md``: per variant its rule's
locality card, mean and spread over seeds of the last epoch's and the best
epoch's validation accuracy, the test accuracy and seconds per epoch; and
``benchmarks/reports/<grid>.png``: mean validation curves with a min-max band.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from benchmarks.grids import GRIDS
from benchmarks.records import (load_all_results, load_results, run_key,  # noqa: F401
                                summarize, variant_config)
from ssa_tf import atomic_files, cli, errors, preflight
from ssa_tf import config as cfg_lib
from ssa_tf.cli import usage_error
from ssa_tf.methods.card import HELD_COLUMNS
from ssa_tf.methods import registry

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
flags.DEFINE_string("grid", None, f"one of {', '.join(GRIDS)}")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset "
                    "(default: TFDS's own, ~/tensorflow_datasets)")
flags.DEFINE_string("out", HERE, "folder for results/<grid>.jsonl and reports/<grid>.md, .png")
flags.DEFINE_string("workdir", os.path.join("runs", "grids"), "folder of the runs' workdirs")
flags.DEFINE_multi_string("only", [], "run only this variant (repeat the flag for more; "
                          "variant names may hold commas)")
flags.DEFINE_list("seeds", [], "override the grid's seeds")
flags.DEFINE_boolean("report_only", False, "write the table and plot from finished runs")


def run_grid(grid, data_dir, out, workdir, only=(), seeds=()):
    from ssa_tf.training import run
    from ssa_tf.training import workdir as workdir_lib

    spec = GRIDS[grid]
    if spec.get("chain_cache", True) is False:
        from ssa_tf.methods import routes
        routes.MAX_FULL_MAP_ENTRIES = 0  # the chain by its transpose, as at ImageNet size
    path = os.path.join(out, "results", f"{grid}.jsonl")
    done = {(r["key"], r["seed"]) for r in load_all_results(out, grid)}
    seeds = [int(s) for s in seeds] or list(spec["seeds"])
    todo = [(n, s) for n in spec["variants"] if not only or n in only for s in seeds]
    for k, (name, seed) in enumerate(todo):
        cfg = variant_config(grid, name, seed, data_dir)
        key = run_key(cfg)
        tag = f"[{k + 1}/{len(todo)}] {name} seed {seed}"
        if (key, seed) in done:
            print(f"{tag}: done already", flush=True)
            continue
        cfg.runtime.workdir = os.path.join(workdir, grid, f"{name}-s{seed}")
        if os.path.exists(os.path.join(cfg.runtime.workdir, "summary.json")):
            cfg.runtime.restart = True  # finished but never recorded (killed between the two)
        print(f"{tag}: {cfg.rule.name} {cfg.model.model}, {cfg.train.epochs} epochs "
              f"({cfg.card().line()})", flush=True)
        start = time.time()
        new = [d for d in (workdir, os.path.join(workdir, grid), cfg.runtime.workdir)
               if not os.path.isdir(d)]
        try:
            summary = run.train(cfg, verbose=2)
        except BaseException:
            # a run that failed before its first checkpoint leaves nothing behind
            workdir_lib.clean_failed_run(cfg.runtime.workdir, cfg.runtime.workdir not in new)
            for d in (os.path.join(workdir, grid), workdir):  # the parents this run made
                if d in new and os.path.isdir(d) and not os.listdir(d):
                    os.rmdir(d)
            raise
        history = summary["history"]
        record = {
            "grid": grid, "name": name, "key": key, "seed": seed, "rule": cfg.rule.name,
            "card": summary["card"],
            "config": {k: v for k, v in cfg.resolved().settings().items()
                       if k not in ("runtime.workdir", "data.data_dir")},
            "val_accuracy": history["val_accuracy"], "train_accuracy": history["accuracy"],
            "test_accuracy": summary["test_accuracy"], "splits": {
                "train": summary["train_split"], "validation": summary["validation_split"],
                "test": summary["test_split"]},
            "seconds": round(time.time() - start, 1), "epoch_seconds": summary["epoch_seconds"],
            "trainable_params": summary["trainable_params"],
            "final_trainable_params": summary["final_trainable_params"],
            "ranks": summary["ranks"], "resumed_from_epoch": summary["resumed_from_epoch"],
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:  # one whole line per finished run
            f.write(json.dumps(record) + "\n")
        print(f"    {name} seed {seed}: validation {record['val_accuracy'][-1]:.4f} "
              f"in {record['seconds']:.0f} s", flush=True)
    return report(grid, out)


def report(grid, out):
    results = load_all_results(out, grid)
    spec = GRIDS[grid]
    rows = summarize(grid, results)
    if not rows:
        print(f"no finished runs for grid {grid!r}")
        return []
    splits = rows[0]["runs"][0]["splits"]
    base = spec["base"]
    lines = [f"# Grid `{grid}`", "", spec["caption"], "",
             f"Command: `python -m benchmarks.grid --grid={grid} --data_dir=DIR`; base "
             f"settings `{json.dumps(base)}`. Trained on `{splits['train']}`, validated on "
             f"`{splits['validation']}` (carved from train; every choice is made on it), "
             f"tested once at the end on `{splits['test']}`. Mean ± standard deviation over "
             "the seeds.", "",
             "| variant | rule | sequential | transport | held | feedback | seeds | validation, "
             "last epoch | validation, best epoch | test | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        card = r["card"]
        held = HELD_COLUMNS[card["held_activations"]]
        # records made before cards said it: the rule's own (its feedback never changed)
        feedback = card.get("feedback") or registry.get(r["rule"]).card({}).feedback
        lines.append(f"| {r['name']} | {r['rule']} | {'yes' if card['sequential'] else 'no'} | "
                     f"{card['weight_transport']} | {held} | {feedback} | "
                     f"{','.join(map(str, r['seeds']))} | {r['last'][0]} | {r['best'][0]} | "
                     f"{r['test'][0]} | {r['sec']:.0f} |")
    notes = spec.get("notes")
    if notes:
        lines += ["", notes]
    os.makedirs(os.path.join(out, "reports"), exist_ok=True)
    md = os.path.join(out, "reports", f"{grid}.md")
    atomic_files.write_text(md, "\n".join(lines) + "\n")
    _plot(rows, os.path.join(out, "reports", f"{grid}.png"), grid)
    print("\n".join(lines))
    return rows


def _plot(rows, path, grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # the legend goes under the axes, one row a line: long variant names stay whole
    fig, ax = plt.subplots(figsize=(9, 5 + 0.16 * len(rows)))
    for r in rows:
        n = min(len(run["val_accuracy"]) for run in r["runs"])
        curves = np.array([run["val_accuracy"][:n] for run in r["runs"]])
        epochs = np.arange(1, n + 1)
        style = _line_style(r["rule"])
        line, = ax.plot(epochs, curves.mean(0), style, marker="o", ms=3,
                        label=f"{r['name']} ({len(r['runs'])} seeds)")
        ax.fill_between(epochs, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (split carved from train)")
    ax.set_title(f"grid {grid}: mean over seeds, band min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(0, -0.12))
    fig.tight_layout()
    atomic_files.save_figure(fig, path)


def _line_style(rule):
    """Dotted for end-to-end rules, dashed for ordinary-layer local rules, solid for the rest."""
    spec = registry.RULES.get(rule)
    if spec is None or spec.svd and not spec.end_to_end:
        return "-"
    return ":" if spec.end_to_end else "--"


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.grid not in GRIDS:
        usage_error(f"--grid={FLAGS.grid!r} is not valid; choose from: {', '.join(GRIDS)}")
    unknown = set(FLAGS.only) - set(GRIDS[FLAGS.grid]["variants"])
    if unknown:
        usage_error(f"--only names unknown variants {sorted(unknown)}")
    if FLAGS.report_only:
        report(FLAGS.grid, FLAGS.out)
        return
    base = GRIDS[FLAGS.grid]["base"]
    try:
        preflight.check_data(cfg_lib.RunConfig().with_overrides(
            [f"data.dataset={base['data.dataset']}", f"data.data_dir={FLAGS.data_dir or ''}"]))
    except errors.Error as e:
        cli.fail(e)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        run_grid(FLAGS.grid, FLAGS.data_dir, FLAGS.out, FLAGS.workdir, FLAGS.only, FLAGS.seeds)
    except errors.Error as e:
        cli.fail(e)


HELP = f"""Run an experiment grid (variants x seeds) on real data, then table and plot it.

usage: python -m benchmarks.grid --grid=NAME --data_dir=DIR [flags]

  --grid=NAME        {', '.join(GRIDS)}
  --data_dir=DIR     TFDS data_dir holding the prepared dataset (TFDS's default if unset)
  --only=VARIANT     run only this variant (repeat the flag; names may hold commas)
  --seeds=1,2        override the grid's seeds
  --workdir=DIR      folder of the runs' workdirs (runs/grids)
  --out=DIR          folder of results/<grid>.jsonl, reports/<grid>.md and .png (benchmarks)
  --report_only      write the table and plot from the finished runs, train nothing
  --flagfile=FILE    read flags from FILE

A rerun skips every finished (variant, seed) and resumes an interrupted one.
Exit status: 0 done, 2 a mistake in what was asked (one line)."""

if __name__ == "__main__":
    cli.run(main, help_text=HELP)
