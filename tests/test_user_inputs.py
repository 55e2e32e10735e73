"""A user's own model file (``--model=FILE.py``): what a new user met.

A model built for other inputs is refused in one line naming both shapes. A model
whose first layers preprocess (Rescaling, Normalization) receives raw pixels, the
built-in normalization stepping aside, through save, merge and the ONNX export;
preprocessing elsewhere is refused. Model settings a file does not use are refused, and
config.json claims none for it. Modules are named after what they train, the split is
printed, a bad MODULE_ENDS lists each place once. A file that does not compile or has no
build() is refused before TensorFlow starts; a failure inside build() names the file's
line.
"""

import json
import os

import keras
import numpy as np
import pytest

from conftest import files, one_line
from conftest import run_cli as run
from ssa_tf.config import RunConfig, UsageError, validate
from ssa_tf.nn.graph import UnsupportedLayerError
from ssa_tf.nn.user import modules_from_keras
from ssa_tf.model_file import user_network
from ssa_tf.training.model import SSAModel, model_from_config

MNIST = (28, 28, 1)
# raw pixels, as the data pipelines give them
PIXELS = np.random.default_rng(0).uniform(0, 255, (8, *MNIST)).astype(np.float32)


def _file(tmp_path, body, name="net.py"):
    path = tmp_path / name
    path.write_text("import keras\n\n\n" + body)
    return str(path)


def _cnn(first=None):
    """A small CNN on MNIST-shaped input, ``first`` (a layer) right after the input."""
    inputs = keras.Input(MNIST)
    x = first(inputs) if first is not None else inputs
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="cnn")


CNN_FILE = """
def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = {first}
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x))
"""


# -- a model built for other inputs ----------------------------------------------------------

def test_a_model_built_for_other_inputs_is_refused_naming_both_shapes(tmp_path):
    path = _file(tmp_path, "def build(input_shape, num_classes):\n"
                           "    inputs = keras.Input((32, 32, 3))\n"
                           "    x = keras.layers.Flatten()(inputs)\n"
                           "    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))\n")
    with pytest.raises(UsageError) as error:
        user_network(path, MNIST, 10)
    message = str(error.value)
    assert message.startswith(f"--model={path}: ") and "\n" not in message
    assert "inputs of shape (32, 32, 3); the data has shape (28, 28, 1)" in message
    # a Sequential without keras.Input has no input shape at all
    bare = _file(tmp_path, "def build(s, k):\n    return keras.Sequential([keras.layers.Flatten(), "
                           "keras.layers.Dense(k)])\n", "bare.py")
    with pytest.raises(UsageError, match="without an input shape; begin it with keras.Input"):
        user_network(bare, MNIST, 10)


def test_the_command_line_refuses_a_model_for_other_inputs_and_leaves_nothing(tmp_path):
    path = _file(tmp_path, "def build(input_shape, num_classes):\n"
                           "    inputs = keras.Input((32, 32, 3))\n"
                           "    x = keras.layers.Flatten()(inputs)\n"
                           "    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))\n")
    workdir = tmp_path / "w"
    line = one_line(run("train", f"--model={path}", "--epochs=1", f"--workdir={workdir}",
                        "--set=data.max_train_examples=64", timeout=180))
    assert f"--model={path}" in line
    assert "(32, 32, 3); the data (mnist5k) has shape (28, 28, 1)" in line
    assert not workdir.exists(), files(workdir)


# -- a model that preprocesses its own input ------------------------------------------------

def test_a_model_that_rescales_its_input_receives_raw_pixels(tmp_path):
    rescaled = _file(tmp_path, CNN_FILE.format(first="keras.layers.Rescaling(1 / 255)(inputs)"),
                     "rescaled.py")
    plain = _file(tmp_path, CNN_FILE.format(first="inputs"), "plain.py")
    cfg = RunConfig().with_overrides([f"model.model={rescaled}"])
    model = model_from_config(cfg, MNIST, 10)
    # the built-in normalization steps aside: the network sees the raw pixels, once rescaled
    assert model.input_stats is None
    keras.utils.set_random_seed(cfg.seed)  # the same network, the same initial weights
    network, _ = user_network(rescaled, MNIST, 10)
    np.testing.assert_allclose(model(PIXELS).numpy(), network(PIXELS).numpy(), atol=1e-4)
    described = model.input_description()
    assert described["values"].startswith("raw pixels in [0, 255]")
    assert "its own first layers: rescaling: x * 0.00392157 + 0" in described["normalization"]
    # without preprocessing of its own, the model normalizes the raw pixels itself, as before
    other = model_from_config(RunConfig().with_overrides([f"model.model={plain}"]), MNIST, 10)
    assert other.input_stats is not None


