"""Presets: each fills in under the flags given, validates with every rule and route it
takes, and sets what its docstring says was measured."""

import pytest
from absl.testing import flagsaver

from conftest import feedback_routes as _routes
from ssa_tf.config import presets, validate


def test_presets_fill_in_under_the_flags_given(tmp_path):
    from ssa_tf import train
    with flagsaver.flagsaver():
        train.FLAGS(["prog", "--preset=cifar100", "--dataset=cifar10", "--epochs=3"])
        try:
            cfg = train.config_from_flags()
        finally:
            train.FLAGS.unparse_flags()
    assert cfg.data.dataset == "cifar10" and cfg.train.epochs == 3
    assert cfg.model.model == "resnet32" and cfg.train.batch_size == 128
    assert cfg.train.learning_rate == 1e-4 and cfg.train.lr_decay_epochs == (20, 40, 60)
    assert cfg.rank.tau == 0.95
    # a rule without SVD factors gets no rank schedule; ImageNet's rates follow the rule
    assert "rank.tau" not in presets.load("cifar100").values("bp")
    assert presets.load("imagenet").values("bp")["train.learning_rate"] == 2e-4
    assert presets.load("imagenet").values("ssa")["train.learning_rate"] == 5e-4
    mine = tmp_path / "mine.py"
    mine.write_text("def values(rule):\n    return {'train.epochs': 7}\n")
    assert presets.load(str(mine)).values("ssa") == {"train.epochs": 7}
    for bad, needle in ((tmp_path / "none.py", "no such file"), ("mnist", "is not valid")):
        with pytest.raises(ValueError, match=needle):
            presets.load(str(bad))
    (tmp_path / "broken.py").write_text("def values(:\n")
    with pytest.raises(ValueError, match="SyntaxError"):
        presets.load(str(tmp_path / "broken.py"))


def _config(*argv):
    from ssa_tf import train
    with flagsaver.flagsaver():
        train.FLAGS(["prog", *argv])
        try:
            return train.config_from_flags()
        finally:
            train.FLAGS.unparse_flags()


@pytest.mark.parametrize("preset", [None, *presets.NAMES])
def test_every_preset_validates_with_every_rule_and_route(preset):
    # --preset=imagenet once refused ssa's default route (the chain) because
    # the preset set the global route's feedback_spatial for every rule that has it
    from ssa_tf.methods import registry
    base = ["--dataset=imagenet2012"] if preset is None else [f"--preset={preset}"]
    checked = 0
    for rule in registry.NAMES:
        for route in _routes(rule):
            argv = [*base, f"--rule={rule}"]
            if route is not None:
                argv.append(f"--set=rule.feedback={route}")
            heads = preset in ("local_heads", "compact")
            if preset == "compact" and not (registry.get(rule).svd
                                            and "local" in _routes(rule)):
                # a rank cut of factors trained from heads: one line naming the rules able
                with pytest.raises(ValueError, match="--preset=compact cuts the ranks"):
                    _config(*argv)
                continue
            if heads and route not in (None, "local", "local_global"):
                # the presets of the local route's heads: a rule without them, or a route
                # without heads asked for, is one line that says so
                try:
                    problem = validate(_config(*argv))
                except ValueError as e:
                    problem = str(e)
                assert problem and "local" in problem, argv
                continue
            if heads and "local" not in _routes(rule):
                continue
            cfg = _config(*argv)
            assert validate(cfg) is None, (argv, validate(cfg))
            assert cfg.rule.name == rule
            if preset == "imagenet":
                # the broadcast is the global routes' (full maps at 224: 1000 x 200,704)
                spatial = cfg.resolved().rule.feedback_spatial
                if cfg.resolved().rule.feedback in ("global", "local_global"):
                    assert spatial == "broadcast", argv
                else:
                    assert cfg.rule.feedback_spatial is None, argv
                # the recomputing rules hold what fits within the stem's peak
                resolved = cfg.resolved().rule
                assert bool(resolved.hold_within_peak) == bool(
                    resolved.recompute and resolved.feedback not in ("local",)), argv
            checked += 1
    # the heads' presets: ssa's routes with heads (and dfa's, for local_heads)
    assert checked >= {"local_heads": 4, "compact": 3}.get(preset, len(registry.NAMES) + 6)


