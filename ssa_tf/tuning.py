"""Coefficient search: KerasTuner sweeps SSA's loss weights alpha, beta, gamma.

    python tuning/search.py --dataset=cifar10 --data_dir=../shared/tfds --model=smallconv

The seed's sensitivity analysis (supplementary section 3, Figure 1) finds
accuracy peaks near alpha = 1 and degrades when beta and gamma are too low or
too high; this module runs that search on any model and dataset of
``python -m ssa_tf.train``. Each trial builds the SSA model with one
(alpha, beta, gamma[, learning rate]) drawn from the configured ranges, trains
it for a few epochs and scores it by validation accuracy on examples held out
of the training split (never the test split).

A search lives in ``<directory>/<project_name>/``: KerasTuner's own state
(``oracle.json``, ``trial_*/``), ``search.json`` (the settings, so a rerun can
tell it resumes the same search), and the report: ``results.csv`` (one row per
trial), ``sensitivity.png`` (validation accuracy against each coefficient) and
``best.flags`` (the best configuration, for ``python -m ssa_tf.train
--flagfile=...``). Rerunning the same command resumes: finished trials are
kept, an interrupted one is run again.

Importing this module does not start TensorFlow, so the CLI checks its flags
first; TensorFlow and KerasTuner are imported on first use.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import time

from ssa_tf import config as cfg_lib

TUNERS = ("random", "bayesian", "hyperband")
STRATEGIES = ("one_device", "mirrored")
# The seed's (alpha, beta, gamma), and ranges two decades either side of them
# for the log-uniform beta and gamma; alpha (the CE weight) is linear.
SEED_COEFFICIENTS = {"alpha": 1.0, "beta": 0.01, "gamma": 0.1}
DEFAULT_RANGES = {"alpha": (0.1, 2.0), "beta": (1e-4, 1.0), "gamma": (1e-3, 10.0)}
LOG_SAMPLED = ("beta", "gamma", "learning_rate")
OBJECTIVE = "val_accuracy"
# The tuned run's settings, as flags of both tuning/search.py and ssa_tf.train
# (best.flags repeats them); mode is ssa, the coefficients are searched.
RUN_FIELDS = ("dataset", "data_dir", "manual_dir", "label", "image_size", "validation_split",
              "max_train_examples", "augment", "model", "batch_size", "norm", "activation",
              "head_init", "feedback", "feedback_spatial", "feedback_init", "seed")
CSV_COLUMNS = ("trial", "alpha", "beta", "gamma", "lr", "val_accuracy", "epochs", "status",
               "seconds", "reason")
_TRIAL_RECORD = "ssa_trial.json"  # our per-trial sidecar: seconds and epochs


# --------------------------------------------------------------------------
# Settings and validation (no TensorFlow).
# --------------------------------------------------------------------------

@dataclasses.dataclass
class SearchConfig:
    """One coefficient search: the run it tunes plus how to search."""

    run: cfg_lib.RunConfig  # dataset, model, norm, feedback, seed, ...; mode is ssa
    tuner: str = "random"
    max_trials: int = 10
    epochs_per_trial: int = 3  # Hyperband: the most epochs any trial gets
    directory: str = os.path.join("runs", "tuning")
    project_name: str | None = None  # None: <dataset>-<model>-<tuner>
    alpha_range: tuple = DEFAULT_RANGES["alpha"]
    beta_range: tuple = DEFAULT_RANGES["beta"]
    gamma_range: tuple = DEFAULT_RANGES["gamma"]
    learning_rate_range: tuple | None = None  # None: the rate is fixed (run.learning_rate)
    strategy: str = "one_device"
    max_consecutive_failed_trials: int = 3

    @property
    def project(self) -> str:
        name = self.project_name or f"{self.run.dataset}-{self.run.model}-{self.tuner}"
        return os.path.join(self.directory, name)

    def ranges(self) -> dict:
        ranges = {"alpha": self.alpha_range, "beta": self.beta_range, "gamma": self.gamma_range}
        if self.learning_rate_range is not None:
            ranges["learning_rate"] = self.learning_rate_range
        return ranges

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_json(cls, d: dict) -> "SearchConfig":
        """Inverse of ``to_json``; fields this version does not know are dropped."""
        def fields(klass, values):
            known = {f.name for f in dataclasses.fields(klass)}
            return {k: tuple(v) if isinstance(v, list) else v
                    for k, v in values.items() if k in known and k != "run"}

        return cls(run=cfg_lib.RunConfig(**fields(cfg_lib.RunConfig, d["run"])),
                   **fields(cls, d))


def parse_range(name: str, values) -> tuple | None:
    """``["1e-4", "1"]`` -> (1e-4, 1.0); an empty list -> None. ValueError if malformed."""
    if not values:
        return None
    try:
        lo, hi = (float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{name}_range must be two numbers LOW,HIGH, got {','.join(values)}")
    return lo, hi


def validate(cfg: SearchConfig) -> str | None:
    """The first problem with ``cfg`` as one line, or None."""
    problem = cfg_lib.validate(cfg.run)
    if problem:
        return problem
    if cfg.run.mode != "ssa":
        return "the coefficient search tunes SSA's loss weights; --mode must be ssa"
    for name, value, valid in (("tuner", cfg.tuner, TUNERS), ("strategy", cfg.strategy, STRATEGIES)):
        if value not in valid:
            return f"--{name}={value!r} is not valid; choose from: {', '.join(valid)}"
    if cfg.run.seed < 1:
        # KerasTuner reads seed 0 as "no seed" and draws a random one
        return f"--seed must be >= 1, got {cfg.run.seed}"
    problem = cfg_lib.check_minimums(cfg, [("max_trials", 1, ""), ("epochs_per_trial", 1, ""),
                                           ("max_consecutive_failed_trials", 1, "")])
    if problem:
        return problem
    for name, (lo, hi) in cfg.ranges().items():
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            return f"--{name}_range must be LOW,HIGH with LOW <= HIGH, got {lo:g},{hi:g}"
        if name in LOG_SAMPLED and lo <= 0:
            return f"--{name}_range is sampled on a log scale and must be > 0, got {lo:g},{hi:g}"
        if lo < 0 or hi <= 0:
            return f"--{name}_range must be >= 0 and not all 0, got {lo:g},{hi:g}"
    if cfg.learning_rate_range is not None and cfg.run.learning_rate is not None:
        return "give --learning_rate (fixed) or --learning_rate_range (searched), not both"
    if not cfg.run.validation_split > 0:
        return ("--validation_split must be > 0: trials are scored on a part held out of the "
                "training split, never on the test split")
    return None


# Settings that change what a trial means; the rest (trial budget, strategy,
# where the data lives) may differ between the runs of one search.
_RESUMABLE_CHANGES = ("max_trials", "strategy", "max_consecutive_failed_trials", "directory",
                      "project_name")


def _search_identity(cfg_json: dict) -> dict:
    d = {k: v for k, v in cfg_json.items() if k not in _RESUMABLE_CHANGES}
    d["run"] = {k: v for k, v in d["run"].items()
                if k not in ("data_dir", "manual_dir", "workdir")}
    return d


def check_resumable(cfg: SearchConfig):
    """Raise ``UsageError`` if the project holds a search with other settings.

    KerasTuner reloads its recorded search space whatever the code asks, so
    resuming with other ranges or another dataset would silently mix trials.
    """
    path = os.path.join(cfg.project, "search.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = _search_identity(json.load(f)["config"])
    new = _search_identity(cfg.to_json())
    diff = list(_diff_keys(old, new))
    if diff:
        raise cfg_lib.UsageError(
            f"{cfg.project} holds a search with other settings ({', '.join(diff)}); rerun with the "
            f"same flags to resume it, or choose another --project_name")


def _diff_keys(old, new, prefix=""):
    # keys on one side only are settings another version of the code lacks
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _diff_keys(a, b, prefix=f"{key}.")
        elif a != b:
            yield f"{prefix}{key}: {a} -> {b}"


# --------------------------------------------------------------------------
# Data: the training split, minus the validation part that scores the trials.
# --------------------------------------------------------------------------

def load_data(cfg: SearchConfig):
    """``data.load`` of the tuned run, with ``validation`` held out of train.

    ``validate`` guarantees ``validation_split > 0``; the test split is never
    used to score a trial.
    """
    from ssa_tf import data as data_lib

    run = cfg.run
    spec = data_lib.load(run.dataset, run.batch_size, data_dir=run.data_dir, seed=run.seed,
                         augment=run.augment, max_train_examples=run.max_train_examples,
                         validation_split=run.validation_split, label=run.label,
                         manual_dir=run.manual_dir, image_size=run.image_size,
                         synthetic_shape=run.synthetic_shape,
                         synthetic_classes=run.synthetic_classes)
    assert spec.validation is not None, "validation_split > 0 must give a validation split"
    return spec


# --------------------------------------------------------------------------
# KerasTuner: the hypermodel and the tuners (imported on first use).
# --------------------------------------------------------------------------

@functools.cache
def keras_tuner_parts():
    """``SimpleNamespace(SSAHyperModel, Diverged, TUNER_CLASSES)``.

    Defined on first use because subclassing KerasTuner imports TensorFlow,
    and the CLI must check its flags before that.
    """
    import types

    import keras
    import keras_tuner
    import numpy as np

    from ssa_tf import run as run_lib
    from ssa_tf.trainer import compile_model

    class Diverged(keras_tuner.errors.FailedTrialError):
        """A trial whose loss became NaN or infinite: failed, not retried."""

        def __init__(self, message, epochs):
            super().__init__(message)
            self.epochs = epochs

    class SSAHyperModel(keras_tuner.HyperModel):
        """The SSA model of ``run``, its loss weights (and rate) drawn from ``ranges``.

        Every trial starts from the same initialization (``run.seed``) and
        sees the same data order, so trials differ by their coefficients only.
        ``load_data()`` returns a ``DatasetSpec`` with a ``validation`` split.
        """

        def __init__(self, run, input_shape, num_classes, ranges, load_data):
            super().__init__(name="ssa")
            self.run, self.input_shape, self.num_classes = run, input_shape, num_classes
            self.ranges = dict(ranges)
            self.load_data = load_data

        def build(self, hp):
            defaults = {**SEED_COEFFICIENTS, "learning_rate": self.run.resolved_learning_rate()}
            values = {name: _hyperparameter(hp, name, bounds, defaults[name])
                      for name, bounds in self.ranges.items()}
            cfg = dataclasses.replace(self.run, **values)
            model = run_lib.make_model(cfg, self.input_shape, self.num_classes)
            return compile_model(model, cfg.resolved_learning_rate())

        def fit(self, hp, model, callbacks=(), **kwargs):
            # New pipelines for every trial: one reshuffles (and re-augments)
            # on each pass, so reused across trials it would give each trial
            # another order, by its place in the search (and a resumed
            # search other numbers than an uninterrupted one).
            data = self.load_data()
            # TerminateOnNaN ends a diverging trial at once instead of after
            # all its epochs; the NaN loss it leaves marks the trial failed.
            callbacks = [*callbacks, keras.callbacks.TerminateOnNaN()]
            history = model.fit(data.train, validation_data=data.validation,
                                callbacks=callbacks, **kwargs)
            # val_loss too: weights blown up to inf give NaN logits, whose
            # argmax still scores a chance-level val_accuracy
            for epoch, logs in zip(history.epoch, _per_epoch(history.history)):
                for key in ("loss", "val_loss"):
                    if key in logs and not np.isfinite(logs[key]):
                        raise Diverged(f"{key} diverged to {logs[key]} in epoch {epoch + 1}",
                                       epoch + 1)
            return history

    def _per_epoch(history):
        return [dict(zip(history, values)) for values in zip(*history.values())]

    def _hyperparameter(hp, name, bounds, default):
        lo, hi = bounds
        if lo == hi:
            return hp.Fixed(name, lo)
        return hp.Float(name, lo, hi, sampling="log" if name in LOG_SAMPLED else "linear",
                        default=min(max(default, lo), hi))

    class _Recording:
        """Writes each trial's wall-clock seconds and epochs beside KerasTuner's record."""

        def run_trial(self, trial, *args, **kwargs):
            start = time.perf_counter()
            record = {"epochs": None}
            try:
                histories = super().run_trial(trial, *args, **kwargs)
                # History.epoch counts from initial_epoch (Hyperband's later rounds)
                record["epochs"] = max(h.epoch[-1] + 1 for h in histories if h.epoch)
                return histories
            except Exception as e:
                record["epochs"] = getattr(e, "epochs", None)
                raise
            finally:
                record["seconds"] = round(time.perf_counter() - start, 2)
                _write_json(os.path.join(self.get_trial_dir(trial.trial_id), _TRIAL_RECORD), record)

    tuner_classes = {
        "random": type("RandomSearch", (_Recording, keras_tuner.RandomSearch), {}),
        "bayesian": type("BayesianOptimization", (_Recording, keras_tuner.BayesianOptimization), {}),
        "hyperband": type("Hyperband", (_Recording, keras_tuner.Hyperband), {}),
    }
    return types.SimpleNamespace(SSAHyperModel=SSAHyperModel, Diverged=Diverged,
                                 TUNER_CLASSES=tuner_classes)


def make_tuner(cfg: SearchConfig, hypermodel, distribution_strategy=None):
    """The KerasTuner tuner of ``cfg.tuner``, resuming ``cfg.project`` if it exists."""
    import keras_tuner

    common = dict(hypermodel=hypermodel,
                  objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
                  seed=cfg.run.seed, max_consecutive_failed_trials=cfg.max_consecutive_failed_trials,
                  distribution_strategy=distribution_strategy,
                  directory=os.path.dirname(cfg.project) or ".",
                  project_name=os.path.basename(cfg.project),
                  overwrite=False)  # resume a search found in the project
    cls = keras_tuner_parts().TUNER_CLASSES[cfg.tuner]
    if cfg.tuner == "hyperband":
        # brackets repeat (hyperband_iterations=None) until --max_trials, so
        # the budget means the same thing for every tuner
        tuner = cls(max_epochs=cfg.epochs_per_trial, factor=3, hyperband_iterations=None,
                    **common)
        tuner.oracle.max_trials = cfg.max_trials
        return tuner
    return cls(max_trials=cfg.max_trials, **common)


class SearchFailed(Exception):
    """The search stopped because too many trials in a row failed."""


def _check_tensorboard():
    # KerasTuner 1.4.8 imports TensorBoard's hparams plugin in every trial;
    # without it each trial fails and the search ends with scores of None.
    try:
        import tensorboard.plugins.hparams.api  # noqa: F401
    except ImportError as e:
        raise cfg_lib.UsageError(f"KerasTuner needs TensorBoard ({e}); install it with "
                                 f"`pip install tensorboard==2.21.0`")


def run_search(cfg: SearchConfig, callbacks=(), verbose=2) -> dict:
    """Run (or resume) the search, then write the report; return ``report``'s summary.

    Raises ``UsageError`` for a project holding another search, a missing
    dataset (``DataError``) or a missing TensorBoard, and ``SearchFailed``
    after ``max_consecutive_failed_trials`` failures in a row (the report is
    written first).
    """
    check_resumable(cfg)
    _check_tensorboard()
    import tensorflow as tf

    data = load_data(cfg)  # shapes and split names; a missing dataset fails here
    os.makedirs(cfg.project, exist_ok=True)
    _write_json(os.path.join(cfg.project, "search.json"),
                {"config": cfg.to_json(), "train_split": data.train_split,
                 "validation_split": data.validation_split})

    strategy = None
    if cfg.strategy == "mirrored":
        # on a CPU-only machine this is one replica unless logical devices are set up
        strategy = tf.distribute.MirroredStrategy()
        if verbose:
            print(f"MirroredStrategy: {strategy.num_replicas_in_sync} replica(s)")
    hypermodel = keras_tuner_parts().SSAHyperModel(cfg.run, data.input_shape, data.num_classes,
                                                   cfg.ranges(), functools.partial(load_data, cfg))
    tuner = make_tuner(cfg, hypermodel, strategy)
    failure = None
    try:
        # no data here: the hypermodel loads it for each trial
        tuner.search(epochs=cfg.epochs_per_trial, callbacks=list(callbacks), verbose=verbose)
    except RuntimeError as e:
        if not str(e).startswith("Number of consecutive failures"):
            raise
        failure = e
    # the oracle does not save the trial that hit the failure limit; report
    # what it holds in memory
    states = [t.get_state() for t in tuner.oracle.trials.values()]
    summary = report(cfg.project, states)
    if failure is not None:
        raise SearchFailed(f"{cfg.max_consecutive_failed_trials} trials in a row failed, the last "
                           f"with: {_reason(str(failure))}; results in "
                           f"{cfg.project}/results.csv (raise --max_consecutive_failed_trials or "
                           f"narrow the ranges)")
    return summary


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
        record_path = os.path.join(project, f"trial_{state['trial_id']}", _TRIAL_RECORD)
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
            "trial": state["trial_id"],
            "alpha": values.get("alpha", cfg.run.resolved().alpha),
            "beta": values.get("beta", cfg.run.resolved().beta),
            "gamma": values.get("gamma", cfg.run.resolved().gamma),
            "lr": values.get("learning_rate", cfg.run.resolved_learning_rate()),
            "val_accuracy": float(score) if status == "COMPLETED" and score is not None else None,
            "epochs": epochs,
            "status": status,
            "seconds": record.get("seconds"),
            "reason": _reason(state.get("message")) if status != "COMPLETED" else "",
        })
    return rows


def _reason(message) -> str:
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
    done = [r for r in rows if r["val_accuracy"] is not None]
    best = max(done, key=lambda r: r["val_accuracy"]) if done else None
    plot_sensitivity(rows, cfg, paths["plot"], best)
    failed = sum(r["status"] == "FAILED" for r in rows)
    print(f"{len(rows)} trials in {project}: {len(done)} completed, {failed} failed, "
          f"{len(rows) - len(done) - failed} unfinished")
    for r in rows:
        if r["status"] == "FAILED":
            print(f"  trial {r['trial']} failed: {r['reason']}")
    if best is None:
        if os.path.exists(paths["flags"]):
            os.remove(paths["flags"])
        print("no completed trial; no best configuration")
        return {"rows": rows, "best": None, "paths": paths}
    text = best_flags(cfg, best, len(rows), saved)
    _write_text(paths["flags"], text)
    print(f"best: trial {best['trial']}, val_accuracy {best['val_accuracy']:.4f} after "
          f"{best['epochs']} epochs, alpha={best['alpha']:.4g} beta={best['beta']:.4g} "
          f"gamma={best['gamma']:.4g} lr={best['lr']:.4g}")
    print(f"train it: python -m ssa_tf.train --flagfile={paths['flags']} --workdir=runs/best")
    return {"rows": rows, "best": best, "paths": paths}


def best_flags(cfg: SearchConfig, best: dict, n_trials: int, splits: dict) -> str:
    """A flags file for ``python -m ssa_tf.train --flagfile=``: the best trial's run.

    It holds the tuned run's flags (``RUN_FIELDS``, the same validation split
    included), the trial's epochs and its exact coefficients and rate; all but
    ``max_train_examples``, which a later flag could not unset: it is a comment.
    """
    run = cfg.run
    lines = [
        f"# Best of {n_trials} trials of the coefficient search {cfg.project}:",
        f"# val_accuracy {best['val_accuracy']:.4f} (trial {best['trial']}, {best['epochs']} epochs; "
        f"trained on {splits['train_split']}, scored on {splits['validation_split']}).",
        "# Flags after --flagfile win, e.g.:",
        "#   python -m ssa_tf.train --flagfile=THIS_FILE --epochs=30 --workdir=runs/best",
    ]
    if run.max_train_examples is not None:
        lines.append(f"# The trials used --max_train_examples={run.max_train_examples}; add it "
                     f"to train on the same examples.")
    lines.append("--mode=ssa")
    for name in RUN_FIELDS:
        value = getattr(run, name)
        if name == "max_train_examples":
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif value is not None:
            lines.append(f"--{name}={value}")
    lines.append(f"--epochs={best['epochs']}")
    # repr: the exact float, so the file reproduces the trial bit for bit
    lines += [f"--{flag}={float(best[column])!r}" for flag, column in
              (("alpha", "alpha"), ("beta", "beta"), ("gamma", "gamma"), ("learning_rate", "lr"))]
    return "\n".join(lines) + "\n"


def plot_sensitivity(rows, cfg: SearchConfig, path, best=None):
    """Validation accuracy against each coefficient, one panel each (seed Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cfg.ranges())
    columns = {"learning_rate": "lr"}
    done = [r for r in rows if r["val_accuracy"] is not None]
    failed = [r for r in rows if r["status"] == "FAILED"]
    epochs = sorted({r["epochs"] or 0 for r in done})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), sharey=True,
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes[0], names):
        col = columns.get(name, name)
        for k, e in enumerate(epochs):
            pts = [r for r in done if (r["epochs"] or 0) == e]
            color = cmap(k / max(len(epochs) - 1, 1)) if len(epochs) > 1 else "tab:blue"
            ax.scatter([r[col] for r in pts], [r["val_accuracy"] for r in pts], s=28,
                       color=color, label=f"{e} epoch{'s' * (e != 1)}" if len(epochs) > 1 else "trial")
        if failed:
            # diverged or crashed trials sit at zero: where the range breaks training
            ax.scatter([r[col] for r in failed], [0.0] * len(failed), marker="x", color="tab:red",
                       label="failed")
        if best is not None:
            ax.scatter([best[col]], [best["val_accuracy"]], marker="*", s=180, color="tab:orange",
                       edgecolor="k", zorder=3, label="best")
        if name in SEED_COEFFICIENTS:
            ax.axvline(SEED_COEFFICIENTS[name], ls="--", color="gray", lw=1, label="seed value")
        if name in LOG_SAMPLED:
            ax.set_xscale("log")
        lo, hi = cfg.ranges()[name]
        if lo < hi:
            pad = (hi / lo) ** 0.05 if name in LOG_SAMPLED else 0.05 * (hi - lo)
            ax.set_xlim(*((lo / pad, hi * pad) if name in LOG_SAMPLED else (lo - pad, hi + pad)))
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"SSA loss-weight sensitivity: {cfg.run.model} on {cfg.run.dataset}, "
                 f"{len(done)} of {len(rows)} trials completed", fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _write_csv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})
    os.replace(tmp, path)


def _write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path, obj):
    _write_text(path, json.dumps(obj, indent=2))
