"""Rewriting Keras models layer by layer, shared by ``convert.to_ssa`` and ``merge.merge``.

``rewrite`` re-runs a Sequential or functional model's graph, handing every
layer call to a ``handle(layer, args, kwargs)``; ``record`` describes what
happened to one weight layer (``LayerRecord``: shapes, ranks, parameters and
multiply-adds), and ``format_records`` prints the per-layer table.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from ssa_tf.errors import UsageError
from ssa_tf.nn.layers import SVDDense, SVDLayer
from ssa_tf.nn.norm import LocalBatchNorm


PLAIN_WEIGHT_TYPES = (keras.layers.Dense, keras.layers.Conv2D)


BATCH_NORMS = (keras.layers.BatchNormalization, LocalBatchNorm)


# Inference-time layers that merge copies as they are (same class, config, weights).
PASS_THROUGH = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
    keras.layers.Softmax, keras.layers.Flatten, keras.layers.Reshape,
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.LayerNormalization,
    keras.layers.Add, keras.layers.Concatenate, keras.layers.Rescaling,
)


# Training-only layers: the identity at inference, so merge drops them.
TRAINING_ONLY = (
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


def is_weight(layer):
    """An SVD layer, or exactly a Dense/Conv2D (a subclass may compute something else)."""
    return isinstance(layer, SVDLayer) or type(layer) in PLAIN_WEIGHT_TYPES


class UnsupportedLayerError(UsageError, ValueError):
    """The model holds a layer that the conversion cannot express (a user's input problem)."""


@dataclasses.dataclass
class LayerRecord:
    """What happened to one weight layer.

    ``shape`` is the (m, n) matrix view of docs/ALGORITHM.md §2 (a convolution's
    K' is (N*kw) x (C*kh), or N x (kh*kw*C) in channel factorization);
    ``params`` and ``macs`` (multiply-adds per
    example) are for the form chosen, ``dense_*`` for one merged layer.
    ``form`` is "svd" or "kept" for ``to_ssa``, "merged" or "factored" for
    ``merge``.
    """

    name: str
    kind: str
    shape: tuple
    full_rank: int
    rank: int
    form: str
    params: int
    dense_params: int
    macs: int | None = None
    dense_macs: int | None = None
    energy: float | None = None
    note: str = ""


def costs(layer, in_shape):
    """(merged, factored) multiply-adds per example of a weight layer on ``in_shape``.

    A factored convolution runs its vertical half at the output height but the
    full input width (the width stride belongs to the horizontal half), so at
    stride 2 it costs more than r (m + n) per output pixel.
    """
    m, n = matrix_shape(layer)
    r = layer.rank if isinstance(layer, SVDLayer) else min(m, n)
    if isinstance(layer, (SVDDense, keras.layers.Dense)):
        positions = math.prod(in_shape[1:-1]) if None not in in_shape[1:-1] else None
        if positions is None:
            return m * n, r * (m + n)
        return m * n * positions, r * (m + n) * positions
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    h, w = in_shape[1], in_shape[2]
    if h is None or w is None:  # per output pixel
        return m * n, r * (m + n)
    padding = layer.padding
    dil = tuple(getattr(layer, "dilation_rate", (1, 1)))
    ho = conv_len(h, (kh - 1) * dil[0] + 1, sh, padding)
    wo = conv_len(w, (kw - 1) * dil[1] + 1, sw, padding)
    merged = ho * wo * m * n  # a grouped kernel's n already counts C / groups
    if getattr(layer, "factorization", "spatial") == "channel":  # kh x kw to r, then 1x1
        return merged, ho * wo * r * (m + n)
    channels, filters = n // kh, m // kw
    factored = ho * w * channels * kh * r + ho * wo * r * kw * filters
    return merged, factored


def conv_len(n, k, s, padding):
    return -(-n // s) if padding == "same" else (n - k) // s + 1


def matrix_shape(layer):
    """(m, n) of docs/ALGORITHM.md §2 for an SVD or plain weight layer."""
    if isinstance(layer, SVDLayer):
        return tuple(layer._matrix_shape)
    kernel_shape = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return kernel_shape[1], kernel_shape[0]
    kh, kw, c, n = kernel_shape
    return n * kw, c * kh


def layer_record(layer, form, in_shape=None, energy=None, note=""):
    m, n = matrix_shape(layer)
    full = min(m, n)
    rank = layer.rank if isinstance(layer, SVDLayer) else full
    use_bias = (layer.bias is not None) if isinstance(layer, SVDLayer) else layer.use_bias
    bias = (layer.units if isinstance(layer, (SVDDense, keras.layers.Dense))
            else layer.filters) if use_bias else 0
    dense_params = m * n + bias
    params = rank * (m + n) + bias if form in ("factored", "svd") else dense_params
    macs = dense_macs = None
    if in_shape is not None:
        dense_macs, factored_macs = costs(layer, tuple(in_shape))
        macs = factored_macs if form == "factored" else dense_macs
    kind = "dense" if isinstance(layer, (SVDDense, keras.layers.Dense)) else "conv"
    return LayerRecord(layer.name, kind, (m, n), full, rank, form, params, dense_params, macs,
                       dense_macs, energy, note)


def has_input(layer):
    try:
        layer.input
    except (AttributeError, ValueError, RuntimeError):
        return False
    return True


def rewrite(model, handle, fold=None, inference=False, inputs=None):
    """Rebuild a Sequential or functional ``model`` with ``handle`` deciding each layer.

    ``handle(layer, args, kwargs)`` returns the new outputs for one call of
    ``layer``. With ``fold(layer, next_layer)``, a weight layer whose only
    consumer is a foldable batch norm gets it as ``kwargs["_fold"]`` and the
    batch norm is then skipped (the handler records it as absorbed). With ``inputs``
    (a symbolic tensor of a functional model being built) the rebuilt layers are applied
    to it in place, and their output tensor is returned instead of a model.
    """
    if isinstance(model, keras.Sequential):
        return _rewrite_sequential(model, handle, fold, inference)
    if not _is_functional(model):
        raise UnsupportedLayerError(
            f"model {model.name!r} of type {type(model).__name__} is neither Sequential nor "
            "functional, so its layers' order is unknown")
    folds = _fold_pairs(model, fold) if fold is not None else {}

    def call(layer, *args, **kwargs):
        if inference:
            kwargs = {}
        if id(layer) in folds:
            kwargs = {**kwargs, "_fold": folds[id(layer)]}
        return handle(layer, args, kwargs)

    if inputs is not None:
        return _inline(model, inputs, call)
    clone = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                     call_function=call)
    # a fresh model: clone_model also copies the compile state, which an
    # exported (or newly converted) model should not carry
    return keras.Model(clone.input, clone.output, name=model.name)


def topological_nodes(model):
    """The nodes of a functional ``model``'s layers (not its inputs), each after those it
    reads."""
    depths = sorted(model._nodes_by_depth, reverse=True)
    return [n for d in depths for n in model._nodes_by_depth[d]
            if n.operation is not None and not n.is_input]


def _inline(model, inputs, call):
    """``call(layer, *args, **kwargs)`` for every node of a functional ``model``, in order,
    starting from the symbolic tensor ``inputs``; its output tensor."""
    values = {id(model.inputs[0]): inputs}
    for node in topological_nodes(model):
        args, kwargs = node.arguments.fill_in(values)
        outs = keras.tree.flatten(call(node.operation, *args, **kwargs))
        for tensor, out in zip(node.outputs, outs):
            values[id(tensor)] = out
    return values[id(model.outputs[0])]


def _rewrite_sequential(model, handle, fold, inference):
    try:
        input_shape = model.inputs[0].shape
    except (AttributeError, ValueError, IndexError):
        raise UnsupportedLayerError(
            f"Sequential model {model.name!r} has no known input shape; build it with "
            "keras.Input first") from None
    inputs = keras.Input(batch_shape=input_shape, name="input")
    layers = model.layers
    x = inputs
    for layer, after in zip(layers, [*layers[1:], None]):
        kwargs = {}
        if fold is not None and fold(layer, after):
            kwargs["_fold"] = after
        x = handle(layer, (x,), kwargs)
    chain = keras.Model(inputs, x, name=model.name)
    if inference:
        return chain
    # a chain stays a Sequential model for the user who gave one
    layers = [l for l in chain.layers if not isinstance(l, keras.layers.InputLayer)]
    return keras.Sequential([keras.Input(batch_shape=input_shape), *layers], name=model.name)


def _is_functional(model):
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _fold_pairs(model, fold):
    """{id(weight layer): batch norm} for batch norms that are a weight layer's only consumer."""
    nodes = [n for depth in model._nodes_by_depth.values() for n in depth]
    consumers = {}
    calls = {}
    for node in nodes:
        if node.operation is None or node.is_input:
            continue
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    outputs = {id(t) for t in model.outputs}
    pairs = {}
    for node in nodes:
        layer = node.operation
        if not is_weight(layer) or calls.get(id(layer)) != 1:
            continue
        out = node.outputs[0]
        users = consumers.get(id(out), [])
        if id(out) in outputs or len(users) != 1:
            continue
        bn = users[0].operation
        if calls.get(id(bn)) == 1 and fold(layer, bn):
            pairs[id(layer)] = bn
    return pairs


def clone_call(layer, args, kwargs, cls=None):
    """Call a copy of ``layer`` (same class, or ``cls``; same config and weights) on
    ``args``."""
    try:
        new = (cls or type(layer)).from_config(layer.get_config())
    except Exception as e:  # a layer whose config does not rebuild it
        raise UnsupportedLayerError(f"layer {layer.name!r} of type {type(layer).__name__} "
                                    f"cannot be copied: {e}") from e
    y = new(*args, **kwargs)
    if layer.weights:
        new.set_weights(layer.get_weights())
    return y


def all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def is_leaf(layer):
    return not any(True for _ in layer._flatten_layers(include_self=False, recursive=False))


def format_records(records) -> str:
    """A plain-text table of LayerRecords."""
    head = ("layer", "kind", "m x n", "rank", "form", "params", "dense params", "MACs",
            "dense MACs", "note")
    rows = [head]
    for r in records:
        rows.append((r.name, r.kind, f"{r.shape[0]}x{r.shape[1]}", f"{r.rank}/{r.full_rank}",
                     r.form, f"{r.params:,}", f"{r.dense_params:,}",
                     "-" if r.macs is None else f"{r.macs:,}",
                     "-" if r.dense_macs is None else f"{r.dense_macs:,}", r.note))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None or act is keras.activations.linear:
        return "linear"
    return keras.activations.serialize(act) if not isinstance(act, str) else act


def linear_copy(layer):
    """A copy of a Dense/Conv2D layer without its activation (and LoRA merged in)."""
    config = {**layer.get_config(), "activation": "linear"}
    config.pop("lora_rank", None)
    config.pop("lora_alpha", None)
    copy = type(layer).from_config(config)
    kernel = ops.convert_to_numpy(layer.kernel)  # includes a LoRA update, if any
    copy.build((None,) * (kernel.ndim - 1) + (kernel.shape[-2],))
    copy.set_weights([kernel] + ([ops.convert_to_numpy(layer.bias)] if layer.use_bias else []))
    return copy
