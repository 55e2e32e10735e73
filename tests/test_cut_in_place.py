"""``rank.cut_form=in_place``: a cut that zeroes the dropped components where they are.

What it must be, over whole runs through the real entry: the same training as the
resizing cut (weights, ranks, ranks.csv, the logged terms), with no rebuild and no retrace;
the zeroed components stay zero; a resumed run continues it; the saved model drops the
zeros. Each claim has a mutant here that breaks it (the moments not restarted, the terms'
live mask gone, the saved model not compacted), and the comparison must catch it.
"""

import json

import keras
import numpy as np
import pytest

from ssa_tf.config import RunConfig, UsageError
from ssa_tf.config.validate import validate
from ssa_tf.methods import losses
from ssa_tf.training import rank as rank_lib
from ssa_tf.training import run
from ssa_tf.training.model import compile_model, model_from_config

BASE = ["data.dataset=synthetic", "data.synthetic_shape=8,8,3", "data.max_train_examples=256",
        "train.batch_size=32", "train.epochs=3", "rule.name=ssa", "rule.gamma=0.1",
        "rank.tau=0.8", "rank.start=1", "rank.interval=1", "rank.keep_ends=false",
        "runtime.progress=none", "seed=1"]


def _config(workdir, form, *sets):
    where = [] if workdir is None else [f"runtime.workdir={workdir}"]
    return RunConfig().with_overrides([*BASE, "model.model=mlp", f"rank.cut_form={form}",
                                       *where, *sets])


def _run(workdir, form, *sets, callbacks=()):
    keras.backend.clear_session(free_memory=False)
    summary = run.train(_config(workdir, form, *sets), verbose=0,
                        extra_callbacks=list(callbacks))
    model = keras.models.load_model(workdir / "model.keras")
    return {"weights": {v.path: v.numpy() for v in model.weights}, "summary": summary,
            "ranks_csv": (workdir / "ranks.csv").read_text(), "model": model}


def differences(a, b, tol=1e-5) -> list:
    """What differs between two runs' results, each as one line (empty: the same run):
    weights by more than ``tol``, energies by ``tol`` / 10, history values by 10 ``tol``
    relative."""
    found = []
    rows = [[line.split(",") for line in r["ranks_csv"].split()] for r in (a, b)]
    if len(rows[0]) != len(rows[1]) or any(
            x[:4] + x[5:] != y[:4] + y[5:] or abs(float(x[4]) - float(y[4])) > tol / 10
            for x, y in zip(rows[0][1:], rows[1][1:])):
        found.append(f"ranks.csv:\n{a['ranks_csv']}against\n{b['ranks_csv']}")
    for key in ("ranks", "final_trainable_params"):
        if a["summary"][key] != b["summary"][key]:
            found.append(f"{key}: {a['summary'][key]} against {b['summary'][key]}")
    shapes = {k: v.shape for k, v in a["weights"].items()}
    if shapes != {k: v.shape for k, v in b["weights"].items()}:
        return found + ["the saved weights' shapes"]
    diff = max(float(np.max(np.abs(a["weights"][k] - b["weights"][k]))) for k in shapes)
    if diff > tol:
        found.append(f"weights differ by {diff:.3g}")
    for name, values in a["summary"]["history"].items():
        gap = float(np.max(np.abs(np.subtract(values, b["summary"]["history"][name]))))
        if gap > 10 * tol * max(1.0, float(np.max(np.abs(values)))):
            found.append(f"{name} differs by {gap:.3g}")
    return found


CUTS = {"slots": [], "first": ["rank.feedback_cut=first"], "svd": ["rank.feedback_cut=svd"],
        "output energy": ["rank.energy=outputs", "rank.energy_batches=2"],
        "smallconv, channel view": ["model.model=smallconv", "model.conv_factorization=channel"],
        # the route cut_epoch times, on convolutions
        "smallconv, global broadcast, no recompute": [
            "model.model=smallconv", "rule.feedback=global", "rule.feedback_spatial=broadcast",
            "rule.recompute=false"],
        "cosine alignment": ["rule.align_form=cosine"],
        # FactorAdam (s at its own rate) and the rate's warm-up after each cut
        "s rate, warm-up": ["rule.s_rate_scale=0.5", "rank.warmup_steps=3"]}


@pytest.mark.parametrize("cut", CUTS)
def test_a_cut_in_place_trains_what_a_resize_trains(cut, tmp_path):
    a = _run(tmp_path / "resize", "resize", *CUTS[cut])
    b = _run(tmp_path / "in_place", "in_place", *CUTS[cut])
    assert differences(a, b) == []
    # two cuts happened, and the saved model holds only the live components
    rows = a["ranks_csv"].strip().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == {"1", "2"}
    assert any(int(r.split(",")[3]) < int(r.split(",")[2]) for r in rows)
    for layer in b["model"].svd_layers():
        assert layer.live_rank == layer.rank == b["summary"]["ranks"][layer.name]


