"""Reading a model.keras or a checkpoint, of today or of the layout before the built-in
models were converted like a user's.

    model = saved.load("RUN/model.keras")

Keras stores a model's weights by the path of attributes that leads to each layer
(``layers/module_3/steps/residual_block/conv1``), not by its name. Until 2026-12-06 the
built-in networks were lists of ``Module`` layers (``steps``, ``output_layer``; a
``ResidualBlock`` with ``conv1``, ``norm1``, ... inside); today every network is a list of
``GraphModule`` layers converted from a Keras model (``nn.models``). The layers themselves,
their names (those ranks are recorded under) and the order of their variables did not
change, so ``load`` builds today's model from the saved config and reads each layer's
variables from where the old layout kept them (``old_paths``). Models saved since carry
``"layout": 2`` in their config (``model.MODULE_LAYOUT``) and load through Keras as they
are.

Checkpoints (``training.checkpoints``) store variables by ``variable.path``, which held
the module then: ``m1/s0b0/s0b0_conv1/U`` is today's ``s0b0_conv1/U``, and the optimizer's
``adam/m1_s0b0_s0b0_conv1_U_momentum`` today's ``adam/s0b0_conv1_U_momentum``
(``old_variable_path``).
"""

from __future__ import annotations

import json
import re
import zipfile

import h5py
import keras
from keras.src.saving import saving_lib
from keras.src.saving.keras_saveable import KerasSaveable
from keras.src.utils import naming

# an old path's module (and block) scope: m1/s0b0/..., or adam/m1_s0b0_... for a slot
_OLD_SCOPE = re.compile(r"^m\d+/(?:s\d+b\d+/)?(?=[^/]+/[^/]+$)")
_OLD_SLOT_SCOPE = re.compile(r"^([^/]+)/m\d+_(?:s\d+b\d+_)?")
# a layer of a built-in residual block: s<stage>b<block>_<the block's attribute>
# how Keras names the items of a list it saves: class name, then _1, _2, ...
_unique_name = saving_lib._get_unique_name
_BLOCK_LAYER = re.compile(r"^s\d+b\d+_(conv1|norm1|conv2|norm2|proj|proj_norm)$")


def old_variable_path(path: str) -> str:
    """Today's ``variable.path`` of a built-in model's variable saved as ``path`` in the
    old layout (see above); other paths as they are. Applied only to paths a checkpoint
    holds and today's model lacks."""
    if _OLD_SCOPE.match(path):
        return _OLD_SCOPE.sub("", path)
    return _OLD_SLOT_SCOPE.sub(r"\1/", path)


def load(path, custom_objects=None, compile=True, safe_mode=True):
    """``keras.models.load_model`` with its arguments, reading a built-in model saved in
    the layout before 2026-12-06 (see above) too. Such a model is compiled as it was saved
    (``compile``), its optimizer's state not restored: resume a run from its checkpoint."""
    import ssa_tf.training.model  # noqa: F401  (registers SSAModel and the SVD layers)

    saved = _saved_config(path)
    if not is_old_layout(saved):
        return keras.models.load_model(path, custom_objects=custom_objects, compile=compile,
                                       safe_mode=safe_mode)
    model = keras.saving.deserialize_keras_object(
        {k: v for k, v in saved.items() if k != "compile_config"},
        custom_objects=custom_objects, safe_mode=safe_mode)
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as raw, \
            h5py.File(raw, "r") as weights:
        read_old_weights(model, weights)
    if compile and saved.get("compile_config"):
        model.compile_from_config(saved["compile_config"])
    return model


def _saved_config(path) -> dict:
    """The config.json of a .keras file; {} for anything else (Keras says what it is)."""
    if not zipfile.is_zipfile(path):
        return {}
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json")) if "config.json" in archive.namelist() \
            else {}


def is_old_layout(saved: dict) -> bool:
    """Whether a model.keras's config is a built-in SSAModel of the old layout."""
    config = saved.get("config", {})
    return (saved.get("class_name") == "SSAModel" and config.get("layout") is None
            and config.get("network") is None)


def read_old_weights(model, weights):
    """Assign ``model`` (today's layout) the variables an old-layout file holds in the
    h5 group ``weights``; a ValueError names the first layer they do not fit."""
    old = old_paths(model)
    for obj, path in layout(model):
        if not isinstance(obj, keras.layers.Layer) or not (
                obj._trainable_variables + obj._non_trainable_variables):
            continue  # Keras saves a layer's own variables only
        group = f"{old.get(id(obj), path)}/vars"
        if group not in weights:
            raise ValueError(f"the saved model has no variables for layer {obj.name!r} "
                             f"(looked in {group})")
        obj.load_own_variables({k: weights[group][k][()] for k in weights[group]})


def layout(model) -> list:
    """[(object, its path in today's weights file)], walked as Keras saves
    (``saving_lib``, with its own attribute order and naming): list items named by their
    class with a counter."""
    out: list = []
    _walk(model, "", set(), out)
    return out


def _walk(obj, path, visited, out):
    if id(obj) in visited:
        return
    visited.add(id(obj))
    out.append((obj, path))
    for attr, child in saving_lib._walk_saveable(obj):
        inner = f"{path}/{attr}" if path else attr
        if isinstance(child, KerasSaveable):
            _walk(child, inner, visited, out)
        elif isinstance(child, (list, dict, tuple)):
            _walk_container(child, inner, visited, out, set())


def _walk_container(container, path, visited, out, containers):
    if id(container) in containers:
        return
    containers.add(id(container))
    used: dict = {}
    for item in (container.values() if isinstance(container, dict) else container):
        if isinstance(item, KerasSaveable):
            name = _unique_name(naming.to_snake_case(item.__class__.__name__), used)
            _walk(item, f"{path}/{name}", visited, out)
        elif isinstance(item, (list, dict, tuple)):
            _walk_container(item, f"{path}/{_unique_name('container', used)}", visited, out,
                            containers)


def old_paths(model) -> dict:
    """{id(layer): its path in an old-layout file} for the layers of ``model``'s modules.

    Module k was ``layers/module`` (k = 0) or ``layers/module_<k>``; its weight layer
    (the classifier in the last) under ``output_layer``, its other layers under ``steps``,
    each named by its class with a counter over the list (the weight layer counted), a
    residual block's layers under ``steps/residual_block/<attribute>``.
    """
    out = {}
    for k, module in enumerate(model.local_modules):
        prefix = "layers/module" + (f"_{k}" if k else "")
        layers = [l for l in module.graph.layers if not isinstance(l, keras.layers.InputLayer)]
        block = [l for l in layers if _BLOCK_LAYER.match(l.name)]
        out[id(module.output_layer)] = f"{prefix}/output_layer"
        if block:
            # steps: [the block] (+ pooling and the classifier in the last module)
            for layer in block:
                if layer is not module.output_layer:
                    attr = _BLOCK_LAYER.match(layer.name).group(1)
                    out[id(layer)] = f"{prefix}/steps/residual_block/{attr}"
            continue
        used: dict = {}
        for layer in layers:
            name = _unique_name(naming.to_snake_case(layer.__class__.__name__), used)
            if layer is not module.output_layer:
                out[id(layer)] = f"{prefix}/steps/{name}"
    return out
