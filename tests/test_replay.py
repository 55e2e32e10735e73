"""Dropout and batch norm under the local rules: a direct rule's step runs the
forward pass once for the output error e, then replays each module under its own tape
(``methods.base.Local._recomputed``, ``nn.norm.replaying`` and ``noise_state``).

The replay must compute the activations that made e: the same dropout masks (they come
from each layer's seed generator, whose state the first pass advanced) and the same
batch-norm batch statistics, while the batch norms' moving statistics move once per
step, from the training forward pass, as under BP.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import losses, registry
from ssa_tf.training.model import SSAModel, compile_model, local_signal_metric

SHAPE = (6, 6, 2)
# the rules whose card holds one module's activations at a time on their default route: a
# forward pass for e, then each module replayed (``Local._recomputed``)
RECOMPUTING = [n for n in registry.NAMES
               if registry.get(n).card({}).held_activations == "one module at a time"]


def network():
    """Module 0: conv, dropout, batch norm, relu, dropout; module 1 (the head): flatten,
    dropout, dense. Every module draws dropout masks; the batch norm normalizes a
    dropped-out input."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Dropout(0.5, name="drop_in")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Dropout(0.5, name="drop_out")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dropout(0.5, name="drop_head")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="noisy")


def make(rule, **options):
    keras.utils.set_random_seed(5)
    # head_init glorot: dfa and dkp's zero head would give module 0 e but the head no input
    model = SSAModel("noisy", SHAPE, 10, rule=rule, network=network(), head_init="glorot",
                     module_ends=("drop_out",), **options)
    assert len(model.local_modules) == 2
    return model


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *SHAPE)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def seed_states(model):
    return [g.state for l in model._flatten_layers() for g in getattr(l, "_seed_generators", ())]


def one_forward_pass(model, x, y):
    """Every module's update computed the way the rule computes it, but from one forward
    pass (each module under its own tape): the activations that made e, by construction."""
    rule = model.rule
    tapes, outputs, h = [], [], model.normalize_input(x)
    for m in model.local_modules:
        tape = tf.GradientTape()
        with tape:
            h = m(tf.stop_gradient(h), training=True)
        tapes.append(tape)
        outputs.append(h)
    logits, error, signals = rule._error_and_signals(model, outputs, y)
    grads, terms = [], []
    for i, (tape, h) in enumerate(zip(tapes, outputs)):
        with tape:
            step = rule._module_step(model, i, tape, h, error, y, signals, 1)
        grads += [g for g, _ in step[0]]
        terms.append(step[1])
    return grads, logits, terms


def restore(states, start):
    for s, a in zip(states, start):
        s.assign(a)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("rule", RECOMPUTING)
def test_every_module_learns_from_the_dropout_masks_and_batch_statistics_that_made_e(
        rule, compiled):
    model = make(rule)
    assert model.rule.recomputes
    x, y = batch()

    def step(x, y):
        gv, logits = model.local_gradients(x, y)[:2]
        return [g for g, _ in gv], logits

    states = seed_states(model)
    start = [s.numpy() for s in states]
    grads, logits = (tf.function(step) if compiled else step)(x, y)
    advanced = [(s.numpy() - a).tolist() for s, a in zip(states, start)]
    restore(states, start)
    expected, forward_logits, _ = one_forward_pass(model, x, y)
    # the logits returned (the logged loss's) are the one forward pass's ...
    np.testing.assert_allclose(logits.numpy(), forward_logits.numpy(), rtol=1e-5, atol=1e-6)
    # ... and every module's update, the head's included, comes from its activations
    assert len(grads) == len(expected)
    for g, want in zip(grads, expected):
        np.testing.assert_allclose(g.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    # each mask drawn once a step, as under BP (the replay draws the same ones again)
    assert advanced == [[0, 1]] * 3


@pytest.mark.parametrize("rule", registry.NAMES)
def test_batch_norm_moving_statistics_move_once_a_step_from_the_training_forward_pass(rule):
    model = make(rule)
    # the card says which rules replay (one module at a time) and which hold every module
    assert getattr(model.rule, "recomputes", False) == (rule in RECOMPUTING)
    compile_model(model)
    x, y = batch(32)
    bn = next(l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization))
    graph = model.local_modules[0].graph
    before_bn = keras.Model(graph.inputs, graph.get_layer("bn").input)
    states = seed_states(model)
    start = [s.numpy() for s in states]
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    # the batch norm's input in the step's forward pass: the same dropout mask
    z = before_bn(model.normalize_input(x), training=True).numpy()
    restore(states, start)
    model.train_on_batch(x, y)
    m = bn.momentum
    np.testing.assert_allclose(bn.moving_mean.numpy(), m * mean + (1 - m) * z.mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.moving_variance.numpy(), m * var + (1 - m) * z.var((0, 1, 2)),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule,options", [("ssa", {}), ("dkp", {}), ("dfa", {"feedback": "local"})])
def test_the_logged_loss_is_the_training_forward_passs_ce_and_the_signal_the_hidden_modules(
        rule, options):
    model = make(rule, **options)
    compile_model(model)
    x, y = batch(32)
    states = seed_states(model)
    start = [s.numpy() for s in states]
    _, logits, terms = one_forward_pass(model, x, y)
    restore(states, start)
    logs = model.train_on_batch(x, y, return_dict=True)
    # `loss` as BP logs it: the CE of the training forward pass (dropout on, batch statistics)
    np.testing.assert_allclose(logs["loss"], losses.cross_entropy(logits, y).numpy(), rtol=1e-5)
    # the signal's log holds the hidden modules' terms, not the head's CE a second time
    hidden = sum(float(t[0]) for t in terms[:-1])
    np.testing.assert_allclose(logs[local_signal_metric(model.rule)], hidden, rtol=1e-5,
                               atol=1e-6)


def shared_network():
    """Three modules, each but the head ending in a dropout."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Flatten(name="flat")(inputs)
    for i in range(2):
        x = keras.layers.Dense(8, name=f"d{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.Dropout(0.5, name=f"drop{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="shared")


def share_one_generator(model):
    """Make every dropout of ``model`` draw from one generator, in module order."""
    shared = keras.random.SeedGenerator(11)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            object.__setattr__(layer, "seed_generator", shared)  # replaced, not tracked anew
            layer._seed_generators[:] = [shared]


@pytest.mark.parametrize("order", ["reverse", "forward"])
def test_replays_in_either_order_draw_the_first_passs_masks_from_a_shared_generator(order):
    keras.utils.set_random_seed(5)
    model = SSAModel("shared", SHAPE, 10, rule="dfa", network=shared_network(),
                     head_init="glorot", module_ends=("drop0", "drop1"))
    share_one_generator(model)
    assert len(model.local_modules) == 3 and model.rule.recomputes
    model.rule.replay_order = order
    x, y = batch()
    states = seed_states(model)
    assert len({id(s) for s in states}) == 1  # one generator, drawn by two modules
    start = states[0].numpy()

    @tf.function
    def step(x, y):
        return [g for g, _ in model.local_gradients(x, y)[0]]

    grads = step(x, y)
    end = states[0].numpy()
    states[0].assign(start)
    expected, _, _ = one_forward_pass(model, x, y)
    for g, want in zip(grads, expected):
        np.testing.assert_allclose(g.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    # the generator ends where one forward pass leaves it: two draws a step
    np.testing.assert_array_equal(end, states[0].numpy())
    assert (end - start).tolist() == [0, 2]
