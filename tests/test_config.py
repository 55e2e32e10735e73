"""The run's configuration: typed sections, --set overrides and every validation,
in process (no TensorFlow needed; test_cli.py shows the same checks through a process)."""

import json

import pytest
from absl.testing import flagsaver

from ssa_tf import config as cfg_lib
from conftest import feedback_routes as _routes
from ssa_tf.config import RunConfig, validate


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
    # so are a replay's slices
    (["rule.replay_slices=2", "rule.recompute=false"],
     "rule.replay_slices splits a recompute's replays: it needs rule.recompute=true"),
    (["rule.replay_slices=0"], "rule.replay_slices must be >= 1"),
    # and their order
    (["rule.name=dfa", "rule.feedback=local", "rule.replay_chained=true"],
     "rule.replay_chained feeds each replay the one before's output: it needs "
     "rule.recompute=true"),
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
