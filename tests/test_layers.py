"""Numerical tests of the SVD layers: full-rank conversion, truncation, energy ranks.

docs/ALGORITHM.md §2, §5 and §7. Every reference value is computed independently with
NumPy (float64) or with the stock Keras layer; the library's own helpers are
only used as the object under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf
from keras import ops

from ssa_tf.nn import SVDConv2D, SVDDense, energy_rank, exact_singular_values, svd_factors

ATOL = 2e-5
RTOL = 1e-4


# --------------------------------------------------------------------------
# independent reference maths
# --------------------------------------------------------------------------

def np_(v):
    return np.asarray(ops.convert_to_numpy(v), np.float64)


def conv_matrix(kernel):
    """K'[(n, w), (c, h)] = K[h, w, c, n], written from docs/ALGORITHM.md §2."""
    kh, kw, c, n = kernel.shape
    out = np.empty((n * kw, c * kh), np.float64)
    for ni in range(n):
        for wi in range(kw):
            for ci in range(c):
                for hi in range(kh):
                    out[ni * kw + wi, ci * kh + hi] = kernel[hi, wi, ci, ni]
    return out


def conv_kernel(matrix, kh, kw, c, n):
    """Inverse of ``conv_matrix``."""
    k = np.empty((kh, kw, c, n), np.float64)
    for ni in range(n):
        for wi in range(kw):
            for ci in range(c):
                for hi in range(kh):
                    k[hi, wi, ci, ni] = matrix[ni * kw + wi, ci * kh + hi]
    return k


def best_rank(matrix, r):
    """Eckart-Young: the rank-r truncated SVD of ``matrix``."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def energy_of(matrix, r):
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    return float((s[:r] ** 2).sum() / (s ** 2).sum())


def factor_matrix(layer):
    """U diag(s) V^T from the layer's variables, in float64."""
    return (np_(layer.U) * np_(layer.s)) @ np_(layer.V).T


def reference_conv(x, kernel, bias, strides, padding):
    y = tf.nn.conv2d(tf.constant(x, tf.float32), tf.constant(kernel, tf.float32),
                     strides=[1, *strides, 1], padding=padding.upper()).numpy()
    if bias is not None:
        y = y + bias
    return y


def make_dense(rng, n_in, units, use_bias=True):
    d = keras.layers.Dense(units, use_bias=use_bias)
    d.build((None, n_in))
    d.kernel.assign(rng.standard_normal((n_in, units)).astype(np.float32))
    if use_bias:
        d.bias.assign(rng.standard_normal(units).astype(np.float32))
    return d


def make_conv(rng, c, filters, kernel_size, strides, padding, use_bias=True):
    conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                               use_bias=use_bias)
    conv.build((None, None, None, c))
    kh, kw = conv.kernel_size
    conv.kernel.assign((rng.standard_normal((kh, kw, c, filters)) / np.sqrt(kh * kw * c))
                       .astype(np.float32))
    if use_bias:
        conv.bias.assign(rng.standard_normal(filters).astype(np.float32))
    return conv


def perturb(layer, rng, scale=0.3):
    """Make U, V non-orthonormal and s arbitrary (as training does)."""
    for var in (layer.U, layer.s, layer.V):
        val = np_(var)
        var.assign((val + scale * rng.standard_normal(val.shape)).astype(np.float32))


# --------------------------------------------------------------------------
# full-rank conversion
# --------------------------------------------------------------------------

@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("n_in,units", [(6, 9), (10, 4)])
def test_from_dense_full_rank_reproduces_dense(use_bias, n_in, units):
    rng = np.random.default_rng(0)
    dense = make_dense(rng, n_in, units, use_bias)
    svd = SVDDense.from_dense(dense)
    r = min(n_in, units)
    assert svd.rank == r
    assert tuple(svd.U.shape) == (units, r)
    assert tuple(svd.s.shape) == (r,)
    assert tuple(svd.V.shape) == (n_in, r)
    assert (svd.bias is not None) == use_bias
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    np.testing.assert_allclose(np_(svd(x)), np_(dense(x)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(svd.merged_kernel(), np_(dense.kernel), rtol=RTOL, atol=ATOL)
    assert svd.merged_kernel().shape == (n_in, units)
    # the layer is built once: calling it did not create extra variables
    assert len(svd.weights) == 6 + int(use_bias)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2, (2, 1)])
