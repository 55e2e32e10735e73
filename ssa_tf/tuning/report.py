"""The coefficient search's report: results.csv, sensitivity.png, best.flags (no TensorFlow)."""

from __future__ import annotations

import csv
import json
import math
import os

from ssa_tf import config as cfg_lib
from ssa_tf import atomic_files
from ssa_tf.tuning.settings import (CSV_COLUMNS, LOG_SAMPLED, RUN_FIELDS, PAPER_COEFFICIENTS,
                                    TRIAL_RECORD, SearchConfig)

# --------------------------------------------------------------------------
# Report: results.csv, sensitivity.png, best.flags (no TensorFlow).
# --------------------------------------------------------------------------

def load_trial_states(project: str) -> list[dict]:
    """KerasTuner's saved trials (``trial_*/trial.json``) of a search."""
    states = []
    for name in sorted(os.listdir(project)):
        path = os.path.join(project, name, "trial.json")
        if name.startswith("trial_") and os.path.exists(path):
            with open(path) as f:
                states.append(json.load(f))
    return states


def trial_rows(project: str, states: list[dict], cfg: SearchConfig) -> list[dict]:
    """One dict per trial with the ``CSV_COLUMNS``, in trial order."""
    rows = []
    # ids are zero-padded to the digits of max_trials, which a resumed search may raise
    for state in sorted(states, key=lambda s: int(s["trial_id"])):
        values = state["hyperparameters"]["values"]
        record_path = os.path.join(project, f"trial_{state['trial_id']}", TRIAL_RECORD)
        record = {}
        if os.path.exists(record_path):
            with open(record_path) as f:
                record = json.load(f)
        status = state["status"]
        score = state.get("score")
        epochs = record.get("epochs")
        if epochs is None and status == "COMPLETED":
            epochs = values.get("tuner/epochs", cfg.epochs_per_trial)
        rows.append({
            "trial": int(state["trial_id"]) + 1, "trial_id": state["trial_id"],
            "alpha": values.get("alpha", cfg.run.resolved().rule.alpha),
            "beta": values.get("beta", cfg.run.resolved().rule.beta),
            "gamma": values.get("gamma", cfg.run.resolved().rule.gamma),
            "lr": values.get("learning_rate", cfg.run.learning_rate()),
            "val_accuracy": float(score) if status == "COMPLETED" and score is not None else None,
            "epochs": epochs,
            "status": status,
            "seconds": record.get("seconds"),
            "reason": reason(state.get("message")) if status != "COMPLETED" else "",
        })
    return rows


def reason(message) -> str:
    """The last line of a trial's traceback, without the exception's module path."""
    lines = [l.strip() for l in (message or "").strip().splitlines() if l.strip()]
    if not lines:
        return ""
    head, sep, tail = lines[-1].partition(": ")
    return f"{head.rsplit('.', 1)[-1]}{sep}{tail}"


