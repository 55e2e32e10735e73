"""The run's configuration: typed sections, --set overrides, presets and every validation,
in process (no TensorFlow needed; test_cli.py shows the same checks through a process)."""

import json

import pytest
from absl.testing import flagsaver

from ssa_tf import config as cfg_lib
from ssa_tf.config import RunConfig, presets, validate


def problem(*assignments, tf_config=None):
    return validate(RunConfig().with_overrides(assignments), tf_config)


def test_the_record_round_trips_in_the_names_set_takes():
    cfg = RunConfig().with_overrides(["rank.tau=0.9", "rule.beta=0", "data.augment=false",
                                      "train.lr_decay_epochs=20,40", "seed=3"])
    settings = cfg.settings()
    assert settings["rank.tau"] == 0.9 and settings["rule.beta"] == 0.0
    assert settings["data.augment"] is False
    assert settings["train.lr_decay_epochs"] == (20, 40) and settings["seed"] == 3
    # every name but the seed is SECTION.FIELD, exactly what --set takes
    assert all(k == "seed" or k.count(".") == 1 for k in settings)
    assert RunConfig.from_settings(settings) == cfg
    assert cfg.rank.tau == 0.9 and cfg.train.lr_decay_epochs == (20, 40)
    assert cfg.replace({"train.epochs": 7}, seed=5).settings() == {
        **settings, "train.epochs": 7, "seed": 5}
    with pytest.raises(ValueError, match="unknown settings: nonsense"):
        RunConfig.from_settings({"nonsense": 1})
    with pytest.raises(ValueError, match="unknown settings: beta"):  # old names: legacy only
        RunConfig.from_settings({"beta": 1})


def test_the_legacy_reader_translates_every_old_name_and_nothing_else():
    import json

    from ssa_tf.config import legacy

    cfg = RunConfig().with_overrides(["rank.tau=0.8", "rule.name=dfa", "seed=2",
                                      "data.synthetic_shape=(8,8,1)"])
    # the flat record as the versions up to ed60e35 wrote it
    old = {name: cfg.settings()[path] for name, path in legacy.FLAT_TO_PATH.items()}
    old = json.loads(json.dumps({**old, "seed": 2, "card": {"rule": "dfa"}}, default=list))
    assert old["rank_tau"] == 0.8 and old["mode"] == "dfa" and old["epochs"] == 3
    assert legacy.read_config(old) == cfg
    # today's record reads the same, and a mixture too
    assert legacy.read_config(json.loads(json.dumps(cfg.record(), default=list))).settings() \
        == cfg.resolved().settings()
    assert legacy.read_settings({"beta": 0.5, "rank.tau": 0.7, "seed": 1, "x": 2}) == {
        "rule.beta": 0.5, "rank.tau": 0.7, "seed": 1, "x": 2}
    key = json.dumps({"beta": 0.5, "rank_tau": None, "seed": 1}, sort_keys=True)
    assert legacy.read_key(key) == json.dumps(
        {"rule.beta": 0.5, "rank.tau": None, "seed": 1}, sort_keys=True)


def test_a_config_of_the_method_section_reads_as_todays_config():
    from ssa_tf.config import legacy

    cfg = RunConfig().with_overrides(["rule.name=dfa", "rule.feedback=local",
                                      "rule.readout_trained=true", "rank.start=2", "seed=3"])
    # config.json as the versions before the rule had one name wrote it: the rule's
    # section "method", its name "method.mode"
    record = json.loads(json.dumps(cfg.record(), default=list))
    old = {k.replace("rule.name", "method.mode").replace("rule.", "method."): v
           for k, v in record.items()}
    assert old["method.mode"] == "dfa" and old["method.feedback"] == "local"
    assert not any(k.startswith("rule.") for k in old)
    assert legacy.read_config(old) == cfg.resolved()
    assert legacy.read_settings({"method.mode": "ssa", "method.beta": 0.5}) == {
        "rule.name": "ssa", "rule.beta": 0.5}
    key = json.dumps({"method.mode": "bp", "method.beta": None, "seed": 1}, sort_keys=True)
    assert legacy.read_key(key) == json.dumps(
        {"rule.beta": None, "rule.name": "bp", "seed": 1}, sort_keys=True)
    # a grid record's rule field and a saved model's config say "mode" before "rule"
    assert legacy.read_record({"key": "{}", "mode": "bp"})["rule"] == "bp"
    assert legacy.read_model_config({"mode": "ssa", "seed": 1}) == {"rule": "ssa", "seed": 1}


