"""``train.error_dtype=bfloat16``: every convolution's input gradient in bfloat16.

What it must be: the forward pass unchanged, bit for bit; every convolution's input
gradient computed in bfloat16 (else it buys nothing) and the kernel's in float32, for a
plain Keras convolution and an SVD convolution in every form it runs (merged, factored,
both views), not the feedback map; the gradients float32's to bfloat16's precision; the
setting reaching every convolution from a run's config, for any rule, and refused (one
line) where it cannot do what it says; a whole run trains what float32 trains.
"""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_runs_agree, short_run
from ssa_tf.config import RunConfig, UsageError
from ssa_tf.config.validate import validate
from ssa_tf.nn import SVDConv2D
from ssa_tf.nn.precision import set_error_dtype
from ssa_tf.training.model import build_model

LAYERS = {
    "plain": lambda: keras.layers.Conv2D(6, 3, strides=2, padding="same"),
    "plain, valid": lambda: keras.layers.Conv2D(6, 3, padding="valid"),
    "svd, spatial, merged": lambda: SVDConv2D(6, 3, strides=2, padding="same",
                                              factorization="spatial", forward="merged"),
    "svd, spatial, factored": lambda: SVDConv2D(6, 3, strides=2, padding="same",
                                                factorization="spatial", forward="factored"),
    "svd, channel, factored": lambda: SVDConv2D(6, 3, padding="valid",
                                                factorization="channel", forward="factored"),
}


class _Holder(keras.Model):  # set_error_dtype walks a model's layers
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def call(self, x):
        return self.layer(x)


def _gradients(layer, x, dy):
    """(output, input gradient, weight gradients, {(op type, dtype)} of the traced step)."""
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            score = tf.reduce_sum(y * dy)
        return y, tape.gradient(score, [x, *layer.trainable_variables])

    graph = step.get_concrete_function(x).graph
    kinds = {(op.type, op.get_attr("T").name) for op in graph.get_operations()
             if op.type.startswith("Conv2D")}
    y, (dx, *dw) = step(x)
    return y.numpy(), dx.numpy(), [g.numpy() for g in dw], kinds


