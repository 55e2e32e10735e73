"""Checkpoints: one folder per finished epoch (or N steps), written atomically, resumed exactly.

``EpochBackup`` is the callback that writes them; ``restore`` brings a model,
its optimizer, the History and the logging callbacks back to the newest
checkpoint every worker has. A rank cut gives variables new shapes, so a
restore first cuts the model to the saved ranks (``rank.cut_to_ranks``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

import numpy as np
import keras
import tensorflow as tf

from ssa_tf.training import rank as rank_lib
from ssa_tf.training import saved as saved_layout
from ssa_tf.training.csvlog import keep_rows
from ssa_tf.training.strategies import is_multi_worker
from ssa_tf.errors import CheckpointError  # noqa: F401  (raised here; its home)

BACKUP_KEEP = 2  # workers can be one checkpoint apart when they die (see agree_on_checkpoint)


# --------------------------------------------------------------------------
# Backups: one folder per finished epoch, written atomically.
# --------------------------------------------------------------------------

def _by_path(variables, what):
    table = {}
    for v in variables:
        if v.path in table:
            raise RuntimeError(f"two {what} variables share the path {v.path!r}; "
                               "a backup could not tell them apart")
        table[v.path] = v
    return table


class EpochBackup(keras.callbacks.Callback):
    """Saves after every epoch (and every ``steps`` steps) what a restarted run
    needs to carry on exactly.

    ``<backup_dir>/epoch-<k>/`` (k epochs done) or ``epoch-<k>-step-<s>/``
    (k epochs and s steps of the next done) holds ``variables.npz`` (the
    model's weights, the optimizer's variables and the metrics' running
    totals, by path) and ``state.json`` (k, s, the SVD ranks, the History so
    far, the rank callback's history and the epoch times of ``timer``). Each
    is written into a temporary folder and renamed into place, so a process
    killed mid-write leaves the previous ones intact; the newest ``keep`` are
    kept.
    """

    def __init__(self, backup_dir, timer=None, steps=0, keep=BACKUP_KEEP):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.backup_dir = backup_dir
        self.timer = timer
        self.steps = int(steps)
        self.keep = int(keep)
        self.resumed_from = 0
        self.resumed_at = (0, 0)
        self._history = None
        self._rankers = []
        self._epoch = 0

    # -- saving ---------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.steps and (batch + 1) % self.steps == 0:
            self._save(self._epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0)

    def _save(self, epoch, step):
        model = self.model
        arrays = {f"model/{p}": v.numpy() for p, v in _by_path(model.weights, "model").items()}
        arrays.update({f"optimizer/{p}": v.numpy()
                       for p, v in _by_path(model.optimizer.variables, "optimizer").items()})
        if step:  # the epoch's running metrics continue after a mid-epoch restore
            arrays.update({f"metrics/{p}": np.asarray(v.numpy()) for p, v in
                           _by_path(model.metrics_variables, "metrics").items()})
        state = {
            "epoch": epoch,
            "step": step,
            "ranks": model.ranks() if hasattr(model, "ranks") else {},
            "history": self._history.history if self._history is not None else {},
            "rank_history": [r.history for r in self._rankers],
            "epoch_seconds": list(getattr(self.timer, "seconds", [])),
        }
        os.makedirs(self.backup_dir, exist_ok=True)
        final = os.path.join(self.backup_dir, _folder(epoch, step))
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.backup_dir)
        try:
            np.savez(os.path.join(tmp, "variables.npz"), **arrays)
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f, default=float)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(e.errno, f"cannot write a checkpoint into {self.backup_dir}: "
                          f"{e.strerror}") from e
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(self.backup_dir)[:-self.keep]:
            shutil.rmtree(os.path.join(self.backup_dir, _folder(*old)), ignore_errors=True)

    # -- restoring ------------------------------------------------------------
    def restore(self, model, callbacks, history):
        """Bring ``model`` and the callbacks to the last agreed checkpoint; return its
        (epochs done, steps into the next epoch), (0, 0) when there is none."""
        self.set_model(model)
        self._history = history
        self._rankers = [c for c in callbacks if isinstance(c, rank_lib.RankPruning)]
        mine = list_checkpoints(self.backup_dir) if os.path.isdir(self.backup_dir) else []
        at = agree_on_checkpoint(model.distribute_strategy, mine[-1] if mine else (0, 0))
        if at == (0, 0):
            return at
        if at not in mine:
            raise RuntimeError(f"the workers agree to resume from {_folder(*at)}, but "
                               f"{self.backup_dir} holds only {[_folder(*m) for m in mine]}")
        epoch, step = at
        folder = os.path.join(self.backup_dir, _folder(epoch, step))
        try:
            with open(os.path.join(folder, "state.json")) as f:
                state = json.load(f)
            with np.load(os.path.join(folder, "variables.npz")) as npz:
                arrays = dict(npz)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {folder} is unreadable ({e}); remove it to "
                                  "resume from an older one, or pass --restart") from None
        rank_lib.apply_ranks(model, state["ranks"])
        _assign(_by_path(model.weights, "model"), arrays, "model/")
        _assign(_by_path(model.optimizer.variables, "optimizer"), arrays, "optimizer/")
        if step:
            _assign(_by_path(model.metrics_variables, "metrics"), arrays, "metrics/")

        history.history = {k: list(v) for k, v in state["history"].items()}
        for ranker, saved in zip(self._rankers, state["rank_history"]):
            ranker.history = [(e, dict(r)) for e, r in saved]
        if self.timer is not None and hasattr(self.timer, "seconds"):
            self.timer.seconds[:0] = state["epoch_seconds"]
        resume_callbacks(callbacks, epoch, int(model.optimizer.iterations.numpy()))
        self.resumed_from = epoch
        self.resumed_at = (epoch, step)
        return epoch, step


def _folder(epoch, step):
    return f"epoch-{epoch}" if not step else f"epoch-{epoch}-step-{step}"


def list_checkpoints(folder):
    """(epochs done, steps into the next) of every complete checkpoint, oldest first."""
    found = []
    for path in glob.glob(os.path.join(folder, "epoch-*", "state.json")):
        parts = os.path.basename(os.path.dirname(path)).split("-")
        try:
            found.append((int(parts[1]), int(parts[3]) if len(parts) == 4 else 0))
        except (ValueError, IndexError):
            continue  # not one of ours
    return sorted(found)


def agree_on_checkpoint(strategy, mine):
    """The newest checkpoint every worker has.

    A worker writes its checkpoint before it takes part in the next step,
    which needs every worker; so when some hold checkpoint c+1 the others
    hold at least c, and keeping two keeps c everywhere.
    """
    if not is_multi_worker(strategy):
        return tuple(mine)
    code = mine[0] * 10**9 + mine[1]

    @tf.function
    def gather():
        value = strategy.run(lambda: tf.constant([code], tf.int64))
        return tf.reduce_min(strategy.gather(value, axis=0))

    agreed = int(gather())
    return agreed // 10**9, agreed % 10**9


def _assign(variables, arrays, prefix):
    saved = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if set(saved) != set(variables):  # a built-in model's checkpoint of the old layout?
        renamed = {saved_layout.old_variable_path(k) if k not in variables else k: v
                   for k, v in saved.items()}
        saved = renamed if set(renamed) == set(variables) else saved
    if set(saved) != set(variables):
        raise CheckpointError(f"the checkpoint does not fit this model (its {prefix[:-1]} "
                              f"variables differ: {sorted(set(saved) ^ set(variables))[:3]}; "
                              "written by another version of ssa-tf?); pass --restart to start "
                              "over")
    for path, var in variables.items():
        if tuple(var.shape) != saved[path].shape:
            raise CheckpointError(f"the checkpoint does not fit this model ({path} has shape "
                                  f"{saved[path].shape} there, {tuple(var.shape)} here); pass "
                                  "--restart to start over")
        var.assign(saved[path])


def resume_callbacks(callbacks, epoch, step):
    """After a restore: every logging callback drops what the dead run wrote after
    the checkpoint (``resume_at``), and Keras's CSV logger appends to the rest."""
    for c in callbacks:
        if isinstance(c, keras.callbacks.CSVLogger):
            keep_rows(c.filename, lambda row: int(row["epoch"]) < epoch)
            c.append = True
        elif hasattr(c, "resume_at"):
            c.resume_at(epoch, step)
