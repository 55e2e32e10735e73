"""Recording a run: a small run through ``ssa_tf.training.run.train``, every step kept.

``record`` (the run, and a resumed one), the ``Recorder`` callback and ``Record``: the
events (``Start``, ``Step``, ``EpochEnd``), each with the whole state; ``_Calls`` (each
module's calls: inputs, outputs, and the gradients those receive; in a replay, the
planned outputs returned), ``capture``.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from ssa_tf.methods import holds

from .scenarios import Scenario
from .state import HarnessError, snapshot


class _Stopped(Exception):
    """Raised by ``StopAt`` to end the first run mid-epoch (a killed run, resumed)."""



@dataclasses.dataclass
class Step:
    segment: int
    epoch: int
    index: int
    ranks: dict
    before: dict
    after: dict
    x: np.ndarray
    y: np.ndarray
    inputs: list  # per module, per call
    outputs: list
    signals: list  # per module, per call: d loss / d output (None: no gradient reached it)
    live: dict = None  # the live ranks (``ranks`` are the variables'; a cut in place keeps them)

    @property
    def name(self):
        return f"run {self.segment + 1}, epoch {self.epoch + 1}, step {self.index + 1}"


@dataclasses.dataclass
class EpochEnd:
    segment: int
    epoch: int
    ranks: dict
    state: dict
    live: dict = None


@dataclasses.dataclass
class Start:
    segment: int
    ranks: dict
    state: dict


def capture(t, sink):
    """``t`` unchanged; ``sink(dy)`` receives the gradient that reaches it."""
    @tf.custom_gradient
    def identity(v):
        def grad(dy):
            sink(dy)
            return dy
        return tf.identity(v), grad

    return identity(t)


class _Calls:
    """Each module's calls in one step: inputs, outputs, and the gradients their outputs
    receive; with ``plan`` (a replay), module j's k-th call returns the planned output
    (its value; its gradient still flows through the module's own computation) unless j
    is in ``real``."""

    def __init__(self, n):
        self.n = n
        self.active = False
        self.plan, self.real = None, set()
        self.reset()

    def reset(self):
        self.inputs = [[] for _ in range(self.n)]
        self.outputs = [[] for _ in range(self.n)]
        self.signals = [[] for _ in range(self.n)]
        self.extra_calls = []

    def install(self, modules):
        self._modules = list(modules)
        for j, m in enumerate(self._modules):
            original = m.call

            def call(*args, _j=j, _original=original, **kwargs):
                out = _original(*args, **kwargs)
                if not self.active or holds.tracing():  # a plan's trace: no values
                    return out
                k = len(self.outputs[_j])
                self.inputs[_j].append(np.array(args[0]))
                if self.plan is not None and _j not in self.real:
                    planned = self.plan[_j]
                    if k >= len(planned):
                        self.extra_calls.append(_j)
                    else:
                        out = tf.constant(planned[k]) + (out - tf.stop_gradient(out))
                self.outputs[_j].append(np.array(out))
                self.signals[_j].append(None)

                def sink(dy, _k=k):
                    self.signals[_j][_k] = np.array(dy)
                return capture(out, sink)

            m.call = call

    def uninstall(self):
        for m in self._modules:
            if "call" in vars(m):
                del m.call


class Recorder(keras.callbacks.Callback):
    """The callback that records a run (and a resumed one: one segment per model)."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.segment = -1
        self._models = []
        self._calls = None
        self._epoch = 0

    def set_model(self, model):
        super().set_model(model)
        if any(m is model for m in self._models):
            return
        self._models.append(model)
        self.segment += 1
        self._calls = _Calls(len(model.local_modules))
        self._calls.install(model.local_modules)
        calls = self._calls

        def train_step(data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            self._batch = (np.array(x), np.array(y))
            calls.active = True
            try:
                return type(model).train_step(model, data)
            finally:
                calls.active = False

        model.train_step = train_step

    def on_train_begin(self, logs=None):
        self.events.append(Start(self.segment, self.model.ranks(), snapshot(self.model)))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._before = snapshot(self.model)
        self._calls.reset()

    def on_train_batch_end(self, batch, logs=None):
        c = self._calls
        self.events.append(Step(self.segment, self._epoch, batch, self.model.ranks(),
                                self._before, snapshot(self.model), *self._batch, c.inputs,
                                c.outputs, c.signals, self.model.live_ranks()))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(EpochEnd(self.segment, epoch, self.model.ranks(),
                                    snapshot(self.model), self.model.live_ranks()))

    def on_train_end(self, logs=None):
        self._calls.uninstall()
        if "train_step" in vars(self.model):
            del self.model.train_step


def _stop_at(epoch, steps):
    """A callback ending the run after ``steps`` steps of ``epoch`` (from 1)."""
    class StopAt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self._epoch = e

        def on_train_batch_end(self, batch, logs=None):
            if self._epoch + 1 == epoch and batch + 1 == steps:
                raise _Stopped()

    return StopAt()


@dataclasses.dataclass
class Record:
    scenario: Scenario
    cfg: object
    events: list
    input_shape: tuple
    num_classes: int
    steps_per_epoch: int
    model: object = None  # the last run's model (a replica at its final ranks)

    @property
    def steps(self):
        return [e for e in self.events if isinstance(e, Step)]


def record(scenario, workdir) -> Record:
    """Run ``scenario`` through ``ssa_tf.training.run.train`` in ``workdir``, recorded (call
    inside ``harness_context``)."""
    from ssa_tf.training import run

    cfg = scenario.config(str(workdir))
    recorder = Recorder()
    extra = [recorder]
    if scenario.resume:
        extra.append(_stop_at(*scenario.resume))
    # Keras's generated names start over: a replica's (and a resumed run's) are the same
    keras.backend.clear_session(free_memory=False)
    try:
        run.train(cfg, verbose=0, extra_callbacks=extra)
    except _Stopped:
        keras.backend.clear_session(free_memory=False)
        run.train(cfg, verbose=0, extra_callbacks=[recorder])
    else:
        if scenario.resume:
            raise HarnessError(f"the run ended before the stop at {scenario.resume}")
    return Record(scenario, cfg, recorder.events, tuple(scenario.shape),
                  cfg.data.synthetic_classes, scenario.steps, recorder.model)
