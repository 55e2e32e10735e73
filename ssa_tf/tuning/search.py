"""Coefficient search: KerasTuner sweeps SSA's loss weights alpha, beta, gamma.

    python tuning/search.py --dataset=cifar10 --data_dir=DIR --model=smallconv

The paper's sensitivity analysis (supplementary section 3, Figure 1) finds
accuracy peaks near alpha = 1 and degrades when beta and gamma are too low or
too high; this module runs that search on any model and dataset of
``python -m ssa_tf.train``. Each trial is one run of ``ssa_tf.training.run.train``
(the command line's code: same pipeline, loop and seeding) with one
(alpha, beta, gamma[, learning rate]) drawn from the configured ranges, for a
few epochs, scored by its last epoch's validation accuracy on examples held
out of the training split (never the test split). So ``best.flags``, the
trial's settings, gives the trial's number again on the command line.

A search lives in ``<directory>/<project_name>/``: KerasTuner's own state
(``oracle.json``, ``trial_*/``; each trial's run, a workdir of its own, in
``trial_*/run``), ``search.json`` (the settings, so a rerun can tell it
resumes the same search), and the report: ``results.csv`` (one row per
trial), ``sensitivity.png`` (validation accuracy against each coefficient) and,
when the best trial leads the next by more than the noise band,
``best.flags`` (for ``python -m ssa_tf.train --flagfile=...``). Rerunning the
same command resumes: finished trials are kept, an interrupted one is run
again from its start.

Importing this module does not start TensorFlow, so the CLI checks its flags
first; TensorFlow and KerasTuner are imported on first use.
"""

from __future__ import annotations

import functools
import os
import shutil
import time

