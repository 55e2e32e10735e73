"""Conversion both ways between ordinary Keras models and SVD form (issue 6).

Into SSA, ``to_ssa``: every ``Dense``/``Conv2D`` of a Sequential or functional
Keras model becomes its SVD layer, initialized from the trained weights (exact
at full rank; optional rank or energy cut), with fixed feedback factors. An
activation inside the layer is split into a separate ``Activation`` after it
(SVD layers are linear). A BP- or DFA-trained ``SSAModel`` becomes the same
architecture in ``ssa`` mode, so it can be fine-tuned with SSA's local losses.

Out of SSA, ``merge``: every SVD layer's factors become plain Keras layers,
one merged ``Dense``/``Conv2D`` or, where it takes fewer multiply-adds, two
stacked ones (``V`` then ``U``; the vertical then the horizontal convolution).
Feedback factors and everything training-only are dropped; a batch norm that
directly follows a weight layer is folded into it. The result is an ordinary
functional Keras model that loads without ``ssa_tf``.

Both return the new model and one ``LayerRecord`` per weight layer.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from ssa_tf.layers import LocalBatchNorm, SVDConv2D, SVDDense, _SVDMixin, energy_rank
from ssa_tf.models import Module, ResidualBlock

from ssa_tf.export_config import FORMS

_PLAIN_WEIGHT_TYPES = (keras.layers.Dense, keras.layers.Conv2D)
_BATCH_NORMS = (keras.layers.BatchNormalization, LocalBatchNorm)
# Inference-time layers that merge copies as they are (same class, config, weights).
_PASS_THROUGH = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
    keras.layers.Softmax, keras.layers.Flatten, keras.layers.Reshape,
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.LayerNormalization,
    keras.layers.Add, keras.layers.Concatenate, keras.layers.Rescaling,
)
# Training-only layers: the identity at inference, so merge drops them.
_TRAINING_ONLY = (
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


def _is_weight(layer):
    """An SVD layer, or exactly a Dense/Conv2D (a subclass may compute something else)."""
    return isinstance(layer, _SVDMixin) or type(layer) in _PLAIN_WEIGHT_TYPES


class UnsupportedLayerError(ValueError):
    """The model holds a layer that the conversion cannot express (a user's input problem)."""


@dataclasses.dataclass
class LayerRecord:
    """What happened to one weight layer.

    ``shape`` is the (m, n) matrix view of SPEC section 2 (a convolution's
    K' is (N*kw) x (C*kh)); ``params`` and ``macs`` (multiply-adds per
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


# ==========================================================================
# Into SSA
# ==========================================================================

def to_ssa(model, rank=None, energy=None, exempt=(), feedback_init="random", seed=1):
    """Return (SVD-form copy of ``model``, list of LayerRecord).

    ``rank`` caps every layer's rank; ``energy`` (tau in (0, 1]) cuts each
    layer to the smallest rank keeping that fraction of its energy (SPEC
    section 5); layers named in ``exempt`` keep full rank. The original model
    is not modified. Feedback factors are drawn as the project's models draw
    them (Glorot for dense, He for convolutions) with seeds derived from
    ``seed``, or are the layer's own SVD with ``feedback_init="forward"``.
    """
    if rank is not None and energy is not None:
        raise ValueError("give rank or energy, not both")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    converter = _ToSSA(rank, energy, set(exempt), feedback_init, seed)
    from ssa_tf.trainer import SSAModel  # the trainer imports this package's layers

    if isinstance(model, SSAModel):
        return converter.ssa_model(model), converter.records
    return _rewrite(model, converter.handle), converter.records


class _ToSSA:
    def __init__(self, rank, energy, exempt, feedback_init, seed):
        self.rank, self.energy, self.exempt = rank, energy, exempt
        self.feedback_init, self.seed = feedback_init, int(seed)
        self.records = []
        self._count = 0

    # -- one layer ------------------------------------------------------------
    def svd_layer(self, layer):
        """The SVD layer computing what plain ``layer`` computes, cut as this converter says."""
        self._count += 1
        feedback_seed = self.seed * 10007 + self._count + 5003
        linear = _linear_copy(layer)
        kwargs = dict(feedback_seed=feedback_seed, feedback_init=self.feedback_init)
        if isinstance(layer, keras.layers.Dense):
            init = keras.initializers.GlorotUniform(feedback_seed)
            new = SVDDense.from_dense(linear, kernel_initializer=init, **kwargs)
        else:
            init = keras.initializers.HeNormal(feedback_seed)
            new = SVDConv2D.from_conv(linear, kernel_initializer=init, **kwargs)
        full = new.full_rank
        target, kept = full, 1.0
        if layer.name not in self.exempt:
            if self.rank is not None:
                target = min(int(self.rank), full)
            elif self.energy is not None:
                target = energy_rank(new.spectrum(), self.energy)
        if target < full:
            kept = new.truncate(target)["energy"]
        record = _record(new, "svd", energy=kept)
        if _activation_name(layer) != "linear":
            record.note = f"activation {_activation_name(layer)} split into its own layer"
        self.records.append(record)
        return new

    # -- graph models -----------------------------------------------------------
    def handle(self, layer, args, kwargs):
        if isinstance(layer, keras.Model):
            return _rewrite(layer, self.handle)(*args, **kwargs)
        reason = _unconvertible(layer)
        if reason is None:
            new = self.svd_layer(layer)
            y = new(*args)
            if _activation_name(layer) != "linear":
                y = keras.layers.Activation(layer.activation, name=f"{layer.name}_activation")(y)
            return y
        if isinstance(layer, _PLAIN_WEIGHT_TYPES):
            self.records.append(_record(layer, "kept", note=reason))
        return _clone_call(layer, args, kwargs)

    # -- SSAModel ---------------------------------------------------------------
    def ssa_model(self, model):
        """The same architecture in ``ssa`` mode, its weights taken from ``model``."""
        from ssa_tf.trainer import SSAModel

        if model.rule.svd:
            raise ValueError(f"{model.name} is already in SVD form (mode {model.mode!r})")
        source = {l.name: l for l in _all_layers(model)}
        plain = [l for l in source.values() if isinstance(l, (keras.layers.Dense,
                                                              keras.layers.Conv2D))]
        # ranks first: the target builds its feedback from factors of these shapes
        made = {l.name: self.svd_layer(l) for l in plain}
        # the rule's options that SSA takes too (a DFA source's route, say)
        from ssa_tf.methods import spec as methods

        options = {k: v for k, v in model.options.items() if k in methods.RULES["ssa"].options}
        config = {k: v for k, v in model.get_config().items() if k not in model.options}
        config.update(options, mode="ssa", ranks={name: new.rank for name, new in made.items()})
        target = SSAModel.from_config(config)
        for layer in _all_layers(target):
            if isinstance(layer, _SVDMixin):
                new = made[layer.name]
                # forward factors and bias from the trained weight; the target
                # keeps the feedback factors its own (seeded) factory drew
                for dst, src in zip(layer.factor_variables()[:3], new.factor_variables()[:3]):
                    dst.assign(src)
                if layer.bias is not None:
                    layer.bias.assign(new.bias)
            elif layer.weights and _is_leaf(layer) and layer.name in source:
                layer.set_weights(source[layer.name].get_weights())  # norms
        return target


def _unconvertible(layer):
    """Why ``layer`` stays as it is under to_ssa, or None if it converts."""
    if type(layer) not in _PLAIN_WEIGHT_TYPES:
        if isinstance(layer, _PLAIN_WEIGHT_TYPES):
            return "a subclass of Dense/Conv2D, whose call may differ"
        return "not a Dense or Conv2D layer"
    if getattr(layer, "quantization_mode", None):
        return f"quantized ({layer.quantization_mode})"
    if isinstance(layer, keras.layers.Conv2D):
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            return "dilated or grouped convolution"
        if layer.data_format != "channels_last":
            return "channels_first convolution"
    return None


def _linear_copy(layer):
    """A copy of a Dense/Conv2D layer without its activation (and LoRA merged in)."""
    config = {**layer.get_config(), "activation": "linear"}
    config.pop("lora_rank", None)
    config.pop("lora_alpha", None)
    copy = type(layer).from_config(config)
    kernel = ops.convert_to_numpy(layer.kernel)  # includes a LoRA update, if any
    copy.build((None,) * (kernel.ndim - 1) + (kernel.shape[-2],))
    copy.set_weights([kernel] + ([ops.convert_to_numpy(layer.bias)] if layer.use_bias else []))
    return copy


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None or act is keras.activations.linear:
        return "linear"
    return keras.activations.serialize(act) if not isinstance(act, str) else act


# ==========================================================================
# Out of SSA
# ==========================================================================

def merge(model, form="auto"):
    """Return (plain functional Keras model computing what ``model`` computes, records).

    ``form``: "auto" picks, per SVD layer, whichever of one merged layer or
    two stacked factor layers takes fewer multiply-adds for the model's input
    size (a tie goes to merged); "merged" and "factored" force one form for
    every SVD layer. Plain ``Dense``/``Conv2D`` layers (DFA/BP models) stay
    one layer. Batch norms fold into a directly preceding weight layer; the
    result is for inference. Raises UnsupportedLayerError for a layer it
    cannot express with stock Keras layers.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    from ssa_tf.trainer import SSAModel

    emitter = _Emitter(form)
    if isinstance(model, SSAModel):
        inputs = keras.Input(shape=model.input_dims, name="input")
        x = inputs
        for module in model.local_modules:
            x = emitter.sequence([module], x)
        merged = keras.Model(inputs, x, name=f"{model.name}_merged")
    else:
        merged = _rewrite(model, emitter.handle, fold=emitter.can_fold, inference=True)
    return merged, emitter.records


class _Emitter:
    """Emits plain Keras layers for SSA layers on symbolic tensors."""

    def __init__(self, form):
        self.form = form
        self.records = []
        self.absorbed = set()  # ids of batch norms folded into a weight layer

    # -- traversals ---------------------------------------------------------------
    def sequence(self, steps, x):
        """Layers applied in order (a Module's steps), folding weight -> batch norm."""
        i = 0
        while i < len(steps):
            step = steps[i]
            after = steps[i + 1] if i + 1 < len(steps) else None
            if self.can_fold(step, after):
                x = self.weight(step, x, bn=after)
                i += 2
                continue
            x = self.layer(step, x)
            i += 1
        return x

    def layer(self, layer, x):
        if layer is None:
            return x
        if isinstance(layer, Module):
            return self.sequence(layer.steps, x)
        if isinstance(layer, ResidualBlock):
            return self.residual(layer, x)
        if _is_weight(layer):
            return self.weight(layer, x)
        if type(layer) in _BATCH_NORMS:
            return self.batch_norm(layer, x)
        if type(layer) in _TRAINING_ONLY:
            return x
        if type(layer) in _PASS_THROUGH:
            return _clone_call(layer, (x,), {})
        raise UnsupportedLayerError(_unsupported_message(layer))

    def residual(self, block, x):
        """conv1-norm1-relu-conv2-norm2 (+ shortcut) -relu, as in models.ResidualBlock."""
        name = block.name
        y = self.sequence([block.conv1, block.norm1], x)
        y = keras.layers.Activation("relu", name=f"{name}_relu1")(y)
        y = self.sequence([block.conv2, block.norm2], y)
        shortcut = x if block.proj is None else self.sequence([block.proj, block.proj_norm], x)
        y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
        return keras.layers.Activation("relu", name=f"{name}_relu2")(y)

    def handle(self, layer, args, kwargs):
        """clone_model's call_function for graph models."""
        if id(layer) in self.absorbed:
            return args[0]  # this batch norm lives in the weight layer before it
        if isinstance(layer, keras.Model):
            return _rewrite(layer, self.handle, fold=self.can_fold, inference=True)(*args)
        if _is_weight(layer):
            return self.weight(layer, args[0], bn=kwargs.get("_fold"))
        if type(layer) in (keras.layers.Add, keras.layers.Concatenate):
            return _clone_call(layer, args, {})
        return self.layer(layer, args[0])

    # -- layers ----------------------------------------------------------------------
    @staticmethod
    def can_fold(layer, after):
        """Whether batch norm ``after`` can be folded into weight layer ``layer``."""
        if type(after) not in _BATCH_NORMS or not _is_weight(layer):
            return False
        if _activation_name(layer) != "linear":
            return False
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return False
        ndim = len(after.input.shape) if _has_input(after) else None
        return after.axis == -1 or (ndim is not None and after.axis == ndim - 1)

    def batch_norm(self, bn, x):
        """A batch norm with nothing to fold into: stock BatchNormalization, same weights."""
        config = {k: v for k, v in bn.get_config().items() if k != "stop_stat_gradient"}
        new = keras.layers.BatchNormalization.from_config(config)
        y = new(x)
        new.set_weights(bn.get_weights())
        return y

    def weight(self, layer, x, bn=None):
        spec = _LinearSpec(layer, x.shape)
        if bn is not None:
            self.absorbed.add(id(bn))
        factored = False
        if spec.svd:
            if self.form == "factored":
                factored = True
            elif self.form == "auto":
                factored = factored_pays(spec.factored_cost(), spec.merged_cost(),
                                         conv=not spec.dense)
        scale, shift = _bn_affine(bn) if bn is not None else (None, None)
        bias = spec.bias
        if scale is not None:
            bias = (0.0 if bias is None else bias) * scale + shift
        if factored:
            first, second = spec.factor_kernels()
            if scale is not None:
                second = second * scale
            y = _emit(spec.first_layer(), x, [first])
            y = _emit(spec.second_layer(bias is not None), y,
                      [second] + ([bias] if bias is not None else []))
        else:
            kernel = spec.merged_kernel()
            if scale is not None:
                kernel = kernel * scale
            y = _emit(spec.merged_layer(bias is not None), x,
                      [kernel] + ([bias] if bias is not None else []))
        record = _record(layer, "factored" if factored else "merged", in_shape=x.shape)
        if bn is not None:
            record.note = f"{bn.name} folded"
        self.records.append(record)
        return y


# onnxruntime (1.32, CPU) runs a factored convolution pair at about 2.1x the
# time per multiply-add of one merged convolution (benchmarks/export_resnet32.md:
# generic kernels for odd ranks, layout reorders), so "auto" factors a
# convolution only where the pair does at most half the work; a Dense pair is
# two matrix products of the usual speed and is factored wherever it does less.
FACTORED_CONV_COST = 2.0


def factored_pays(factored_macs, merged_macs, conv):
    """Whether ``--form=auto`` emits the two-layer form for this layer."""
    if factored_macs is None or merged_macs is None:
        return False
    return factored_macs * (FACTORED_CONV_COST if conv else 1.0) < merged_macs


class _LinearSpec:
    """The numbers of one weight layer (SVD or plain) that merge needs, in float64."""

    def __init__(self, layer, in_shape):
        self.layer = layer
        self.svd = isinstance(layer, _SVDMixin)
        self.dense = isinstance(layer, (SVDDense, keras.layers.Dense))
        self.in_shape = tuple(in_shape)
        self.name = layer.name
        if self.svd:
            self.bias = None if layer.bias is None else _np64(layer.bias)
        else:
            self.bias = _np64(layer.bias) if layer.use_bias else None

    def merged_kernel(self):
        if self.svd:
            return self.layer.kernel_from_matrix(self.layer.merged_matrix())
        return _np64(self.layer.kernel)

    def factor_kernels(self):
        """(first, second) kernels of the two stacked layers, Keras layout."""
        layer = self.layer
        if self.dense:  # z = ((x V) * s) U^T, as SVDDense computes it
            U, s, V = (_np64(v) for v in (layer.U, layer.s, layer.V))
            return V * s, U.T
        vertical, horizontal = layer.sub_kernels()
        return _np64(vertical), _np64(horizontal)

    # -- costs (multiply-adds per example; None where the input size is unknown) --
    def merged_cost(self):
        return _costs(self.layer, self.in_shape)[0]

    def factored_cost(self):
        return _costs(self.layer, self.in_shape)[1]

    # -- the plain layers -------------------------------------------------------
    def merged_layer(self, use_bias):
        layer = self.layer
        if not self.svd:
            config = {**layer.get_config(), "use_bias": use_bias}
            config.pop("lora_rank", None)
            config.pop("lora_alpha", None)
            return type(layer).from_config(config)
        if self.dense:
            return keras.layers.Dense(layer.units, use_bias=use_bias, name=self.name)
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                   padding=layer.padding, use_bias=use_bias, name=self.name)

    def first_layer(self):
        layer = self.layer
        if self.dense:
            return keras.layers.Dense(layer.rank, use_bias=False, name=f"{self.name}_V")
        kh, _ = layer.kernel_size
        return keras.layers.Conv2D(layer.rank, (kh, 1), strides=(layer.strides[0], 1),
                                   padding=layer.padding, use_bias=False, name=f"{self.name}_V")

    def second_layer(self, use_bias):
        layer = self.layer
        if self.dense:
            return keras.layers.Dense(layer.units, use_bias=use_bias, name=f"{self.name}_U")
        _, kw = layer.kernel_size
        return keras.layers.Conv2D(layer.filters, (1, kw), strides=(1, layer.strides[1]),
                                   padding=layer.padding, use_bias=use_bias, name=f"{self.name}_U")


