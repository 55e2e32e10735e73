"""Rank reduction during training: docs/ALGORITHM.md §5 properties, for real shapes."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from ssa_tf import data
from ssa_tf.training.rank import PRESETS, RankPruning, apply_cut, end_layers
from ssa_tf.training.model import build_model


@pytest.fixture(scope="module")
def digits():
    return data.load("mnist5k", 64, seed=1, max_train_examples=2000)


def test_schedule_of_the_seed_presets():
    cifar = RankPruning(**PRESETS["cifar100"])
    assert [e + 1 for e in range(60) if cifar.due(e)] == [10, 20, 30, 40, 50, 60]
    imagenet = RankPruning(**PRESETS["imagenet"])
    assert [e + 1 for e in range(60) if imagenet.due(e)] == [20, 30, 40, 50, 60]
    with pytest.raises(ValueError):
        RankPruning(tau=1.5)


def test_cuts_keep_tau_energy_are_monotone_and_bounded(digits, tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model("mlp", (28, 28, 1), 10, rule="ssa", input_stats=digits.input_stats)
    tau = 0.9
    cb = RankPruning(tau=tau, start=0, interval=1, workdir=str(tmp_path), verbose=0,
                     final_cut=True)
    merged_before = {}

    class Snapshot(keras.callbacks.Callback):
        # runs before RankPruning's on_epoch_end: the weights just before a cut
        def on_epoch_end(self, epoch, logs=None):
            merged_before[epoch + 1] = {l.name: l.merged_matrix() for l in model.svd_layers()}

    hist = model.fit(digits.train, epochs=3, verbose=0, callbacks=[Snapshot(), cb])
    assert len(cb.cuts) == 3
    ranks = [h[1] for h in cb.history]
    for a, b in zip(ranks, ranks[1:]):
        assert all(b[k] <= a[k] for k in a)  # never increases
    assert ranks[-1]["m0_dense"] < ranks[0]["m0_dense"]
    layers = {l.name: l for l in model.svd_layers()}
    for records, epoch in zip(cb.cuts, (1, 2, 3)):
        for r in records:
            assert r["energy"] >= tau - 1e-9 and r["new_rank"] >= 1
    # the last cut: the layer's function changed exactly by the discarded energy
    for r in cb.cuts[-1]:
        W = merged_before[3][r["layer"]]
        Wr = layers[r["layer"]].merged_matrix()
        change = np.linalg.norm(W - Wr) ** 2 / np.linalg.norm(W) ** 2
        assert change == pytest.approx(1 - r["energy"], abs=1e-4)
        assert change <= 1 - tau + 1e-4
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert (tmp_path / "ranks.csv").read_text().count("\n") == 1 + 3 * 3
    png = (tmp_path / "ranks.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_continues_at_the_new_shapes(digits, tmp_path):
    keras.utils.set_random_seed(2)
    model = build_model("mlp", (28, 28, 1), 10, rule="ssa", input_stats=digits.input_stats)
    model.fit(digits.train, epochs=1, verbose=0)
    old_fn = model.train_function
    old_U = model.svd_layers()[0].U
    m_before = {id(v): model.optimizer._momentums[model.optimizer._get_variable_index(v)].numpy()
                for v in model.trainable_variables}
    step_before = int(model.optimizer.iterations)
    records = apply_cut(model, tau=0.8)
    layer = model.svd_layers()[0]
    r = layer.rank
    assert r < 256 and records[0]["new_rank"] == r
    assert layer.U is not old_U and tuple(layer.U.shape) == (256, r)
    assert tuple(layer.B_V.shape) == (784, r)
    opt = model.optimizer
    assert int(opt.iterations) == step_before  # the schedule goes on
    assert tuple(opt._momentums[opt._get_variable_index(layer.U)].shape) == (256, r)
    # untouched variables keep their moments; re-factored ones restart at zero
    norm_gamma = model.local_modules[0].graph.get_layer("m0_norm").gamma
    np.testing.assert_array_equal(opt._momentums[opt._get_variable_index(norm_gamma)].numpy(),
                                  m_before[id(norm_gamma)])
    assert not opt._momentums[opt._get_variable_index(layer.U)].numpy().any()
    assert model.train_function is not old_fn  # retraced
    # one more epoch really trains the new variables, and the loss goes on falling
    U0 = layer.U.numpy().copy()
    x, y = next(iter(digits.train))
    before = model.evaluate(digits.train, verbose=0, return_dict=True)["loss"]
    hist = model.fit(digits.train, epochs=2, verbose=0)
    assert float(np.abs(layer.U.numpy() - U0).max()) > 1e-4
    assert hist.history["loss"][-1] < before
    # evaluation uses the new variables too (its function was retraced)
    ev = model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    direct = float(np.mean(np.argmax(model(x).numpy(), 1) == y.numpy()))
    assert ev == pytest.approx(direct)
    # a saved model reloads at the cut shapes with the same predictions
    path = str(tmp_path / "cut.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.ranks() == model.ranks()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_first_step_after_a_cut_is_not_a_jolt(digits):
    # Late in training (large step count, so Adam's bias correction is ~1),
    # resetting both moments of a re-factored variable to zero makes its first
    # update (1-b1)/sqrt(1-b2) = 3.16 lr for every element (measured: median
    # 3.16e-3 at lr 1e-3). Our restart (m = 0, v = old mean v) measured a
    # median of 0.46e-3.
    keras.utils.set_random_seed(3)
    model = build_model("mlp", (28, 28, 1), 10, rule="ssa", learning_rate=1e-3,
                        input_stats=digits.input_stats)
    model.fit(digits.train, epochs=1, verbose=0)
    model.optimizer.iterations.assign(100000)
    apply_cut(model, tau=0.8)
    layer = model.svd_layers()[0]
    U0 = layer.U.numpy().copy()
    x, y = next(iter(digits.train))
    model.train_on_batch(x, y)
    step = np.abs(layer.U.numpy() - U0)
    assert np.median(step) < 1e-3


def test_svd_feedback_cut_keeps_tracked_feedback_aligned():
    """With feedback that tracks the forward factors, 'first' leaves B's
    components in the old basis (a large alignment term right after the cut);
    'svd' re-factors B like W, so B stays the forward weight's mirror."""
    from ssa_tf.methods import losses
    from ssa_tf.nn import SVDDense

    results = {}
    for mode in ("first", "svd"):
        layer = SVDDense(24, rank=16, feedback_init="forward", feedback_seed=3)
        layer.build((None, 20))
        rng = np.random.default_rng(0)
        # a trained-looking layer: non-orthonormal factors, B = forward factors
        for f, b in ((layer.U, layer.B_U), (layer.s, layer.B_s), (layer.V, layer.B_V)):
            value = f.numpy() + 0.3 * rng.normal(size=f.shape).astype("float32")
            f.assign(value)
            b.assign(value)
        B = layer.feedback_matrix()
        layer.truncate(6, feedback=mode)
        results[mode] = (float(losses.alignment_loss(layer)),
                         np.linalg.norm(layer.feedback_matrix() - layer.merged_matrix()))
    assert results["svd"][0] < 1e-6 and results["svd"][1] < 1e-4, results
    assert results["first"][0] > 1.0, results  # measured ~20: stale components
    with pytest.raises(ValueError, match="svd"):
        layer.truncate(2, feedback="rotate")


