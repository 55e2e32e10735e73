"""Rank cuts keep the feedback factors in register with the forward ones.

A trained layer's factors drift from the feedback factors they started at; a cut
that re-factors the forward weight in its exact SVD basis (order by singular value,
arbitrary signs) while B keeps its first r columns pairs each U column with an
unrelated B column, and the alignment term jumps (``rank.feedback_cut=first``).
"""

import numpy as np
import pytest
import keras

from ssa_tf.methods import losses
from ssa_tf.nn import SVDDense
from ssa_tf.nn.svd import energy_rank, slot_cut, slot_spectrum


def _drifted_layer(seed=0, units=24, inputs=32, drift=0.05):
    """An SVD layer whose factors moved a little away from B (as training moves them),
    with feedback factors from its own initial weight (SSA's default)."""
    keras.utils.set_random_seed(seed)
    layer = SVDDense(units, feedback_init="forward", feedback_seed=seed + 1)
    layer.build((None, inputs))
    rng = np.random.default_rng(seed)
    for v in (layer.U, layer.s, layer.V):
        x = np.asarray(v)
        v.assign(x + drift * rng.standard_normal(x.shape) * np.abs(x).mean())
    return layer


def _state(layer):
    return {k: np.asarray(getattr(layer, k)) for k in ("U", "s", "V", "B_U", "B_s", "B_V")}


def test_the_slot_spectrums_rank_is_the_smallest_slot_cut_keeping_tau():
    rng = np.random.default_rng(0)  # factors far from orthonormal, a negative s
    U, V, s = rng.standard_normal((30, 12)), rng.standard_normal((20, 12)), rng.standard_normal(12)
    spectrum = slot_spectrum(U, s, V)
    W = (U * s) @ V.T
    for tau in (0.5, 0.8, 0.95, 0.999):
        r = energy_rank(spectrum, tau)
        Uc, sc, Vc, keep, energy = slot_cut(U, s, V, r)
        assert energy == pytest.approx(1 - np.linalg.norm(W - (Uc * sc) @ Vc.T) ** 2
                                       / np.linalg.norm(W) ** 2)
        assert energy >= tau - 1e-12
        if r > 1:
            assert slot_cut(U, s, V, r - 1)[4] < tau
        np.testing.assert_array_equal(Uc, U[:, keep])  # values untouched, slots in order
        assert list(keep) == sorted(keep)


@pytest.mark.parametrize("mode", ["slots"])
def test_a_cut_keeps_bs_own_columns_in_the_slots_of_the_kept_components(mode):
    layer = _drifted_layer()
    before = _state(layer)
    layer.truncate(10, feedback=mode)
    after = _state(layer)
    # every kept feedback column is one of B's own, unchanged, in its old order
    cols = [int(np.argmin(np.linalg.norm(before["B_U"] - c[:, None], axis=0)))
            for c in after["B_U"].T]
    assert cols == sorted(cols) and len(set(cols)) == 10
    np.testing.assert_array_equal(after["B_U"], before["B_U"][:, cols])
    np.testing.assert_array_equal(after["B_s"], before["B_s"][cols])
    np.testing.assert_array_equal(after["B_V"], before["B_V"][:, cols])
    # ... and with the forward component that sat in that slot
    np.testing.assert_array_equal(after["U"], before["U"][:, cols])
    np.testing.assert_array_equal(after["s"], before["s"][cols])


def test_the_alignment_term_is_continuous_across_a_slot_cut_only():
    terms = {}
    for mode in ("first", "svd", "slots"):
        layer = _drifted_layer()
        before = float(losses.alignment_loss(layer))
        layer.truncate(12, feedback=mode)
        terms[mode] = (before, float(losses.alignment_loss(layer)))
    assert terms["slots"][1] <= terms["slots"][0]  # only the dropped components' share goes
    for mode in ("first", "svd"):  # exact re-factoring: unrelated or rotated columns
        assert terms[mode][1] > 10 * terms[mode][0], (mode, terms[mode])


def test_the_default_cut_is_slots_for_weights_and_first_for_outputs():
    from ssa_tf.config import RunConfig, validate
    from ssa_tf.nn.svd import resolve_feedback_cut

    assert resolve_feedback_cut(None) == "slots"
    assert resolve_feedback_cut(None, np.eye(2)) == "first"
    assert resolve_feedback_cut("svd") == "svd"
    cfg = RunConfig().with_overrides(["rank.tau=0.9", "rank.energy=outputs",
                                      "rank.feedback_cut=slots"])
    assert "rank.feedback_cut" in validate(cfg) and "choose first or svd" in validate(cfg)
