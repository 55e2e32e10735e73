"""What each module of a local-head run can tell apart: its own head's accuracy.

    python -m benchmarks.module_probes --data_dir=DIR --workdir=RUNS [--workdir=MORE]
        [--grid=heads_20ep] [--table=FILE.md]

For every run of the grid trained on the local route (each module learns from a head of
its own) whose workdir still holds its ``model.keras`` (``<--workdir>/<grid>/<variant>-
s<seed>``), the accuracy on the whole validation split of each hidden module's head (the
trained read-out it learned from, ``LocalRoute.logits``) and of the network's output. A
head is a probe trained with its module: where the accuracy stops rising from one module
to the next, the later modules add little that a greedy, module-by-module objective can
use. Mean over the seeds found, per module.
"""

from __future__ import annotations

import glob
import json
import os
import statistics

from absl import flags

from benchmarks import records
from benchmarks.grids import GRIDS
from ssa_tf import atomic_files, cli

FLAGS = flags.FLAGS
flags.DEFINE_string("grid", "heads_20ep", "the grid whose trained models to read")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset")
flags.DEFINE_multi_string("workdir", [os.path.join("runs", "grids")],
                          "folder of the grids' workdirs (repeat the flag for more)")
flags.DEFINE_string("table", None, "also write the table to this Markdown file")
flags.DEFINE_multi_string("only", [], "read only this variant (repeat the flag for more; "
                          "default: every variant of the grid)")
flags.DEFINE_enum("split", "validation", ["validation", "test"],
                  "where to score (choose the exit on validation; test once, at the end)")


def module_accuracies(model, x, y, batch=500):
    """[accuracy of module i's head for each hidden module, of the network's output]."""
    import numpy as np

    route = model.rule.route
    hits = np.zeros(len(model.local_modules))
    for start in range(0, len(x), batch):
        h, labels = x[start:start + batch], y[start:start + batch]
        h = model.normalize_input(h)
        for i, m in enumerate(model.local_modules):
            h = m(h, training=False)
            scores = h if i == len(model.local_modules) - 1 else route.logits(i, h)
            hits[i] += np.sum(np.argmax(np.asarray(scores), -1) == labels)
    return list(hits / len(x))


def probes(grid, data_dir, roots, split="validation", only=()):
    """{variant: [per-seed list of module accuracies]} and the module names (``only``:
    these variants alone)."""
    import numpy as np

    import ssa_tf
    from ssa_tf import data as data_lib

    base = GRIDS[grid]["base"]
    ds = data_lib.load(base["data.dataset"], 500, data_dir=data_dir, seed=1, augment=False,
                       validation_split=base.get("data.validation_split", 0.1))
    batches = [(np.asarray(a), np.asarray(b)) for a, b in getattr(ds, split)]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    out, modules = {}, None
    for name in GRIDS[grid]["variants"]:
        if only and name not in only:
            continue
        paths = sorted({p for root in roots
                        for p in glob.glob(os.path.join(glob.escape(root), grid,
                                                        glob.escape(name) + "-s*",
                                                        "model.keras"))})
        for path in paths:
            if not trained_as(grid, name, os.path.dirname(path)):
                print(f"{path}: trained with other settings than {name!r} has now; skipped",
                      flush=True)
                continue
            model = ssa_tf.load_model(path)  # a run of the old layout too
            route = getattr(model.rule, "route", None)
            if getattr(route, "logits", None) is None:  # no route with heads
                continue
            print(f"{name} ({os.path.basename(os.path.dirname(path))}) ...", flush=True)
            out.setdefault(name, []).append(module_accuracies(model, x, y))
            modules = [m.name for m in model.local_modules]
    return out, modules, len(x)


def trained_as(grid, name, workdir) -> bool:
    """The run in ``workdir`` trained what variant ``name`` of ``grid`` is today (a workdir
    left by an earlier definition of the same name is not it)."""
    from ssa_tf.config import legacy

    with open(os.path.join(workdir, "config.json")) as f:
        cfg = legacy.read_config(json.load(f))
    return records.run_key(cfg) == records.run_key(records.variant_config(grid, name, cfg.seed))


def table(found, modules, examples) -> str:
    lines = [f"| variant | seeds | {' | '.join(modules[:-1])} | network |",
             "|---|---|" + "---|" * len(modules)]
    for name, runs in found.items():
        cells = []
        for i in range(len(modules)):
            values = [r[i] for r in runs]
            sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.3f}{sd}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(accuracy on the {examples:,} {FLAGS.split} images)"


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.grid not in GRIDS:
        cli.usage_error(f"--grid={FLAGS.grid!r} is not valid; choose from: {', '.join(GRIDS)}")
    missing = [w for w in FLAGS.workdir if not os.path.isdir(w)]
    if missing:
        cli.usage_error(f"--workdir {missing[0]!r} is not a folder")
    unknown = [v for v in FLAGS.only if v not in GRIDS[FLAGS.grid]["variants"]]
    if unknown:
        cli.usage_error(f"--only={unknown[0]!r} is not a variant of grid {FLAGS.grid}")
    cli.import_tensorflow()
    found, modules, examples = probes(FLAGS.grid, FLAGS.data_dir, FLAGS.workdir, FLAGS.split,
                                      FLAGS.only)
    if not found:
        cli.usage_error(f"no model.keras of a local-route run of grid {FLAGS.grid} under "
                        f"{', '.join(FLAGS.workdir)}")
    text = table(found, modules, examples)
    only = "".join(f' --only="{v}"' for v in FLAGS.only)
    print(text)
    if FLAGS.table:
        atomic_files.write_text(FLAGS.table, f"# Each module's own head, after training\n\n"
                                f"`python -m benchmarks.module_probes --grid={FLAGS.grid} "
                                f"--split={FLAGS.split}{only}`\n\n{text}\n")


if __name__ == "__main__":
    cli.run(main)
