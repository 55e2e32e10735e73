"""``rule.hold_within_peak``: a recomputing step keeps the tapes of the modules that fit
in the largest module's activations instead of replaying them (``methods.holds``)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import holds
from ssa_tf.training.model import SSAModel, build_model, compile_model


def batch(shape, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *shape)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def test_the_smallest_modules_are_held_while_they_fit_in_the_largest():
    # largest (10) replayed; 1 + 2 + 4 = 7 fit in it, adding 8 would not
    assert holds.held_within_peak([10, 8, 4, 2, 1]) == {2, 3, 4}
    # the largest anywhere; a tie keeps the earlier module replayed
    assert holds.held_within_peak([1, 5, 5, 3]) == {0, 3}
    assert holds.held_within_peak([3]) == frozenset()
    # only eligible modules are held, the budget still the largest's
    assert holds.held_within_peak([10, 8, 4, 2, 1], eligible={1, 2, 4}) == {2, 4}


def test_activation_elements_counts_the_tensors_a_forward_makes_per_example():
    layer = keras.layers.Dense(5)
    layer.build((None, 3))
    wide = keras.layers.Dense(10)
    wide.build((None, 3))
    # matmul and bias add: 2 x 5 per example, the weights not counted
    assert holds.activation_elements(layer, (3,)) == 10
    assert holds.activation_elements(wide, (3,)) == 20


def test_resnet32_holds_the_later_small_modules_and_replays_the_first():
    model = build_model("resnet32", (32, 32, 3), 10, rule="ssa", hold_within_peak=True)
    held = model.rule.held_modules(model)
    n = len(model.local_modules)
    assert 0 not in held and n - 1 in held  # the stem's 32x32 maps; the head
    # the 8x8 blocks of the third stage after its first (70,400 elements an example each,
    # the last with the head) fit in a first-stage block's 290,816; its first block would not
    assert held == set(range(n - 4, n))
    assert model.card().held_activations == "within the largest module's"
    assert model.card().columns()[2] == "within largest"


@pytest.mark.parametrize("rule,options", [("ssa", {}), ("ssa", {"feedback": "global"}),
                                          ("dfa", {}), ("dkp", {})])
def test_holding_gives_the_same_gradients_as_replaying_and_as_holding_everything(rule, options):
    x, y = batch((16, 16, 3))
    grads, plans = {}, {}
    for name, extra in (("replay", {}), ("hold", {"hold_within_peak": True}),
                        ("all", {"recompute": False})):
        model = build_model("smallconv", (16, 16, 3), 10, rule=rule, norm="batch", seed=4,
                            **options, **extra)
        grads[name] = [g.numpy() for g, _ in model.local_gradients(x, y)[0]]
        plans[name] = model.rule.held_modules(model)
    assert plans["hold"] and not plans["replay"]  # the comparison holds something
    for a, b, c in zip(grads["replay"], grads["hold"], grads["all"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-7)


def _noisy_network():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Dropout(0.5, name="drop_in")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(4, 3, name="conv2")(x)
    x = keras.layers.Dropout(0.5, name="drop_mid")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dropout(0.5, name="drop_head")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="noisy")


def test_three_steps_with_dropout_and_batch_norm_train_the_same_held_or_replayed():
    # dropout masks drawn once per step for held and replayed modules alike, batch norm's
    # moving statistics moved once: the weights after three steps agree
    x, y = batch((6, 6, 2), n=16)
    weights, plans = {}, {}
    for hold in (False, True):
        keras.utils.set_random_seed(5)
        model = SSAModel("noisy", (6, 6, 2), 10, rule="dfa", network=_noisy_network(),
                         head_init="glorot", module_ends=("relu",), hold_within_peak=hold)
        compile_model(model, learning_rate=0.05)
        for _ in range(3):
            model.train_on_batch(x, y)
        weights[hold] = [w.numpy() for w in model.weights]
        plans[hold] = model.rule.held_modules(model)
    assert plans[True] == {1} and not plans[False]
    for a, b in zip(weights[False], weights[True]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_module_whose_mask_generator_another_shares_is_never_held():
    # a held module's first-pass draws would move the generator a replayed module
    # rewinds: its replay would draw other masks than the pass that made e
    keras.utils.set_random_seed(5)
    model = SSAModel("noisy", (6, 6, 2), 10, rule="dfa", network=_noisy_network(),
                     head_init="glorot", module_ends=("relu",), hold_within_peak=True)
    assert holds.plan(model) == {1}
    first = next(l for l in model.local_modules[0]._flatten_layers() if l.name == "drop_in")
    later = next(l for l in model.local_modules[1]._flatten_layers() if l.name == "drop_mid")
    later.__dict__["_seed_generators"] = list(first._seed_generators)  # one for both
    assert holds.plan(model) == frozenset()


def test_a_rank_cut_plans_the_holds_again():
    from ssa_tf.training.rank import apply_ranks

    model = build_model("smallconv", (16, 16, 3), 10, rule="ssa", hold_within_peak=True)
    first = model.rule.held_modules(model)
    key = model.rule._held_plan[0]
    apply_ranks(model, {l.name: max(1, l.full_rank // 4) for l in model.svd_layers()})
    model.rule.held_modules(model)
    assert model.rule._held_plan[0] != key and first
