"""Route ``chain`` (SPEC section 3): the output error through a fixed linear network.

The feedback network is the forward network with every weight replaced by
its fixed feedback weight (an SVD layer's B = B_U diag(B_s) B_V^T; a plain
layer's fixed random or initial kernel), no nonlinearity, no normalization,
and average pooling where the forward pools. Being linear, it maps the
output error e to every module boundary at once: delta_i = J_i^T e, with J_i
its Jacobian from module i's output to the logits. One backward pass through
it gives all signals; it needs no forward activations and no weight
transport.
"""

from __future__ import annotations

import keras
from keras import ops
import tensorflow as tf

from ssa_tf.layers import SVDConv2D, SVDDense
from ssa_tf.models import Module, ResidualBlock

_IDENTITY = (keras.layers.LayerNormalization, keras.layers.BatchNormalization,
             keras.layers.Activation)


def linear_feedback(step, x, kernels):
    """Apply the linear feedback version of ``step`` to ``x``.

    ``kernels`` maps a plain Dense/Conv2D layer's name to its fixed kernel.
    """
    if step is None or isinstance(step, _IDENTITY):
        return x
    if isinstance(step, (SVDDense, SVDConv2D)):
        return step.feedback_call(x)
    if isinstance(step, keras.layers.Dense):
        return ops.matmul(x, kernels[step.name])
    if isinstance(step, keras.layers.Conv2D):
        return ops.conv(x, kernels[step.name], strides=step.strides, padding=step.padding)
    if isinstance(step, keras.layers.MaxPooling2D):
        return ops.average_pool(x, step.pool_size, step.strides, step.padding)
    if isinstance(step, (keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
                         keras.layers.Flatten)):
        return step(x)
    if isinstance(step, Module):
        for sub in step.steps:
            x = linear_feedback(sub, x, kernels)
        return x
    if isinstance(step, ResidualBlock):
        y = linear_feedback(step.conv2, linear_feedback(step.conv1, x, kernels), kernels)
        shortcut = x if step.proj is None else linear_feedback(step.proj, x, kernels)
        return y + shortcut
    raise TypeError(f"no linear feedback for layer {step.name!r} of type {type(step).__name__}")


def chain_signals(modules, outputs, error, kernels):
    """delta_i = J_i^T e for every module but the last, each of module i's output shape.

    Zero probes p_i are added at every module boundary of the feedback
    network; the gradient of <e, feedback logits> with respect to p_i is
    J_i^T e, for all i in one backward pass.
    """
    probes = [tf.zeros_like(h) for h in outputs[:-1]]
    with tf.GradientTape() as tape:
        tape.watch(probes)
        a = probes[0]
        for m, p in zip(modules[1:-1], probes[1:]):
            a = linear_feedback(m, a, kernels) + p
        logits = linear_feedback(modules[-1], a, kernels)
        score = ops.sum(logits * error)
    return tape.gradient(score, probes)


def plain_feedback_kernels(modules, init, rng):
    """Fixed kernels for the plain Dense/Conv2D layers of a DFA network.

    ``init="forward"``: a copy of each layer's initial kernel; ``"random"``:
    an independent draw with the same scale (He for conv, Glorot for dense).
    """
    import numpy as np

    out = {}
    for m in modules:
        for layer in m._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
                k = ops.convert_to_numpy(layer.kernel)
                if init == "random":
                    if isinstance(layer, keras.layers.Conv2D):
                        fan_in = int(np.prod(k.shape[:-1]))
                        std = np.sqrt(2.0 / fan_in)
                    else:
                        std = np.sqrt(2.0 / (k.shape[0] + k.shape[1]))
                    k = rng.standard_normal(k.shape) * std
                out[layer.name] = k.astype("float32")
    return out
