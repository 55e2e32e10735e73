"""One training run, end to end: data, model, fit, evaluation, workdir outputs.

The workdir receives the final model (``model.keras``), TensorBoard logs,
``metrics.csv`` (one row per epoch), ``config.json`` and ``summary.json``.
Files are written under a temporary name and renamed, so a failure never
leaves a half-written output behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np

from ssa_tf import data as data_lib
from ssa_tf import distribute
from ssa_tf import reliability
from ssa_tf.config import RunConfig, UsageError
from ssa_tf.rank import RankPruning, WarmupAfterCuts, cut_epochs
from ssa_tf.trainer import SSAModel, compile_model


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each training epoch (evaluation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _atomic_write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def learning_rate_schedule(cfg: RunConfig, steps_per_epoch: int):
    """The rate: constant, decayed at ``lr_decay_epochs``, and warmed up again
    after each rank cut when ``rank_warmup_steps`` > 0."""
    rate = cfg.resolved_learning_rate()
    if cfg.lr_decay_epochs:
        boundaries = [int(e) * steps_per_epoch for e in cfg.lr_decay_epochs]
        values = [rate * cfg.lr_decay_factor ** k for k in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if cfg.rank_warmup_steps and cfg.rank_tau is not None and cfg.rule.svd:
        cuts = [e * steps_per_epoch
                for e in cut_epochs(cfg.epochs, cfg.rank_start, cfg.rank_interval)]
        rate = WarmupAfterCuts(rate, cuts, cfg.rank_warmup_steps)
    return rate


def make_model(cfg: RunConfig, input_shape, num_classes) -> SSAModel:
    keras.utils.set_random_seed(cfg.seed)
    return SSAModel(cfg.model, input_shape, num_classes, mode=cfg.mode, norm=cfg.norm,
                    activation=cfg.activation, head_init=cfg.head_init, seed=cfg.seed,
                    **cfg.method_options())



def train(cfg: RunConfig, verbose=1, extra_callbacks=()) -> dict:
    """Train per ``cfg``; write the workdir; return the summary dict.

    With a workdir the run is checkpointed after every epoch (and every
    ``checkpoint_steps`` steps) and resumes from its last checkpoint when
    started again with the same settings; the workdir is locked meanwhile.
    """
    # first: MultiWorkerMirroredStrategy must exist before any other TensorFlow op
    placement = distribute.setup(cfg.strategy, cfg.logical_cpus, cfg.workdir, cfg.batch_size,
                                 checkpoint_steps=cfg.checkpoint_steps,
                                 keep_checkpoints=cfg.keep_checkpoints)
    workdir = placement.workdir  # the chief's is cfg.workdir; other workers' is temporary
    lock = reliability.WorkdirLock(workdir)
    lock.acquire()
    try:
        return _train_locked(cfg, placement, workdir, verbose, extra_callbacks)
    finally:
        lock.release()


def _train_locked(cfg, placement, workdir, verbose, extra_callbacks):
    state = reliability.prepare_workdir(dataclasses.replace(cfg, workdir=workdir),
                                        chief=placement.chief)
    os.makedirs(workdir, exist_ok=True)
    if state != "resume":
        _atomic_write_text(os.path.join(workdir, "config.json"),
                           json.dumps(cfg.record(), indent=2, default=list))

    # TensorFlow combines each op seed with the global one: set it before the
    # input pipeline is built, or a run's data order depends on what ran
    # earlier in the process (an experiment grid's first run differed from the rest)
    keras.utils.set_random_seed(cfg.seed)
    ds = data_lib.load(cfg.dataset, cfg.batch_size, data_dir=cfg.data_dir, seed=cfg.seed,
                       augment=cfg.augment, max_train_examples=cfg.max_train_examples,
                       validation_split=cfg.validation_split, label=cfg.label,
                       manual_dir=cfg.manual_dir, image_size=cfg.image_size,
                       synthetic_shape=cfg.synthetic_shape,
                       synthetic_classes=cfg.synthetic_classes)
    # tune on the split held out of train when there is one; the final number is the test split's
    validation = ds.validation if ds.validation is not None else ds.test
    with placement.strategy.scope():  # model, optimizer, metrics, rank callback
        model = make_model(cfg, ds.input_shape, ds.num_classes)
        steps = -(-ds.train_examples // cfg.batch_size)
        compile_model(model, learning_rate_schedule(cfg, steps))
    trainable_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))

    timer = EpochTimer()
    log = placement.log
    callbacks = [timer,
                 reliability.divergence_guard(model, cfg.skip_nonfinite_steps, log=log),
                 keras.callbacks.CSVLogger(os.path.join(workdir, "metrics.csv"),
                                           append=state == "resume"),
                 keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"),
                                             write_graph=False),
                 *extra_callbacks]
    if cfg.diagnostics_every and cfg.rule.local:
        from ssa_tf.diagnostics import AlignmentMonitor
        # a fixed evaluation batch, so that the angles compare over training
        x, y = next(iter(ds.test))
        callbacks.append(AlignmentMonitor(np.asarray(x), np.asarray(y), cfg.diagnostics_every,
                                          workdir=workdir if placement.chief else None))
    if cfg.rank_tau is not None and cfg.rule.svd:
        unknown = sorted(set(cfg.rank_exempt) - set(model.ranks()))
        if unknown:
            raise UsageError(f"--rank_exempt names unknown SVD layers {unknown}; the model has: "
                             f"{', '.join(model.ranks())}")
        callbacks.insert(1, RankPruning(cfg.rank_tau, cfg.rank_start, cfg.rank_interval,
                                        cfg.rank_min, cfg.rank_exempt, workdir=workdir,
                                        verbose=int(placement.chief),
                                        feedback=cfg.rank_feedback_cut,
                                        final_cut=cfg.rank_final_cut))
    try:
        history = placement.fit(model, ds.train, validation, cfg.epochs, callbacks, verbose,
                                timer)
    except reliability.Diverged as e:
        done = _checkpoints_note(placement)
        raise reliability.Diverged(f"{e}; {done}") from None
    final = placement.evaluate(model, ds.test)
    test_loss, test_acc = final["loss"], final["accuracy"]

    tmp = os.path.join(workdir, "model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(workdir, "model.keras"))

    summary = {
        "mode": cfg.mode, "card": cfg.card().as_dict(),
        "model": cfg.model, "dataset": cfg.dataset, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "learning_rate": cfg.resolved_learning_rate(),
        "test_accuracy": float(test_acc), "test_loss": float(test_loss),
        "test_split": ds.test_split, "train_split": ds.train_split,
        # history's val_* metrics come from this split
        "validation_split": ds.validation_split or ds.test_split,
        "trainable_params": trainable_params,
        "final_trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "ranks": model.ranks(),
        "epoch_seconds": [round(s, 3) for s in timer.seconds],
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    summary.update(strategy=cfg.strategy, replicas=placement.replicas)
    summary["resumed_from_epoch"] = placement.resumed_from
    summary["resumed_from_step"] = placement.resumed_at[1]
    _atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    placement.close()
    return summary


def _checkpoints_note(placement):
    """Where the last good checkpoint is, for the divergence message."""
    found = distribute._checkpoints_in(placement.backup_dir) if placement.backup_dir else []
    if not found:
        return "no checkpoint was written before it"
    epoch, step = found[-1]
    where = f"epoch {epoch}" + (f", step {step} of the next" if step else "")
    return f"the last good checkpoint ({where}) is kept in {placement.backup_dir}"