from ssa_tf import config as cfg_lib
from ssa_tf import errors
from ssa_tf.tuning.report import reason, report, write_json
from ssa_tf.tuning.settings import (LOG_SAMPLED, OBJECTIVE, PAPER_COEFFICIENTS, TRIAL_RECORD,
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
# KerasTuner: the search space and the tuners (imported on first use).
# --------------------------------------------------------------------------

@functools.cache
def keras_tuner_parts():
    """``SimpleNamespace(SSAHyperModel, Diverged, TUNER_CLASSES)``.

    Defined on first use because subclassing KerasTuner imports TensorFlow,
    and the CLI must check its flags before that.
    """
    import copy
    import types

    import keras
    import keras_tuner
    import numpy as np

    from ssa_tf.training import run as run_lib

    class Diverged(keras_tuner.errors.FailedTrialError):
        """A trial whose loss became NaN or infinite: failed, not retried."""

        def __init__(self, message, epochs):
            super().__init__(message)
            self.epochs = epochs

    class SSAHyperModel(keras_tuner.HyperModel):
        """The search space: the loss weights (and rate) of ``search.run``, drawn from
        ``search.ranges()``.

        ``build(hp)`` declares them and returns the trial's values; the trial itself
        is no model KerasTuner builds and fits but the run ``search.trial_run`` of
        those values, trained by the tuner's ``run_trial``.
        """

        def __init__(self, search):
            super().__init__(name="ssa")
            self.search = search

        def build(self, hp):
            defaults = {**PAPER_COEFFICIENTS, "learning_rate": self.search.run.learning_rate()}
            return {name: _hyperparameter(hp, name, bounds, defaults[name])
                    for name, bounds in self.search.ranges().items()}

    def _hyperparameter(hp, name, bounds, default):
        lo, hi = bounds
        if lo == hi:
            return hp.Fixed(name, lo)
        return hp.Float(name, lo, hi, sampling="log" if name in LOG_SAMPLED else "linear",
                        default=min(max(default, lo), hi))

    class _EpochCount(keras.callbacks.Callback):
        """The epoch (from 1) a run is in, for the record of a trial that diverged."""

        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

    class _TrialRuns:
        """Trains each trial with ``ssa_tf.training.run.train``, the code of
        ``python -m ssa_tf.train``, in ``trial_<id>/run``; writes its wall-clock
        seconds and epochs beside KerasTuner's record.

        KerasTuner's own ``run_trial`` would build and ``model.fit`` the model: a
        pipeline, a loop and a data order other than the command line's, so that
        ``best.flags`` did not reproduce its trial. Hyperband's later
        rounds train again from the start for their ``tuner/epochs`` (not on from
        an earlier round's weights): each trial is one run of ``ssa_tf.train``.
        The score is the last epoch's, as the run's.
        """

        def run_trial(self, trial, callbacks=(), verbose=1):
            start = time.perf_counter()
            record = {"epochs": None}
            search = self.hypermodel.search
            epochs = trial.hyperparameters.values.get("tuner/epochs", search.epochs_per_trial)
            run = search.trial_run(self.hypermodel.build(trial.hyperparameters), epochs,
                                   os.path.join(self.get_trial_dir(trial.trial_id), "run"))
            count = _EpochCount()
            try:
                # what a new process starts from: no layers or names of earlier trials
                keras.backend.clear_session()
                try:
                    # callbacks are copied for each trial, as KerasTuner does
                    summary = run_lib.train(run, verbose=verbose, extra_callbacks=[
                        *copy.deepcopy(list(callbacks)), count])
                except errors.Diverged as e:
                    raise Diverged(str(e), count.epoch) from None
                history = summary["history"]
                # val_loss too: weights blown up to inf give NaN logits, whose argmax
                # still scores a chance-level val_accuracy
                for key in ("loss", "val_loss"):
                    for epoch, value in enumerate(history.get(key, [])):
                        if not np.isfinite(value):
                            raise Diverged(f"{key} diverged to {value} in epoch {epoch + 1}",
                                           epoch + 1)
                record["epochs"] = len(history["loss"])
                # a trial never trains further (an interrupted one starts over): the
                # checkpoint a finished run keeps to be extended is of no use here
                shutil.rmtree(os.path.join(run.runtime.workdir, "backup"), ignore_errors=True)
                return {name: values[-1] for name, values in history.items()}
            except Diverged as e:
                record["epochs"] = e.epochs
                raise
            finally:
                record["seconds"] = round(time.perf_counter() - start, 2)
                write_json(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_RECORD), record)

    tuner_classes = {
        "random": type("RandomSearch", (_TrialRuns, keras_tuner.RandomSearch), {}),
        "bayesian": type("BayesianOptimization", (_TrialRuns, keras_tuner.BayesianOptimization), {}),
        "hyperband": type("Hyperband", (_TrialRuns, keras_tuner.Hyperband), {}),
    }
    return types.SimpleNamespace(SSAHyperModel=SSAHyperModel, Diverged=Diverged,
                                 TUNER_CLASSES=tuner_classes)


def make_tuner(cfg: SearchConfig, hypermodel):
    """The KerasTuner tuner of ``cfg.tuner``, resuming ``cfg.project`` if it exists.

    The trials' runs place themselves (``cfg.strategy``), not KerasTuner."""
    import keras_tuner

    common = dict(hypermodel=hypermodel,
                  objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
                  seed=cfg.run.seed, max_consecutive_failed_trials=cfg.max_consecutive_failed_trials,
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
    # TensorBoard (which holds tf.summary, for the TensorBoard logs of every
    # trial's run; KerasTuner 1.4.8's own run_trial imports its hparams plugin):
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
    data = load_data(cfg)  # shapes and split names; a missing dataset fails here
    os.makedirs(cfg.project, exist_ok=True)
    write_json(os.path.join(cfg.project, "search.json"),
                {"config": cfg.to_json(), "train_split": data.train_split,
                 "validation_split": data.validation_split,
                 "validation_examples": data.validation_examples})

    tuner = make_tuner(cfg, keras_tuner_parts().SSAHyperModel(cfg))
    failure = None
    try:
        # no data here: each trial's run loads it, as python -m ssa_tf.train does
        tuner.search(callbacks=list(callbacks), verbose=verbose)
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
