"""Callbacks of a training run: epoch timer and the divergence guard.

The rank callback is ``ssa_tf.training.rank``, the alignment monitor
``ssa_tf.training.diagnostics``, checkpoints ``ssa_tf.training.checkpoints``.
"""

from __future__ import annotations

import time

import numpy as np
import keras

from ssa_tf.errors import Diverged  # noqa: F401  (raised here; its home)


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def _begin(self, *args, **kwargs):
        self._start = time.perf_counter()

    def _end(self, *args, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


class EpochTimer(_Timer):
    """Wall-clock seconds of each training epoch (evaluation excluded)."""

    on_epoch_begin = _Timer._begin
    on_epoch_end = _Timer._end


class StepTimer(_Timer):
    """Wall-clock seconds of each training step."""

    on_train_batch_begin = _Timer._begin
    on_train_batch_end = _Timer._end


def divergence_guard(model, skip=0, log=print):
    """A Keras callback that stops training at the first non-finite step
    (or after ``skip`` of them) with ``Diverged`` naming the module and term.

    It reads the model's ``nonfinite`` counter (``SSAModel``: per module and
    term, the steps whose value was NaN or Inf, summed over replicas). A bad
    step never reaches the weights: the trainer applies a zero update
    instead (SSAModel.train_step).
    """
    class DivergenceGuard(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.skipped = 0
            self._seen = None
            self._epoch = 1

        def on_epoch_begin(self, epoch, logs=None):
            self._seen = None  # the counter is reset with the other metrics
            self._epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            counts = np.asarray(self.model.nonfinite_tracker.result())
            seen = self._seen if self._seen is not None else np.zeros_like(counts)
            new = counts - seen
            self._seen = counts
            if not new.any():
                return
            module, term = np.unravel_index(int(np.argmax(new > 0)), new.shape)
            where = (f"module {self.model.module_names()[module]} "
                     f"({self.model.NONFINITE_TERMS[term]})")
            self.skipped += 1
            if self.skipped <= skip:
                log(f"\nwarning: non-finite value in {where} at step {batch + 1}: step skipped "
                    f"({self.skipped} of {skip} allowed)")
                return
            raise Diverged(f"training diverged: non-finite value in {where} at epoch "
                           f"{self._epoch} step {batch + 1}"
                           + (f", after {skip} skipped steps" if skip else ""))

    return DivergenceGuard()