def _cos(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("case", LAYERS)
def test_every_input_gradient_runs_in_bfloat16_and_nothing_else_changes(case):
    keras.utils.set_random_seed(3)
    layer = LAYERS[case]()
    x = tf.random.normal((4, 9, 9, 5))
    layer(x)
    dy = tf.random.normal(layer(x).shape)
    y32, dx32, dw32, kinds32 = _gradients(layer, x, dy)
    set_error_dtype(_Holder(layer), "bfloat16")
    y16, dx16, dw16, kinds16 = _gradients(layer, x, dy)
    np.testing.assert_array_equal(y16, y32)  # the forward pass as it was
    assert ("Conv2DBackpropInput", "float32") in kinds32
    assert {k for k in kinds16 if k[0] == "Conv2DBackpropInput"} == {
        ("Conv2DBackpropInput", "bfloat16")}
    assert {k for k in kinds16 if k[0] != "Conv2DBackpropInput"} == {
        ("Conv2D", "float32"), ("Conv2DBackpropFilter", "float32")}
    assert 0.999 < _cos(dx16, dx32) and not np.array_equal(dx16, dx32)
    for a, b in zip(dw16, dw32):
        assert _cos(a, b) > 0.999
    if "factored" not in case:  # one convolution: its kernel's gradient is float32's, exactly
        for a, b in zip(dw16, dw32):
            np.testing.assert_array_equal(a, b)
    if case.startswith("svd"):  # the feedback map keeps its own dtype (the chain's)
        @tf.function
        def back(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                score = tf.reduce_sum(layer.feedback_call(x) * dy)
            return tape.gradient(score, x)
        ops = back.get_concrete_function(x).graph.get_operations()
        kinds = {op.get_attr("T").name for op in ops if op.type == "Conv2DBackpropInput"}
        assert kinds == {"float32"}
    # float32 again: Keras's own convolution back, its graph as at first
    set_error_dtype(_Holder(layer), "float32")
    y, dx, _, kinds = _gradients(layer, x, dy)
    assert kinds == kinds32
    np.testing.assert_array_equal(dx, dx32)


def test_a_model_of_any_rule_gets_it_from_its_settings():
    for rule, kind in (("bp", keras.layers.Conv2D), ("ssa", SVDConv2D),
                       ("dfa", keras.layers.Conv2D)):
        keras.utils.set_random_seed(1)
        model = build_model("smallconv", (8, 8, 3), 10, rule=rule, error_dtype="bfloat16")
        convs = [l for l in model._flatten_layers(include_self=False, recursive=True)
                 if isinstance(l, kind)]
        assert convs and all(l.error_dtype == "bfloat16" for l in convs), rule
        assert model.error_dtype == "bfloat16"
        default = build_model("smallconv", (8, 8, 3), 10, rule=rule)
        assert default.error_dtype == "float32"
        assert all(getattr(l, "error_dtype", None) in (None, "float32")
                   for l in default._flatten_layers(include_self=False, recursive=True))


def test_a_step_moves_the_weights_as_float32_does_to_its_precision():
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 10
    for rule in ("bp", "ssa"):
        moves = []
        for dtype in ("float32", "bfloat16"):
            keras.utils.set_random_seed(1)
            model = build_model("smallconv", (8, 8, 3), 10, rule=rule, error_dtype=dtype)
            before = [v.numpy().copy() for v in model.trainable_variables]
            model.train_on_batch(x, y)
            moves.append(np.concatenate([(v.numpy() - b).ravel() for v, b in
                                         zip(model.trainable_variables, before)]))
        assert 0.99 < _cos(*moves) and not np.array_equal(*moves), rule


def test_what_it_cannot_cover_is_refused():
    assert "train.error_dtype='float16' is not valid" in validate(
        RunConfig().with_overrides(["train.error_dtype=float16"]))
    for layer, why in ((keras.layers.Conv2D(4, 3, dilation_rate=2), "dilation (2, 2)"),
                       (keras.layers.Conv2D(4, 3, groups=2), "2 groups")):
        holder = _Holder(layer)
        holder(tf.zeros((1, 8, 8, 4)))
        with pytest.raises(UsageError, match=f"has {re.escape(why)}: use train.error_dtype"):
            set_error_dtype(holder, "bfloat16")


def test_a_user_model_it_cannot_cover_is_refused_in_one_line(tmp_path):
    path = tmp_path / "first.py"
    path.write_text(
        "import keras\n"
        "def build(input_shape, num_classes):\n"
        "    x = keras.Input(input_shape)\n"
        "    h = keras.layers.Conv2D(4, 3, data_format='channels_first')(x)\n"
        "    h = keras.layers.Flatten()(h)\n"
        "    return keras.Model(x, keras.layers.Dense(num_classes)(h))\n")
    cfg = RunConfig().with_overrides([
        "data.dataset=synthetic", "data.synthetic_shape=8,8,3", f"model.model={path}",
        "rule.name=bp", "train.error_dtype=bfloat16"])
    from ssa_tf.training.model import model_from_config
    with pytest.raises(UsageError, match=r"^--model=.*first.py: train.error_dtype=bfloat16 "
                                         r"covers plain 2-D convolutions .* has channels_first"):
        model_from_config(cfg, (8, 8, 3), 10)
    cfg = cfg.with_overrides(["train.error_dtype=float32"])
    assert model_from_config(cfg, (8, 8, 3), 10).error_dtype == "float32"


@pytest.mark.parametrize("rule", ["ssa", "bp"])
def test_a_run_in_bfloat16_trains_what_float32_trains(tmp_path, rule):
    """Through the real entry, 3 epochs: the weights and the logged losses within
    bfloat16's precision of the float32 run's, and not the same run; the record says it."""
    full = short_run(tmp_path / "f32", f"rule.name={rule}")
    low = short_run(tmp_path / "bf16", f"rule.name={rule}", "train.error_dtype=bfloat16")
    record = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert record["train.error_dtype"] == "bfloat16"
    assert_runs_agree(full, low, moved_at_most=0.03, rtol=0.03)


def test_an_input_gradient_nothing_uses_is_not_computed(tmp_path):
    """The custom gradient returns the first convolution's input gradient too; the
    compiled step must not run it (TensorFlow prunes it, as it never computes it for a
    plain tape): as many input-gradient convolutions run a step as in float32, counted by
    TensorFlow's profiler."""
    import glob
    import os

    from benchmarks.step_profile import op_stats

    x = np.random.default_rng(0).standard_normal((8, 16, 16, 3)).astype("float32")
    y = np.arange(8) % 10
    counts = {}
    for dtype in ("float32", "bfloat16"):
        keras.utils.set_random_seed(1)
        model = build_model("smallconv", (16, 16, 3), 10, rule="bp", error_dtype=dtype)
        model.train_on_batch(x, y)  # traced and warmed up
        logdir = str(tmp_path / dtype)
        tf.profiler.experimental.start(logdir)
        model.train_on_batch(x, y)
        tf.profiler.experimental.stop()
        xplane, = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        counts[dtype] = {k: n for k, (_, n) in op_stats(xplane).items()
                         if "Conv2DBackprop" in k}
    convs = sum(isinstance(l, keras.layers.Conv2D) for l in model._flatten_layers())
    inputs = [n for k, n in counts["float32"].items() if "BackpropInput" in k]
    assert inputs == [convs - 1]  # every convolution's but the first's
    assert counts["bfloat16"] == counts["float32"]
