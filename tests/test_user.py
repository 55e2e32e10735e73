"""ssa_tf.nn.user: a user's own Keras model trained by every rule.

A Sequential MLP, a Sequential CNN and a functional CNN with a residual join: their
split into local modules, exactness at full rank, one SSA step's locality, save and
load, and the merged export; MobileNetV2 refused in one line; the command line's
``--model=FILE.py``.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, one_line
from conftest import run_cli as run
from ssa_tf.export.merge import merge
from ssa_tf.nn.graph import UnsupportedLayerError
from ssa_tf.nn.user import modules_from_keras
from ssa_tf.training.model import SSAModel, compile_model

SHAPE = (12, 12, 3)


def mlp():
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu", name="hidden"),
                             keras.layers.Dropout(0.1), keras.layers.Dense(10, name="head")],
                            name="mlp")


def cnn():
    return keras.Sequential([keras.Input(SHAPE),
                             keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
                             keras.layers.MaxPooling2D(), keras.layers.Conv2D(8, 3, name="conv2"),
                             keras.layers.LayerNormalization(), keras.layers.ReLU(),
                             keras.layers.Flatten(), keras.layers.Dense(10, name="head")],
                            name="cnn")


def residual():
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="branch1")(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(8, 3, padding="same", name="branch2")(y)
    x = keras.layers.ReLU()(keras.layers.Add(name="join")([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="residual")


NETWORKS = {"mlp": mlp, "cnn": cnn, "residual": residual}
# (module -> its weight layers): one weight layer or one residual block each
SPLITS = {"mlp": [["hidden"], ["head"]], "cnn": [["conv1"], ["conv2"], ["head"]],
          "residual": [["stem"], ["branch1", "branch2"], ["head"]]}


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *SHAPE)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def _model(name, rule="ssa", **options):
    keras.utils.set_random_seed(3)
    network = NETWORKS[name]()
    return network, SSAModel(name, SHAPE, 10, rule=rule, network=network, **options)


def _names(module):
    return [l.name for l in module.graph.layers
            if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))
            or hasattr(l, "B_U")]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_split_puts_one_weight_layer_or_one_residual_block_in_each_module(name):
    _, model = _model(name)
    assert [_names(m) for m in model.local_modules] == SPLITS[name]
    # the join and both of its paths stay inside one module
    if name == "residual":
        inside = [l.name for l in model.local_modules[1].graph.layers]
        assert "join" in inside and "bn" in inside


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("rule", ["ssa", "dfa"])
def test_the_converted_network_computes_what_the_users_did(name, rule):
    network, model = _model(name, rule, head_init="glorot")
    x, _ = _batch()
    np.testing.assert_allclose(model(x).numpy(), network(x).numpy(), atol=1e-4)
    if rule == "ssa":  # SVD layers with B from the initial weight, batch norm made local
        assert len(model.svd_layers()) == sum(map(len, SPLITS[name]))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_one_ssa_step_of_a_module_ignores_the_later_modules_weights(name):
    _, model = _model(name)
    x, y = _batch()
    e = tf.constant(np.random.default_rng(1).standard_normal((8, 10)), tf.float32)

    # dropout draws its mask from a seed generator's state: the same mask both times
    seeds = [l.seed_generator.state for l in model._flatten_layers()
             if getattr(l, "seed_generator", None) is not None]
    start = [s.numpy() for s in seeds]

    def update():
        for s, value in zip(seeds, start):
            s.assign(value)
        grads = model.local_gradients(tf.constant(x), tf.constant(y), error=e)[0]
        mine = {id(v) for v in model.local_modules[0].trainable_variables}
        return [g.numpy() for g, v in grads if id(v) in mine]

    before = update()
    assert any(np.abs(g).max() > 0 for g in before)
    for m in model.local_modules[1:]:
        for v in m.trainable_variables:
            v.assign(v * 1.5 + 0.1)
    assert all(np.array_equal(a, b) for a, b in zip(before, update()))


def test_a_trained_users_model_saves_loads_and_merges_to_the_same_outputs(tmp_path):
    _, model = _model("residual")
    compile_model(model)
    x, y = _batch(32)
    for _ in range(3):
        model.train_on_batch(x, y)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)
    plain, _ = merge(loaded)
    assert not any(hasattr(l, "B_U") for l in plain._flatten_layers())
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), atol=1e-4)
    from ssa_tf.export import deploy

    session = deploy.onnx_session(deploy.to_onnx(plain).SerializeToString())
    parity = deploy.compare_logits(model(x).numpy(), deploy.run_onnx(session, x), "onnx")
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_differ"] == 0


def test_mobilenet_v2_is_refused_in_one_line_naming_its_depthwise_layer():
    network = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10,
                                             classifier_activation=None)
    with pytest.raises(UnsupportedLayerError) as refused:
        modules_from_keras(network)
    message = str(refused.value)
    assert "\n" not in message
    assert "'expanded_conv_depthwise' (DepthwiseConv2D) cannot be trained locally" in message


@pytest.mark.parametrize("last,why", [
    (lambda: keras.layers.Conv2D(4, 3, dilation_rate=2, name="dilated"),
     "'dilated' \\(Conv2D\\) cannot be trained locally: a dilated convolution"),
    (lambda: keras.layers.Dense(10, activation="softmax", name="probs"),
     "ends in a softmax \\('probs'\\)"),
])
def test_what_cannot_be_trained_is_named(last, why):
    layer = last()
    dense = isinstance(layer, keras.layers.Dense)
    network = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, name="first"),
                                keras.layers.Flatten(name="flat") if dense
                                else keras.layers.ReLU(name="relu"), layer])
    with pytest.raises(UnsupportedLayerError, match=why):
        modules_from_keras(network)


def test_the_command_line_trains_a_users_file_and_stores_its_card(tmp_path):
    workdir = tmp_path / "w"
    result = run("train", f"--model={os.path.join(REPO, 'examples', 'residual_cnn.py')}",
                 "--epochs=1", "--set=data.max_train_examples=512", f"--workdir={workdir}",
                 timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("rule ssa: sequential no, weight transport once")
    # then how the model was cut, one line per module
    assert "residual_cnn.py: 4 local modules (cut automatically; MODULE_ENDS" in result.stdout
    assert ("\n  1 conv2d_1..conv2d_2: conv2d_1, layer_normalization, re_lu, conv2d_2, add, "
            "re_lu_1, max_pooling2d_1\n") in result.stdout
    config = json.loads((workdir / "config.json").read_text())
    assert config["model.model"].endswith("residual_cnn.py") and config["card"]["rule"] == "ssa"
    # it has its own layers
    assert config["model.norm"] is None and config["model.activation"] is None
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["card"]["weight_transport"] == "once at construction"
    assert summary["test_accuracy"] > 0.3  # 8 steps; chance is 0.1


def test_a_users_file_that_gives_no_model_is_named_in_one_line(tmp_path):
    from ssa_tf.errors import UsageError
    from ssa_tf.model_file import user_network

    ten = ("import keras\ndef build(s, k):\n    return keras.Sequential([keras.Input(s), "
           "keras.layers.Flatten(), keras.layers.Dense(10)])\n")
    cases = {"import keras\n": "defines no build(input_shape, num_classes)",
             "def build(s, k):\n    return 3\n": "build() returned a int, not a keras.Model",
             "def build(s, k):\n    raise KeyError('x')\n": "KeyError: 'x'",
             ten: "the model's output has shape (10,); the dataset has 7 classes"}
    for k, (text, needle) in enumerate(cases.items()):
        path = tmp_path / f"net{k}.py"
        path.write_text(text)
        with pytest.raises(UsageError) as error:
            user_network(str(path), SHAPE, 7)
        assert f"--model={path}" in str(error.value) and needle in str(error.value)
        assert "\n" not in str(error.value)
    line = one_line(run("train", f"--model={tmp_path / 'none.py'}", timeout=60))
    assert "no such file" in line


def test_the_user_can_choose_where_modules_end(tmp_path):
    keras.utils.set_random_seed(3)
    network = residual()
    model = SSAModel("residual", SHAPE, 10, rule="ssa", network=network, module_ends=["stem"])
    assert [_names(m) for m in model.local_modules] == [["stem"], ["branch1", "branch2", "head"]]
    x, _ = _batch()
    np.testing.assert_allclose(model(x).numpy(), network(x).numpy(), atol=1e-4)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert len(loaded.local_modules) == 2 and loaded.module_ends == ("stem",)
    # inside the residual block the graph runs on two paths: no module can end there
    with pytest.raises(UnsupportedLayerError, match=r"module ends \['branch1'\] are not"):
        modules_from_keras(residual(), ends=["branch1"])


def _forked():
    """Layer classes the built-in models do not use: LeakyReLU, ELU and ReLU layers, a
    fork joined by Concatenate, batch norm on one branch, global max pooling."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c0")(inputs)
    x = keras.layers.MaxPooling2D(2)(keras.layers.LeakyReLU(negative_slope=0.1)(x))
    a = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same", name="a")(x))
    b = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 1, name="b")(x))
    x = keras.layers.Concatenate()([a, keras.layers.ELU()(b)])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="forked")