@pytest.mark.parametrize("keep_ends", [True, False])
def test_keep_ends_spares_the_input_layer_and_the_classifier(keep_ends):
    # rank.keep_ends: the paper cuts every layer (False); by default the first SVD layer
    # and the classifier keep full rank, the layers between are cut
    keras.utils.set_random_seed(1)
    model = build_model("smallconv", (16, 16, 3), 10, rule="ssa")
    assert end_layers(model) == ("m0_conv", "classifier")
    full = model.ranks()
    apply_cut(model, 0.5, exempt=end_layers(model) if keep_ends else ())
    cut = model.ranks()
    for name in ("m1_conv", "m2_conv", "m3_dense"):
        assert cut[name] < full[name]
    for name in ("m0_conv", "classifier"):
        assert (cut[name] == full[name]) == keep_ends


def test_ranks_png_has_one_titled_panel_per_layer_and_integer_epochs():
    # a new user's report: 34 lines in one plot, no legend, ticks at 0.25, 0.5, ...
    from ssa_tf.training.rank_plot import rank_figure

    layers = [f"block{i}" for i in range(34)]
    history = [(e, {n: max(1, 64 - 3 * e - i % 5) for i, n in enumerate(layers)})
               for e in range(3)]
    fig = rank_figure(history)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 34
    assert [ax.get_title().split(":")[0] for ax in panels] == layers
    for ax in panels:
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 2]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_a_cut_report_prints_after_its_epochs_own_line(digits, capsys):
    keras.utils.set_random_seed(1)
    model = build_model("mlp", (28, 28, 1), 10, rule="ssa", input_stats=digits.input_stats)
    cb = RankPruning(tau=0.9, start=1, interval=1, verbose=1)
    model.fit(digits.train.take(3), epochs=2, verbose=2, callbacks=[cb])
    out = capsys.readouterr().out
    first_line = out.index("accuracy:")  # epoch 1's own metrics line
    report = out.index("rank cut after epoch 1")
    assert first_line < report < out.index("Epoch 2/2")


