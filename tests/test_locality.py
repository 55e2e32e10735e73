"""Locality cards proven by behaviour, not by declaration (BUILD.md, algorithm §3a).

For every rule, real optimizer steps (``train_on_batch``, a glorot head so that
no signal is zero by construction), then two checks:

* **fixed feedback**: a rule whose card says its feedback never reads the forward
  weights after construction leaves every non-trainable variable of the model (the
  feedback factors B_U, B_s, B_V, the fixed feedback matrices and kernels, the
  chain's cached matrices) bit-identical; a rule whose card says ``continuously``
  and that keeps a feedback copy (bp-lagged-copy) moves it;
* **direct**: with the output error e and module i's input held fixed, module i's
  update is unchanged when every later module's trainable weights change (the head
  included; for the first module, every other module), also after the rule's own
  after-step hook has run on them. A rule whose card says sequential
  changes it.

Both checks fail for the two mutants of issue 30 (an SSA whose after-step moves B
towards W, and an SSA whose chain is gated by the forward pass); see
``test_the_checks_catch_transport_and_gating_mutants``.
"""

import dataclasses

import numpy as np
import pytest
import keras
import tensorflow as tf

from ssa_tf.methods import registry
from ssa_tf.methods.base import Local
from ssa_tf.methods.routes import ChainRoute
from ssa_tf.training.model import SSAModel, compile_model

SHAPE = (8, 8, 3)
RULES = [
    ("ssa", {}), ("ssa", dict(feedback="global")), ("ssa", dict(feedback="local")),
    ("ssa", dict(feedback="chain", feedback_init="random")),
    ("dfa", {}), ("dfa", dict(feedback="chain")), ("dfa", dict(feedback="local")),
    ("fa", {}), ("bp-lagged-copy", {}), ("bp", {}), ("svd-bp", {}),
    ("dkp", {}), ("ssa-dkp", {}), ("ssa-dkp", dict(feedback="global")),
]
LEARNS = "learns locally"


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *SHAPE)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def _model(mode, options):
    keras.utils.set_random_seed(5)
    model = SSAModel("smallconv", SHAPE, 10, mode=mode, head_init="glorot", **options)
    compile_model(model, learning_rate=1e-2)
    model.run_eagerly = True  # three small steps: tracing would cost more than running
    return model


def _learned(model):
    """The feedback variables a learned-feedback rule trains (none for the others)."""
    route = getattr(model.rule, "route", None)
    return [v for i in range(len(model.local_modules))
            for v in (route.extra_variables(model, i) if route else [])]


def _fixed_state(model):
    learned = {id(v) for v in _learned(model)}
    return {v.path: np.array(tf.convert_to_tensor(v)) for v in model.non_trainable_variables
            if id(v) not in learned}


def fixed_feedback_holds(model, steps=3):
    """True when real optimizer steps leave every non-trainable variable bit-identical
    (a learned feedback's own matrices aside)."""
    before = _fixed_state(model)
    assert before or _learned(model), "the model holds no fixed state to check"
    x, y = _data()
    for k in range(steps):
        model.train_on_batch(x[k::steps], y[k::steps])
    after = _fixed_state(model)
    return all(np.array_equal(before[k], after[k]) for k in before)


def _update(model, i, x, y, error):
    """Module i's update: its own weights' and its learned feedback's gradients."""
    grads = model.local_gradients(tf.constant(x), tf.constant(y), error=error)[0]
    route = getattr(model.rule, "route", None)
    mine = {id(v) for v in [*model.local_modules[i].trainable_variables,
                            *(route.extra_variables(model, i) if route else [])]}
    return [g.numpy() for g, v in grads if id(v) in mine]


def feedback_update_reads_only_e_and_h(model, i):
    """True when the update of module i's learned feedback, with e and the module's
    output h held, is unchanged (bit for bit) after every forward weight of the network
    (module i's own included) changes: it reads nothing but e and h."""
    x, y = _data(8, seed=1)
    error = tf.constant(np.random.default_rng(3).standard_normal((8, 10)), tf.float32)
    h = tf.constant(model.local_modules[i](model.normalize_input(tf.constant(x))))
    learned = model.rule.route.extra_variables(model, i)
    assert learned, "no learned feedback at module i"

    def update():
        with tf.GradientTape() as tape:
            loss = model.rule.module_loss(model, i, h, error, tf.constant(y))[0]
        return [g.numpy() for g in tape.gradient(loss, learned)]

    before = update()
    mine = {id(v) for v in learned}
    for v in model.trainable_variables:
        if id(v) not in mine:
            v.assign(v * 1.5 + 0.1)
    return all(np.array_equal(a, b) for a, b in zip(before, update()))