@pytest.mark.parametrize("kind", ["rescaling", "normalization"])
def test_a_models_own_preprocessing_is_kept_through_save_merge_and_onnx(tmp_path, kind):
    from conftest import require_export

    require_export()
    from ssa_tf.export import deploy
    from ssa_tf.export.merge import merge

    keras.utils.set_random_seed(5)
    if kind == "rescaling":
        first = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")
    else:  # adapted on data: its statistics are weights, not config
        first = keras.layers.Normalization(name="scale")
        first.adapt(PIXELS)
    network = _cnn(first)
    model = SSAModel("cnn", MNIST, 10, rule="ssa", network=network, head_init="glorot")
    assert model.input_stats is None
    np.testing.assert_allclose(model(PIXELS).numpy(), network(PIXELS).numpy(), atol=1e-4)
    described = model.input_description()  # summary.json's "input"
    assert described["values"] == "raw pixels in [0, 255], channels last"
    assert described["normalization"].startswith("inside the model, by its own first layers: "
                                                 "scale: ")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(PIXELS).numpy(), model(PIXELS).numpy(), atol=1e-5)
    assert loaded.input_description() == described
    plain, _ = merge(loaded)
    np.testing.assert_allclose(plain(PIXELS).numpy(), model(PIXELS).numpy(), atol=1e-4)
    session = deploy.onnx_session(deploy.to_onnx(plain).SerializeToString())
    parity = deploy.compare_logits(model(PIXELS).numpy(), deploy.run_onnx(session, PIXELS), "onnx")
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_differ"] == 0


def test_the_export_of_a_model_that_preprocesses_takes_raw_pixels(tmp_path):
    from conftest import require_export

    require_export()
    from ssa_tf.export import deploy
    from ssa_tf.export.config import ExportConfig

    keras.utils.set_random_seed(6)
    network = _cnn(keras.layers.Rescaling(1 / 255, name="rescale"))
    model = SSAModel("cnn", MNIST, 10, rule="ssa", network=network, head_init="glorot")
    model.save(tmp_path / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "mnist5k"}))
    result = deploy.export_run(ExportConfig(workdir=str(tmp_path), output=str(tmp_path / "m.onnx"),
                                            latency_runs=1, verify_batch=16), log=lambda *a: None)
    assert result.input_spec["values"] == "raw pixels in [0, 255]"
    assert "rescale: x * 0.00392157 + 0" in result.input_spec["normalization"]
    # not the dataset's (x - mean) / std as well: the ONNX model computes model(raw pixels)
    session = deploy.onnx_session((tmp_path / "m.onnx").read_bytes())
    np.testing.assert_allclose(deploy.run_onnx(session, PIXELS), model(PIXELS).numpy(), atol=1e-4)


@pytest.mark.parametrize("where,why", [
    ("inside", "'late' \\(Rescaling\\) preprocesses inside the network; preprocessing belongs "
               "at its start"),
    ("augment", "'flip' \\(RandomFlip\\) cannot be trained locally: a RandomFlip, a "
                "preprocessing layer"),
])
def test_preprocessing_anywhere_but_the_start_is_refused_in_one_line(where, why):
    inputs = keras.Input(MNIST)
    if where == "inside":
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.Rescaling(0.5, name="late")(x)
    else:
        x = keras.layers.RandomFlip(name="flip")(inputs)
        x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.Flatten()(x)
    network = keras.Model(inputs, keras.layers.Dense(10)(x))
    with pytest.raises(UnsupportedLayerError, match=why) as refused:
        modules_from_keras(network)
    assert "\n" not in str(refused.value)


# -- model settings a file does not use -----------------------------------------------------

@pytest.mark.parametrize("setting", ["model.norm=batch", "model.activation=tanh",
                                     "model.conv_factorization=channel", "model.norm=none"])
def test_model_settings_a_model_file_does_not_use_are_refused(setting):
    example = os.path.join("examples", "residual_cnn.py")
    problem = validate(RunConfig().with_overrides([f"model.model={example}", setting]))
    name, value = setting.split("=")
    assert problem.startswith(f"{name}={value} does not apply to --model={example}")
    # the built-in models take them; head_init applies to a file too
    assert validate(RunConfig().with_overrides([setting])) is None
    assert validate(RunConfig().with_overrides([f"model.model={example}",
                                                "model.head_init=zero"])) is None


def test_config_json_claims_no_norm_or_activation_for_a_users_model(tmp_path):
    from ssa_tf.training.workdir import prepare_workdir

    user = RunConfig().with_overrides([f"model.model={os.path.join('examples', 'residual_cnn.py')}",
                                       f"runtime.workdir={tmp_path}"]).record()
    names = ("model.norm", "model.activation", "model.conv_factorization")
    assert tuple(user[n] for n in names) == (None, None, None)
    built_in = RunConfig().record()
    assert tuple(built_in[n] for n in names) == ("layer", "leaky_relu", "spatial")
    assert RunConfig().with_overrides(["model.norm=none"]).resolved().model.norm == "none"
    # an unfinished run recorded before: its config.json claimed the built-in defaults
    cfg = RunConfig().with_overrides([f"model.model={os.path.join('examples', 'residual_cnn.py')}",
                                      f"runtime.workdir={tmp_path}"])
    (tmp_path / "config.json").write_text(json.dumps(
        {**user, "norm": "layer", "activation": "leaky_relu", "conv_factorization": "spatial"}))
    (tmp_path / "backup" / "local" / "epoch-1").mkdir(parents=True)
    (tmp_path / "backup" / "local" / "epoch-1" / "state.json").write_text("{}")
    assert prepare_workdir(cfg) == "resume"


