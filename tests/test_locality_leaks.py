"""Locality through every feature of a run, and every kind of leak flagged.

With ``ssa_tf.testing.locality`` (record a run through the real entry, replay every step
once per module with every other module's weights and activations random; see
tests/test_locality.py): the cards hold through what a run may contain (batch norm,
dropout and a residual block in a user's model, the uncached chain, a rank cut with each
``rank.feedback_cut``, a resume), and a plausible leak of each kind, written here as a
subclass or a patch of the real code, is flagged while its card still claims a direct rule.
"""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ssa_tf.methods import chain, registry
from ssa_tf.methods.routes import ChainRoute, global_std
from ssa_tf.nn import fast
from ssa_tf.nn.svd import SVDLayer
from ssa_tf.testing import locality
from ssa_tf.testing.locality import CHANGED, CUT, DEPENDS, FEEDBACK, SIGNAL, Scenario


# --------------------------------------------------------------------------
# What a run may contain: norms, dropout, a user's residual model, the uncached chain,
# each feedback cut, a resume.
# --------------------------------------------------------------------------

USER_MODEL = '''
import keras


def build(input_shape, num_classes):
    """conv | residual block (conv, batch norm, relu, dropout, conv, + skip) | dense | head"""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Dropout(0.3)(y)
    y = keras.layers.Conv2D(8, 3, padding="same")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
'''


def _user_model(folder):
    path = os.path.join(folder, "residual_dropout.py")
    with open(path, "w") as f:
        f.write(USER_MODEL)
    return path