def update_ignores_other_modules(model, i):
    """True when module i's update, e and its input held fixed, is unchanged (bit for
    bit) after every later module's trainable weights (the head's too) change and the
    rule's after-step hook has run on them. (An earlier module's weights change module
    i's input, which any rule may use; for module 0, "later" is every other module.)"""
    x, y = _data(8, seed=1)
    error = tf.constant(np.random.default_rng(3).standard_normal((8, 10)), tf.float32)
    before = _update(model, i, x, y, error)
    for m in model.local_modules[i + 1:]:
        for v in m.trainable_variables:
            v.assign(v * 1.5 + 0.1)
    model.rule.after_step(model)
    after = _update(model, i, x, y, error)
    return all(np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("mode,options", RULES, ids=lambda p: str(p))
def test_each_rules_card_holds_in_behaviour(mode, options):
    model = _model(mode, options)
    card = model.card()
    if mode == "bp":  # ordinary layers, no fixed state at all
        assert not model.non_trainable_variables
    elif mode == "bp-lagged-copy":  # its copy of the weights moves towards them every step
        assert not fixed_feedback_holds(model)
    else:
        assert fixed_feedback_holds(model), f"{mode}: a feedback variable changed in training"
    if registry.get(mode).end_to_end:
        assert card.sequential and card.weight_transport == "continuously"
        return
    direct = [update_ignores_other_modules(model, i) for i in (0, 1)]
    if card.direct:
        assert all(direct), f"{mode}: module update depends on another module's weights"
    else:
        assert not any(direct), f"{mode}: the card says sequential, the update is not"
    if card.feedback == LEARNS:
        assert feedback_update_reads_only_e_and_h(_model(mode, options), 0), \
            f"{mode}: the feedback's update reads more than e and the module's output"


class _TransportingSSA(Local):
    """Mutant 1 (issue 30): SSA whose after-step does B <- B + 0.1 (W - B) and
    refreshes the chain: weight transport, with the card still saying 'once'."""

    def after_step(self, model):
        for layer in model.svd_layers():
            for b, f in ((layer.B_U, layer.U), (layer.B_s, layer.s), (layer.B_V, layer.V)):
                b.assign(b + 0.1 * (f - b))
        model.feedback_changed()


class _GatedSSA(Local):
    """Mutant 2: SSA whose chain is gated by the forward pass (feedback alignment)."""

    def make_route(self):
        return ChainRoute(self.options, gated=True)


def _transporting_dkp():
    """Mutant 3 (issue 29): DKP whose feedback update also pulls D_i towards the module's
    current weights (a read of W through the module's output layer's kernel norm)."""
    base = registry.get("dkp").implementation()

    class TransportingDKP(base):
        def module_loss(self, model, i, h, error, y, signals=None):
            loss, terms = super().module_loss(model, i, h, error, y, signals)
            for D in self.route.extra_variables(model, i):
                W = model.local_modules[i].trainable_variables[0]
                loss = loss + tf.reduce_sum(D) * tf.stop_gradient(tf.reduce_sum(W))
            return loss, terms

    return TransportingDKP


def test_the_feedback_check_catches_a_dkp_that_reads_the_forward_weights(monkeypatch):
    mutant = _transporting_dkp()
    spec = dataclasses.replace(registry.get("dkp"), implementation=lambda: mutant)
    monkeypatch.setitem(registry.RULES, "dkp", spec)
    model = _model("dkp", {})
    assert model.card().feedback == LEARNS  # the declared card still claims local learning
    assert not feedback_update_reads_only_e_and_h(model, 0)


@pytest.mark.parametrize("mutant", [_TransportingSSA, _GatedSSA])
def test_the_checks_catch_transport_and_gating_mutants(mutant, monkeypatch):
    spec = dataclasses.replace(registry.get("ssa"), implementation=lambda: mutant)
    monkeypatch.setitem(registry.RULES, "ssa", spec)
    model = _model("ssa", {})
    assert model.card().direct  # the declared card still claims a direct rule
    assert not (fixed_feedback_holds(model) and update_ignores_other_modules(model, 1))


def test_fa_card_says_it_reads_the_later_norm_gains():
    # the gated chain applies each later norm's current gamma every step
    model = _model("fa", {})
    assert model.card().weight_transport == "continuously"
    assert _model("fa", dict(chain_jacobians=False)).card().weight_transport == \
        "once at construction"
