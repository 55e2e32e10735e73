"""rank.energy=outputs: a cut that keeps each layer's outputs on training inputs, not its weight."""

import numpy as np
import pytest
import keras
from keras import ops

from ssa_tf import data
from ssa_tf.nn import SVDConv2D, SVDDense
from ssa_tf.nn.svd import output_cut
from ssa_tf.training.rank import RankPruning, apply_cut, input_covariances
from ssa_tf.training.model import build_model


@pytest.mark.parametrize("factorization", ["spatial", "channel"])
def test_matrix_inputs_are_what_the_first_factored_convolution_multiplies(factorization):
    keras.utils.set_random_seed(3)
    layer = SVDConv2D(8, 3, strides=2, forward="factored", factorization=factorization,
                      rank=5, feedback_seed=1)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype(np.float32)
    layer(x)
    first = layer.sub_kernels()[0]
    strides = (2, 1) if factorization == "spatial" else (2, 2)
    y = ops.convert_to_numpy(ops.conv(x, first, strides=strides, padding="same"))
    _, vs = layer._scaled_factors()
    rows = layer.matrix_inputs(x)
    assert rows.shape[0] == y.shape[0] * y.shape[1] * y.shape[2]
    np.testing.assert_allclose(rows @ ops.convert_to_numpy(vs), y.reshape(-1, 5), atol=1e-4)


def _anisotropic(n, dim, seed):
    # inputs whose energy sits in a few directions unrelated to the weight's
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    scales = 0.5 ** np.arange(dim)
    return ((rng.normal(size=(n, dim)) * scales) @ basis.T).astype(np.float32)


def test_output_cut_keeps_outputs_that_the_weight_cut_loses():
    keras.utils.set_random_seed(4)
    layers = [SVDDense(12, feedback_seed=2, use_bias=False, name=f"d{i}") for i in range(2)]
    x = _anisotropic(4000, 10, seed=5)
    for layer in layers:
        layer(x[:1])
    layers[1].set_weights(layers[0].get_weights())
    W = layers[0].merged_matrix()
    cov = x.astype(np.float64).T @ x / len(x)
    by_weight = layers[0].truncate(3)
    by_output = layers[1].truncate(3, input_cov=cov)
    total = np.sum((x @ W.T) ** 2)
    lost = {name: np.sum((x @ (W - l.merged_matrix()).T) ** 2) / total
            for name, l in (("weight", layers[0]), ("output", layers[1]))}
    # the recorded energy is the output energy kept on these inputs
    assert lost["output"] == pytest.approx(1 - by_output["energy"], abs=1e-5)
    assert lost["output"] < 0.2 * lost["weight"]
    assert by_weight["energy"] > 0 and layers[1].rank == 3
    # the new factors are an exact SVD: orthonormal U and V, s descending
    U, s, V = (np.asarray(v) for v in (layers[1].U, layers[1].s, layers[1].V))
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-5)
    assert np.all(np.diff(s) <= 0)


def test_output_cut_is_the_weight_cut_for_white_inputs():
    rng = np.random.default_rng(6)
    M = rng.normal(size=(7, 5))
    U, s, V, energy = output_cut(M, np.eye(5), 2)
    u, sig, vt = np.linalg.svd(M)
    np.testing.assert_allclose((U * s) @ V.T, (u[:, :2] * sig[:2]) @ vt[:2], atol=1e-10)
    assert energy == pytest.approx((sig[:2] ** 2).sum() / (sig ** 2).sum())


@pytest.fixture(scope="module")
def digits():
    return data.load("mnist5k", 64, seed=1, max_train_examples=2000)


def test_outputs_energy_needs_fewer_ranks_on_pixels_and_trains_on(digits):
    # MNIST pixels fill few directions, so the first layer's outputs keep tau of their
    # energy at a much lower rank than its weight does
    keras.utils.set_random_seed(1)
    batches = [b[0] for b in digits.train.take(4)]
    # one trained network, cut each way (its twin holds the same weights: one fit, whose
    # trace is most of this test's time, instead of two)
    trained = build_model("mlp", (28, 28, 1), 10, rule="ssa", input_stats=digits.input_stats)
    trained.fit(digits.train, epochs=1, verbose=0)
    twin = build_model("mlp", (28, 28, 1), 10, rule="ssa", input_stats=digits.input_stats)
    twin.set_weights(trained.get_weights())
    ranks = {}
    for energy, model in (("weights", twin), ("outputs", trained)):
        covs = input_covariances(model, batches) if energy == "outputs" else None
        records = apply_cut(model, 0.9, covariances=covs)
        ranks[energy] = model.ranks()
        assert all(r["energy"] >= 0.9 - 1e-9 for r in records)
    assert ranks["outputs"]["m0_dense"] < 0.5 * ranks["weights"]["m0_dense"]
    # the callback: the same cut inside fit, and training goes on at the new shapes
    model = build_model("mlp", (28, 28, 1), 10, rule="ssa", input_stats=digits.input_stats)
    cb = RankPruning(tau=0.9, interval=1, verbose=0, energy="outputs", data=digits.train,
                     energy_batches=4)
    hist = model.fit(digits.train, epochs=2, verbose=0, callbacks=[cb])
    assert len(cb.cuts) == 1 and model.ranks()["m0_dense"] < 0.5 * 784
    assert np.isfinite(hist.history["loss"][-1])
    assert all(l._input_hook is None for l in model.svd_layers())
    with pytest.raises(ValueError, match="needs data"):
        RankPruning(tau=0.9, energy="outputs")