def test_dense_tau_cuts_the_dense_layers_to_their_own_fraction():
    # rank.dense_tau: the dense layers keep their own share of energy, the convolutions tau's
    from ssa_tf.nn import SVDDense, energy_rank

    keras.utils.set_random_seed(1)
    model = build_model("smallconv", (16, 16, 3), 10, rule="ssa")
    spectra = {l.name: l.slot_spectrum() for l in model.svd_layers()}
    dense = {l.name for l in model.svd_layers() if isinstance(l, SVDDense)}
    assert dense == {"m3_dense", "classifier"}
    apply_cut(model, 0.9, dense_tau=0.3)
    for name, rank in model.ranks().items():
        assert rank == energy_rank(spectra[name], 0.3 if name in dense else 0.9), name
    assert model.ranks()["m3_dense"] < energy_rank(spectra["m3_dense"], 0.9)
    with pytest.raises(ValueError, match="dense_tau"):
        RankPruning(tau=0.9, dense_tau=0)


def test_a_run_passes_rank_dense_tau_to_its_cuts(tmp_path):
    # through the config and the run's callbacks: tau 1 keeps every convolution whole,
    # dense_tau cuts the hidden dense layer; the classifier is an end (rank.keep_ends)
    from ssa_tf.config import RunConfig
    from ssa_tf.training.run import train

    cfg = RunConfig().with_overrides([
        "data.dataset=synthetic", "data.synthetic_shape=16,16,3", "data.max_train_examples=128",
        "model.model=smallconv", "rule.name=ssa", "train.epochs=2", "train.batch_size=32",
        "rank.tau=1.0", "rank.dense_tau=0.3", "rank.interval=1",
        f"runtime.workdir={tmp_path / 'run'}", "runtime.progress=none"])
    summary = train(cfg, verbose=0)
    full = build_model("smallconv", (16, 16, 3), 10, rule="ssa").ranks()
    ranks = summary["ranks"]
    assert ranks["m3_dense"] < full["m3_dense"]
    assert {n: ranks[n] for n in ("m0_conv", "m1_conv", "m2_conv", "classifier")} == \
        {n: full[n] for n in ("m0_conv", "m1_conv", "m2_conv", "classifier")}
