"""Out of SVD form: ``merge`` turns an SSA model into ordinary Keras layers.

Every SVD layer's factors become plain Keras layers, one merged
``Dense``/``Conv2D`` or, where it takes fewer multiply-adds, two stacked ones
(``V`` then ``U``; the vertical then the horizontal convolution). Feedback
factors and everything training-only are dropped; a batch norm that
directly follows a weight layer is folded into it. The result is an ordinary
functional Keras model that loads without ``ssa_tf``.

Returns the new model and one ``LayerRecord`` per weight layer.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssa_tf.export.config import FORMS
from ssa_tf.nn.graph import (BATCH_NORMS, PASS_THROUGH, TRAINING_ONLY, activation_name,
                                 UnsupportedLayerError, clone_call, costs, has_input, is_weight,
                                 layer_record, rewrite)
from ssa_tf.nn import SVDDense, SVDLayer
from ssa_tf.nn.fast import STOCK
from ssa_tf.nn.user import GraphModule


def merge(model, form="auto", timer=None):
    """Return (plain functional Keras model computing what ``model`` computes, records).

    ``form``: "auto" picks, per SVD layer, whichever of one merged layer or
    two stacked factor layers takes fewer multiply-adds for the model's input
    size (a tie goes to merged); "merged" and "factored" force one form for
    every SVD layer; "measured" asks ``timer(merged, factored)`` (two one-layer Keras
    models of the layer's forms at its input size: ``export.deploy.onnx_form_timer``
    times them in onnxruntime) which one to emit. Plain ``Dense``/``Conv2D`` layers (DFA/BP models) stay
    one layer. Batch norms fold into a directly preceding weight layer; the
    result is for inference. Raises UnsupportedLayerError for a layer it
    cannot express with stock Keras layers.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if (form == "measured") != (timer is not None):
        raise ValueError("form 'measured' takes a timer, and only it does")
    from ssa_tf.training.model import SSAModel

    emitter = _Emitter(form, timer)
    if isinstance(model, SSAModel):
        # the modules are inlined into one graph: the merge's own layers take names that
        # none of the network's layers has
        taken = {l.name for m in model.local_modules for l in m.graph.layers}
        inputs = keras.Input(shape=model.input_dims, name=_free_name("input", taken))
        x = inputs
        if model.input_stats is not None:  # raw pixels in, as the model takes them
            x = input_rescaling(model.input_stats,
                                _free_name("input_normalization", taken))(x)
        for module in model.local_modules:
            x = emitter.layer(module, x)
        merged = keras.Model(inputs, x, name=f"{model.name}_merged")
    else:
        merged = rewrite(model, emitter.handle, fold=emitter.can_fold, inference=True)
    return merged, emitter.records


def _free_name(name, taken):
    """``name``, or ``name_1``, ``name_2``, ... the first not in ``taken``."""
    k, free = 0, name
    while free in taken:
        k += 1
        free = f"{name}_{k}"
    return free


def input_rescaling(stats, name="input_normalization"):
    """(x - mean) / std per channel as one stock layer: x / std - mean / std, whose
    constants live in the graph (a Normalization layer's tensors would reach tf2onnx
    as extra graph inputs)."""
    mean, std = (np.asarray(v, np.float64) for v in stats)
    return keras.layers.Rescaling(scale=(1.0 / std).tolist(), offset=(-mean / std).tolist(),
                                  name=name)


def normalization_rescaling(layer):
    """A Normalization layer (adapted, or given its statistics) as the stock Rescaling that
    computes the same, its constants in the graph (as ``input_rescaling``'s)."""
    mean = np.asarray(ops.convert_to_numpy(layer.mean), np.float64)
    std = np.maximum(np.sqrt(np.asarray(ops.convert_to_numpy(layer.variance), np.float64)),
                     keras.backend.epsilon())
    if layer.invert:  # x * std + mean
        scale, offset = std, mean
    else:  # (x - mean) / std
        scale, offset = 1.0 / std, -mean / std
    shape = tuple(layer.mean.shape)[1:]  # without the batch axis; broadcasts on the input's
    while shape and shape[0] == 1:
        shape = shape[1:]
    scale, offset = (v.reshape(shape).tolist() if shape else float(v.ravel()[0])
                     for v in (scale, offset))
    return keras.layers.Rescaling(scale=scale, offset=offset, name=layer.name)


