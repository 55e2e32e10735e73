"""Conversion into and out of SVD form, and ONNX/SavedModel export in process.

The Keras-to-SSA conversion and docs/ALGORITHM.md §7 ("merging the truncated factors into plain
Dense/Conv2D layers changes the outputs by float32 rounding only; the ONNX
export matches Keras"). References are the original Keras models and SSA
models themselves; multiply-add counts are recomputed from the exported
layers' own shapes, not taken from the library's report.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import keras

from conftest import require_export

require_export()
from ssa_tf.export import convert, merge as merge_lib  # noqa: E402
from ssa_tf.export import deploy as export  # noqa: E402
from ssa_tf.nn import SVDConv2D, SVDDense  # noqa: E402
from ssa_tf.training.model import SSAModel  # noqa: E402

ATOL = 1e-5  # round trips on O(1) outputs: float32 rounding only


def calibrate_batch_norms(model, x):
    """Moving statistics = the batch statistics of ``x``, as after training.

    Fresh moving statistics (0, 1) let an untrained deep network's logits
    grow to hundreds, where float32 rounding alone exceeds 1e-4.
    """
    norms = [l for l in model._flatten_layers(include_self=False)
             if isinstance(l, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(norms, saved):
        bn.momentum = momentum


def stock_keras_only(model):
    """No layer from ssa_tf and no ssa_tf class in the saved config."""
    return all(type(l).__module__.startswith("keras.") for l in model._flatten_layers())


# --------------------------------------------------------------------------
# models shared by several tests
# --------------------------------------------------------------------------

def _rng_batch(shape, n=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def smallconv():
    keras.utils.set_random_seed(3)
    model = SSAModel("smallconv", (16, 16, 3), 10, rule="ssa", norm="batch", seed=3,
                     head_init="glorot")  # a zero head would make every logit 0
    layers = {l.name: l for l in model.svd_layers()}
    for name, rank in {"m0_conv": 2, "m2_conv": 40, "m3_dense": 16}.items():
        layers[name].truncate(rank)
    calibrate_batch_norms(model, _rng_batch((16, 16, 3), 32, seed=1))
    return model


@pytest.fixture(scope="module")
def resnet32():
    keras.utils.set_random_seed(4)
    model = SSAModel("resnet32", (8, 8, 3), 10, rule="ssa", norm="batch", seed=4,
                     head_init="glorot")
    layers = {l.name: l for l in model.svd_layers()}
    # s1b0_conv1 (3x3, stride 2, 16 -> 32) at rank 28: r (m + n) < m n per
    # output pixel, but its vertical half runs at the input width, so merged
    # is cheaper; s1b0_proj (1x1, stride 2) at rank 4 does fewer multiply-adds
    # factored, but not half as many, so auto keeps it merged (FACTORED_CONV_COST)
    for name, rank in {"s1b0_conv1": 28, "s1b0_proj": 4, "s2b4_conv2": 8, "m0_conv": 3}.items():
        layers[name].truncate(rank)
    calibrate_batch_norms(model, _rng_batch((8, 8, 3), 32, seed=1))
    return model


@pytest.fixture(scope="module")
def mlp():
    keras.utils.set_random_seed(5)
    model = SSAModel("mlp", (8, 8, 1), 10, rule="ssa", norm="layer", seed=5,
                     head_init="glorot")
    {l.name: l for l in model.svd_layers()}["m1_dense"].truncate(8)
    return model


# --------------------------------------------------------------------------
# Keras -> SSA -> merged Keras: exact at full rank
# --------------------------------------------------------------------------

def _functional_model():
    keras.utils.set_random_seed(7)
    inp = keras.Input((9, 11, 3))
    x = keras.layers.Conv2D(6, 3, strides=1, padding="same", activation="relu",
                            name="c_s1_same")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", use_bias=False, name="c_s2_valid")(x)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(8, (3, 2), strides=2, padding="same", name="c_s2_same")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    y = keras.layers.Conv2D(8, 1, padding="valid", use_bias=False, name="c_1x1")(x)
    d = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, name="c_dilated")(x)
    x = keras.layers.Add()([x, y, d])
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(12, activation="tanh", name="d_tanh")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(7, use_bias=False, name="d_nobias")(x)
    x = keras.layers.BatchNormalization(name="bn_c")(x)
    out = keras.layers.Dense(4, name="d_out")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for bn in (l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)):
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c),
                        rng.uniform(0.5, 2.0, c)])
    return model


def test_round_trip_functional_is_exact_at_full_rank(tmp_path):
    model = _functional_model()
    x = _rng_batch((9, 11, 3))
    reference = np.asarray(model(x, training=False))

    ssa, records = convert.to_ssa(model)
    by_name = {r.name: r for r in records}
    converted = {"c_s1_same", "c_s2_valid", "c_s2_same", "c_1x1", "d_tanh", "d_nobias", "d_out"}
    assert {n for n, r in by_name.items() if r.form == "svd"} == converted
    assert by_name["c_dilated"].form == "kept" and "dilated" in by_name["c_dilated"].note
    assert "relu" in by_name["c_s1_same"].note and "tanh" in by_name["d_tanh"].note
    assert all(r.rank == r.full_rank for r in records)
    svd = {l.name: l for l in ssa.layers if isinstance(l, (SVDDense, SVDConv2D))}
    assert set(svd) == converted
    assert svd["c_s2_valid"].bias is None and svd["d_nobias"].bias is None
    assert svd["c_s2_same"].strides == (2, 2) and svd["c_s2_same"].kernel_size == (3, 2)
    np.testing.assert_allclose(ssa(x, training=False), reference, atol=ATOL, rtol=1e-5)
    assert model.get_layer("d_tanh").activation is keras.activations.tanh  # original untouched

    for form in ("auto", "merged", "factored"):
        merged, records = convert.merge(ssa, form)
        np.testing.assert_allclose(merged(x), reference, atol=ATOL, rtol=1e-5, err_msg=form)
        assert stock_keras_only(merged)
        assert not any(isinstance(l, keras.layers.BatchNormalization) for l in merged.layers)
        notes = {r.name: r.note for r in records}
        assert (notes["c_s2_valid"], notes["c_s2_same"], notes["d_nobias"]) == (
            "bn_a folded", "bn_b folded", "bn_c folded")
        forms = {r.name: r.form for r in records}
        # at full rank r (m + n) >= m n: factoring never pays
        assert set(forms.values()) == ({"merged"} if form == "auto" else
                                       {form} if form == "merged" else {"factored", "merged"})
        assert forms["c_dilated"] == "merged"  # a plain layer has no factors
    path = tmp_path / "merged.keras"
    merged.save(path)
    with zipfile.ZipFile(path) as z:
        assert "ssa_tf" not in z.read("config.json").decode()


def test_round_trip_sequential_and_rank_cuts():
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(12), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3)])
    x = _rng_batch((10,))
    reference = np.asarray(model(x, training=False))
    ssa, records = convert.to_ssa(model)
    assert isinstance(ssa, keras.Sequential)
    assert [type(l).__name__ for l in ssa.layers] == [
        "SVDDense", "Activation", "SVDDense", "BatchNormalization", "SVDDense"]
    merged, _ = convert.merge(ssa)
    np.testing.assert_allclose(merged(x), reference, atol=ATOL, rtol=1e-5)

    # energy cut: the smallest rank keeping tau of sum s^2, from NumPy's SVD
    tau = 0.8
    cut, records = convert.to_ssa(model, energy=tau, exempt=[model.layers[-1].name])
    for layer, record in zip([l for l in model.layers if isinstance(l, keras.layers.Dense)],
                             records):
        s = np.linalg.svd(np.asarray(layer.kernel, np.float64), compute_uv=False)
        share = np.cumsum(s ** 2) / np.sum(s ** 2)
        expected = len(s) if layer is model.layers[-1] else int(np.argmax(share >= tau - 1e-12)) + 1
        assert record.rank == expected, record
        assert record.energy == pytest.approx(share[expected - 1], rel=1e-6)
    capped, records = convert.to_ssa(model, rank=2)
    assert [r.rank for r in records] == [2, 2, 2]
    with pytest.raises(ValueError, match="not both"):
        convert.to_ssa(model, rank=2, energy=0.9)


def test_bp_ssa_model_converts_to_ssa_mode():
    keras.utils.set_random_seed(9)
    bp = SSAModel("smallconv", (8, 8, 3), 10, rule="bp", norm="batch", seed=9)
    x = _rng_batch((8, 8, 3), 16)
    calibrate_batch_norms(bp, x)
    reference = np.asarray(bp(x, training=False))
    ssa, records = convert.to_ssa(bp)
    assert isinstance(ssa, SSAModel) and ssa.rule_name == "ssa"
    assert {r.name for r in records} == set(ssa.ranks())
    np.testing.assert_allclose(ssa(x, training=False), reference, atol=1e-4, rtol=1e-4)
    # exporting the BP model itself is the "dense export": plain layers, norms folded
    merged, records = convert.merge(bp, "auto")
    assert {r.form for r in records} == {"merged"} and stock_keras_only(merged)
    np.testing.assert_allclose(merged(x), reference, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="already in SVD form"):
        convert.to_ssa(ssa)


# --------------------------------------------------------------------------
# truncated SSA models -> merged Keras
# --------------------------------------------------------------------------

def _macs(model, name):
    """Multiply-adds per example of the stock layer(s) exported for ``name``."""
    total = 0
    for layer in model.layers:
        if layer.name not in (name, f"{name}_V", f"{name}_U"):
            continue
        kernel = layer.kernel.shape
        positions = int(np.prod(layer.output.shape[1:-1]))
        total += positions * int(np.prod(kernel))
    return total


@pytest.mark.parametrize("name", ["smallconv", "resnet32", "mlp"])
def test_truncated_merge_matches_ssa_model(name, request):
    model = request.getfixturevalue(name)
    x = _rng_batch(model.input_dims, 8, seed=2)
    reference = np.asarray(model(x, training=False))
    merged = {}
    for form in ("merged", "factored", "auto"):
        merged[form], records = convert.merge(model, form)
        np.testing.assert_allclose(merged[form](x), reference, atol=1e-4, rtol=1e-5,
                                   err_msg=form)
        assert stock_keras_only(merged[form])
        assert not any(isinstance(l, keras.layers.BatchNormalization)
                       for l in merged[form].layers)  # every norm follows a weight layer
    ranks = model.ranks()
    assert {r.name: r.rank for r in records} == ranks
    # factored only where it takes fewer multiply-adds, counted on the layers (a
    # convolution: at most half, merge_lib.FACTORED_CONV_COST)
    for record in records:
        merged_macs = _macs(merged["merged"], record.name)
        factored_macs = _macs(merged["factored"], record.name)
        conv = record.kind != "dense"
        weight = merge_lib.FACTORED_CONV_COST if conv else 1.0
        assert record.form == ("factored" if factored_macs * weight < merged_macs
                               else "merged"), record
        if record.form == "factored":
            assert factored_macs < merged_macs
        chosen = factored_macs if record.form == "factored" else merged_macs
        assert (record.macs, record.dense_macs) == (chosen, merged_macs)
    forms = {r.name: r.form for r in records}
    expected_factored = {"smallconv": {"m0_conv", "m2_conv", "m3_dense"},
                         "resnet32": {"s2b4_conv2", "m0_conv"},
                         "mlp": {"m1_dense"}}[name]
    assert {n for n, f in forms.items() if f == "factored"} == expected_factored
    if name == "resnet32":
        assert forms["s1b0_conv1"] == "merged"  # the stride-2 case the per-pixel rule gets wrong
    assert export.count_params(merged["auto"]) < export.count_params(merged["merged"])


def test_measured_form_asks_the_timer_per_svd_layer_and_emits_its_choice(smallconv):
    # the timer sees each SVD layer's two forms, computing the same function; the merge
    # emits what it answers and still computes the model's function
    x = _rng_batch(smallconv.input_dims, 8, seed=3)
    seen = []

    def timer(merged, factored):
        probe = _rng_batch(merged.inputs[0].shape[1:], 4, seed=len(seen))
        np.testing.assert_allclose(factored(probe), merged(probe), atol=1e-4, rtol=1e-4)
        seen.append(merged.layers[-1].name)
        return "factored" if len(seen) % 2 else "merged"

    plain, records = convert.merge(smallconv, "measured", timer=timer)
    assert seen == [r.name for r in records] == [l.name for l in smallconv.svd_layers()]
    assert [r.form for r in records] == ["factored" if i % 2 == 0 else "merged"
                                         for i in range(len(records))]
    np.testing.assert_allclose(plain(x), np.asarray(smallconv(x, training=False)),
                               atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="takes a timer"):
        convert.merge(smallconv, "measured")


def test_the_onnx_timer_picks_the_faster_of_two_forms():
    # one form is a 1x1 convolution, the other twelve stacked: the timer must say which
    inputs = keras.Input((32, 32, 16))
    fast = keras.Model(inputs, keras.layers.Conv2D(16, 1)(inputs))
    inputs = keras.Input((32, 32, 16))
    y = inputs
    for _ in range(12):
        y = keras.layers.Conv2D(16, 3, padding="same")(y)
    slow = keras.Model(inputs, y)
    timer = export.onnx_form_timer(batch=4, runs=5)
    assert timer(fast, slow) == "merged" and timer(slow, fast) == "factored"


@pytest.mark.parametrize("fastest", ["per layer", "merged", "factored", None])
def test_a_measured_export_keeps_the_fastest_whole_model(smallconv, monkeypatch, fastest):
    # the per-layer choice, all merged and all factored are timed as whole models; the one
    # with the least geometric mean of ratios to all-merged is returned, computing the
    # model's function (times faked: which one wins is the behaviour under test)
    from ssa_tf.export import onnx_runtime

    monkeypatch.setattr(onnx_runtime, "onnx_form_timer",
                        lambda **_: lambda merged, factored: "factored")
    base = {"per layer": 1.0, "merged": 1.0, "factored": 1.0}
    seen = []

    def times(sessions, x, runs):
        seen.append((sorted(sessions), len(x)))
        # the winner is faster at batch 8 only: the score must combine the batches
        return {n: base[n] * (0.5 if n == fastest and len(x) == 8 else 1.2 if
                              n == fastest else 1.0) for n in sessions}

    monkeypatch.setattr(onnx_runtime, "median_latency_ms", times)
    plain, records, chosen, measured = onnx_runtime.fastest_merge(smallconv)
    assert seen == [(sorted(base), 1), (sorted(base), 8)] and set(measured) == set(base)
    if fastest is None:  # a tie: the fewer parameters (here the factored forms) win
        assert chosen in ("per layer", "factored")
        assert plain.count_params() < convert.merge(smallconv, "merged")[0].count_params()
        fastest = chosen
    assert chosen == fastest and set(measured[fastest]) == {1, 8}
    want = {"per layer": "factored", "factored": "factored", "merged": "merged"}[fastest]
    assert {r.form for r in records} == {want}
    x = _rng_batch(smallconv.input_dims, 8, seed=5)
    np.testing.assert_allclose(plain(x), np.asarray(smallconv(x, training=False)),
                               atol=1e-4, rtol=1e-5)


def test_sessions_timed_side_by_side_do_not_spin(mlp):
    # a spinning session's idle threads took the cores from the one timed after it: four
    # identical sessions ran 37-46 ms spinning, 21.8-22.0 ms not
    proto = export.to_onnx(convert.merge(mlp, "merged")[0]).SerializeToString()
    for threads in (None, 2):
        options = export.onnx_session(proto, threads).get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_merge_refuses_unsupported_layers():
    inp = keras.Input((6, 2))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Conv1D(3, 2)(inp)))
    with pytest.raises(convert.UnsupportedLayerError, match="Conv1D"):
        convert.merge(model)


# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "smallconv", "resnet32"])
def test_onnx_matches_ssa_model(name, request):
    model = request.getfixturevalue(name)
    merged, _ = convert.merge(model, "auto")
    proto = export.to_onnx(merged, opset=17)
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = export.onnx_session(proto.SerializeToString())
    for batch in (1, 7):  # dynamic batch dimension
        x = _rng_batch(model.input_dims, batch, seed=batch)
        reference = np.asarray(model(x, training=False))
        check = export.compare_logits(reference, export.run_onnx(session, x), "onnx")
        assert check["max_abs_diff"] <= 1e-4 and check["top1_differ"] == 0


def test_compare_logits_limits():
    ref = np.array([[1.0, 2.0], [3.0, 0.0]])
    assert export.compare_logits(ref, ref + 5e-5, "x")["max_abs_diff"] == pytest.approx(5e-5)
    with pytest.raises(export.ParityError, match="max"):
        export.compare_logits(ref, ref + 2e-4, "x")
    with pytest.raises(export.ParityError, match="1 of 2 top-1"):
        export.compare_logits(ref, np.array([[1.0, 2.0], [0.0, 3.0]], np.float32), "x")


# --------------------------------------------------------------------------
# the deploy script and export_run
# --------------------------------------------------------------------------


def test_the_export_report_names_the_rule_that_trained_the_model():
    # a bp run's export once said "onnxruntime vs SSA model"
    latency = {(m, b): 1.0 for m in ("export", "dense") for b in (1, 64)}
    check = {"examples": 8, "max_abs_diff": 1e-6}
    spec = {"values": "raw pixels", "shape": "(batch, 4)", "dtype": "float32"}
    result = export.ExportResult([], "auto", 17, 10, 10, 100, 100, latency, check, check,
                                 "mnist5k:test", "m.onnx", "saved", spec, rule="bp")
    text = export.format_result(result)
    assert "onnxruntime vs the trained model (bp) on 8 examples" in text
    assert "SavedModel vs the trained model (bp)" in text and "SSA model" not in text
