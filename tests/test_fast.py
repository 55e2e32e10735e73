"""``nn.fast``: the layer norm and leaky ReLU whose training gradients are written out."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import ssa_tf

from ssa_tf.methods import holds
from ssa_tf.nn import fast as nn_fast
from ssa_tf.nn.fast import LeakyReLU, faster
from ssa_tf.export.merge import merge
from ssa_tf.training.model import build_model


def _random(shape, seed, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return tf.constant((rng.standard_normal(shape) * scale + shift).astype(np.float32))


def _norms(shape):
    stock, fast = keras.layers.LayerNormalization(), nn_fast.LayerNormalization()
    stock.build(shape)
    fast.build(shape)
    weights = [_random(shape[-1:], 1, 0.3, 1.0).numpy(), _random(shape[-1:], 2, 0.3).numpy()]
    stock.set_weights(weights)
    fast.set_weights(weights)
    return stock, fast


def _value_and_grads(layer, x, dy, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training) if training else layer(x)
    return [y, *tape.gradient(y, [x, *layer.trainable_variables], output_gradients=dy)]


def test_the_layer_norm_computes_keras_values_and_gradients_to_rounding():
    shape = (3, 5, 5, 16)
    x, dy = _random(shape, 3, 4.0, 2.0), _random(shape, 4)
    stock, fast = _norms(shape)
    want = _value_and_grads(stock, x, dy, False)
    got = _value_and_grads(fast, x, dy, True)
    for w, g in zip(want, got):  # y, dx, dgamma, dbeta
        assert np.max(np.abs(w - g)) <= 2e-5 * np.max(np.abs(w))
    # a different function (no mean taken out of the gradient) would be far off
    assert np.max(np.abs(want[1] - dy * fast.gamma / 4.0)) > 0.1 * np.max(np.abs(want[1]))
    # inference is Keras's own computation, bit for bit
    np.testing.assert_array_equal(fast(x), stock(x))


def test_the_leaky_relu_takes_the_same_gradient_from_its_output_bit_for_bit():
    x = tf.constant([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    x = tf.concat([x, _random((4, 5), 5)], 0)
    dy = _random(x.shape, 6)
    stock, fast = keras.layers.Activation("leaky_relu"), LeakyReLU("leaky_relu")
    want = _value_and_grads(stock, x, dy, False)
    got = _value_and_grads(fast, x, dy, True)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, g)
    assert np.any(want[1] != dy)  # the slope applied somewhere
    np.testing.assert_array_equal(fast(x), stock(x))  # inference: Keras's own


def _module(norm, act):
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1)(act(norm(h))))


def test_the_tape_keeps_the_normalized_input_and_the_output_only():
    # conv -> norm -> leaky ReLU -> conv, 6x6x8 = 288 numbers a map an example. Keras's
    # keep the conv's output, its norm's per-channel product, the norm's output (the
    # activation's gradient reads its input), three per-pixel statistics and the
    # activation's output (the next kernel's gradient reads it); these keep xhat, 1/sigma
    # and the activation's output, which both gradients read
    stock = _module(keras.layers.LayerNormalization(), keras.layers.Activation("leaky_relu"))
    fast = _module(nn_fast.LayerNormalization(), LeakyReLU("leaky_relu"))
    assert holds.tape_elements(stock, (6, 6, 3)) == 4 * 288 + 3 * 36
    assert holds.tape_elements(fast, (6, 6, 3)) == 2 * 288 + 36


def test_every_model_gets_them_for_every_rule_and_exports_keras_own():
    for rule in ("ssa", "bp"):
        model = build_model("smallconv", (16, 16, 3), 10, rule=rule, norm="layer",
                            activation="leaky_relu")
        layers = [l for m in model.local_modules for l in m._flatten_layers()]
        assert sum(type(l) is nn_fast.LayerNormalization for l in layers) == 4
        assert sum(type(l) is LeakyReLU for l in layers) == 4
        assert not any(type(l) in (keras.layers.LayerNormalization, keras.layers.Activation)
                       for l in layers)
        merged, _ = merge(model)  # the export: Keras's own layers, the same outputs
        kinds = {type(l) for l in merged.layers}
        assert keras.layers.LayerNormalization in kinds and keras.layers.Activation in kinds
        assert not kinds & {nn_fast.LayerNormalization, LeakyReLU}
        x = _random((2, 16, 16, 3), 8)
        np.testing.assert_allclose(merged(x), model(x), rtol=1e-4, atol=1e-5)
    relu = keras.layers.Activation("relu")
    assert faster(relu) is None
    assert faster(keras.layers.LayerNormalization()) is nn_fast.LayerNormalization


def test_under_a_mixed_policy_the_norm_is_keras_own_and_returns_its_dtype():
    shape = (2, 4, 4, 8)
    x = _random(shape, 10)
    fast = nn_fast.LayerNormalization(dtype="mixed_bfloat16")
    fast.build(shape)
    assert not fast.fast_path(x) and fast(x, training=True).dtype == tf.bfloat16


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("config", [dict(axis=1), dict(center=False), dict(rms_scaling=True)])
def test_a_norm_it_does_not_cover_is_keras_own_call(config):
    shape = (2, 4, 4, 8)
    x = _random(shape, 7, 2.0, 1.0)
    stock, fast = keras.layers.LayerNormalization(**config), nn_fast.LayerNormalization(**config)
    stock.build(shape)
    fast.build(shape)
    assert not fast.fast_path(x)
    np.testing.assert_array_equal(fast(x, training=True), stock(x))


def test_a_model_saved_with_keras_layers_loads_into_these_and_back(tmp_path, monkeypatch):
    # a weights file names a layer's variables after its class: the same name, the same
    # file, whichever layers saved it
    x = _random((2, 16, 16, 3), 9)
    monkeypatch.setattr(nn_fast, "ENABLED", False)
    old = build_model("smallconv", (16, 16, 3), 10, rule="ssa", seed=2)
    for v in old.trainable_variables:  # away from the initial values
        v.assign(v + 0.01 * tf.random.stateless_normal(v.shape, (1, 2)))
    old.save(tmp_path / "old.keras")
    monkeypatch.setattr(nn_fast, "ENABLED", True)
    new = ssa_tf.load_model(tmp_path / "old.keras", compile=False)
    assert any(type(l) is nn_fast.LayerNormalization
               for m in new.local_modules for l in m._flatten_layers())
    np.testing.assert_array_equal(new(x), old(x))
    new.save(tmp_path / "new.keras")
    monkeypatch.setattr(nn_fast, "ENABLED", False)
    np.testing.assert_array_equal(ssa_tf.load_model(tmp_path / "new.keras", compile=False)(x),
                                  old(x))