def report(project: str, states: list[dict] | None = None):
    """Write results.csv, sensitivity.png and best.flags of ``project``; print the best trial.

    ``states`` default to the trials saved on disk (``--report_only``).
    Returns {"rows", "best" (a row or None), "paths"}.
    """
    with open(os.path.join(project, "search.json")) as f:
        saved = json.load(f)
    cfg = SearchConfig.from_json(saved["config"])
    if states is None:
        states = load_trial_states(project)
    rows = trial_rows(project, states, cfg)
    paths = {"csv": os.path.join(project, "results.csv"),
             "plot": os.path.join(project, "sensitivity.png"),
             "flags": os.path.join(project, "best.flags")}
    _write_csv(paths["csv"], rows)
    done = sorted((r for r in rows if r["val_accuracy"] is not None),
                  key=lambda r: r["val_accuracy"], reverse=True)
    top = done[0] if done else None
    band = noise_band(top["val_accuracy"], saved.get("validation_examples")) if top else None
    # a winner only outside the noise of the validation split (a sampling error of the
    # difference of two accuracies, about 95%): inside it the ranking is a coin toss,
    # and a single trial, or a band unknown, shows nothing to be beaten
    winner = top if (top is not None and band is not None and len(done) > 1
                     and top["val_accuracy"] - done[1]["val_accuracy"] > band) else None
    plot_sensitivity(rows, cfg, paths["plot"], top, band, winner)
    failed = sum(r["status"] == "FAILED" for r in rows)
    # trials are #N, KerasTuner's "Running Trial #N": their one number in the output
    print(f"{plural(len(rows), 'trial')} in {project}: {len(done)} completed, {failed} failed, "
          f"{len(rows) - len(done) - failed} unfinished")
    for r in rows:
        if r["status"] == "FAILED":
            print(f"  trial #{r['trial']} failed: {r['reason']}")
    if top is None:
        print("no completed trial; no best configuration")
    elif band is None:
        print(f"no winner: the size of the validation split is unknown ({project}/search.json "
              "predates it), so no noise band tells a lead from chance; the highest is "
              f"{top['val_accuracy']:.4f} (trial #{top['trial']}); no best.flags written")
    elif len(done) == 1:
        print(f"no winner: 1 completed trial, nothing to compare it with: "
              f"{top['val_accuracy']:.4f} (trial #{top['trial']}). A best configuration "
              f"leads the next trial by more than the noise band ({band:.4f}, "
              f"{saved['validation_examples']} validation examples); raise --max_trials; "
              "no best.flags written")
    elif winner is None:
        tied = [f"#{r['trial']}" for r in done if top["val_accuracy"] - r["val_accuracy"] <= band]
        print(f"no winner: {len(tied)} trials ({', '.join(tied)}) lie "
              f"within {band:.4f} of the highest, {top['val_accuracy']:.4f} (trial "
              f"#{top['trial']}): the noise band of {saved['validation_examples']} validation "
              "examples. Widen the validation split, train longer or narrow the ranges; "
              "no best.flags written")
    if winner is None:
        if os.path.exists(paths["flags"]):
            os.remove(paths["flags"])
        return {"rows": rows, "best": None, "top": top, "band": band, "paths": paths}
    atomic_files.write_text(paths["flags"], best_flags(cfg, winner, len(rows), saved))
    print(f"best: trial #{winner['trial']}, val_accuracy {winner['val_accuracy']:.4f} after "
          f"{plural(winner['epochs'], 'epoch')}, "
          f"{winner['val_accuracy'] - done[1]['val_accuracy']:.4f} above the next "
          f"(noise band {band:.4f}), alpha={winner['alpha']:.4g} beta={winner['beta']:.4g} "
          f"gamma={winner['gamma']:.4g} lr={winner['lr']:.4g}")
    print(f"train it: python -m ssa_tf.train --flagfile={paths['flags']} "
          f"--workdir={new_workdir(project, winner)}")
    return {"rows": rows, "best": winner, "top": top, "band": band, "paths": paths}


def plural(n, word) -> str:
    """'1 epoch', '3 epochs'; a count not known: 'unknown epochs'."""
    if n is None:
        return f"unknown {word}s"
    return f"{n} {word}{'' if n == 1 else 's'}"


