"""``train.error_dtype``: every convolution's input gradient in bfloat16.

A convolution's backward pass computes two things: the gradient of its kernel, which
the optimizer applies, and the gradient of its input, the error carried back to the
layer below. With ``error_dtype="bfloat16"`` the second runs in bfloat16 (the upstream
error and the kernel cast down, the result cast back to float32); the forward pass,
every kernel's gradient, the optimizer and the weights stay float32. On hardware with
bfloat16 arithmetic (avx512_bf16 or AMX CPUs, GPUs from Ampere on) oneDNN and cuDNN run
that convolution in about half the time (``benchmarks/reports/STEP_COST.md``).

It covers every 2-D convolution of the network, the plain Keras ``Conv2D`` layers of any
rule and the SVD convolutions' forward (merged or factored); not the dense layers, and
not SSA's chain, whose dtype is ``rule.chain_dtype``. An input gradient nothing uses (a
module's first convolution, the network's first) is pruned from the compiled step, as a
plain tape's would be.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf

from ssa_tf.allowed_values import ERROR_DTYPES
from ssa_tf.errors import UsageError
from ssa_tf.nn.svd import SVDLayer


def conv(x, kernel, strides, padding, error_dtype="bfloat16"):
    """``keras.ops.conv(x, kernel, strides, padding)`` (channels last, no dilation) whose
    input gradient is computed in ``error_dtype``, its kernel's in float32."""
    strides = (1, *((strides,) * 2 if isinstance(strides, int) else strides), 1)
    padding = padding.upper()

    @tf.custom_gradient
    def convolution(x, k):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=tf.cast(k, error_dtype),
                out_backprop=tf.cast(dy, error_dtype), strides=strides, padding=padding)
            dk = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(k),
                                                 out_backprop=dy, strides=strides,
                                                 padding=padding)
            return tf.cast(dx, x.dtype), dk
        return tf.nn.conv2d(x, k, strides, padding), grad
    return convolution(x, tf.convert_to_tensor(kernel))  # a tensor: no variable inside


def _plain_conv_op(self, inputs, kernel):
    return conv(inputs, kernel, self.strides, self.padding, self.error_dtype)


def _unsupported(layer) -> str | None:
    """Why ``conv`` cannot stand in for the plain convolution ``layer`` (None: it can)."""
    if layer.data_format != "channels_last":
        return "channels_first"
    if tuple(layer.dilation_rate) != (1, 1):
        return f"dilation {tuple(layer.dilation_rate)}"
    if layer.groups != 1:
        return f"{layer.groups} groups"
    return None


def _svd_conv(layer) -> bool:
    """An SVD layer whose forward takes the setting (``SVDConv2D``: its class declares
    ``error_dtype``; ``layers`` imports this module, so not named here)."""
    return isinstance(layer, SVDLayer) and hasattr(type(layer), "error_dtype")


def set_error_dtype(model, dtype):
    """Compute the input gradient of every 2-D convolution of ``model`` in ``dtype`` (a
    run's ``train.error_dtype``); float32 leaves the model as Keras builds it (or puts it
    back). A plain convolution ``conv`` cannot stand in for (dilated, grouped, channels
    first) is refused, not left in float32."""
    if dtype not in ERROR_DTYPES:
        raise UsageError(f"train.error_dtype={dtype!r} is not valid; choose from: "
                         f"{', '.join(ERROR_DTYPES)}")
    low = dtype != "float32"
    convs = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if _svd_conv(layer) or isinstance(layer, keras.layers.Conv2D)]
    for layer in convs:
        why = None if _svd_conv(layer) else _unsupported(layer)
        if low and why:
            raise UsageError(f"train.error_dtype={dtype} covers plain 2-D convolutions "
                             f"without dilation or groups, channels last; layer "
                             f"{layer.name!r} has {why}: use train.error_dtype=float32")
    model.error_dtype = dtype
    for layer in convs:
        layer.error_dtype = dtype if low else None
        if _svd_conv(layer):
            continue
        if low:
            layer.convolution_op = types.MethodType(_plain_conv_op, layer)
        elif "convolution_op" in vars(layer):  # Keras's own method again
            del layer.convolution_op
