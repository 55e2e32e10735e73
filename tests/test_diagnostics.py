"""Alignment diagnostics measure angles that can be checked by construction."""

import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.training.diagnostics import AlignmentMonitor, update_angles, weight_metrics
from ssa_tf.training.model import SSAModel, compile_model


def batch():
    rng = np.random.default_rng(0)
    return (tf.constant(rng.standard_normal((16, 8, 8, 3)), tf.float32),
            tf.constant(rng.integers(0, 10, 16)))


def test_fa_with_forward_feedback_is_bp_at_init_and_direct_rules_are_not():
    x, y = batch()
    # B = W at construction and the forward gates and Jacobians: the gated
    # chain is the true gradient, so every update is BP's
    # (a Glorot head: through a zero head every hidden module's true gradient is 0)
    fa = SSAModel("smallconv", (8, 8, 3), 10, rule="fa", norm="none", head_init="glorot")
    assert max(update_angles(fa, x, y)) < 1.0
    # the direct rules' hidden updates are what they are: away from BP's at init
    # wherever a later nonlinearity, norm or pool lies between a module and the
    # head (the fixed chain is not gated by them); the head learns from the true CE
    dfa = update_angles(SSAModel("smallconv", (8, 8, 3), 10, rule="dfa", head_init="glorot"),
                        x, y)
    assert dfa[4] < 1e-3 and 45 < np.mean(dfa[:4]) < 135, dfa
    ssa = update_angles(SSAModel("smallconv", (8, 8, 3), 10, rule="ssa", head_init="glorot"),
                        x, y)
    assert ssa[4] < 1e-3 and min(ssa[:3]) > 20, ssa
    # module 3 feeds the head directly: the fixed chain from the initial weights is
    # its exact Jacobian at construction (B = W0), until the head moves
    assert ssa[3] < 1e-3, ssa


def test_weight_metrics_of_forward_initialized_feedback():
    model = SSAModel("mlp", (6, 6, 1), 10, rule="ssa", feedback_init="forward", head_init="glorot")
    for angle, ratio in weight_metrics(model).values():
        assert angle < 0.5 and ratio == pytest.approx(1.0, abs=1e-4)
    model = SSAModel("mlp", (6, 6, 1), 10, rule="ssa", feedback_init="random", head_init="glorot")
    angles = [a for a, _ in weight_metrics(model).values()]
    assert all(70 < a < 110 for a in angles)


def test_monitor_writes_rows(tmp_path):
    x, y = batch()
    model = SSAModel("smallconv", (8, 8, 3), 10, rule="ssa", feedback="chain")
    compile_model(model)
    mon = AlignmentMonitor(x, y, every=2, workdir=str(tmp_path))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[mon])
    text = (tmp_path / "alignment.csv").read_text().splitlines()
    # steps 1, 2 and 4: 5 module angles + 2 rows per SVD layer (5 layers)
    assert len(text) == 1 + 3 * (5 + 10)
    assert all(np.isfinite(float(r.split(",")[2])) for r in text[1:])


def test_angles_compare_updates_on_the_same_dropout_masks_and_leave_the_moving_statistics():
    import keras

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)  # in the head's module
    network = keras.Model(inputs, keras.layers.Dense(10, name="head")(h))
    keras.utils.set_random_seed(2)
    model = SSAModel("noisy", (8, 8, 3), 10, rule="dfa", network=network, head_init="glorot")
    bn = next(l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization))
    before = [bn.moving_mean.numpy(), bn.moving_variance.numpy()]
    x, y = batch()
    # the head learns from the true CE: on the same masks its update is BP's gradient
    assert update_angles(model, x, y)[-1] < 1e-3
    for a, b in zip(before, [bn.moving_mean.numpy(), bn.moving_variance.numpy()]):
        np.testing.assert_array_equal(a, b)
