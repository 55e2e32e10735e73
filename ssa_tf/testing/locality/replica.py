"""The replica a step is replayed in: a model built from the record's settings.

``Replica``: the model at the given ranks (or the run's last model itself), its modules
able to return the run's outputs call by call, its state classified by role (a module's
own forward state, a learned feedback, the feedback path's, a metric, the clock), loaded
from a record with chosen pieces random, and stepped.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .recording import Record, Step, _Calls
from .state import (CLOCK, FEEDBACK_ROLE, METRIC, HarnessError, Item, _random_like,
                    model_roots, walk)


class Replica:
    """A model built from the record's settings at the given ranks, its modules able to
    return the run's outputs call by call (``_Calls``), its state classified by role."""

    def __init__(self, rec: Record, ranks: dict, model=None, roles=None):
        from ssa_tf.training import loop
        from ssa_tf.training import rank as rank_lib
        from ssa_tf.training.model import compile_model, model_from_config
        from ssa_tf.training.run import learning_rate_schedule

        cfg = rec.cfg
        if model is None:  # a new one, built as the run built its own
            keras.backend.clear_session(free_memory=False)  # the run's names (the keys)
            model = model_from_config(cfg, rec.input_shape, rec.num_classes)
            compile_model(model, learning_rate_schedule(cfg, rec.steps_per_epoch),
                          steps_per_epoch=rec.steps_per_epoch)
            if ranks and ranks != model.ranks():
                rank_lib.apply_ranks(model, ranks, cfg.rank.feedback_cut)
            batch = np.zeros((2, *rec.input_shape), np.float32), np.zeros((2,), np.int64)
            loop.build_for(model, tf.data.Dataset.from_tensors(batch))
        self.model, self.rec = model, rec
        self.calls = _Calls(len(model.local_modules))
        self.calls.install(model.local_modules)
        self.items = walk(model_roots(model))
        # the roles are the same at every rank (the keys are): classified once per record
        if roles is not None and set(roles) >= set(self.items):
            self.roles = {k: roles[k] for k in self.items}
        else:
            self.roles = self._classify()

    # -- roles ----------------------------------------------------------------
    def _classify(self) -> dict:
        model = self.model
        ids = {id(item.obj): key for key, item in self.items.items()}
        roles = {}
        for v in model.metrics_variables:
            if id(v) in ids:
                roles[ids[id(v)]] = METRIC
        route = getattr(model.rule, "route", None)
        learned = {}
        for i in range(len(model.local_modules)):
            for v in (route.extra_variables(model, i) if route is not None else []):
                learned[id(v)] = i
        for i, m in enumerate(model.local_modules):
            for v in self._forward_state(i, m):
                if id(v) in ids and id(v) not in learned:
                    roles[ids[id(v)]] = ("own", i)
        for key, item in self.items.items():
            if id(item.obj) in learned:
                roles[key] = ("learned", learned[id(item.obj)])
        # the optimizer: each moment belongs to its variable; the rest is the clock
        opt = model.optimizer
        owners = {}
        targets = list(getattr(opt, "_trainable_variables", []))
        for name, value in vars(opt).items():
            if (isinstance(value, (list, tuple)) and name != "_trainable_variables"
                    and len(value) == len(targets) and targets):
                for slot, target in zip(value, targets):
                    owners[id(slot)] = id(target)
        for key, item in walk([("optimizer", opt)]).items():
            k = ids.get(id(item.obj))
            if k is None or k in roles:
                continue
            owner = ids.get(owners.get(id(item.obj)))
            roles[k] = roles.get(owner, FEEDBACK_ROLE) if owner is not None else CLOCK
        for key in self.items:
            roles.setdefault(key, FEEDBACK_ROLE)
        return roles

    def _forward_state(self, i, module) -> list:
        """Module i's forward state: its trainable variables, and each other variable Keras
        tracks in it whose change changes its output (in training or in inference): its
        norms' statistics, its dropout seeds; not its feedback factors. (State a module
        holds outside Keras's tracking counts as feedback: it must not move.)"""
        shapes = [self.rec.input_shape, *self.model.module_output_shapes]
        x = tf.constant(np.random.default_rng(i).standard_normal((4, *shapes[i])), tf.float32)
        trainable = {id(v) for v in module.trainable_variables}
        # a forward pass moves none of the trainable ones; the others it may (statistics,
        # seeds): each call puts them back
        others = [Item(v) for v in module.variables if id(v) not in trainable]
        saved = [item.value() for item in others]

        def run(training, item=None, value=None):
            if item is not None:
                item.set(value)
            out = np.array(module(x, training=training))
            for each, was in zip(others, saved):
                each.set(was)
            return out

        plain = {training: run(training) for training in (False, True)}
        forward = list(module.trainable_variables)
        rng = np.random.default_rng(1000 + i)
        for item, value in zip(others, saved):
            other = _random_like(value, rng)
            if np.array_equal(other, value):
                other = value + 1
            if any(not np.array_equal(plain[t], run(t, item, other)) for t in (False, True)):
                forward.append(item.obj)
        return forward

    def keys(self, *roles):
        return [k for k, r in self.roles.items() if r in roles]

    def own(self, i):
        return self.keys(("own", i), ("learned", i))

    @property
    def forward(self):
        return [k for k, r in self.roles.items() if isinstance(r, tuple) and r[0] == "own"]

    @property
    def feedback(self):
        return [k for k, r in self.roles.items()
                if r == FEEDBACK_ROLE or (isinstance(r, tuple) and r[0] == "learned")]

    @property
    def learned(self):
        return [k for k, r in self.roles.items() if isinstance(r, tuple) and r[0] == "learned"]

    # -- replaying --------------------------------------------------------------
    def load(self, state, randomize=(), rng=None):
        """Set every piece of state but the metrics to ``state``'s, those in
        ``randomize`` to random values of their scale."""
        randomize = set(randomize)
        for key, item in self.items.items():
            if self.roles[key] == METRIC:
                continue
            if key not in state:
                raise HarnessError(f"the replica holds {key}, the run did not")
            item.set(_random_like(state[key], rng) if key in randomize else state[key])

    def step(self, step: Step, real=(), outputs=None):
        """One real ``train_step`` on the step's batch, each module returning, call by call,
        ``outputs`` (the run's by default) unless in ``real``; returns (the calls, the state
        after)."""
        c = self.calls
        c.reset()
        c.plan, c.real, c.active = outputs or step.outputs, set(real), True
        try:
            self.model.train_step((tf.constant(step.x), tf.constant(step.y)))
        finally:
            c.active, c.plan = False, None
        self.items = walk(model_roots(self.model))
        return c, {k: item.value() for k, item in self.items.items()}
