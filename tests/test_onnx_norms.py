"""Layer norms in the ONNX export: the channel mean folded into the weight layer before them."""

import collections

import keras
import numpy as np
import pytest

from ssa_tf.export import convert
from ssa_tf.export import deploy as export
from ssa_tf.export.onnx_norms import fold_layer_norm_means
from ssa_tf.training.model import SSAModel


def _ops(proto):
    return collections.Counter(n.op_type for n in proto.graph.node)


def _onnx_logits(proto, x):
    return export.run_onnx(export.onnx_session(proto.SerializeToString()), x)


def _norm_count(model):
    return sum(isinstance(l, keras.layers.LayerNormalization) for l in model._flatten_layers())


@pytest.mark.parametrize("name,shape,forms", [("resnet32", (8, 8, 3), ("auto",)),
                                              ("smallconv", (16, 16, 3), ("merged", "factored"))])
def test_every_norm_of_a_layer_norm_model_folds_and_computes_the_same(name, shape, forms):
    keras.utils.set_random_seed(21)
    model = SSAModel(name, shape, 10, rule="ssa", norm="layer", head_init="glorot", seed=21)
    for layer in model.svd_layers()[::2]:
        layer.truncate(max(1, layer.rank // 2))
    x = np.random.default_rng(3).standard_normal((5, *shape)).astype(np.float32)
    reference = np.asarray(model(x, training=False))
    assert np.abs(reference).max() > 0.05  # the check below is not on all-zero logits
    for form in forms:
        merged, _ = convert.merge(model, form)
        norms = _norm_count(merged)
        plain = export.to_onnx(merged, opset=17, fold_norms=False)
        folded = export.to_onnx(merged, opset=17)
        assert export.norms_folded(plain) is None
        assert export.norms_folded(folded) == f"{norms} of {norms}"
        # one reduction per norm instead of two; no mean path left
        assert _ops(plain)["ReduceMean"] == 2 * norms and _ops(plain)["Neg"] == norms
        assert _ops(folded)["ReduceMean"] == norms and _ops(folded)["Neg"] == 0
        assert _ops(folded)["Sub"] == 0
        assert len(folded.graph.node) < len(plain.graph.node) - 4 * norms
        got = _onnx_logits(folded, x)
        np.testing.assert_allclose(got, reference, atol=1e-5, err_msg=form)
        np.testing.assert_allclose(got, _onnx_logits(plain, x), atol=1e-5, err_msg=form)


@pytest.mark.parametrize("opset", [13, 18])  # ReduceMean's axes: an attribute, then an input
def test_fold_works_at_both_ends_of_the_opset_range(opset):
    keras.utils.set_random_seed(22)
    model = SSAModel("mlp", (6, 6, 1), 10, rule="ssa", norm="layer", head_init="glorot", seed=22)
    merged, _ = convert.merge(model, "auto")
    x = np.random.default_rng(4).standard_normal((4, 6, 6, 1)).astype(np.float32)
    proto = export.to_onnx(merged, opset=opset)
    norms = _norm_count(merged)
    assert norms >= 1 and export.norms_folded(proto) == f"{norms} of {norms}"
    np.testing.assert_allclose(_onnx_logits(proto, x), np.asarray(model(x, training=False)),
                               atol=1e-5)


def _functional(build):
    keras.utils.set_random_seed(23)
    inp = keras.Input((12,))
    model = keras.Model(inp, build(inp))
    for layer in model.layers:  # non-trivial gamma and beta
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.set_weights([np.linspace(0.5, 1.5, w.shape[0]).astype(np.float32)
                               for w in layer.get_weights()])
    return model


@pytest.mark.parametrize("case", ["input also added", "after an activation", "folds"])
def test_a_norm_folds_only_where_centring_changes_nothing_else(case):
    def build(inp):
        x = keras.layers.Dense(9)(inp)
        if case == "after an activation":  # tanh(x) is not linear in x
            x = keras.layers.Activation("tanh")(x)
        y = keras.layers.LayerNormalization()(x)
        if case == "input also added":  # centring x would change this sum
            y = keras.layers.Add()([x, y])
        return keras.layers.Dense(3)(y)

    model = _functional(build)
    x = np.random.default_rng(5).standard_normal((6, 12)).astype(np.float32) * 3
    proto = export.to_onnx(model, opset=17)
    want = "1 of 1" if case == "folds" else "0 of 1"
    assert export.norms_folded(proto) == want
    np.testing.assert_allclose(_onnx_logits(proto, x), np.asarray(model(x)), atol=1e-5)


def test_fold_of_a_graph_without_layer_norms_changes_nothing():
    model = _functional(lambda inp: keras.layers.Dense(3)(keras.layers.Dense(9, "relu")(inp)))
    proto = export.to_onnx(model, opset=17, fold_norms=False)
    before = proto.SerializeToString()
    assert fold_layer_norm_means(proto) == (0, 0)
    assert proto.SerializeToString() == before