def _costs(layer, in_shape):
    """(merged, factored) multiply-adds per example of a weight layer on ``in_shape``.

    A factored convolution runs its vertical half at the output height but the
    full input width (the width stride belongs to the horizontal half), so at
    stride 2 it costs more than r (m + n) per output pixel.
    """
    m, n = _matrix_shape(layer)
    r = layer.rank if isinstance(layer, _SVDMixin) else min(m, n)
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
    ho = _conv_len(h, (kh - 1) * dil[0] + 1, sh, padding)
    wo = _conv_len(w, (kw - 1) * dil[1] + 1, sw, padding)
    merged = ho * wo * m * n  # a grouped kernel's n already counts C / groups
    channels, filters = n // kh, m // kw
    factored = ho * w * channels * kh * r + ho * wo * r * kw * filters
    return merged, factored


def _conv_len(n, k, s, padding):
    return -(-n // s) if padding == "same" else (n - k) // s + 1


def _matrix_shape(layer):
    """(m, n) of SPEC section 2 for an SVD or plain weight layer."""
    if isinstance(layer, _SVDMixin):
        return tuple(layer._matrix_shape)
    kernel_shape = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return kernel_shape[1], kernel_shape[0]
    kh, kw, c, n = kernel_shape
    return n * kw, c * kh


def _record(layer, form, in_shape=None, energy=None, note=""):
    m, n = _matrix_shape(layer)
    full = min(m, n)
    rank = layer.rank if isinstance(layer, _SVDMixin) else full
    use_bias = (layer.bias is not None) if isinstance(layer, _SVDMixin) else layer.use_bias
    bias = (layer.units if isinstance(layer, (SVDDense, keras.layers.Dense))
            else layer.filters) if use_bias else 0
    dense_params = m * n + bias
    params = rank * (m + n) + bias if form in ("factored", "svd") else dense_params
    macs = dense_macs = None
    if in_shape is not None:
        dense_macs, factored_macs = _costs(layer, tuple(in_shape))
        macs = factored_macs if form == "factored" else dense_macs
    kind = "dense" if isinstance(layer, (SVDDense, keras.layers.Dense)) else "conv"
    return LayerRecord(layer.name, kind, (m, n), full, rank, form, params, dense_params, macs,
                       dense_macs, energy, note)


def _bn_affine(bn):
    """(scale, shift) with bn(x) = x * scale + shift at inference, per channel, float64."""
    mean, var = _np64(bn.moving_mean), _np64(bn.moving_variance)
    gamma = _np64(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = _np64(bn.beta) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def _emit(layer, x, weights):
    y = layer(x)
    layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return y


def _np64(v):
    return np.asarray(ops.convert_to_numpy(v), np.float64)


def _unsupported_message(layer):
    return (f"layer {layer.name!r} of type {type(layer).__name__} cannot be merged into plain "
            "Keras layers (supported: Dense, Conv2D, their SVD forms, batch and layer norm, "
            "activations, pooling, flatten/reshape, add/concatenate, dropout)")


def _has_input(layer):
    try:
        layer.input
    except (AttributeError, ValueError, RuntimeError):
        return False
    return True


# ==========================================================================
# Graph rewriting shared by both directions
# ==========================================================================

def _rewrite(model, handle, fold=None, inference=False):
    """Rebuild a Sequential or functional ``model`` with ``handle`` deciding each layer.

    ``handle(layer, args, kwargs)`` returns the new outputs for one call of
    ``layer``. With ``fold(layer, next_layer)``, a weight layer whose only
    consumer is a foldable batch norm gets it as ``kwargs["_fold"]`` and the
    batch norm is then skipped (the handler records it as absorbed).
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

    clone = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                     call_function=call)
    # a fresh model: clone_model also copies the compile state, which an
    # exported (or newly converted) model should not carry
    return keras.Model(clone.input, clone.output, name=model.name)


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
        if not _is_weight(layer) or calls.get(id(layer)) != 1:
            continue
        out = node.outputs[0]
        users = consumers.get(id(out), [])
        if id(out) in outputs or len(users) != 1:
            continue
        bn = users[0].operation
        if calls.get(id(bn)) == 1 and fold(layer, bn):
            pairs[id(layer)] = bn
    return pairs


def _clone_call(layer, args, kwargs):
    """Call a copy of ``layer`` (same class, config and weights) on ``args``."""
    try:
        new = type(layer).from_config(layer.get_config())
    except Exception as e:  # a layer whose config does not rebuild it
        raise UnsupportedLayerError(f"layer {layer.name!r} of type {type(layer).__name__} "
                                    f"cannot be copied: {e}") from e
    y = new(*args, **kwargs)
    if layer.weights:
        new.set_weights(layer.get_weights())
    return y


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def _is_leaf(layer):
    return not any(True for _ in layer._flatten_layers(include_self=False, recursive=False))


# ==========================================================================
# Reports
# ==========================================================================

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


__all__ = ["FORMS", "LayerRecord", "UnsupportedLayerError", "format_records", "merge", "to_ssa"]