def test_the_imagenet_preset_holds_within_the_peak_unless_the_run_replays_nothing():
    cfg = _config("--preset=imagenet", "--rule=ssa").resolved()
    assert cfg.rule.hold_within_peak and cfg.rule.recompute
    assert cfg.card().held_activations == "within the largest module's"
    # asked for every module held (no replays), the preset holds nothing of its own
    held = _config("--preset=imagenet", "--rule=ssa", "--set=rule.recompute=false")
    assert validate(held) is None and not held.resolved().rule.hold_within_peak
    # the local route has no output error to wait for: nothing to hold
    local = _config("--preset=imagenet", "--rule=ssa", "--set=rule.feedback=local")
    assert validate(local) is None and not local.resolved().rule.hold_within_peak
    # and a user's explicit choice stands
    off = _config("--preset=imagenet", "--rule=ssa", "--set=rule.hold_within_peak=false")
    assert not off.resolved().rule.hold_within_peak
    # held, the replays are chained and the stem's sliced; not without the held plan (the
    # chained replays' signals, all made at the first replay, would sit beside it)
    assert (cfg.rule.replay_slices, cfg.rule.replay_chained) == (2, True)
    off = off.resolved().rule
    assert (off.replay_slices, off.replay_chained) == (1, False)
    assert not _config("--preset=imagenet", "--rule=bp").resolved().rule.hold_within_peak


def test_the_local_heads_preset_sets_the_measured_heads_and_refuses_rules_without_them():
    cfg = _config("--preset=local_heads", "--rule=ssa", "--epochs=20").resolved()
    m = cfg.rule
    assert (m.feedback, m.readout_head, m.readout_depth, m.beta, m.feedback_init) == (
        "local", "later", 3, 0.0, "random")
    assert cfg.model.head_init == "glorot" and cfg.train.learning_rate == 1e-3
    assert tuple(cfg.train.lr_decay_epochs) == (15,)  # as measured: after 15 of 20 epochs
    assert cfg.card().weight_transport == "never" and not cfg.card().sequential
    plain = _config("--preset=local_heads", "--rule=dfa", "--epochs=8").resolved()
    assert plain.rule.readout_head == "later" and plain.rule.beta is None
    assert tuple(plain.train.lr_decay_epochs) == (6,)
    short = _config("--preset=local_heads", "--rule=dfa", "--epochs=3").resolved()
    assert tuple(short.train.lr_decay_epochs) == ()  # no decay that only the last epoch sees
    # a schedule of the user's wins over the preset's
    mine = _config("--preset=local_heads", "--rule=dfa", "--set=train.lr_decay_epochs=[3]")
    assert tuple(mine.resolved().train.lr_decay_epochs) == (3,)
    with pytest.raises(ValueError, match="--rule=bp has none: use one of dfa, ssa"):
        _config("--preset=local_heads", "--rule=bp")


def test_the_compact_preset_is_the_local_heads_with_one_exact_cut_after_a_fifth():
    cfg = _config("--preset=compact", "--rule=ssa", "--epochs=20").resolved()
    heads = _config("--preset=local_heads", "--rule=ssa", "--epochs=20").resolved()
    assert cfg.rule == heads.rule and cfg.train == heads.train  # the heads' training as is
    r = cfg.rank
    assert (r.tau, r.dense_tau, r.keep_ends, r.feedback_cut, r.energy) == (
        0.8, 0.78, True, "first", "weights")
    assert cfg.model.conv_factorization == "channel"
    from ssa_tf.config.schema import cut_epochs
    assert cut_epochs(20, r.start, r.interval) == [4]  # one cut, as measured
    ten = _config("--preset=compact", "--rule=ssa", "--epochs=10").resolved().rank
    assert cut_epochs(10, ten.start, ten.interval) == [2]
    assert cfg.card().weight_transport == "never" and not cfg.card().sequential
    # a user's own cut settings win
    mine = _config("--preset=compact", "--rule=ssa", "--set=rank.tau=0.9").resolved()
    assert mine.rank.tau == 0.9 and mine.rank.dense_tau == 0.78
    with pytest.raises(ValueError, match="--rule=dfa has not both: use one of ssa$"):
        _config("--preset=compact", "--rule=dfa")


def test_a_preset_of_one_argument_still_works(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text("def values(rule):\n    return {'train.epochs': 7, 'rank.tau': 0.9}\n")
    cfg = _config(f"--preset={mine}", "--rule=ssa", "--set=rank.tau=0.8")
    assert cfg.train.epochs == 7 and cfg.rank.tau == 0.8  # --set wins over the preset