def new_workdir(project: str, best: dict) -> str:
    """A workdir for training ``best`` from best.flags that does not exist yet: in the
    search's folder, ``best-trial-N``, then ``best-trial-N-2``, ... once it does."""
    base = os.path.join(project, f"best-trial-{best['trial']}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def noise_band(accuracy, examples):
    """Twice the standard error of the difference of two accuracies near ``accuracy``
    measured on ``examples`` validation examples (None when the count is unknown)."""
    if not examples:
        return None
    return 2.0 * math.sqrt(2.0 * accuracy * (1.0 - accuracy) / examples)


def best_flags(cfg: SearchConfig, best: dict, n_trials: int, splits: dict) -> str:
    """A flags file for ``python -m ssa_tf.train --flagfile=``: the best trial's run.

    It names every setting of the run the trial trained (``cfg.trial_run``) that
    differs from its default, and the ``RUN_FIELDS`` always (the same validation
    split and training examples included), the trial's epochs and its exact
    coefficients and rate: the command line trains what the trial trained.
    """
    drawn = {"alpha": best["alpha"], "beta": best["beta"], "gamma": best["gamma"],
             "learning_rate": best["lr"]}
    run = cfg.trial_run(drawn, best["epochs"])
    lines = [
        f"# Best of {plural(n_trials, 'trial')} of the coefficient search {cfg.project}:",
        f"# val_accuracy {best['val_accuracy']:.4f} (trial #{best['trial']}, "
        f"{plural(best['epochs'], 'epoch')}; "
        f"trained on {splits['train_split']}, scored on {splits['validation_split']}).",
        "# Flags after --flagfile win, e.g.:",
        "#   python -m ssa_tf.train --flagfile=THIS_FILE --epochs=30 --workdir=A_NEW_FOLDER",
        f"--rule={run.rule.name}",
    ]
    default = cfg_lib.RunConfig().settings()
    values = run.settings()
    order = [*RUN_FIELDS, *(p for p in values if p not in RUN_FIELDS)]
    for path in order:
        if path in _WRITTEN_APART:
            continue
        if values[path] is None and default[path] is None:
            continue
        if path in RUN_FIELDS or values[path] != default[path]:
            lines.append(f"--set={path}={_flag_text(values[path])}")
    lines.append(f"--epochs={run.train.epochs}")
    # repr: the exact float, so the file reproduces the trial bit for bit
    lines += [f"--set=rule.{name}={float(best[name])!r}" for name in ("alpha", "beta", "gamma")]
    lines.append(f"--learning_rate={float(best['lr'])!r}")
    return "\n".join(lines) + "\n"


# best.flags writes these on lines of their own (rule, epochs, the drawn values) or not
# at all (where the run goes, and how it reports: the user's new command says)
_WRITTEN_APART = ("rule.name", "train.epochs", "rule.alpha", "rule.beta", "rule.gamma",
                  "train.learning_rate", "runtime.workdir", "runtime.restart", "runtime.progress")


def _flag_text(value) -> str:
    """A value as ``--set`` reads it back (``RunConfig.set``); floats exactly."""
    if isinstance(value, tuple):
        return ",".join(_flag_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def plot_sensitivity(rows, cfg: SearchConfig, path, top=None, band=None, winner=None):
    """Validation accuracy against each coefficient, one panel each (the paper's Figure 1)."""
    atomic_files.save_figure(sensitivity_figure(rows, cfg, top, band, winner), path)


def sensitivity_figure(rows, cfg: SearchConfig, top=None, band=None, winner=None):
    """The figure of ``plot_sensitivity``. It says what the search's verdict says: a star
    only on a ``winner`` (above the others by more than the noise ``band``); without
    one, the trials tied with the highest (``top``) ringed, and the band shaded. The
    dashed line is the run's own default (what an unsearched run uses), the dotted one
    the paper's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cfg.ranges())
    columns = {"learning_rate": "lr"}
    done = [r for r in rows if r["val_accuracy"] is not None]
    failed = [r for r in rows if r["status"] == "FAILED"]
    tied = []
    if winner is None and top is not None and band is not None and len(done) > 1:
        tied = [r for r in done if top["val_accuracy"] - r["val_accuracy"] <= band]
    resolved = cfg.run.resolved()
    defaults = {"alpha": resolved.rule.alpha, "beta": resolved.rule.beta,
                "gamma": resolved.rule.gamma, "learning_rate": cfg.run.learning_rate()}
    epochs = sorted({r["epochs"] or 0 for r in done})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), sharey=True,
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes[0], names):
        col = columns.get(name, name)
        if top is not None and band is not None:
            ax.axhspan(top["val_accuracy"] - band, top["val_accuracy"], color="tab:orange",
                       alpha=0.15, label="noise band under the highest")
        for k, e in enumerate(epochs):
            pts = [r for r in done if (r["epochs"] or 0) == e]
            color = cmap(k / max(len(epochs) - 1, 1)) if len(epochs) > 1 else "tab:blue"
            ax.scatter([r[col] for r in pts], [r["val_accuracy"] for r in pts], s=28,
                       color=color, label=f"{e} epoch{'s' * (e != 1)}" if len(epochs) > 1 else "trial")
        if failed:
            # diverged or crashed trials sit at zero: where the range breaks training
            ax.scatter([r[col] for r in failed], [0.0] * len(failed), marker="x", color="tab:red",
                       label="failed")
        if winner is not None:
            ax.scatter([winner[col]], [winner["val_accuracy"]], marker="*", s=180,
                       color="tab:orange", edgecolor="k", zorder=3, label="winner")
        elif tied:
            ax.scatter([r[col] for r in tied], [r["val_accuracy"] for r in tied], s=110,
                       facecolors="none", edgecolors="tab:orange", linewidths=1.5, zorder=3,
                       label="tied with the highest (no winner)")
        label = name
        value = defaults.get(name)
        if value is not None and (value > 0 or name not in LOG_SAMPLED):
            ax.axvline(value, ls="--", color="gray", lw=1, label="this run's default")
        elif value is not None:
            label = f"{name} (default {value:g}: off the log axis)"
        paper = PAPER_COEFFICIENTS.get(name)
        if paper is not None and paper != value:
            ax.axvline(paper, ls=":", color="k", lw=1, label="the paper's value")
        if name in LOG_SAMPLED:
            ax.set_xscale("log")
        lo, hi = cfg.ranges()[name]
        if lo < hi:
            pad = (hi / lo) ** 0.05 if name in LOG_SAMPLED else 0.05 * (hi - lo)
            ax.set_xlim(*((lo / pad, hi * pad) if name in LOG_SAMPLED else (lo - pad, hi + pad)))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].legend(fontsize=7)
    if winner is not None:
        verdict = f"winner: trial #{winner['trial']}"
    elif len(done) == 1:
        verdict = "no winner: 1 completed trial, nothing to compare it with"
    elif top is not None:
        verdict = f"no winner: {len(tied) or 'all'} trials within the noise band of the highest"
    else:
        verdict = "no completed trial"
    fig.suptitle(f"SSA loss-weight sensitivity: {cfg.run.model.model} on {cfg.run.data.dataset}, "
                 f"{len(done)} of {len(rows)} trials completed; {verdict}", fontsize=10)
    fig.tight_layout()
    return fig


def _write_csv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_files.write_text(path, json.dumps(obj, indent=2))