# the mutants: each breaks one piece of the equivalence, and the comparison must say so
def _no_moment_restart(monkeypatch):
    monkeypatch.setattr(rank_lib, "restart_moments", lambda optimizer, cut: None)


def _terms_count_dead_columns(monkeypatch):
    monkeypatch.setattr(losses, "_live", lambda X: keras.ops.ones_like(X[0]))


def _saved_with_zeros(monkeypatch):
    monkeypatch.setattr(rank_lib, "compact", lambda model: False)


def _cosine_counts_dead_columns(monkeypatch):
    def unmasked(layer):
        def term(X, B):
            dot = keras.ops.sum(X * B, axis=0)
            norms = keras.ops.sum(X * X, axis=0) * keras.ops.sum(B * B, axis=0)
            return keras.ops.sum(1.0 - keras.ops.square(dot) / (norms + 1e-12))
        return term(layer.U, layer.B_U) + term(layer.V, layer.B_V)

    monkeypatch.setattr(losses, "cosine_alignment_loss", unmasked)


# without the restart, Adam's old momentum moves the zeroed components: they come back
MUTANTS = {"moments not restarted": (_no_moment_restart, "ranks.csv", []),
           "terms count the zeroed columns": (_terms_count_dead_columns, "ortho_term differs",
                                              []),
           "the cosine term counts them": (_cosine_counts_dead_columns, "align_term differs",
                                           ["rule.align_form=cosine"]),
           "saved with the zeros": (_saved_with_zeros, "shapes", [])}


@pytest.mark.parametrize("name", MUTANTS)
def test_the_comparison_catches_each_mutant(name, monkeypatch, tmp_path):
    make, expected, sets = MUTANTS[name]
    a = _run(tmp_path / "resize", "resize", *sets)
    make(monkeypatch)
    b = _run(tmp_path / "in_place", "in_place", *sets)
    found = differences(a, b)
    assert any(expected in line for line in found), found


class _Functions(keras.callbacks.Callback):
    """The train function, the optimizer and the traces of the step so far (each trace
    runs ``train_step``'s Python once) at the start of every epoch."""

    def __init__(self):
        super().__init__()
        self.seen, self.traces = [], 0

    def set_model(self, model):
        super().set_model(model)
        step = model.train_step

        def counted(data):
            self.traces += 1
            return step(data)

        model.train_step = counted

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append((self.model.train_function, self.model.optimizer, self.traces))


def _fit_with_cuts(form, epochs=4):
    cfg = _config(None, form)
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1)
    ds = run.load_data(cfg)
    model = model_from_config(cfg, ds.input_shape, ds.num_classes)
    compile_model(model, 1e-3)
    cut = rank_lib.RankPruning(tau=0.8, start=1, interval=1, verbose=0, cut_form=form)
    functions = _Functions()
    model.fit(ds.train, epochs=epochs, verbose=0, callbacks=[cut, functions])
    return model, cut, functions


def test_a_cut_in_place_neither_rebuilds_nor_retraces_and_its_zeros_stay():
    model, cut, functions = _fit_with_cuts("in_place")
    first_function, first_optimizer, traces = functions.seen[1]  # epoch 1's, before a cut
    assert traces >= 1 and functions.traces == traces  # none after
    assert all(f is first_function and o is first_optimizer for f, o, _ in functions.seen[1:])
    assert len(cut.cuts) == 3  # after epochs 1, 2 and 3; epoch 4 trained after the last
    ranks = [r for _, r in cut.history]
    assert all(b[k] <= a[k] for a, b in zip(ranks, ranks[1:]) for k in a)
    assert ranks[-1] == model.live_ranks() != model.ranks()  # shapes kept, components cut
    optimizer = model.optimizer
    for layer in model.svd_layers():
        dead = np.setdiff1d(np.arange(layer.rank), layer.live_slots())
        assert len(dead) == layer.rank - ranks[-1][layer.name]
        for var in layer.factor_variables():  # an epoch of steps after the last cut
            assert not np.any(var.numpy()[..., dead])
        for var in (layer.U, layer.s, layer.V):
            i = optimizer._get_variable_index(var)
            assert not np.any(optimizer._momentums[i].numpy()[..., dead])
    # the resizing cut, for contrast: a new function and optimizer after every cut
    _, _, resized = _fit_with_cuts("resize")
    assert len({id(f) for f, _, _ in resized.seen[1:]}) == 3  # epochs 2-4: made anew each
    assert len({id(o) for _, o, _ in resized.seen}) == 4
    assert resized.traces >= traces + 3  # at least one trace after each of the 3 cuts


