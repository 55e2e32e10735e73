"""Where a grid's runs stand while they still train: epochs reached, validation accuracy,
seconds per epoch, read from each run's newest checkpoint (or its summary once finished).

    python -m benchmarks.progress --grid=learned_resnet32 --workdir=runs/grids
    python -m benchmarks.progress --grid=learned_resnet32 --workdir=DIR --out=FILE.md

A long grid (resnet32 on 40,500 images, 20 epochs a rule) runs for days in time boxes
(``benchmarks.grid`` resumes each run from its last finished epoch); its report
(``--report_only``) lists finished runs only. This table is the one to read meanwhile.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import flags

from benchmarks.grids import GRIDS, unknown
from benchmarks.timing import publish
from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("grid", None, "the grid (benchmarks/grids.py)")
flags.DEFINE_string("workdir", os.path.join("runs", "grids"), "folder of the runs' workdirs "
                    "(the grid's --workdir)")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")


def run_state(folder):
    """(epochs done, {history}, [seconds a epoch]) of the run in ``folder``, or None when
    it has not finished an epoch."""
    from ssa_tf.training.checkpoints import list_checkpoints

    summary = os.path.join(folder, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            s = json.load(f)
        return len(s["epoch_seconds"]), s["history"], s["epoch_seconds"]
    backup = os.path.join(folder, "backup", "local")
    done = [c for c in list_checkpoints(backup) if c[1] == 0] if os.path.isdir(backup) else []
    if not done:
        return None
    epoch = done[-1][0]
    with open(os.path.join(backup, f"epoch-{epoch}", "state.json")) as f:
        state = json.load(f)
    return epoch, state["history"], state["epoch_seconds"]


def table(grid, workdir) -> str:
    spec = GRIDS[grid]
    epochs = spec["base"].get("train.epochs")
    lines = [f"`{grid}`: {spec['caption']}", "",
             "| variant | seed | epochs reached | validation, last | validation, best | "
             "s/epoch (median) |", "|---|---|---|---|---|---|"]
    for name in spec["variants"]:
        for seed in spec["seeds"]:
            state = run_state(os.path.join(workdir, grid, f"{name}-s{seed}"))
            if state is None:
                lines.append(f"| {name} | {seed} | 0 of {epochs} | | | |")
                continue
            done, history, seconds = state
            val = history["val_accuracy"]
            lines.append(f"| {name} | {seed} | {done} of {epochs} | {val[-1]:.3f} | "
                         f"{max(val):.3f} | {statistics.median(seconds):.0f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if unknown(FLAGS.grid):
        cli.usage_error(unknown(FLAGS.grid))
    if not os.path.isdir(FLAGS.workdir):
        cli.usage_error(f"--workdir {FLAGS.workdir!r} is not a folder")
    publish(table(FLAGS.grid, FLAGS.workdir), FLAGS.out, f"{FLAGS.grid}: the runs so far",
            "benchmarks.progress")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
