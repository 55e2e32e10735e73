"""The grids' recorded runs, without flags: what a run trains (its key), the records
that hold it, and one summary row per variant. ``benchmarks.grid`` (the command line),
``benchmarks.tables`` and ``benchmarks.angles`` share it.
"""

from __future__ import annotations

import json
import os
import statistics

from benchmarks.grids import GRIDS
from ssa_tf import config as cfg_lib
from ssa_tf.config import legacy
from ssa_tf.config.schema import OPERATIONAL

# settings that do not change what is trained (ssa_tf.config.schema.OPERATIONAL), and
# the seed (a run's key names its variant; its seed is recorded beside it)
_IGNORED = (*OPERATIONAL, "seed")


def variant_config(grid, name, seed, data_dir=None) -> cfg_lib.RunConfig:
    spec = GRIDS[grid]
    return cfg_lib.RunConfig.from_settings({**spec["base"], **spec["variants"][name],
                                            "seed": seed, "data.data_dir": data_dir})




def run_key(cfg: cfg_lib.RunConfig) -> str:
    """Canonical JSON of what a run trains (resolved settings, paths and seed left out)."""
    # settings added after runs were recorded stay out of the key at the values that
    # train what the runs before them trained (the recorded runs still count)
    d = {k: v for k, v in cfg.resolved().settings().items()
         if k not in _IGNORED and not legacy.at_later_default(k, v)}
    if d.get("rank.tau") is None:  # no cuts: which layers a cut would spare is moot
        d.pop("rank.keep_ends", None)
        # ... and so is how it would cut the feedback: the value runs were recorded with
        d["rank.feedback_cut"] = "first"
    if d.get("rank.energy", "weights") == "weights":  # only an outputs cut reads batches
        d.pop("rank.energy_batches", None)
    return json.dumps(d, sort_keys=True, default=list)


def load_results(path):
    """The records of one file, each in today's names (``config.legacy.read_record``: a
    record written before the dotted vocabulary has a flat key and config, and every
    record before the rule had one name says "mode" for "rule")."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [legacy.read_record(json.loads(line)) for line in f if line.strip()]


def load_all_results(out, grid):
    """Every recorded run under ``out``/results, this grid's first: a run is what it
    trains (its key), so a run another grid recorded with the same settings and seed
    counts here too. One record per (key, seed)."""
    folder = os.path.join(out, "results")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    own = f"{grid}.jsonl"
    # a grid whose runs compute the chain another way than a run with the same settings
    # does elsewhere (by its transpose, not its cached matrices) counts its own runs only,
    # and no other grid counts them
    apart = {f"{g}.jsonl" for g, spec in GRIDS.items() if spec.get("chain_cache") is False}
    names = [n for n in names if n == own or (own not in apart and n not in apart)]
    records, seen = [], set()
    for name in sorted(names, key=lambda n: n != own):
        if name.endswith(".jsonl"):
            for r in load_results(os.path.join(folder, name)):
                if (r["key"], r["seed"]) not in seen:
                    seen.add((r["key"], r["seed"]))
                    records.append(r)
    return records


def _mean_sd(values):
    if not values:
        return "", 0.0
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f}", m


def summarize(grid, results):
    """One row per variant (grid order) over the seeds that ran its current settings."""
    spec = GRIDS[grid]
    rows = []
    for name in spec["variants"]:
        key = run_key(variant_config(grid, name, 1))
        runs = [r for r in results if r["key"] == key]
        if not runs:
            continue
        last = [r["val_accuracy"][-1] for r in runs]
        best = [max(r["val_accuracy"]) for r in runs]
        test = [r["test_accuracy"] for r in runs]
        secs = [s for r in runs for s in r["epoch_seconds"]]
        rows.append(dict(name=name, rule=runs[0]["rule"], card=runs[0]["card"], runs=runs,
                         seeds=sorted(r["seed"] for r in runs), last=_mean_sd(last),
                         best=_mean_sd(best), test=_mean_sd(test),
                         sec=statistics.median(secs) if secs else 0.0))
    return rows