# -- how the model was split ----------------------------------------------------------------

def _residual():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="branch1")(x)
    y = keras.layers.ReLU(name="relu")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", name="branch2")(y)
    x = keras.layers.Add(name="join")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="residual")


def test_modules_are_named_after_what_they_train_and_the_split_is_described():
    keras.utils.set_random_seed(3)
    model = SSAModel("residual", (12, 12, 3), 10, rule="ssa", network=_residual())
    assert model.module_names() == ["0 (stem)", "1 (branch1..branch2)", "2 (hidden)",
                                    "3 (head)"]
    from ssa_tf.nn.user import split_lines
    from ssa_tf.training.run import module_split

    cfg = RunConfig().with_overrides(["model.model=net.py"])
    assert module_split(cfg, model).splitlines() == [
        "net.py: 4 local modules (cut automatically; MODULE_ENDS in the file chooses the ends):",
        "  0 stem: stem",
        "  1 branch1..branch2: branch1, relu, branch2, join, gap",
        "  2 hidden: hidden",
        "  3 head: head"]
    # a model's own preprocessing is marked where it runs: at the head of the first module
    keras.utils.set_random_seed(3)
    own = SSAModel("cnn", MNIST, 10, network=_cnn(keras.layers.Rescaling(1 / 255, name="scale")))
    assert split_lines(own.local_modules)[0] == "0 conv: scale (preprocessing), conv, pool"


def test_a_bad_module_end_lists_each_place_once_in_the_graphs_order():
    with pytest.raises(UnsupportedLayerError) as refused:
        modules_from_keras(_residual(), ends=["branch1"])
    assert str(refused.value).endswith("those are: stem, join, gap, hidden")


# -- the file's mistakes, early and with their line -----------------------------------------

@pytest.mark.parametrize("body,needle", [
    ("def build(input_shape, num_classes)\n    pass\n",
     ", line 4: SyntaxError: expected ':': def build(input_shape, num_classes)"),
    ("def make(input_shape, num_classes):\n    pass\n",
     " defines no build(input_shape, num_classes)"),
    ("def build(input_shape):\n    pass\n",
     ", line 4: build(input_shape) cannot be called as build(input_shape, num_classes)"),
    ("def build(s, k):\n    pass\n\n\nMODULE_ENDS = ('pool1')\n",
     ", line 8: MODULE_ENDS = 'pool1' is one string, not a tuple of layer names"),
])
def test_a_model_file_is_checked_before_tensorflow_starts(tmp_path, body, needle):
    path = _file(tmp_path, body)
    assert validate(RunConfig().with_overrides([f"model.model={path}"])).startswith(
        f"--model={path}{needle}")
    # a file that defines build() by assignment or import is left to run
    other = _file(tmp_path, "from os.path import join as build\n", "alias.py")
    assert validate(RunConfig().with_overrides([f"model.model={other}"])) is None


def test_the_command_line_refuses_a_broken_file_before_the_card(tmp_path):
    path = _file(tmp_path, "def build(input_shape, num_classes)\n    pass\n")
    workdir = tmp_path / "w"
    result = run("train", f"--model={path}", f"--workdir={workdir}", timeout=60)
    assert one_line(result) == f"error: --model={path}, line 4: SyntaxError: expected ':': " \
                               "def build(input_shape, num_classes)"
    assert result.stdout == "" and not workdir.exists()  # no card: TensorFlow never started


def test_a_failure_inside_build_names_the_files_line(tmp_path):
    path = _file(tmp_path, "def build(input_shape, num_classes):\n"
                           "    inputs = keras.Input(input_shape)\n"
                           "    x = keras.layers.Flaten()(inputs)\n"
                           "    return keras.Model(inputs, x)\n")
    with pytest.raises(UsageError) as error:
        user_network(path, MNIST, 10)
    assert str(error.value) == (f"--model={path}, line 6, in build: AttributeError: module "
                                "'keras.layers' has no attribute 'Flaten'")
    # raised deep inside Keras, the line is still the file's; at import, the module's line
    deep = _file(tmp_path, "def build(input_shape, num_classes):\n"
                           "    inputs = keras.Input(input_shape)\n"
                           "    x = keras.layers.Dense(num_classes)(inputs, inputs)\n"
                           "    return keras.Model(inputs, x)\n", "deep.py")
    with pytest.raises(UsageError, match=", line 6, in build: TypeError: ") as error:
        user_network(deep, MNIST, 10)
    assert "\n" not in str(error.value)
    top = _file(tmp_path, "import no_such_module_for_ssa_tf\n", "top.py")
    with pytest.raises(UsageError, match=", line 4: ModuleNotFoundError: No module named"):
        user_network(top, MNIST, 10)
