"""One model path: the built-in networks are Keras models converted like a user's, and
what was saved in the layout before still loads (``ssa_tf.training.saved``).

``tests/data/old_layout`` holds two model.keras files written by the code before the
change (its ``make.py`` says how): a resnet32 without norms (residual blocks, projections)
and a smallconv with layer norms (pooling, flatten), every layer cut, one training step
taken.
"""

import json
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest

import ssa_tf
from ssa_tf.nn import SVDConv2D, SVDDense, SVDLayer, models
from ssa_tf.nn.norm import LocalBatchNorm
from ssa_tf.nn.user import GraphModule
from ssa_tf.training import checkpoints, saved
from ssa_tf.training.model import SSAModel

from conftest import REPO

OLD = os.path.join(REPO, "tests", "data", "old_layout")
FILES = {"resnet32_ssa": 1, "smallconv_fa": 2}  # file: the rank every layer was cut to


def _old(name):
    return os.path.join(OLD, f"{name}.keras")


def test_a_built_in_model_and_a_users_take_the_same_path(monkeypatch):
    made = []
    real = models.modules_from_keras

    def spy(network, **kwargs):
        made.append(network)
        return real(network, **kwargs)

    monkeypatch.setattr(models, "modules_from_keras", spy)
    model = SSAModel("resnet32", (8, 8, 3), 10, rule="ssa", norm="batch")
    (network,) = made
    # the converter's input is a plain Keras model of the built-in architecture ...
    plain = {l.name: l for l in network.layers}
    assert isinstance(plain["s1b0_conv1"], keras.layers.Conv2D)
    assert isinstance(plain["s1b0_norm1"], keras.layers.BatchNormalization)
    assert isinstance(plain["s1b0_add"], keras.layers.Add)
    assert not any(isinstance(l, (SVDLayer, LocalBatchNorm)) for l in network.layers)
    # ... and every module is what the converter made of it: GraphModules whose weight
    # layers are its SVD layers, exact copies of the plain ones at full rank
    assert all(isinstance(m, GraphModule) for m in model.local_modules)
    converted = {l.name: l for m in model.local_modules for l in m.graph.layers}
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    conv = converted["s0b1_conv1"]
    assert isinstance(conv, SVDConv2D)
    np.testing.assert_allclose(conv(x), plain["s0b1_conv1"](x), atol=1e-4)
    assert isinstance(converted["classifier"], SVDDense)
    assert isinstance(converted["s1b0_norm1"], LocalBatchNorm)
    assert [m.name for m in model.local_modules] == [f"m{k}" for k in range(16)]
    # a user's model goes through the same function
    inputs = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="c")(inputs)
    y = keras.layers.Dense(10, name="d")(keras.layers.Flatten()(y))
    SSAModel(network=keras.Model(inputs, y), input_shape=(8, 8, 3), rule="ssa")
    assert len(made) == 2 and made[1].get_layer("c") is not None


@pytest.mark.parametrize("name", list(FILES))
def test_a_model_saved_in_the_old_layout_loads_and_computes_what_it_did(name, tmp_path):
    with zipfile.ZipFile(_old(name)) as archive:
        assert "layout" not in json.loads(archive.read("config.json"))["config"]
    model = ssa_tf.load_model(_old(name), compile=False)
    saved_outputs = np.load(os.path.join(OLD, "outputs.npz"))
    # to float rounding: the kernels oneDNN picks differ between CPUs (a machine of this
    # project's kind differed from the saving one in 21 of 40 outputs, by at most 7e-7)
    np.testing.assert_allclose(model(saved_outputs["x"], training=False),
                               saved_outputs[name], rtol=1e-5, atol=1e-6)
    assert set(model.ranks().values()) == {FILES[name]}
    # the feedback weights, fixed since initialization, are today's builders' draws too
    arch, rule = name.split("_")
    fresh = SSAModel(arch, (8, 8, 3), 10, rule=rule, seed=2, ranks=model.ranks(),
                     **({"norm": "none"} if arch == "resnet32" else {}))
    fresh_layers = {l.name: l for l in fresh._flatten_layers() if isinstance(l, SVDLayer)}
    loaded_layers = [l for l in model._flatten_layers() if isinstance(l, SVDLayer)]
    assert len(loaded_layers) == len(fresh_layers) >= 5
    for layer in loaded_layers:
        for var in ("B_U", "B_s", "B_V"):
            np.testing.assert_array_equal(getattr(layer, var), getattr(fresh_layers[layer.name],
                                                                       var))
    # Keras's arguments: compiled as saved, or not
    assert not model.compiled and getattr(model, "optimizer", None) is None
    compiled = ssa_tf.load_model(_old(name))
    assert isinstance(compiled.optimizer, keras.optimizers.SGD) and compiled.compiled
    with pytest.raises(TypeError):
        ssa_tf.load_model(_old(name), compiled=False)
    # saved again, it is today's layout, which Keras itself reads
    model.save(tmp_path / "today.keras")
    again = keras.models.load_model(tmp_path / "today.keras", compile=False)
    np.testing.assert_array_equal(again(saved_outputs["x"]),
                                  model(saved_outputs["x"], training=False))


