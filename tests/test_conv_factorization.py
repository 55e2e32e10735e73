"""The two matrix views of an SVD convolution: spatial (the paper's) and channel.

docs/ALGORITHM.md §2. ``factorization="channel"`` views the kernel as the
N x (kh kw C) matrix K'[n, (h, w, c)]; both views must compute the plain
convolution exactly at full rank, truncate to the best rank-r approximation
of their own matrix, export to plain layers and pick the cheaper forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import keras

from ssa_tf.export import merge
from ssa_tf.nn import SVDConv2D
from ssa_tf.training.model import SSAModel
from tests.test_layers import (ATOL, RTOL, best_rank, factor_matrix, make_conv, np_, perturb,
                               reference_conv)


def channel_matrix(kernel):
    """K'[n, (h, w, c)] = K[h, w, c, n], written out element by element."""
    kh, kw, c, n = kernel.shape
    out = np.empty((n, kh * kw * c), np.float64)
    for ni in range(n):
        for hi in range(kh):
            for wi in range(kw):
                for ci in range(c):
                    out[ni, (hi * kw + wi) * c + ci] = kernel[hi, wi, ci, ni]
    return out


def channel_kernel(matrix, kh, kw, c, n):
    return np.transpose(np.asarray(matrix).reshape(n, kh, kw, c), (1, 2, 3, 0))


@pytest.mark.parametrize("forward", ["factored", "merged"])
@pytest.mark.parametrize("kernel_size,strides,padding", [((3, 3), 1, "same"), ((3, 3), 2, "same"),
                                                         ((3, 5), (2, 1), "valid"),
                                                         ((1, 1), 1, "same")])
