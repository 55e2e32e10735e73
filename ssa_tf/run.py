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
from ssa_tf.config import RunConfig, UsageError
from ssa_tf.rank import RankPruning
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
    base = cfg.resolved_learning_rate()
    if not cfg.lr_decay_epochs:
        return base
    boundaries = [int(e) * steps_per_epoch for e in cfg.lr_decay_epochs]
    values = [base * cfg.lr_decay_factor ** k for k in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_model(cfg: RunConfig, input_shape, num_classes) -> SSAModel:
    cfg = cfg.resolved()
    keras.utils.set_random_seed(cfg.seed)
    model = SSAModel(cfg.model, input_shape, num_classes, mode=cfg.mode, norm=cfg.norm,
                     alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma,
                     feedback_route=cfg.feedback, feedback_spatial=cfg.feedback_spatial,
                     feedback_init=cfg.feedback_init, feedback_tracking=cfg.feedback_tracking,
                     chain_gating=cfg.chain_gating, seed=cfg.seed)
    return model


def train(cfg: RunConfig, verbose=1, extra_callbacks=()) -> dict:
    """Train per ``cfg``; write the workdir; return the summary dict."""
    # first: MultiWorkerMirroredStrategy must exist before any other TensorFlow op
    placement = distribute.setup(cfg.strategy, cfg.logical_cpus, cfg.workdir, cfg.batch_size)
    workdir = placement.workdir  # the chief's is cfg.workdir; other workers' is temporary
    os.makedirs(workdir, exist_ok=True)
    _atomic_write_text(os.path.join(workdir, "config.json"),
                       json.dumps(dataclasses.asdict(cfg.resolved()), indent=2, default=list))

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
    callbacks = [timer,
                 keras.callbacks.CSVLogger(os.path.join(workdir, "metrics.csv")),
                 keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"),
                                             write_graph=False),
                 *extra_callbacks]
    if cfg.rank_tau is not None and cfg.mode == "ssa":
        unknown = sorted(set(cfg.rank_exempt) - set(model.ranks()))
        if unknown:
            raise UsageError(f"--rank_exempt names unknown SVD layers {unknown}; the model has: "
                             f"{', '.join(model.ranks())}")
        callbacks.insert(1, RankPruning(cfg.rank_tau, cfg.rank_start, cfg.rank_interval,
                                        cfg.rank_min, cfg.rank_exempt, workdir=workdir,
                                        verbose=int(placement.chief)))
    history = placement.fit(model, ds.train, validation, cfg.epochs, callbacks, verbose, timer)
    final = placement.evaluate(model, ds.test)
    test_loss, test_acc = final["loss"], final["accuracy"]

    tmp = os.path.join(workdir, "model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(workdir, "model.keras"))

    summary = {
        "mode": cfg.mode, "model": cfg.model, "dataset": cfg.dataset, "epochs": cfg.epochs,
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
    if placement.multi_worker:
        summary["resumed_from_epoch"] = placement.resumed_from
    _atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    placement.close()
    return summary