@pytest.mark.parametrize("rule", ["ssa", "bp"])
def test_each_module_emits_from_its_blocks_conv2_also_without_norms(rule):
    """Without norms a downsampling block's conv2 and projection are at one depth of the
    graph: the module's output layer (SSA's structured feedback is built from it) is
    conv2, as it always was, not the last weight layer the graph's order lists."""
    model = SSAModel("resnet32", (8, 8, 3), 10, rule=rule, norm="none")
    blocks = [f"s{i}b{j}_conv2" for i in range(3) for j in range(5)]
    assert [m.output_layer.name for m in model.local_modules] == \
        ["m0_conv", *blocks[:-1], "classifier"]
    assert model.local_modules[6].graph.get_layer("s1b0_proj") is not None


def test_the_layout_walk_is_where_keras_puts_each_layers_variables(tmp_path):
    model = SSAModel("resnet32", (8, 8, 3), 10, rule="ssa", norm="batch")
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive, \
            archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as f:
        stored = set()
        f.visititems(lambda p, o: stored.add(p.rsplit("vars/", 1)[0].rstrip("/"))
                     if isinstance(o, h5py.Dataset) else None)  # "" for the model's own
    walked = {p for o, p in saved.layout(model) if isinstance(o, keras.layers.Layer)
              and (o._trainable_variables + o._non_trainable_variables)}
    assert walked == stored and len(stored) > 60  # 34 weight layers, their norms


def test_a_checkpoint_of_the_old_layout_restores(tmp_path):
    """A built-in run's checkpoint stores variables by path, and the path held the module
    (and block) then: m1/s0b0/s0b0_conv1/U, adam/m1_s0b0_s0b0_conv1_U_momentum."""
    # one name: the model's own variables' paths carry it (one model per run in a run)
    model = SSAModel("resnet32", (8, 8, 3), 10, rule="ssa", name="run")
    model.compile(optimizer=keras.optimizers.Adam(name="adam"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    model.train_on_batch(x, np.arange(4))
    scope = {}
    for k, module in enumerate(model.local_modules):
        for layer in module.graph.layers:
            block = layer.name.split("_")[0] if layer.name[:1] == "s" else None
            scope[layer.name] = [f"m{k}"] + ([block] if block else [])

    def old(path):
        if path.startswith("adam/"):
            for layer, parts in scope.items():
                if path[5:].startswith(layer + "_"):
                    return "adam/" + "_".join(parts) + "_" + path[5:]
            return path
        layer = path.split("/")[0]
        return "/".join([*scope[layer], path]) if layer in scope else path

    arrays = {f"model/{old(v.path)}": v.numpy() for v in model.weights}
    arrays.update({f"optimizer/{old(v.path)}": v.numpy() for v in model.optimizer.variables})
    assert "model/m1/s0b0/s0b0_conv1/U" in arrays
    assert "optimizer/adam/m1_s0b0_s0b0_conv1_U_momentum" in arrays
    assert "model/m15/classifier/s" in arrays

    other = SSAModel("resnet32", (8, 8, 3), 10, rule="ssa", seed=7, name="run")
    other.compile(optimizer=keras.optimizers.Adam(name="adam"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    other.optimizer.build(other.trainable_variables)
    checkpoints._assign(checkpoints._by_path(other.weights, "model"), arrays, "model/")
    checkpoints._assign(checkpoints._by_path(other.optimizer.variables, "optimizer"), arrays,
                        "optimizer/")
    np.testing.assert_array_equal(other(x), model(x))
    for a, b in zip(other.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a, b)
    # a checkpoint that fits neither layout is still refused in one line
    del arrays["model/m15/classifier/s"]
    with pytest.raises(checkpoints.CheckpointError, match="does not fit this model"):
        checkpoints._assign(checkpoints._by_path(other.weights, "model"), arrays, "model/")


def test_what_is_not_a_keras_file_gets_keras_own_message(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("not a zip")
    with pytest.raises(ValueError, match="accessible `.keras` zip file"):
        ssa_tf.load_model(path)