class _Emitter:
    """Emits plain Keras layers for SSA layers on symbolic tensors."""

    def __init__(self, form, timer=None):
        self.form, self.timer = form, timer
        self.records = []
        self.absorbed = set()  # ids of batch norms folded into a weight layer

    # -- traversals ---------------------------------------------------------------
    def layer(self, layer, x):
        if layer is None:
            return x
        if isinstance(layer, GraphModule):
            # in place: the exported model is one flat graph of stock layers
            return rewrite(layer.graph, self.handle, fold=self.can_fold, inference=True,
                           inputs=x)
        if is_weight(layer):
            return self.weight(layer, x)
        if type(layer) in BATCH_NORMS:
            return self.batch_norm(layer, x)
        if type(layer) in TRAINING_ONLY:
            return x
        if type(layer) is keras.layers.Normalization:  # a user's model's own, at its start
            return normalization_rescaling(layer)(x)
        if type(layer) in STOCK:  # Keras's own layer again (the same function)
            return clone_call(layer, (x,), {}, cls=STOCK[type(layer)])
        if type(layer) in PASS_THROUGH:
            return clone_call(layer, (x,), {})
        raise UnsupportedLayerError(_unsupported_message(layer))

    def handle(self, layer, args, kwargs):
        """clone_model's call_function for graph models."""
        if id(layer) in self.absorbed:
            return args[0]  # this batch norm lives in the weight layer before it
        if isinstance(layer, keras.Model):
            return rewrite(layer, self.handle, fold=self.can_fold, inference=True)(*args)
        if is_weight(layer):
            return self.weight(layer, args[0], bn=kwargs.get("_fold"))
        if type(layer) in (keras.layers.Add, keras.layers.Concatenate):
            return clone_call(layer, args, {})
        return self.layer(layer, args[0])

    # -- layers ----------------------------------------------------------------------
    @staticmethod
    def can_fold(layer, after):
        """Whether batch norm ``after`` can be folded into weight layer ``layer``."""
        if type(after) not in BATCH_NORMS or not is_weight(layer):
            return False
        if activation_name(layer) != "linear":
            return False
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return False
        ndim = len(after.input.shape) if has_input(after) else None
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
            elif self.form == "measured":
                factored = self.timer(*spec.candidates()) == "factored"
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
        record = layer_record(layer, "factored" if factored else "merged", in_shape=x.shape)
        if bn is not None:
            record.note = f"{bn.name} folded"
        self.records.append(record)
        return y


# onnxruntime (1.32, CPU) ran a factored convolution pair at about 2.1x the
# time per multiply-add of one merged convolution (an op profile of a resnet32
# export, 2026-12-01, in the history: generic kernels for odd ranks, layout
# reorders), so "auto" factors a
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
        self.svd = isinstance(layer, SVDLayer)
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

    def candidates(self):
        """(merged, factored): the layer's two forms as one-layer Keras models at its
        input size, with its weights (no bias: the same in both)."""
        inputs = keras.Input(self.in_shape[1:])
        merged = keras.Model(inputs, _emit(self.merged_layer(False), inputs,
                                           [self.merged_kernel()]))
        inputs = keras.Input(self.in_shape[1:])
        first, second = self.factor_kernels()
        y = _emit(self.second_layer(False), _emit(self.first_layer(), inputs, [first]),
                  [second])
        return merged, keras.Model(inputs, y)

    # -- costs (multiply-adds per example; None where the input size is unknown) --
    def merged_cost(self):
        return costs(self.layer, self.in_shape)[0]

    def factored_cost(self):
        return costs(self.layer, self.in_shape)[1]

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
        if layer.factorization == "channel":
            return keras.layers.Conv2D(layer.rank, layer.kernel_size, strides=layer.strides,
                                       padding=layer.padding, use_bias=False,
                                       name=f"{self.name}_V")
        kh, _ = layer.kernel_size
        return keras.layers.Conv2D(layer.rank, (kh, 1), strides=(layer.strides[0], 1),
                                   padding=layer.padding, use_bias=False, name=f"{self.name}_V")

    def second_layer(self, use_bias):
        layer = self.layer
        if self.dense:
            return keras.layers.Dense(layer.units, use_bias=use_bias, name=f"{self.name}_U")
        if layer.factorization == "channel":
            return keras.layers.Conv2D(layer.filters, 1, use_bias=use_bias,
                                       name=f"{self.name}_U")
        _, kw = layer.kernel_size
        return keras.layers.Conv2D(layer.filters, (1, kw), strides=(1, layer.strides[1]),
                                   padding=layer.padding, use_bias=use_bias, name=f"{self.name}_U")


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
