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

import functools
import os
import time

from ssa_tf import config as cfg_lib
from ssa_tf import errors
from ssa_tf.tuning.report import reason, report, write_json
from ssa_tf.tuning.settings import (LOG_SAMPLED, OBJECTIVE, SEED_COEFFICIENTS, TRIAL_RECORD,
                                    SearchConfig, check_resumable)

# --------------------------------------------------------------------------
# Data: the training split, minus the validation part that scores the trials.
# --------------------------------------------------------------------------

def load_data(cfg: SearchConfig):
    """``data.load`` of the tuned run, with ``validation`` held out of train.

    ``validate`` guarantees ``validation_split > 0``; the test split is never
    used to score a trial.
    """
    from ssa_tf.training.run import load_data as load_run_data

    spec = load_run_data(cfg.run)
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

    from ssa_tf.training.model import compile_model, model_from_config

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
            defaults = {**SEED_COEFFICIENTS, "learning_rate": self.run.learning_rate()}
            values = {name: _hyperparameter(hp, name, bounds, defaults[name])
                      for name, bounds in self.ranges.items()}
            cfg = self.run.replace(**values)
            model = model_from_config(cfg, self.input_shape, self.num_classes)
            return compile_model(model, cfg.learning_rate())

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
                write_json(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_RECORD), record)

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


class SearchFailed(errors.Error):
    """The search stopped because too many trials in a row failed (exit status 1)."""


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
    write_json(os.path.join(cfg.project, "search.json"),
                {"config": cfg.to_json(), "train_split": data.train_split,
                 "validation_split": data.validation_split,
                 "validation_examples": data.validation_examples})

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
                           f"with: {reason(str(failure))}; results in "
                           f"{cfg.project}/results.csv (raise --max_consecutive_failed_trials or "
                           f"narrow the ranges)")
    return summary
