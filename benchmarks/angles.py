"""How far each rule's hidden-module updates are from backprop's, in the trained models.

    python -m benchmarks.angles --grid=learned_5ep --data_dir=DIR [--table=FILE.md]

For every variant of the grid and every recorded seed whose workdir still holds its
``model.keras`` (``<--workdir>/<grid that recorded it>/<variant>-s<seed>``), the angle in
degrees between the update each local module gets from its rule and the true BP gradient
of the network's cross-entropy for the same parameters, on one fixed batch of 256
validation images (``ssa_tf.training.diagnostics.update_angles``; 90 is no credit at all,
0 is BP's direction). Mean over the seeds, per module; end-to-end rules are BP by
definition and left out.
"""

from __future__ import annotations

import os
import statistics

from absl import flags

from benchmarks import records
from benchmarks.grids import GRIDS, unknown
from ssa_tf import atomic_files, cli

FLAGS = flags.FLAGS
flags.DEFINE_string("grid", "learned_5ep", "the grid whose trained models to read")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset")
flags.DEFINE_string("workdir", os.path.join("runs", "grids"), "folder of the grids' workdirs")
flags.DEFINE_string("table", None, "also write the table to this Markdown file")


def angles(grid, data_dir, runs):
    """{variant: [per-seed list of module angles]} and the module names."""
    import numpy as np

    import ssa_tf
    from ssa_tf import data as data_lib
    from ssa_tf.methods import registry
    from ssa_tf.training.diagnostics import update_angles

    base = GRIDS[grid]["base"]
    ds = data_lib.load(base["data.dataset"], 256, data_dir=data_dir, seed=1, augment=False,
                       validation_split=base.get("data.validation_split", 0.1))
    x, y = (np.asarray(t) for t in next(iter(ds.validation)))
    recorded = records.load_all_results(os.path.dirname(os.path.abspath(__file__)), grid)
    out, modules = {}, None
    for name in GRIDS[grid]["variants"]:
        key = records.run_key(records.variant_config(grid, name, 1))
        for r in (r for r in recorded if r["key"] == key):
            if registry.get(r["rule"]).end_to_end:
                continue
            path = os.path.join(runs, r["grid"], f"{r['name']}-s{r['seed']}", "model.keras")
            if not os.path.exists(path):
                print(f"{name} seed {r['seed']}: no model kept at {path}", flush=True)
                continue
            model = ssa_tf.load_model(path)  # a run of the old layout too
            found = update_angles(model, x, y)
            modules = [m.name for m in model.local_modules]
            out.setdefault(name, []).append(found)
            print(f"{name} seed {r['seed']}: " + ", ".join(f"{a:.0f}" for a in found),
                  flush=True)
    return out, modules


def table(grid, found, modules) -> str:
    hidden = modules[:-1]
    lines = [f"Angle (degrees) between each hidden module's update and BP's gradient, "
             f"trained models of grid `{grid}`, one fixed batch of 256 validation images; "
             "mean over seeds (90: no credit).", "",
             f"| variant | seeds | {' | '.join(hidden)} | head |",
             f"|---|---|{'---|' * len(hidden)}---|"]
    for name, per_seed in found.items():
        means = [statistics.fmean(a[k] for a in per_seed) for k in range(len(modules))]
        lines.append(f"| {name} | {len(per_seed)} | "
                     + " | ".join(f"{m:.0f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if unknown(FLAGS.grid):
        cli.usage_error(unknown(FLAGS.grid))
    cli.import_tensorflow()
    found, modules = angles(FLAGS.grid, FLAGS.data_dir, FLAGS.workdir)
    if not found:
        cli.usage_error(f"no trained model of grid {FLAGS.grid} under {FLAGS.workdir}")
    text = table(FLAGS.grid, found, modules)
    print(text)
    if FLAGS.table:
        atomic_files.write_text(FLAGS.table, f"# Update angles to BP\n\n`python -m benchmarks.angles "
                         f"--grid={FLAGS.grid}`\n\n{text}\n")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
