"""Alignment diagnostics measure angles that can be checked by construction."""

import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.diagnostics import AlignmentMonitor, update_angles, weight_metrics
from ssa_tf.trainer import SSAModel, compile_model


def batch():
    rng = np.random.default_rng(0)
    return (tf.constant(rng.standard_normal((16, 8, 8, 3)), tf.float32),
            tf.constant(rng.integers(0, 10, 16)))


def test_gated_forward_chain_is_aligned_and_random_dfa_is_not():
    x, y = batch()
    exact = SSAModel("smallconv", (8, 8, 3), 10, mode="dfa", feedback_route="chain",
                     feedback_init="forward", chain_gating=True, norm="none")
    angles = update_angles(exact, x, y)
    # after the last max pool the gated chain is BP; the head is BP in every mode
    assert angles[3] < 1.0 and angles[4] < 1e-3
    assert angles[0] < 60  # average-pooled instead of max-pooled gates: close, not exact
    dfa = SSAModel("smallconv", (8, 8, 3), 10, mode="dfa", norm="none")
    random_angles = update_angles(dfa, x, y)
    assert random_angles[4] < 1e-3
    assert 60 < np.mean(random_angles[:4]) < 120  # a fresh random feedback: near orthogonal


def test_weight_metrics_of_forward_initialized_feedback():
    model = SSAModel("mlp", (6, 6, 1), 10, mode="ssa", feedback_init="forward")
    for angle, ratio in weight_metrics(model).values():
        assert angle < 0.5 and ratio == pytest.approx(1.0, abs=1e-4)
    model = SSAModel("mlp", (6, 6, 1), 10, mode="ssa", feedback_init="random")
    angles = [a for a, _ in weight_metrics(model).values()]
    assert all(70 < a < 110 for a in angles)


def test_monitor_writes_rows(tmp_path):
    x, y = batch()
    model = SSAModel("smallconv", (8, 8, 3), 10, mode="ssa", feedback_route="chain")
    compile_model(model)
    mon = AlignmentMonitor(x, y, every=2, workdir=str(tmp_path))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[mon])
    text = (tmp_path / "alignment.csv").read_text().splitlines()
    # steps 1, 2 and 4: 5 module angles + 2 rows per SVD layer (5 layers)
    assert len(text) == 1 + 3 * (5 + 10)
    assert all(np.isfinite(float(r.split(",")[2])) for r in text[1:])
