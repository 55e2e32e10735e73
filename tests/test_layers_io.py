"""SVD layers beyond the forward pass: signed singular values, config and save/load
round trips at reduced rank, and LocalBatchNorm's local backward.

docs/ALGORITHM.md §2 and §7. References are NumPy (float64) or stock Keras.
"""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf

from ssa_tf.nn import LocalBatchNorm, SVDConv2D, SVDDense
from test_layers import (ATOL, RTOL, assert_conv_computes, best_rank, factor_matrix, make_conv,
                         make_dense, np_, perturb)


# --------------------------------------------------------------------------
# signed singular values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size,strides,padding", [((3, 3), 1, "same"),
                                                         ((3, 5), 2, "valid")])
def test_conv_negative_singular_values(kernel_size, strides, padding):
    rng = np.random.default_rng(10)
    c, n = 3, 4
    conv = make_conv(rng, c, n, kernel_size, strides, padding)
    layer = SVDConv2D.from_conv(conv)
    perturb(layer, rng, scale=0.2)
    s = np_(layer.s)
    s[::2] = -np.abs(s[::2]) - 0.1   # some negative entries
    s[1] = 0.0                       # and a zero
    layer.s.assign(s.astype(np.float32))
    assert (np_(layer.s) < 0).any()
    M = factor_matrix(layer)
    assert_conv_computes(layer, M, conv, kernel_size, strides, padding, rng)
    # and the exact truncation of a signed spectrum is still Eckart-Young
    layer.truncate(3, "first")
    np.testing.assert_allclose(factor_matrix(layer), best_rank(M, 3), atol=1e-5)


def test_dense_negative_singular_values():
    rng = np.random.default_rng(11)
    dense = make_dense(rng, 5, 7)
    layer = SVDDense.from_dense(dense)
    layer.s.assign(np.array([-2.0, 1.0, -0.5, 0.0, 3.0], np.float32))
    x = rng.standard_normal((3, 5)).astype(np.float32)
    want = x.astype(np.float64) @ factor_matrix(layer).T + np_(dense.bias)
    np.testing.assert_allclose(np_(layer(x)), want, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------
# serialization at reduced rank
# --------------------------------------------------------------------------

def test_dense_config_round_trip_at_reduced_rank():
    rng = np.random.default_rng(12)
    layer = SVDDense.from_dense(make_dense(rng, 8, 6))
    layer.truncate(3)
    config = layer.get_config()
    assert config["rank"] == 3
    new = SVDDense.from_config(config)
    new.build((None, 8))
    assert new.rank == 3
    for a, b in zip(new.weights, layer.weights):
        assert tuple(a.shape) == tuple(b.shape)
    new.set_weights(layer.get_weights())
    x = rng.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(np_(new(x)), np_(layer(x)), rtol=1e-6, atol=1e-6)


def test_conv_config_round_trip_at_reduced_rank():
    rng = np.random.default_rng(13)
    layer = SVDConv2D.from_conv(make_conv(rng, 3, 5, (3, 5), (2, 1), "valid", use_bias=False))
    layer.truncate(4)
    config = layer.get_config()
    new = SVDConv2D.from_config(config)
    new.build((None, 9, 11, 3))
    assert new.rank == 4
    assert new.kernel_size == (3, 5) and new.strides == (2, 1) and new.padding == "valid"
    assert new.bias is None
    shapes = [tuple(w.shape) for w in new.weights]
    assert shapes == [(25, 4), (4,), (9, 4)] * 2
    assert shapes == [tuple(w.shape) for w in layer.weights]
    new.set_weights(layer.get_weights())
    x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
    np.testing.assert_allclose(np_(new(x)), np_(layer(x)), rtol=1e-6, atol=1e-6)


def test_ssa_model_save_load_after_truncation(tmp_path):
    from ssa_tf.training.model import build_model

    model = build_model("smallconv", (16, 16, 3), 10, rule="ssa")
    layers = {l.name: l for l in model.svd_layers()}
    target = layers["m1_conv"]
    full = target.rank
    target.truncate(7)
    layers["m3_dense"].truncate(5)
    ranks = model.ranks()
    assert ranks["m1_conv"] == 7 and ranks["m3_dense"] == 5 and full > 7
    x = np.random.default_rng(14).standard_normal((3, 16, 16, 3)).astype(np.float32)
    before = np_(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.ranks() == ranks
    after = np_(loaded(x, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    new_layers = {l.name: l for l in loaded.svd_layers()}
    for name, layer in layers.items():
        got = [np_(v) for v in new_layers[name].weights]
        want = [np_(v) for v in layer.weights]
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------
# LocalBatchNorm
# --------------------------------------------------------------------------

def _bn_grad(layer, x, upstream):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, xt).numpy()


def _set_affine(layer, gamma, beta):
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 3, 2)])
def test_local_batch_norm_gradients(shape):
    rng = np.random.default_rng(15)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    upstream = rng.standard_normal(shape).astype(np.float32)
    c = shape[-1]
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    eps = 1e-3
    axes = tuple(range(len(shape) - 1))
    var = x.astype(np.float64).var(axis=axes)
    mean = x.astype(np.float64).mean(axis=axes)

    local = LocalBatchNorm(stop_stat_gradient=True, epsilon=eps)
    local.build(shape)
    _set_affine(local, gamma, beta)
    y, g = _bn_grad(local, x, upstream)
    np.testing.assert_allclose(y, gamma * (x - mean) / np.sqrt(var + eps) + beta,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g, gamma / np.sqrt(var + eps) * upstream, rtol=1e-4, atol=1e-5)

    full = LocalBatchNorm(stop_stat_gradient=False, epsilon=eps)
    full.build(shape)
    _set_affine(full, gamma, beta)
    ref = keras.layers.BatchNormalization(epsilon=eps)
    ref.build(shape)
    _set_affine(ref, gamma, beta)
    y_full, g_full = _bn_grad(full, x, upstream)
    y_ref, g_ref = _bn_grad(ref, x, upstream)
    np.testing.assert_allclose(y_full, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_full, g_ref, rtol=1e-4, atol=1e-5)
    # the BP gradient really differs (it projects out the mean and the x-hat direction)
    assert np.abs(g_full - g).max() > 1e-2
    # inference mode uses the moving statistics in both variants
    np.testing.assert_allclose(np_(local(x, training=False)), np_(full(x, training=False)),
                               rtol=1e-5, atol=1e-5)


def test_local_batch_norm_config_round_trip():
    layer = LocalBatchNorm(stop_stat_gradient=False, epsilon=1e-4)
    new = LocalBatchNorm.from_config(layer.get_config())
    assert new.stop_stat_gradient is False and new.epsilon == 1e-4
    assert LocalBatchNorm.from_config(LocalBatchNorm().get_config()).stop_stat_gradient is True
