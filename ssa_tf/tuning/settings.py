"""The coefficient search's settings and their validation (no TensorFlow).

``python tuning/search.py`` checks its flags here before TensorFlow starts;
``ssa_tf.tuning.search`` runs the search and ``ssa_tf.tuning.report``
writes its report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from ssa_tf import config as cfg_lib
from ssa_tf.config import legacy
from ssa_tf.config.schema import canonical_model_settings
from ssa_tf.methods import registry

TUNERS = ("random", "bayesian", "hyperband")
STRATEGIES = ("one_device", "mirrored")
# The paper's (alpha, beta, gamma), and ranges two decades either side of them
# for the log-uniform beta and gamma; alpha (the CE weight) is linear.
PAPER_COEFFICIENTS = {"alpha": 1.0, "beta": 0.01, "gamma": 0.1}
DEFAULT_RANGES = {"alpha": (0.1, 2.0), "beta": (1e-4, 1.0), "gamma": (1e-3, 10.0)}
LOG_SAMPLED = ("beta", "gamma", "learning_rate")
# the setting each searched value is (a trial's hyperparameter names are KerasTuner's)
TUNED = {"alpha": "rule.alpha", "beta": "rule.beta", "gamma": "rule.gamma",
         "learning_rate": "train.learning_rate"}
OBJECTIVE = "val_accuracy"
# The tuned run's settings that best.flags always names, at their defaults too (it
# names every other setting of the trial's run that differs from its default)
RUN_FIELDS = ("data.dataset", "data.data_dir", "data.manual_dir", "data.label",
              "data.image_size", "data.validation_split", "data.max_train_examples",
              "data.augment", "model.model", "model.norm", "model.activation", "model.head_init",
              "model.conv_factorization",
              "rule.feedback", "rule.feedback_spatial", "rule.feedback_init",
              "train.batch_size", "seed")
# "trial" is KerasTuner's "Running Trial #N" (from 1), the trial's one number in what the
# search prints; "trial_id" its folder's trial_<id>, for finding the folder
CSV_COLUMNS = ("trial", "trial_id", "alpha", "beta", "gamma", "lr", "val_accuracy", "epochs",
               "status", "seconds", "reason")
TRIAL_RECORD = "ssa_trial.json"  # our per-trial sidecar: seconds and epochs


# --------------------------------------------------------------------------
# Settings and validation (no TensorFlow).
# --------------------------------------------------------------------------

@dataclasses.dataclass
class SearchConfig:
    """One coefficient search: the run it tunes plus how to search."""

    run: cfg_lib.RunConfig  # dataset, model, rule (ssa unless --rule), feedback, seed, ...
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
        model = os.path.splitext(os.path.basename(self.run.model.model))[0]  # a user's file
        name = self.project_name or f"{self.run.data.dataset}-{model}-{self.tuner}"
        return os.path.join(self.directory, name)

    def ranges(self) -> dict:
        ranges = {"alpha": self.alpha_range, "beta": self.beta_range, "gamma": self.gamma_range}
        if self.learning_rate_range is not None:
            ranges["learning_rate"] = self.learning_rate_range
        return ranges

    def to_json(self) -> dict:
        """The settings, the tuned run's as its record (``RunConfig.settings``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run"}
        return json.loads(json.dumps({**d, "run": self.run.settings()}, default=list))

    def trial_run(self, values: dict, epochs: int, workdir: str | None = None
                  ) -> cfg_lib.RunConfig:
        """The run one trial trains, exactly as ``python -m ssa_tf.train`` trains it: the
        tuned run with the trial's drawn ``values`` (alpha, beta, gamma[, learning_rate]),
        ``epochs`` epochs and the search's strategy, in ``workdir`` (started over there:
        an interrupted trial runs again from the start). ``best.flags`` writes this run."""
        drawn = {TUNED[name]: float(values[name]) for name in self.ranges()}
        return self.run.replace({**drawn, "train.epochs": int(epochs),
                                 "runtime.strategy": self.strategy,
                                 "runtime.workdir": workdir,
                                 "runtime.restart": workdir is not None})

    @classmethod
    def from_json(cls, d: dict) -> "SearchConfig":
        """Inverse of ``to_json`` (of either age: ``config.legacy``); fields this version
        does not know are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        mine = {k: tuple(v) if isinstance(v, list) else v
                for k, v in d.items() if k in known and k != "run"}
        runs = set(cfg_lib.RunConfig().settings())
        run = {k: v for k, v in legacy.read_settings(d["run"]).items() if k in runs}
        return cls(run=cfg_lib.RunConfig.from_settings(run), **mine)


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
    # the trials' runs train under --strategy (runtime.logical_cpus must suit it); an
    # unknown one is named below, among the search's own
    run = (cfg.run.replace({"runtime.strategy": cfg.strategy}) if cfg.strategy in STRATEGIES
           else cfg.run)
    problem = cfg_lib.validate(run)
    if problem:
        return problem
    if not cfg.run.rule_spec.tunes_loss_weights:
        takers = "|".join(n for n, r in registry.RULES.items() if r.tunes_loss_weights)
        return (f"the coefficient search tunes the loss weights alpha, beta, gamma; "
                f"--rule={cfg.run.rule.name} has none (choose --rule={takers})")
    for name, value, valid in (("tuner", cfg.tuner, TUNERS), ("strategy", cfg.strategy, STRATEGIES)):
        if value not in valid:
            return f"--{name}={value!r} is not valid; choose from: {', '.join(valid)}"
    if cfg.run.seed < 1:
        # KerasTuner reads seed 0 as "no seed" and draws a random one
        return f"--seed must be >= 1, got {cfg.run.seed}"
    problem = cfg_lib.check_minimums(
        [(f"--{n}", getattr(cfg, n), 1, "") for n in ("max_trials", "epochs_per_trial",
                                                      "max_consecutive_failed_trials")])
    if problem:
        return problem
    for name, (lo, hi) in cfg.ranges().items():
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            return f"--{name}_range must be LOW,HIGH with LOW <= HIGH, got {lo:g},{hi:g}"
        if name in LOG_SAMPLED and lo <= 0:
            return f"--{name}_range is sampled on a log scale and must be > 0, got {lo:g},{hi:g}"
        if lo < 0 or hi <= 0:
            return f"--{name}_range must be >= 0 and not all 0, got {lo:g},{hi:g}"
    if cfg.learning_rate_range is not None and cfg.run.train.learning_rate is not None:
        return "give --learning_rate (fixed) or --learning_rate_range (searched), not both"
    if not cfg.run.data.validation_split > 0:
        return ("data.validation_split must be > 0: trials are scored on a part held out of "
                "the training split, never on the test split")
    return None


# Settings that change what a trial means; the rest (trial budget, where the data
# lives) may differ between the runs of one search. The strategy is the trials' runs'
# (best.flags names it): another one may order the data otherwise (docs/ARCHITECTURE.md,
# "Distributed training", "Data order").
_RESUMABLE_CHANGES = ("max_trials", "max_consecutive_failed_trials", "directory",
                      "project_name")


def _search_identity(cfg_json: dict) -> dict:
    d = {k: v for k, v in cfg_json.items() if k not in _RESUMABLE_CHANGES}
    # norm, activation, factorization: None (this version) and the built-in default agree
    run = canonical_model_settings(legacy.read_settings(d["run"]))
    d["run"] = {k: v for k, v in run.items()
                if k not in ("data.data_dir", "data.manual_dir", "runtime.workdir")}
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


def check_writable(cfg: SearchConfig):
    """Raise ``UsageError`` if the search's folder cannot be created or written to.

    Probes the nearest existing ancestor of the project folder with a real
    temporary file (``os.access`` says yes to root on a read-only mount) and
    creates nothing."""
    import tempfile

    path = os.path.abspath(cfg.project)
    while not os.path.isdir(path):
        if os.path.exists(path):
            raise cfg_lib.UsageError(f"--directory: {path} is a file, not a folder")
        path = os.path.dirname(path)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ssa_tf_probe_"):
            pass
    except OSError as e:
        raise cfg_lib.UsageError(f"--directory={cfg.directory}: cannot write in {path} "
                                 f"({e.strerror or e})") from None