@pytest.mark.parametrize("network", [residual, _forked])
def test_the_gated_chain_of_a_users_model_is_backprop_where_b_is_w(network):
    """fa's feedback starts as the forward weights (B = W): gated by the forward pass, with
    the norms' and max-pools' Jacobians, its signal at every module boundary is then BP's
    gradient, through a user's graph as through the built-in blocks (tests/test_chain.py)."""
    from ssa_tf.methods import chain, losses

    keras.utils.set_random_seed(3)
    model = SSAModel(network.__name__, SHAPE, 10, rule="fa", network=network())
    assert model.rule.route.gated and model.options["chain_jacobians"]
    x, y = _batch()
    with tf.GradientTape() as tape:
        outs, h = [], tf.constant(x)
        for m in model.local_modules:
            h = m(h, training=True)
            outs.append(h)
        ce = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, h, from_logits=True))
    true = tape.gradient(ce, outs[:-1])
    gated = chain.chain_signals(model.local_modules, outs, losses.output_error(h, y, 10),
                                model.rule.route.kernels, gated=True)
    assert len(gated) == len(model.local_modules) - 1 >= 2
    for g, t in zip(gated, true):
        np.testing.assert_allclose(g, t, rtol=1e-3, atol=1e-5)
    # gated, not the linear network: without the gates the signals differ
    linear = chain.chain_signals(model.local_modules, outs, losses.output_error(h, y, 10),
                                 model.rule.route.kernels)
    assert float(tf.reduce_max(tf.abs(linear[0] - true[0]))) > 1e-3