def test_channel_full_rank_reproduces_conv(kernel_size, strides, padding, forward):
    rng = np.random.default_rng(11)
    c, n = 3, 4
    conv = make_conv(rng, c, n, kernel_size, strides, padding)
    layer = SVDConv2D.from_conv(conv, factorization="channel", forward=forward)
    kh, kw = kernel_size
    assert layer.rank == layer.full_rank == min(n, kh * kw * c)
    np.testing.assert_allclose(layer.matrix_from_kernel(np_(conv.kernel)),
                               channel_matrix(np_(conv.kernel)))
    x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
    np.testing.assert_allclose(np_(layer(x)), np_(conv(x)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.merged_kernel(), np_(conv.kernel), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("strides,padding", [(2, "same"), (1, "valid")])
def test_channel_truncation_is_best_rank_r_in_both_forms(strides, padding):
    rng = np.random.default_rng(12)
    c, n, r = 5, 6, 3
    conv = make_conv(rng, c, n, (3, 3), strides, padding)
    layer = SVDConv2D.from_conv(conv, factorization="channel")
    perturb(layer, rng)
    before = factor_matrix(layer)
    layer.truncate(r, "first")  # the exact re-factoring (the default slot cut keeps factors)
    after = factor_matrix(layer)
    np.testing.assert_allclose(after, best_rank(before, r), atol=1e-5 * np.abs(before).max())
    first, second = layer.sub_kernels()
    assert tuple(first.shape) == (3, 3, c, r) and tuple(second.shape) == (1, 1, r, n)
    kernel = channel_kernel(after, 3, 3, c, n)
    x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
    want = reference_conv(x, kernel, np_(conv.bias), (strides, strides), padding)
    for form in ("factored", "merged"):
        layer.forward = form
        np.testing.assert_allclose(np_(layer(x)), want, rtol=RTOL, atol=ATOL)


def test_auto_forward_picks_the_form_with_fewer_multiply_adds():
    # 3x3, C = N = 16. channel: merged 9*16*16 = 2304 vs r (144 + 16): factored below r = 14.4
    # spatial: merged 2304 vs 1.5 (the pair's measured cost per multiply-add) * 6 * 16 r:
    # factored below r = 16 (a third of full rank 48)
    assert SVDConv2D.SPATIAL_PAIR_COST == 1.5
    x = np.zeros((1, 8, 8, 16), np.float32)
    picks = {}
    for fact, ranks in (("channel", (16, 15, 14, 8)), ("spatial", (48, 17, 16, 15))):
        for r in ranks:
            layer = SVDConv2D(16, 3, rank=r, factorization=fact)
            layer(x)
            picks[fact, r] = layer.uses_merged_forward()
    assert picks == {("channel", 16): True, ("channel", 15): True, ("channel", 14): False,
                     ("channel", 8): False, ("spatial", 48): True, ("spatial", 17): True,
                     ("spatial", 16): True, ("spatial", 15): False}


def test_channel_layers_save_and_load(tmp_path):
    model = SSAModel("smallconv", (16, 16, 3), 10, rule="ssa", conv_factorization="channel")
    x = np.random.default_rng(13).standard_normal((2, 16, 16, 3)).astype(np.float32)
    want = np_(model(x))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert {l.factorization for l in loaded.svd_layers() if isinstance(l, SVDConv2D)} == {"channel"}
    np.testing.assert_allclose(np_(loaded(x)), want, rtol=RTOL, atol=ATOL)


def test_channel_resnet32_has_about_the_dense_parameters():
    # an SVD layer stores r (m + n) + r numbers where the plain one stores m n
    spatial = SSAModel("resnet32", (32, 32, 3), 10, rule="ssa")
    channel = SSAModel("resnet32", (32, 32, 3), 10, rule="ssa", conv_factorization="channel")
    dense = SSAModel("resnet32", (32, 32, 3), 10, rule="bp")
    count = lambda m: int(sum(np.prod(v.shape) for v in m.trainable_variables))
    extra = 0
    for layer in channel.svd_layers():
        m, n = layer._matrix_shape
        if isinstance(layer, SVDConv2D):
            kh, kw = layer.kernel_size
            assert (m, n) == (layer.filters, kh * kw * layer._channels)
            assert layer.rank == min(m, n)
        extra += layer.rank * (m + n) + layer.rank - m * n
    assert count(channel) == count(dense) + extra
    assert count(spatial) == 920930 and count(dense) == 466906
    # 1.1x the plain network at full rank, where the spatial view needs 1.97x
    assert 1.05 < count(channel) / count(dense) < 1.15


def test_channel_model_merges_into_plain_layers_in_both_forms():
    model = SSAModel("smallconv", (16, 16, 3), 10, rule="ssa", conv_factorization="channel")
    rng = np.random.default_rng(14)
    for layer in model.svd_layers():
        perturb(layer, rng, scale=0.05)
        layer.truncate(max(1, layer.rank // 2))
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    want = np_(model(x))
    for form in ("merged", "factored"):
        plain, records = merge.merge(model, form)
        assert not any(isinstance(l, SVDConv2D) for l in plain._flatten_layers())
        np.testing.assert_allclose(np_(plain(x)), want, rtol=1e-4, atol=1e-4)
        convs = [r for r in records if r.kind == "conv"]
        assert {r.form for r in convs} == {form}
    # at half rank the channel pair stores and computes (N + 9C) / 18C of the plain kernel
    _, records = merge.merge(model, "factored")
    for r in records:
        if r.kind == "conv" and r.full_rank >= 32:
            assert r.params / r.dense_params < 0.65 and r.macs / r.dense_macs < 0.65


def test_auto_forward_counts_the_merge_against_the_batch():
    # C = N = 64, 3x3, spatial view at full rank r = 192: merging the kernel costs
    # 192^3 = 7,077,888 multiply-adds a call; per output pixel the merged convolution
    # costs 36,864 and the factored pair 73,728 (x 1.5, its measured cost per
    # multiply-add: 110,592). One pixel per example (1x1 maps): the pair wins below
    # 7,077,888 / 73,728 = 96 examples, the merge from 96 on
    layer = SVDConv2D(64, 3, factorization="spatial")
    layer.build((None, 1, 1, 64))
    assert layer.rank == 192
    assert layer.uses_merged_forward()  # per output pixel alone: the merge wins
    # the batch counted is the layer's batch hint, not the traced one: one device and a
    # mirrored run (half the batch on each replica) compute in the same form
    for traced in (None, 8, 95, 96, 1000):
        layer.batch_hint = 95
        assert not layer.uses_merged_forward((traced, 1, 1, 64))
        layer.batch_hint = 96
        assert layer.uses_merged_forward((traced, 1, 1, 64))
    # both forms compute the same function
    x = np.random.default_rng(3).standard_normal((4, 5, 5, 64)).astype(np.float32)
    layer.forward = "merged"
    merged = np_(layer(x))
    layer.forward = "factored"
    np.testing.assert_allclose(np_(layer(x)), merged, rtol=RTOL, atol=ATOL)


def test_a_run_gives_its_convolutions_its_batch():
    from ssa_tf.config import RunConfig
    from ssa_tf.training.model import model_from_config

    cfg = RunConfig().with_overrides(["model.model=smallconv", "rule.name=ssa",
                                      "train.batch_size=24", "data.dataset=synthetic"])
    model = model_from_config(cfg, (8, 8, 3), 10)
    convs = [l for l in model.svd_layers() if isinstance(l, SVDConv2D)]
    assert convs and {l.batch_hint for l in convs} == {24}


def test_every_rule_and_route_builds_on_the_channel_view():
    # the global route's structured feedback once assumed the spatial view's B_U
    # (N kw, r): every ssa run with --set model.conv_factorization=channel on it crashed
    from ssa_tf.methods import registry

    built = 0
    for rule in registry.NAMES:
        for route in registry.get(rule).choices.get("feedback", (None,)):
            options = {} if route is None else {"feedback": route}
            model = SSAModel("smallconv", (8, 8, 3), 10, rule=rule,
                             conv_factorization="channel", **options)
            assert {l.factorization for l in model.svd_layers()
                    if isinstance(l, SVDConv2D)} <= {"channel"}
            built += 1
    assert built >= len(registry.NAMES) + 4
    x = np.random.default_rng(5).standard_normal((4, 8, 8, 3)).astype(np.float32)
    model = SSAModel("smallconv", (8, 8, 3), 10, rule="ssa", feedback="global",
                     conv_factorization="channel")
    from ssa_tf.training.model import compile_model
    compile_model(model)
    logs = model.train_on_batch(x, np.arange(4), return_dict=True)
    assert np.isfinite(logs["loss"])