@pytest.mark.parametrize("assignment,needle", [
    ("rank.tau", "expected SECTION.FIELD=VALUE"),
    ("ranks.tau=1", "unknown section 'ranks'"),
    ("rank.taus=1", "rank has no field 'taus'; its fields: tau, start"),
    ("train.epochs=three", "--set train.epochs=three: expected int"),
    ("data.augment=maybe", "expected bool"),
])
def test_malformed_overrides_say_what_is_wrong(assignment, needle):
    with pytest.raises(ValueError, match=needle):
        RunConfig().with_overrides([assignment])


@pytest.mark.parametrize("assignments,needle", [
    (["model.model=vgg99"], "--model='vgg99' is not valid; choose from: mlp, smallconv"),
    (["data.dataset=imagenet"], "mnist5k, cifar10, cifar100"),
    (["rule.name=hebbian"], "bp, svd-bp, dfa, ssa, fa, bp-lagged-copy"),
    (["model.norm=group"], "layer, batch, none"),
    (["model.activation=gelu"], "relu, leaky_relu, tanh"),
    (["model.conv_factorization=diagonal"],
     "conv_factorization='diagonal' is not valid; choose from: spatial, channel"),
    (["rule.feedback=chainsaw"], "global, local, local_global, chain"),
    (["rule.beta=-0.1"], "rule.beta must be >= 0"),
    (["rule.alpha=-1"], "rule.alpha must be >= 0"),
    (["train.batch_size=0"], "--batch_size must be >= 1"),
    (["train.epochs=0"], "--epochs must be >= 1"),
    (["train.learning_rate=0"], "--learning_rate must be > 0"),
    (["rank.tau=1.5"], "rank.tau must be in (0, 1]"),
    (["rank.tau=0.9", "rank.interval=0"], "rank.interval must be >= 1"),
    (["rank.tau=0.9", "rank.dense_tau=0"], "rank.dense_tau must be in (0, 1]"),
    (["rank.dense_tau=0.5"], "cuts are off until rank.tau is set"),
    (["rank.warmup_steps=-1"], "rank.warmup_steps must be >= 0"),
    (["rank.energy=activations"], "rank.energy='activations' is not valid; choose from: weights, "
                                  "outputs"),
    (["rank.tau=0.9", "rank.energy_batches=0"], "rank.energy_batches must be >= 1"),
    (["runtime.checkpoint_steps=-5"], "runtime.checkpoint_steps must be >= 0"),
    (["runtime.keep_checkpoints=1"], "runtime.keep_checkpoints must be >= 2"),
    (["runtime.skip_nonfinite_steps=-1"], "must be >= 0"),
    (["data.validation_split=1.5"], "data.validation_split must be in [0, 1)"),
    (["data.label=coarse"], "applies to cifar100 only"),
    (["rule.name=fa", "rule.s_rate_scale=0"], "rule.s_rate_scale must be > 0"),
    # holding modules within the peak is a choice of the recompute: without it, nothing
    (["rule.hold_within_peak=true", "rule.recompute=false"],
     "needs rule.recompute=true and a route with the output error"),
    (["rule.name=dfa", "rule.feedback=local", "rule.hold_within_peak=true"],
     "got rule.recompute=true, rule.feedback=local"),
    (["runtime.strategy=gpu"], "auto, one_device, mirrored, multi_worker"),
    (["runtime.strategy=mirrored", "runtime.logical_cpus=3"], "multiple of"),
    (["runtime.strategy=multi_worker"], "needs TF_CONFIG"),
    (["runtime.logical_cpus=2"], "applies to runtime.strategy=mirrored only"),
    # an option the rule does not take is refused, naming who takes it
    (["rule.name=bp", "rule.feedback=chain"], "rule.feedback does not apply to --rule=bp"),
    (["rule.name=bp", "rule.beta=0.5"], "rule.beta does not apply to --rule=bp"),
    (["rule.name=bp", "rule.stiefel_retraction=true"], "does not apply to --rule=bp"),
    (["rule.name=dfa", "rank.tau=0.9", "rank.interval=1"], "rank.tau applies to rules that"),
    (["rule.feedback_tracking=0.1"], "applies to --rule=bp-lagged-copy"),
    (["rule.feedback=local", "rule.feedback_spatial=full"],
     "global and local_global routes only"),
    (["rule.alpha=0", "rule.beta=0", "rule.gamma=0"], "nothing to learn from"),
    # a rank schedule that would never cut (fewer epochs than the interval)
    (["rank.tau=0.9", "train.epochs=3"], "would never cut"),
])
def test_each_mistake_is_one_line(assignments, needle):
    line = problem(*assignments)
    assert line is not None and needle in line and "\n" not in line, line


