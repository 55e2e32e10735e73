"""Every default is resolved in one place (``config.schema.fill_defaults``, which
``RunConfig.resolved`` applies to a run's settings), and there is one model factory
(``build_model`` is ``model_from_config``'s for settings given as arguments).

A rule's default rate and head are read from its spec by ``fill_defaults`` alone: the tests
swap the rule's spec for one that records who reads them and with other values, and follow
those values to the compiled optimizer and the classifier's weights on every path."""

import sys

import keras
import numpy as np
import pytest

from ssa_tf.config import RunConfig
from ssa_tf.config.schema import fill_defaults
from ssa_tf.methods import registry
from ssa_tf.training.model import SSAModel, build_model, compile_model, model_from_config
from ssa_tf.training.run import learning_rate_schedule

RATE, HEAD = 0.0123, "zero"  # not ssa's own (1e-3, glorot)
SHAPE = (8, 8, 1)


class WatchedSpec:
    """A rule's spec with another default rate and head, noting the function (module, name)
    that reads either."""

    def __init__(self, spec, learning_rate, head_init):
        self._spec, self._own = spec, {"learning_rate": learning_rate, "head_init": head_init}
        self.readers = set()

    def __getattr__(self, name):
        if name in self._own:
            caller = sys._getframe(1)
            self.readers.add((caller.f_globals.get("__name__"), caller.f_code.co_name))
            return self._own[name]
        return getattr(self._spec, name)


@pytest.fixture
def watched(monkeypatch):
    spec = WatchedSpec(registry.get("ssa"), RATE, HEAD)
    monkeypatch.setitem(registry.RULES, "ssa", spec)
    return spec


def rate_of(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def head_is_zero(model):
    head = model.svd_layers()[-1]
    assert head.name == "classifier"
    return not np.any(keras.ops.convert_to_numpy(head.merged_matrix()))


def only_fill_defaults_read(spec):
    assert spec.readers == {("ssa_tf.config.schema", "fill_defaults")}, spec.readers
    return True


def test_a_config_resolves_the_rules_rate_and_head_from_its_spec(watched):
    cfg = RunConfig().with_overrides(["model.model=mlp", "rule.name=ssa"])
    resolved = cfg.resolved()
    assert resolved.train.learning_rate == RATE and resolved.model.head_init == HEAD
    assert cfg.learning_rate() == RATE
    record = cfg.record()
    assert record["train.learning_rate"] == RATE and record["model.head_init"] == HEAD
    assert resolved.resolved() == resolved  # resolved once, final
    given = cfg.with_overrides(["train.learning_rate=0.5", "model.head_init=glorot"])
    assert given.learning_rate() == 0.5 and given.resolved().model.head_init == "glorot"
    assert only_fill_defaults_read(watched)


def test_a_config_built_model_takes_the_rules_rate_and_head_once(watched):
    cfg = RunConfig().with_overrides(["model.model=mlp", "rule.name=ssa",
                                      "data.dataset=synthetic"])
    model = model_from_config(cfg, SHAPE, 10)
    compile_model(model, learning_rate_schedule(cfg, 4), steps_per_epoch=4)  # as a run does
    assert rate_of(model) == pytest.approx(RATE) and model.head_init == HEAD
    assert head_is_zero(model)
    assert only_fill_defaults_read(watched)


def test_build_model_takes_the_rules_rate_and_head_once(watched):
    model = build_model("mlp", SHAPE, 10, rule="ssa")
    assert rate_of(model) == pytest.approx(RATE) and model.head_init == HEAD
    assert head_is_zero(model)
    given = build_model("mlp", SHAPE, 10, rule="ssa", learning_rate=0.5, head_init="glorot")
    assert rate_of(given) == pytest.approx(0.5) and given.head_init == "glorot"
    assert not head_is_zero(given)
    assert only_fill_defaults_read(watched)


def test_a_model_without_a_config_takes_the_same_defaults(watched):
    model = compile_model(SSAModel("mlp", SHAPE, 10, rule="ssa"))
    assert rate_of(model) == pytest.approx(RATE) and model.head_init == HEAD
    assert head_is_zero(model)
    assert (model.norm, model.activation, model.conv_factorization) == (
        "layer", "leaky_relu", "spatial")  # the built-in models' (BUILT_IN_DEFAULTS)
    assert only_fill_defaults_read(watched)


@pytest.mark.parametrize("name", registry.NAMES)
def test_fill_defaults_is_what_a_config_resolves(name):
    cfg = RunConfig().with_overrides([f"rule.name={name}"])
    assert cfg.resolved().settings() == fill_defaults(name, cfg.settings())
    rule = registry.get(name)
    assert cfg.learning_rate() == rule.learning_rate
    assert cfg.resolved().model.head_init == rule.head_init
    # a user's file takes none of the built-in models' settings
    user = cfg.with_overrides(["model.model=net.py"]).resolved().model
    assert (user.norm, user.activation, user.conv_factorization) == (None, None, None)


def test_build_model_is_model_from_config_for_settings_given_as_arguments():
    cfg = RunConfig().with_overrides(["model.model=mlp", "rule.name=dfa", "seed=5",
                                      "rule.feedback_spatial=broadcast", "model.norm=none",
                                      "train.learning_rate=0.002", "data.dataset=synthetic"])
    from_config = compile_model(model_from_config(cfg, SHAPE, 10), cfg.learning_rate())
    keras.utils.set_random_seed(5)  # as model_from_config sets it
    built = build_model("mlp", SHAPE, 10, rule="dfa", seed=5, feedback_spatial="broadcast",
                        norm="none", learning_rate=0.002)
    mine, theirs = from_config.get_config(), built.get_config()
    mine.pop("name"), theirs.pop("name")
    assert mine == theirs
    assert rate_of(built) == pytest.approx(rate_of(from_config))
    assert len(built.weights) == len(from_config.weights)
    for a, b in zip(built.weights, from_config.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