def test_random_feedback_of_a_layer_with_a_constant_initializer_is_still_random():
    """Random feedback is drawn like the layer's own weights when those are a seeded draw;
    a zeros (or ones, constant) initializer has no draw to copy, and the SVD layer's own
    random one is used."""
    from ssa_tf.nn import SVDLayer

    inputs = keras.Input(SHAPE)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    head = keras.layers.Dense(10, kernel_initializer="zeros", name="head")(x)
    model = SSAModel("zeros", SHAPE, 10, rule="ssa", feedback_init="random",
                     network=keras.Model(inputs, head))
    layers = {l.name: l for l in model._flatten_layers() if isinstance(l, SVDLayer)}
    feedback = layers["head"].feedback_matrix()
    assert np.std(feedback) > 0.01 and np.linalg.matrix_rank(feedback) == 10


def test_the_merges_own_layers_take_names_the_network_does_not_use():
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, name="input_normalization")(inputs)
    x = keras.layers.Dense(10, name="input")(keras.layers.Flatten()(x))
    model = SSAModel("clash", SHAPE, 10, rule="ssa", network=keras.Model(inputs, x),
                     input_stats=((100.0, 110.0, 120.0), (50.0, 60.0, 70.0)))
    merged, _ = merge(model)
    raw = np.random.default_rng(0).uniform(0, 255, (4, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(merged(raw), model(raw), atol=1e-4)
    names = [l.name for l in merged.layers]
    assert len(names) == len(set(names)) and "input_normalization_1" in names