def test_valid_settings_pass():
    assert problem() is None
    assert problem("rank.tau=0.9", "rank.interval=1", "train.epochs=2") is None
    assert problem("rank.tau=0.9", "train.epochs=1", "rank.interval=1",
                   "rank.final_cut=true") is None
    assert problem("rule.name=bp-lagged-copy", "rule.feedback_tracking=0.2") is None
    tf_config = json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                            "task": {"type": "worker", "index": 0}})
    assert problem("runtime.strategy=multi_worker", tf_config=tf_config) is None
    assert "multiple of the 2 workers" in problem(
        "runtime.strategy=multi_worker", "train.batch_size=63", tf_config=tf_config)


def test_resolved_fills_in_the_rules_defaults_only():
    ssa = RunConfig().resolved()
    assert ssa.rule.beta is not None and ssa.train.learning_rate == 1e-3
    assert ssa.rule.feedback_tracking is None  # not one of SSA's options
    bp = RunConfig().with_overrides(["rule.name=bp"]).resolved()
    assert bp.rule.beta is None and bp.train.learning_rate == 1e-3


def test_cards_say_what_each_rule_computes():
    card = RunConfig().card()
    assert card.direct and not card.sequential and card.weight_transport != "continuously"
    fa = RunConfig().with_overrides(["rule.name=fa"]).card()
    assert fa.sequential and not fa.direct
    lagged = RunConfig().with_overrides(["rule.name=bp-lagged-copy"]).card()
    assert lagged.weight_transport == "continuously" and not lagged.direct
    local = RunConfig().with_overrides(["rule.feedback=local"]).card()
    assert local.held_activations == "one module at a time"
    assert RunConfig().record()["card"]["rule"] == "ssa"


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


def test_daily_flags_and_set_reach_the_config_and_the_model():
    from ssa_tf import train
    from ssa_tf.training.model import model_from_config
    with flagsaver.flagsaver():
        train.FLAGS(["prog", "--model=mlp", "--rule=fa", "--set=rule.chain_jacobians=false",
                     "--set", "rule.stiefel_retraction=true", "--set=rule.s_rate_scale=3",
                     "--seed=4"])
        try:
            cfg = train.config_from_flags()
        finally:
            train.FLAGS.unparse_flags()
    assert cfg.rule.chain_jacobians is False and cfg.rule.stiefel_retraction
    assert cfg.rule.s_rate_scale == 3.0 and cfg.seed == 4 and cfg.runtime.workdir
    model = model_from_config(cfg, (28, 28, 1), 10)
    assert not model.options["chain_jacobians"] and model.options["stiefel_retraction"]
    assert model.get_config()["chain_jacobians"] is False
    default = model_from_config(cfg.replace({"rule.chain_jacobians": None}), (28, 28, 1), 10)
    assert default.options["chain_jacobians"]  # on for fa


@pytest.mark.parametrize("argv,rule", [(["--mode=dfa"], "dfa"), (["--rule=fa"], "fa"),
                                       (["--rule=bp", "--mode=bp"], "bp"), ([], "ssa")])
def test_mode_is_an_alias_of_rule(argv, rule):
    from ssa_tf import train
    with flagsaver.flagsaver():
        train.FLAGS(["prog", *argv])
        try:
            assert train.config_from_flags().rule.name == rule
        finally:
            train.FLAGS.unparse_flags()