FEATURES = {
    # batch norm (its moving statistics are module state), the default cut (slots), a run
    # stopped after the step of epoch 2 and resumed from the checkpoint of epoch 1; the
    # step without recompute (every module's activations held)
    "batch norm, slots cut, resume, no recompute": lambda d: Scenario(
        "ssa", (("recompute", False),), settings=("model.norm=batch",), epochs=2, steps=1,
        cut_after=1, resume=(2, 1)),
    # a learned feedback (and its optimizer moments) through a cut and a resume
    "learned feedback, first cut, resume": lambda d: Scenario(
        "ssa-dkp", epochs=2, steps=1, cut_after=1, feedback_cut="first", resume=(2, 1)),
    # a user's model: a residual block with batch norm and dropout, dropout before the
    # dense module; its chain runs through the graph
    "user residual model, svd cut": lambda d: Scenario(
        "ssa", model=_user_model(d), epochs=2, steps=1, cut_after=1, feedback_cut="svd"),
    # plain kernels in dfa's chain, through the user's graph
    "user residual model, dfa chain": lambda d: Scenario(
        "dfa", (("feedback", "chain"),), model=_user_model(d), steps=1),
    # the transport-free SSA row of heads_recipe (random feedback factors, later-shaped
    # heads, beta 0) on smallconv, with its decayed rate, through a cut and a resume
    "ssa later heads, random factors, decay, cut, resume": lambda d: Scenario(
        "ssa", (("beta", 0.0), ("feedback", "local"), ("feedback_init", "random"),
                ("readout_depth", 3), ("readout_head", "later")), model="smallconv",
        settings=("train.lr_decay_epochs=1",), epochs=2, steps=1, cut_after=1,
        resume=(2, 1)),
    # --preset=compact: the same heads in the channel view, cut exactly ('first': B's first
    # columns, the forward factors re-factored), the dense layer to its own fraction
    "compact preset: channel view, exact cut, dense fraction, resume": lambda d: Scenario(
        "ssa", (("beta", 0.0), ("feedback", "local"), ("feedback_init", "random"),
                ("readout_depth", 3), ("readout_head", "later")), model="smallconv",
        settings=("train.lr_decay_epochs=1", "model.conv_factorization=channel",
                  "rank.dense_tau=0.5", "rank.keep_ends=true"),
        epochs=2, steps=1, cut_after=1, feedback_cut="first", resume=(2, 1)),
    # cuts in place (rank.cut_form): the components zeroed where they are, no retrace,
    # through a resume; the slots cut and the re-factoring one (its components written into
    # the first live slots)
    "cut in place, slots, resume": lambda d: Scenario(
        "ssa", settings=("rank.cut_form=in_place",), epochs=2, steps=1, cut_after=1,
        resume=(2, 1)),
    "cut in place, svd cut, smallconv": lambda d: Scenario(
        "ssa", model="smallconv", settings=("rank.cut_form=in_place",), epochs=2, steps=1,
        cut_after=1, feedback_cut="svd"),
    # replays in slices, the held modules within a slice's tape, through a cut and a resume
    "replays in slices, held within the peak, cut, resume": lambda d: Scenario(
        "ssa", (("hold_within_peak", True), ("replay_slices", 2)), model="smallconv",
        epochs=2, steps=1, cut_after=1, resume=(2, 1)),
    # chained replays (rule.replay_chained), in slices, held, through a cut and a resume
    "chained replays, in slices, held within the peak, cut, resume": lambda d: Scenario(
        "ssa", (("hold_within_peak", True), ("replay_chained", True), ("replay_slices", 2)),
        model="smallconv", epochs=2, steps=1, cut_after=1, resume=(2, 1)),
    # a longer run: a leak that waits (each step's state checked, every 8th replayed)
    "16 steps": lambda d: Scenario("ssa", steps=16, replay_every=8),
    # the chain too large to cache (ImageNet sizes): its linear network run every step
    "uncached chain, smallconv": lambda d: Scenario("ssa", model="smallconv", steps=1,
                                                    cache_limit=0),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_the_cards_hold_through_every_feature_of_a_run(feature, tmp_path):
    scenario = FEATURES[feature](str(tmp_path))
    report = locality.check(scenario, tmp_path / "run")
    assert report.steps >= scenario.epochs * scenario.steps
    assert report.cuts == (1 if scenario.cut_after else 0)  # every feedback_cut: one each
    assert report.resumes == (1 if scenario.resume else 0)
    assert not report.disagreements(), report.text()


# --------------------------------------------------------------------------
# Mutants: a plausible leak of each kind, each flagged.
# --------------------------------------------------------------------------

def _ssa():
    return registry.get("ssa").implementation()


def _with_route(route_class, base=None):
    base = base or _ssa()

    class Mutant(base):
        def make_route(self):
            return route_class(self.options, structured=self.svd)

    return Mutant


def _copy_forward_into_feedback(model):
    for layer in model.svd_layers():
        for b, f in ((layer.B_U, layer.U), (layer.B_s, layer.s), (layer.B_V, layer.V)):
            b.assign(f)


def periodic_resync():
    """Every 4 steps the feedback factors are set from the forward ones ("to keep them in
    register") and the chain refreshed."""
    class Resync(_ssa()):
        def after_step(self, model):
            super().after_step(model)
            if int(model.optimizer.iterations.numpy()) % 4 == 0:
                _copy_forward_into_feedback(model)
                model.feedback_changed()

    return Resync


def transport_at_a_cut(monkeypatch):
    """The cut rebuilds the feedback factors from the forward ones."""
    truncate = SVDLayer.truncate

    def rebuilding(self, *args, **kwargs):
        record = truncate(self, *args, **kwargs)
        for b, f in ((self.B_U, self.U), (self.B_s, self.s), (self.B_V, self.V)):
            b.assign(f)
        return record

    monkeypatch.setattr(SVDLayer, "truncate", rebuilding)
    return _ssa()


def transport_into_zeroed_slots(monkeypatch):
    """A cut in place that writes the dropped forward components into the feedback slots
    it zeroes: the forward function is the honest cut's, the feedback is not."""
    truncate = SVDLayer.truncate

    def leaking(self, *args, **kwargs):
        before = [v.numpy() for v in (self.U, self.s, self.V)]
        record = truncate(self, *args, **kwargs)
        dead = np.flatnonzero(self.s.numpy() == 0)
        for b, f in zip((self.B_U, self.B_s, self.B_V), before):
            value = b.numpy()
            value[..., dead] = f[..., dead]
            b.assign(value)
        return record

    monkeypatch.setattr(SVDLayer, "truncate", leaking)
    return _ssa()


class OwnGainRoute(ChainRoute):
    """A module's signal multiplied by its own current layer-norm gain."""

    def ce_term(self, model, i, h, error, y, signals):
        norms = [l for l in model.local_modules[i]._flatten_layers()
                 if isinstance(l, keras.layers.LayerNormalization)]
        if norms:
            signals = list(signals)
            signals[i] = signals[i] * ops.stop_gradient(norms[0].gamma)
        return super().ce_term(model, i, h, error, y, signals)


def dkp_reading_a_weight():
    """dkp whose feedback matrices' update mixes in a forward weight where the shapes
    match (the head's kernel)."""
    base = registry.get("dkp").implementation()

    class Mutant(base):
        def make_route(self):
            route = super().make_route()
            own = route.ce_term

            def ce_term(model, i, h, error, y, signals):
                term = own(model, i, h, error, y, signals)
                D, W = route.matrices[i], model.local_modules[-1].trainable_variables[0]
                if tuple(D.shape) == tuple(W.shape):
                    pull = 1e-2 * ops.sum(D * ops.stop_gradient(W))
                    term = term + pull - ops.stop_gradient(pull)
                return term

            route.ce_term = ce_term
            return route

    return Mutant


class WorkingCopyRoute(ChainRoute):
    """Per-step transport into a working copy: inside the step the chain is recomputed from
    the current forward factors into plain tf.Variables held on the route (no model
    variable); the feedback factors are put back, so every model variable ends
    bit-identical, while the signals used are the forward weights'."""

    def build(self, model, rng):
        super().build(model, rng)
        self.working = [tf.Variable(tf.zeros_like(m)) for m in self.matrices]

    def signals(self, model, outputs, error):
        layers = model.svd_layers()
        saved = [[tf.identity(b) for b in (l.B_U, l.B_s, l.B_V)] for l in layers]
        _copy_forward_into_feedback(model)
        k = model.num_classes
        zeros = [tf.zeros((k, *s)) for s in model.module_output_shapes]
        for w, d in zip(self.working,
                        chain.chain_signals(model.local_modules, zeros, tf.eye(k), self.kernels)):
            w.assign(d)
        for layer, values in zip(layers, saved):
            for b, v in zip((layer.B_U, layer.B_s, layer.B_V), values):
                b.assign(v)
        deltas = [ops.tensordot(error, w, axes=1) for w in self.working]
        scale = global_std(error)
        return [ops.stop_gradient(d * scale / (global_std(d) + 1e-12)) for d in deltas]


class GatedWhenUncachedRoute(ChainRoute):
    """The branch taken when the chain is too large to cache runs the gated chain."""

    def signals(self, model, outputs, error):
        if self.matrices:
            return super().signals(model, outputs, error)
        deltas = chain.chain_signals(model.local_modules, outputs, error, self.kernels,
                                     gated=True)
        scale = global_std(error)
        return [ops.stop_gradient(d * scale / (global_std(d) + 1e-12)) for d in deltas]


class LaterActivationsRoute(ChainRoute):
    """No weight read at all: each module's signal scaled by the next module's current
    activations (their mean magnitude), which a direct rule may not use."""

    def signals(self, model, outputs, error):
        deltas = super().signals(model, outputs, error)
        return [d * ops.stop_gradient(1.0 + ops.mean(ops.abs(h)))
                for d, h in zip(deltas, outputs[1:])]


def lagging_copy():
    """The former SSA default's lagging copy: B <- B + 0.1 (W - B) after every step, the
    chain refreshed."""
    class Lagging(_ssa()):
        def after_step(self, model):
            for layer in model.svd_layers():
                for b, f in ((layer.B_U, layer.U), (layer.B_s, layer.s), (layer.B_V, layer.V)):
                    b.assign(b + 0.1 * (f - b))
            model.feedback_changed()

    return Lagging


class GatedRoute(ChainRoute):
    """The former SSA default's other read of the weights: the chain gated by the forward
    pass."""

    def __init__(self, options, structured=False):
        super().__init__(options, structured, gated=True)


def sliced_gradient_reading_the_head():
    """A sliced replay whose output gradient is scaled by the head's weights (in the one
    code path a plain replay does not take)."""
    class Sliced(_ssa()):
        def module_loss(self, model, i, h, error, y, signals=None):
            loss, terms = super().module_loss(model, i, h, error, y, signals)
            if i < len(model.local_modules) - 1 and self.replay_slices(model).get(i, 1) > 1:
                head = model.local_modules[-1].trainable_variables[0]
                loss = loss * (1 + 0.01 * tf.tanh(tf.reduce_sum(head)))
            return loss, terms

    return Sliced


def chained_input_reading_the_head():
    """A chained replay whose input, handed on from the replay before, is scaled by the
    head's weights (in the one code path an unchained replay does not take)."""
    class Chained(_ssa()):
        def _handed_on(self, model, i, h):
            head = model.local_modules[-1].trainable_variables[0]
            return super()._handed_on(model, i, h) * (1 + 0.01 * tf.tanh(tf.reduce_sum(head)))

    return Chained


def kept_statistics_reading_the_head(monkeypatch):
    """A replay's layer norms reading their kept statistics shifted by the head's weights
    (in the one code path a first pass does not take: ``fast.Moments.take``)."""
    class Reading(_ssa()):
        def _recomputed(self, model, x, y, error):
            head = model.local_modules[-1].trainable_variables[0]
            monkeypatch.setattr(fast.Moments, "head", head, raising=False)
            return super()._recomputed(model, x, y, error)
    take = fast.Moments.take

    def shifted(self, layer):  # (None where nothing was kept)
        got = take(self, layer)
        return got and (got[0] + 0.01 * tf.tanh(tf.reduce_sum(self.head)), got[1])
    monkeypatch.setattr(fast.Moments, "take", shifted)
    return Reading


# name: (rule it poses as, its class (given monkeypatch), the scenario, the kinds it must show)
MUTANTS = {
    "a replay's kept norm statistics reading the head's weights": (
        "ssa", kept_statistics_reading_the_head, Scenario("ssa", model="smallconv", steps=1),
        {DEPENDS}),
    "a chained replay's input reading the head's weights": (
        "ssa", lambda mp: chained_input_reading_the_head(), Scenario(
            "ssa", (("replay_chained", True),), model="smallconv", steps=1), {DEPENDS}),
    "a sliced replay reading the head's weights": (
        "ssa", lambda mp: sliced_gradient_reading_the_head(), Scenario(
            "ssa", (("replay_slices", 2),), model="smallconv", steps=1), {DEPENDS}),
    "periodic resync every 4 steps": (
        "ssa", lambda mp: periodic_resync(), Scenario("ssa", steps=4), {CHANGED}),
    "transport at a rank cut": (
        "ssa", transport_at_a_cut, Scenario("ssa", epochs=2, steps=1, cut_after=1), {CUT}),
    "transport at a cut in place": (
        "ssa", transport_at_a_cut, Scenario(
            "ssa", settings=("rank.cut_form=in_place",), epochs=2, steps=1, cut_after=1),
        {CUT}),
    "transport into the slots a cut in place zeroes": (
        "ssa", transport_into_zeroed_slots, Scenario(
            "ssa", settings=("rank.cut_form=in_place",), epochs=2, steps=1, cut_after=1),
        {CUT}),
    "own norm gain": (
        "ssa", lambda mp: _with_route(OwnGainRoute), Scenario("ssa", steps=1), {SIGNAL}),
    "dkp reading the head's weight": (
        "dkp", lambda mp: dkp_reading_a_weight(), Scenario("dkp", steps=1),
        {FEEDBACK, DEPENDS}),
    "working copy of the forward chain": (
        "ssa", lambda mp: _with_route(WorkingCopyRoute), Scenario("ssa", steps=1),
        {CHANGED, DEPENDS}),
    "uncached chain branch gated": (
        "ssa", lambda mp: _with_route(GatedWhenUncachedRoute),
        Scenario("ssa", steps=1, cache_limit=0), {DEPENDS}),
    "later activations, no weight": (
        "ssa", lambda mp: _with_route(LaterActivationsRoute), Scenario("ssa", steps=1),
        {DEPENDS}),
    "lagging copy (the former default)": (
        "ssa", lambda mp: lagging_copy(), Scenario("ssa", steps=1), {CHANGED, FEEDBACK}),
    "gated chain (the former default)": (
        "ssa", lambda mp: _with_route(GatedRoute), Scenario("ssa", steps=1), {DEPENDS}),
}


@pytest.mark.parametrize("name", MUTANTS)
def test_the_harness_flags_every_kind_of_leak(name, monkeypatch, tmp_path):
    rule, make, scenario, kinds = MUTANTS[name]
    mutant = make(monkeypatch)
    monkeypatch.setitem(registry.RULES, rule, dataclasses.replace(
        registry.get(rule), implementation=lambda: mutant))
    report = locality.check(scenario, tmp_path, until=kinds)  # stops once all are found
    assert report.card.direct  # the card it keeps still claims a direct rule
    assert kinds <= report.kinds(), report.text()
    assert report.disagreements()