def test_a_cut_in_place_keeps_the_xla_compiled_step(tmp_path):
    """train.jit_compile with cuts in place: compiled in epoch 1 only, the same training."""
    functions = _Functions()
    plain = _run(tmp_path / "plain", "resize")
    compiled = _run(tmp_path / "xla", "in_place", "train.jit_compile=true",
                    callbacks=[functions])
    first_function, _, traces = functions.seen[1]
    assert functions.model.jit_compile and traces >= 1 and functions.traces == traces
    assert all(f is first_function for f, _, _ in functions.seen[1:])
    # XLA fuses and reorders float32 arithmetic: the same run within its rounding
    assert differences(plain, compiled, tol=1e-4) == []


class _StopAt(keras.callbacks.Callback):
    """Ends the run after step 2 of epoch 3 (after both cuts), as a kill would."""

    class Stopped(Exception):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            raise self.Stopped()


def test_a_run_cut_in_place_resumes_from_its_checkpoint_to_the_same_end(tmp_path):
    whole = _run(tmp_path / "whole", "in_place")
    stopped = tmp_path / "stopped"
    with pytest.raises(_StopAt.Stopped):
        _run(stopped, "in_place", callbacks=[_StopAt()])
    # the checkpoint holds the full shapes with the cut components zero
    state = json.loads((stopped / "backup" / "local" / "epoch-2" / "state.json").read_text())
    assert state["ranks"] == {"m0_dense": 192, "m1_dense": 256, "classifier": 10}
    live = dict(state["rank_history"][0][-1][1])
    assert all(live[k] < state["ranks"][k] for k in live)
    with np.load(stopped / "backup" / "local" / "epoch-2" / "variables.npz") as npz:
        s = [npz[k] for k in npz.files if k.startswith("model/") and k.endswith("m0_dense/s")]
    assert len(s) == 1 and np.count_nonzero(s[0]) == live["m0_dense"]
    # the checkpoints hold zeroed components: resuming it with the other form is refused
    with pytest.raises(UsageError, match="rank.cut_form='in_place' then, 'resize' now"):
        _run(stopped, "resize")
    resumed = _run(stopped, "in_place")
    assert resumed["summary"]["resumed_from_epoch"] == 2
    assert differences(whole, resumed) == []


def test_cut_form_is_checked_before_a_run():
    assert "rank.cut_form='shrink' is not valid" in validate(RunConfig().with_overrides(
        ["rank.tau=0.9", "rank.cut_form=shrink"]))
    problem = validate(RunConfig().with_overrides(
        ["rank.tau=0.9", "rank.cut_form=in_place", "rule.stiefel_retraction=true"]))
    assert "rule.stiefel_retraction" in problem and "rank.cut_form=resize" in problem
    assert validate(RunConfig().with_overrides(
        ["rank.tau=0.9", "rank.interval=1", "rank.cut_form=in_place"])) is None
    with pytest.raises(ValueError, match="cut_form"):
        rank_lib.RankPruning(cut_form="shrink")


def test_the_factored_forward_keeps_a_cut_in_place_exact_and_finite():
    """The factored pair (U sqrt|s|, V sqrt|s|) takes sqrt at the zeroed s: its gradient
    there must be zero, not NaN, and the layer must compute the resized one's."""
    import tensorflow as tf

    from ssa_tf.nn import SVDConv2D

    keras.utils.set_random_seed(2)
    x = tf.random.normal((4, 6, 6, 8))
    layers = [SVDConv2D(12, 3, padding="same", forward="factored", feedback_seed=3)
              for _ in range(2)]
    for layer in layers:
        layer(x)
    layers[1].set_weights(layers[0].get_weights())
    layers[0].truncate(10, in_place=True)
    layers[1].truncate(10)
    assert layers[0].rank == layers[0].full_rank > layers[0].live_rank == layers[1].rank == 10
    for layer in layers:
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(x))) + losses.orthogonality_loss(layer)
            variables = [layer.U, layer.s, layer.V]
            for var, grad in zip(variables, tape.gradient(loss, variables)):
                assert np.all(np.isfinite(grad.numpy()))
                var.assign_sub(1e-3 * grad)
    # under XLA too (its sqrt gradient is a plain division: 0 * inf = NaN at a zero s)
    layer = layers[0]

    @tf.function(jit_compile=True)
    def compiled_gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [layer.U, layer.s, layer.V])

    assert all(np.all(np.isfinite(g.numpy())) for g in compiled_gradients())
    dead = np.setdiff1d(np.arange(layers[0].rank), layers[0].live_slots())
    assert len(dead) == layers[0].rank - 10
    assert not np.any(layers[0].s.numpy()[dead]) and not np.any(layers[0].U.numpy()[:, dead])
    np.testing.assert_allclose(layers[0](x).numpy(), layers[1](x).numpy(), rtol=1e-4, atol=1e-5)