@pytest.mark.parametrize("kernel_size", [(3, 3), (1, 1), (3, 5)])
def test_from_conv_full_rank_reproduces_conv(kernel_size, strides, padding, use_bias):
    rng = np.random.default_rng(1)
    c, n = 3, 4
    conv = make_conv(rng, c, n, kernel_size, strides, padding, use_bias)
    svd = SVDConv2D.from_conv(conv)
    kh, kw = kernel_size
    assert svd.rank == min(n * kw, c * kh)
    x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
    want = np_(conv(x))
    got = np_(svd(x))
    assert got.shape == want.shape
    assert svd.compute_output_shape(x.shape) == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(svd.merged_kernel(), np_(conv.kernel), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("c,n,kernel_size", [(8, 2, (3, 3)), (5, 3, (5, 3)), (2, 6, (1, 3))])
def test_from_conv_full_rank_other_channel_ratios(c, n, kernel_size):
    # N*W < C*H and N*W > C*H, so both factor shapes are exercised
    rng = np.random.default_rng(2)
    conv = make_conv(rng, c, n, kernel_size, (2, 2), "same")
    svd = SVDConv2D.from_conv(conv)
    x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
    np.testing.assert_allclose(np_(svd(x)), np_(conv(x)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(svd.merged_kernel(), np_(conv.kernel), rtol=RTOL, atol=ATOL)


def test_conv_matrix_layout_matches_spec():
    rng = np.random.default_rng(3)
    conv = make_conv(rng, 3, 4, (3, 5), 1, "same")
    svd = SVDConv2D.from_conv(conv)
    want = conv_matrix(np_(conv.kernel))
    np.testing.assert_allclose(svd.matrix_from_kernel(np_(conv.kernel)), want)
    np.testing.assert_allclose(factor_matrix(svd), want, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------
# rank reduction (Eckart-Young)
# --------------------------------------------------------------------------

def _check_truncation(layer, r, rng):
    """Truncate to r with the paper's exact re-factoring (``feedback="first"``) and check
    everything docs/ALGORITHM.md §5 promises. (The default slot cut keeps the trained
    factors instead: tests/test_cut_register.py.)"""
    m, n = layer.U.shape[0], layer.V.shape[0]
    before = factor_matrix(layer)
    old_fb = [np_(v) for v in (layer.B_U, layer.B_s, layer.B_V)]
    old_rank = layer.rank
    n_weights = len(layer.weights)

    record = layer.truncate(r, "first")

    assert layer.rank == r
    assert record["old_rank"] == old_rank and record["new_rank"] == r
    np.testing.assert_allclose(record["energy"], energy_of(before, r), rtol=1e-6)
    for var, shape in zip((layer.U, layer.s, layer.V, layer.B_U, layer.B_s, layer.B_V),
                          ((m, r), (r,), (n, r)) * 2):
        assert tuple(var.shape) == shape
    # feedback factors: the first r components of the old ones
    for var, old in zip((layer.B_U, layer.B_s, layer.B_V), old_fb):
        np.testing.assert_array_equal(np_(var), old[..., :r])
    # forward: the best rank-r approximation of the previous weight
    after = factor_matrix(layer)
    scale = np.abs(before).max()
    np.testing.assert_allclose(after, best_rank(before, r), rtol=0, atol=1e-5 * scale)
    assert np.linalg.matrix_rank(after, tol=1e-4 * scale) == r
    # re-factored exactly: orthonormal singular vectors, descending spectrum
    np.testing.assert_allclose(np_(layer.U).T @ np_(layer.U), np.eye(r), atol=1e-5)
    np.testing.assert_allclose(np_(layer.V).T @ np_(layer.V), np.eye(r), atol=1e-5)
    s = np_(layer.s)
    assert np.all(np.diff(s) <= 1e-6) and np.all(s >= 0)
    # no stale variables left behind, and the new ones are the tracked ones
    assert len(layer.weights) == n_weights
    tracked = {id(v) for v in layer.weights}
    for var in (layer.U, layer.s, layer.V, layer.B_U, layer.B_s, layer.B_V):
        assert id(var) in tracked
    trainable = {id(v) for v in layer.trainable_weights}
    assert {id(layer.U), id(layer.s), id(layer.V)} <= trainable
    assert not {id(layer.B_U), id(layer.B_s), id(layer.B_V)} & trainable
    return before, after


@pytest.mark.parametrize("orthonormal", [True, False])
def test_dense_truncate_is_best_rank_r(orthonormal):
    rng = np.random.default_rng(4)
    dense = make_dense(rng, 7, 9)
    layer = SVDDense.from_dense(dense)
    if not orthonormal:
        perturb(layer, rng)
    _, after = _check_truncation(layer, 3, rng)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    want = x.astype(np.float64) @ after.T + np_(dense.bias)
    np.testing.assert_allclose(np_(layer(x)), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.merged_kernel(), after.T, rtol=RTOL, atol=ATOL)
    # gradients reach the new variables
    with tf.GradientTape() as tape:
        out = ops.sum(ops.square(layer(x)))
    grads = tape.gradient(out, layer.trainable_variables)
    assert len(grads) == 4 and all(g is not None for g in grads)
    assert [tuple(g.shape) for g in grads[:3]] == [(9, 3), (3,), (7, 3)]


@pytest.mark.parametrize("orthonormal", [True, False])
@pytest.mark.parametrize("kernel_size,strides,padding", [((3, 3), 2, "same"),
                                                         ((3, 5), (2, 1), "valid"),
                                                         ((1, 1), 1, "same")])
def test_conv_truncate_is_best_rank_r(orthonormal, kernel_size, strides, padding):
    rng = np.random.default_rng(5)
    c, n = 3, 4
    conv = make_conv(rng, c, n, kernel_size, strides, padding)
    layer = SVDConv2D.from_conv(conv)
    if not orthonormal:
        perturb(layer, rng)
    r = 2
    _, after = _check_truncation(layer, r, rng)
    assert_conv_computes(layer, after, conv, kernel_size, strides, padding, rng)
    # the sub-convolutions really run at rank r (cheaper, not masked)
    kh, kw = kernel_size
    vertical, horizontal = layer.sub_kernels()
    assert tuple(vertical.shape) == (kh, 1, c, r)
    assert tuple(horizontal.shape) == (1, kw, r, n)


def assert_conv_computes(layer, matrix, conv, kernel_size, strides, padding, rng):
    """``layer``'s merged kernel is ``matrix`` laid out as a kernel, and its forward
    pass is that kernel's convolution with ``conv``'s bias (NumPy reference)."""
    kh, kw = kernel_size
    c, n = (int(d) for d in conv.kernel.shape[2:])
    kernel = conv_kernel(matrix, kh, kw, c, n)
    np.testing.assert_allclose(layer.merged_kernel(), kernel, rtol=RTOL, atol=ATOL)
    x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
    want = reference_conv(x, kernel, np_(conv.bias), _pair(strides), padding)
    np.testing.assert_allclose(np_(layer(x)), want, rtol=RTOL, atol=ATOL)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def test_truncate_twice_and_rank_never_increases():
    rng = np.random.default_rng(6)
    layer = SVDDense.from_dense(make_dense(rng, 8, 6))
    perturb(layer, rng)
    first = factor_matrix(layer)
    layer.truncate(4, "first")
    layer.truncate(2, "first")
    np.testing.assert_allclose(factor_matrix(layer), best_rank(first, 2), atol=1e-5)
    with pytest.raises(ValueError):
        layer.truncate(3)
    with pytest.raises(ValueError):
        layer.truncate(0)
    assert layer.rank == 2
    # truncating to the current rank is exact (only re-factoring)
    before = factor_matrix(layer)
    rec = layer.truncate(2, "first")
    np.testing.assert_allclose(factor_matrix(layer), before, atol=1e-5)
    assert rec["energy"] == pytest.approx(1.0, abs=1e-9)


def test_truncate_change_bounded_by_discarded_energy():
    # algorithm §7: the function changes by no more than the discarded energy:
    # ||W - W_r||_F^2 = (1 - energy) ||W||_F^2
    rng = np.random.default_rng(7)
    layer = SVDDense.from_dense(make_dense(rng, 10, 12))
    perturb(layer, rng)
    before = factor_matrix(layer)
    rec = layer.truncate(4)
    diff = np.sum((factor_matrix(layer) - before) ** 2)
    np.testing.assert_allclose(diff, (1 - rec["energy"]) * np.sum(before ** 2), rtol=1e-4)


def test_exact_singular_values_of_non_orthonormal_factors():
    rng = np.random.default_rng(8)
    U = rng.standard_normal((9, 4))
    V = rng.standard_normal((6, 4))
    s = np.array([2.0, -1.0, 0.5, 3.0])
    M = (U * s) @ V.T
    U2, sig, V2 = exact_singular_values(U, s, V)
    np.testing.assert_allclose(sig, np.linalg.svd(M, compute_uv=False)[:4], rtol=1e-10)
    np.testing.assert_allclose((U2 * sig) @ V2.T, M, atol=1e-10)
    np.testing.assert_allclose(U2.T @ U2, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(V2.T @ V2, np.eye(4), atol=1e-10)
    u, s2, v = svd_factors(M, 2)
    assert u.shape == (9, 2) and s2.shape == (2,) and v.shape == (6, 2)
    np.testing.assert_allclose((u * s2) @ v.T, best_rank(M, 2), atol=1e-10)


def test_layer_spectrum_is_exact():
    rng = np.random.default_rng(9)
    layer = SVDConv2D.from_conv(make_conv(rng, 3, 4, (3, 3), 1, "same"))
    perturb(layer, rng)
    want = np.linalg.svd(factor_matrix(layer), compute_uv=False)
    np.testing.assert_allclose(layer.spectrum(), want, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------
# energy rule
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_rank_is_minimal_and_sufficient(tau, seed):
    rng = np.random.default_rng(seed)
    s = np.sort(np.abs(rng.standard_normal(20)) * np.exp(-0.2 * np.arange(20)))[::-1]
    r = energy_rank(s, tau)
    e = np.cumsum(s ** 2) / np.sum(s ** 2)
    assert 1 <= r <= len(s)
    assert e[r - 1] >= tau
    if r > 1:
        assert e[r - 2] < tau


def test_energy_rank_edge_cases():
    s = np.array([3.0, 2.0, 1.0, 0.5])
    assert energy_rank(s, 1.0) == 4
    assert energy_rank(s, 0.0) == 1
    assert energy_rank(np.array([10.0, 0.1, 0.1]), 0.9) == 1
    assert energy_rank(np.zeros(5), 0.9) == 1
    assert energy_rank(np.array([1e-30, 0.0]), 0.95) >= 1
    # exact boundaries: equal energies of 1/4 each
    flat = np.ones(4)
    assert energy_rank(flat, 0.5) == 2
    assert energy_rank(flat, 0.75) == 3
    assert energy_rank(flat, 0.76) == 4


def test_energy_rank_tau_one_is_full_rank():
    # float rounding of the cumulative sum must neither overshoot nor undershoot
    rng = np.random.default_rng(16)
    for _ in range(200):
        s = np.sort(rng.random(int(rng.integers(2, 200))))[::-1]
        assert energy_rank(s, 1.0) == len(s)
    # trailing exact zeros carry no energy
    assert energy_rank(np.array([2.0, 1.0, 0.0, 0.0]), 1.0) == 2
    # a long, decaying float32 spectrum (smallest s_j / s_1 ~ 1e-7) keeps every
    # non-zero component at tau = 1
    s32 = (np.exp(-np.arange(64) / 4.0)).astype(np.float32)
    assert energy_rank(s32, 1.0) == 64


def test_the_factor_algebra_runs_numpys_blas_on_one_thread(monkeypatch):
    """A multi-threaded OpenBLAS beside TensorFlow's busy threads stalled rank cuts for
    tens of seconds: the factor algebra runs it on one thread, and leaves it as it was."""
    from threadpoolctl import threadpool_info

    from ssa_tf.nn import svd

    def blas_threads():
        return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

    before = blas_threads()
    assert before, "NumPy's BLAS is not visible to threadpoolctl"
    seen = []
    real_qr = np.linalg.qr

    def qr(*args, **kwargs):
        seen.append(blas_threads())
        return real_qr(*args, **kwargs)

    monkeypatch.setattr(np.linalg, "qr", qr)
    rng = np.random.default_rng(0)
    U, s, V = rng.standard_normal((40, 8)), rng.random(8), rng.standard_normal((30, 8))
    svd.exact_singular_values(U, s, V)
    svd.slot_cut(U, s, V, 4)
    assert seen and all(t == [1] for t in seen), seen
    assert blas_threads() == before