def test_a_daily_flag_with_a_bad_value_names_the_flag():
    from ssa_tf import train
    with flagsaver.flagsaver():
        train.FLAGS(["prog", "--epochs=three"])
        try:
            with pytest.raises(ValueError, match="--epochs=three: expected int"):
                train.config_from_flags()
        finally:
            train.FLAGS.unparse_flags()


def test_help_fits_a_screen():
    from ssa_tf import train
    lines = train.HELP.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 84
    for flag in ("--dataset", "--rule", "--set", "--flagfile", "--preset", "--restart"):
        assert flag in train.HELP
    for section in cfg_lib.SECTIONS:
        assert f"  {section}: " in train.HELP


def test_resume_with_other_settings_names_every_changed_setting(tmp_path):
    from ssa_tf.training.workdir import prepare_workdir
    cfg = RunConfig().with_overrides([f"runtime.workdir={tmp_path}"])
    (tmp_path / "config.json").write_text(json.dumps(cfg.record(), default=list))
    (tmp_path / "backup" / "local" / "epoch-1").mkdir(parents=True)
    (tmp_path / "backup" / "local" / "epoch-1" / "state.json").write_text("{}")
    assert prepare_workdir(cfg.with_overrides(["train.epochs=9"])) == "resume"
    changed = cfg.with_overrides(["rule.beta=0.5", "model.activation=tanh",
                                  "data.max_train_examples=100", "rank.min=2", "seed=5"])
    with pytest.raises(cfg_lib.UsageError) as e:
        prepare_workdir(changed)
    message = str(e.value)
    for needle in ("rule.beta=0.01 then, 0.5 now", "model.activation='leaky_relu' then",
                   "data.max_train_examples=None then, 100 now", "rank.min=1 then, 2 now",
                   "--seed=1 then, 5 now", "--restart"):
        assert needle in message, message


def _config(*argv):
    from ssa_tf import train
    with flagsaver.flagsaver():
        train.FLAGS(["prog", *argv])
        try:
            return train.config_from_flags()
        finally:
            train.FLAGS.unparse_flags()


def _routes(rule):
    from ssa_tf.methods import registry
    return (None, *registry.get(rule).choices.get("feedback", ()))


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
            if preset == "local_heads" and route not in (None, "local", "local_global"):
                # the preset is the local route's heads: a rule without them, or a route
                # without heads asked for, is one line that says so
                try:
                    problem = validate(_config(*argv))
                except ValueError as e:
                    problem = str(e)
                assert problem and "local" in problem, argv
                continue
            if preset == "local_heads" and "local" not in _routes(rule):
                continue
            if preset == "compact" and not (registry.get(rule).svd
                                            and "local" in _routes(rule)):
                # a rank cut of factors trained from heads: one line naming the rules able
                with pytest.raises(ValueError, match="--preset=compact cuts the ranks"):
                    _config(*argv)
                continue
            if preset == "compact" and route not in (None, "local", "local_global"):
                try:
                    problem = validate(_config(*argv))
                except ValueError as e:
                    problem = str(e)
                assert problem and "local" in problem, argv
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


def test_full_map_feedback_too_large_is_one_usage_line():
    # python -m ssa_tf.train --dataset=imagenet2012 --rule=dfa (no preset): dfa's full-map
    # feedback at 224 x 224 would need 2.4G entries; one line naming the setting, exit 2
    import keras
    from ssa_tf.errors import UsageError
    from ssa_tf.training.model import SSAModel
    keras.utils.set_random_seed(1)
    with pytest.raises(UsageError, match="rule.feedback_spatial=broadcast") as e:
        SSAModel("smallconv", (224, 224, 3), 1000, rule="dfa")
    assert e.value.status == 2 and "\n" not in str(e.value)


def test_no_card_line_reads_like_an_error():
    # "...; error: e through a fixed ..." once carried the prefix that the
    # README gives for a mistake; every rule on every route
    from ssa_tf.methods import registry
    for rule in registry.NAMES:
        for route in _routes(rule):
            cfg = RunConfig().with_overrides(
                [f"rule.name={rule}", *([f"rule.feedback={route}"] if route else [])])
            line = cfg.card().line()
            assert "error:" not in line.lower() and line.startswith(f"rule {rule}:"), line
