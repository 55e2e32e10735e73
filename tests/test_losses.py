"""Gradients of SSA's local loss terms against the paper's closed forms.

eq. 7: d L_align / dX = 2 (X - B_X) for X in {U, s, V};
eq. 14: d L_ortho / dU = 4 U (U^T U - I) (likewise V), + 2 lam U with eq. 19;
eq. 2: e = softmax(z) - onehot(y) is the gradient of the summed CE at the logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ssa_tf.nn import SVDConv2D, SVDDense
from ssa_tf.methods.losses import alignment_loss, cross_entropy, orthogonality_loss, output_error


def np_(v):
    return np.asarray(ops.convert_to_numpy(v), np.float64)


def _randomize(layer, rng, scale=0.5):
    """Non-trivial, non-orthonormal forward factors (feedback stays as built)."""
    for var in (layer.U, layer.s, layer.V):
        val = np_(var)
        var.assign((val + scale * rng.standard_normal(val.shape)).astype(np.float32))


def _dense_layer(rng, n_in=7, units=5, rank=None):
    layer = SVDDense(units, rank=rank, feedback_seed=123)
    layer.build((None, n_in))
    _randomize(layer, rng)
    return layer


def _conv_layer(rng):
    layer = SVDConv2D(4, (3, 5), feedback_seed=321)
    layer.build((None, 8, 8, 3))
    _randomize(layer, rng)
    return layer


@pytest.mark.parametrize("make", [_dense_layer, _conv_layer])
def test_alignment_loss_value_and_gradient(make):
    rng = np.random.default_rng(0)
    layer = make(rng)
    fwd = [layer.U, layer.s, layer.V]
    fb = [layer.B_U, layer.B_s, layer.B_V]
    # feedback factors are an independent draw: the gradient is not trivially zero
    assert all(np.abs(np_(a) - np_(b)).max() > 1e-2 for a, b in zip(fwd, fb))
    with tf.GradientTape(persistent=True) as tape:
        loss = alignment_loss(layer)
    want = sum(np.sum((np_(a) - np_(b)) ** 2) for a, b in zip(fwd, fb))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    grads = tape.gradient(loss, fwd)
    for g, a, b in zip(grads, fwd, fb):
        assert g is not None
        np.testing.assert_allclose(np_(g), 2 * (np_(a) - np_(b)), rtol=1e-5, atol=1e-6)
    # the feedback factors are fixed: not trainable, so no gradient is recorded
    assert all(not v.trainable for v in fb)
    assert all(g is None for g in tape.gradient(loss, fb))
    del tape


def test_alignment_loss_zero_when_aligned():
    rng = np.random.default_rng(1)
    layer = SVDDense(6, feedback_init="forward")
    layer.build((None, 4))
    np.testing.assert_allclose(float(alignment_loss(layer)), 0.0, atol=1e-10)
    _randomize(layer, rng)
    assert float(alignment_loss(layer)) > 0.1


def test_cosine_alignment_sees_directions_only():
    # rule.align_form=cosine: an alignment that does not decay the weight towards its initial value
    rng = np.random.default_rng(2)
    layer = SVDDense(6, feedback_init="forward")
    layer.build((None, 4))
    assert float(alignment_loss(layer, "cosine")) == pytest.approx(0.0, abs=1e-6)
    # flipping a pair of columns' signs, rescaling them or changing s: still aligned
    flip = np.array([-1.0, 2.5, 1.0, -0.3])
    layer.U.assign(np_(layer.U) * flip)
    layer.V.assign(np_(layer.V) * np.abs(flip))
    layer.s.assign(np_(layer.s) * 7.0)
    assert float(alignment_loss(layer, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_loss(layer, "factors")) > 1.0  # eq. 5 pulls all of it back
    _randomize(layer, rng)
    with tf.GradientTape() as tape:
        loss = alignment_loss(layer, "cosine")
    g_s = tape.gradient(loss, layer.s)
    assert 0.1 < float(loss) <= 2 * 4  # at most 1 per singular vector
    assert g_s is None  # s is left alone


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("make", [_dense_layer, _conv_layer])
def test_orthogonality_loss_value_and_gradient(make, lam):
    rng = np.random.default_rng(2)
    layer = make(rng)
    U, V = np_(layer.U), np_(layer.V)
    r = U.shape[1]
    I = np.eye(r)
    want = np.sum((U.T @ U - I) ** 2) + np.sum((V.T @ V - I) ** 2)
    want += lam * (np.sum(U ** 2) + np.sum(V ** 2))
    with tf.GradientTape() as tape:
        loss = orthogonality_loss(layer, lam)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    gU, gs, gV = tape.gradient(loss, [layer.U, layer.s, layer.V])
    wantU = 4 * U @ (U.T @ U - I) + 2 * lam * U
    wantV = 4 * V @ (V.T @ V - I) + 2 * lam * V
    np.testing.assert_allclose(np_(gU), wantU, rtol=1e-4, atol=1e-4 * np.abs(wantU).max())
    np.testing.assert_allclose(np_(gV), wantV, rtol=1e-4, atol=1e-4 * np.abs(wantV).max())
    assert np.abs(wantU).max() > 1e-2  # the factors are far from orthonormal
    # s does not enter the orthogonality term
    assert gs is None or np.allclose(np_(gs), 0.0)


def test_orthogonality_loss_zero_on_stiefel():
    # a freshly built layer has exactly orthonormal factors (SVD init)
    layer = SVDDense(5, rank=3)
    layer.build((None, 8))
    assert float(orthogonality_loss(layer)) < 1e-9
    with tf.GradientTape() as tape:
        loss = orthogonality_loss(layer)
    g = tape.gradient(loss, layer.U)
    assert np.abs(np_(g)).max() < 1e-5
    # with lam > 0 the decay term is lam * (r + r) on orthonormal factors
    np.testing.assert_allclose(float(orthogonality_loss(layer, 0.5)), 0.5 * 6, rtol=1e-5)


@pytest.mark.parametrize("label_dtype", ["int32", "int64"])
def test_output_error_is_ce_gradient(label_dtype):
    rng = np.random.default_rng(3)
    batch, k = 6, 5
    logits = tf.constant(rng.standard_normal((batch, k)) * 3, tf.float32)
    labels = tf.constant(rng.integers(0, k, batch), getattr(tf, label_dtype))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = cross_entropy(logits, labels) * batch
    grad = tape.gradient(loss, logits).numpy()
    e = np_(output_error(logits, labels, k))
    np.testing.assert_allclose(e, grad, rtol=1e-5, atol=1e-6)
    # and against the closed form softmax - onehot
    z = logits.numpy().astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(k)[labels.numpy()]
    np.testing.assert_allclose(e, p - onehot, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.sum(axis=1), 0.0, atol=1e-6)
    # the CE itself is the mean of -log p_y
    np.testing.assert_allclose(float(cross_entropy(logits, labels)),
                               -np.mean(np.log(p[np.arange(batch), labels.numpy()])), rtol=1e-5)


@pytest.mark.parametrize("beta,gamma,lam", [(0.0, 0.0, 0.0), (0.01, 0.0, 0.0), (0.0, 0.1, 0.0),
                                            (0.0, 0.0, 1e-3)])
def test_a_term_of_weight_zero_is_not_computed(beta, gamma, lam):
    from ssa_tf.methods import registry

    rule = registry.make("ssa", dict(beta=beta, gamma=gamma, ortho_lambda=lam))
    layer = SVDDense(4)
    layer.build((None, 6))
    layer.U.assign(2.0 * layer.U)  # far from the feedback factors and from orthonormal
    align, ortho = rule.factor_terms([layer])
    # the orthogonality term's Grams cost r^2 m multiply-adds forward and backward; a
    # weight of 0 (gamma, and lambda inside it) must leave no op in the step
    assert (align == 0.0 and isinstance(align, float)) == (beta == 0.0)
    assert (ortho == 0.0 and isinstance(ortho, float)) == (gamma == 0.0 and lam == 0.0)
    if beta:
        assert float(align) == pytest.approx(float(alignment_loss(layer)))
    if gamma or lam:
        assert float(ortho) == pytest.approx(float(orthogonality_loss(layer, lam)))
