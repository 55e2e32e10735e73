"""Route ``chain`` (docs/ALGORITHM.md §3): the output error through a fixed linear network.

The feedback network is the forward network with every weight replaced by
its fixed feedback weight (an SVD layer's B = B_U diag(B_s) B_V^T; a plain
layer's fixed random or initial kernel), no nonlinearity, no normalization,
and average pooling where the forward pools. Being linear, it maps the
output error e to every module boundary at once: delta_i = J_i^T e, with J_i
its Jacobian from module i's output to the logits. One backward pass through
it gives all signals; it needs no forward activations and no weight
transport.

Gated (the ``fa`` and ``bp-lagged-copy`` rules; SSA's own chain is ungated):
the network is linearized at the forward pass
instead. ReLUs pass the signal where the forward's did, and (``jacobians``)
each normalization applies its Jacobian at its forward input and each
max-pool routes through its forward maximum. Without the norms' Jacobians a
residual block's branch is weighted against its skip path by the inverse of
the norm's scale, and the signals drift further from BP's gradient at every
block; with them, and B = W, the signals are BP's exactly (tests/test_chain.py).
"""

from __future__ import annotations

import keras
from keras import ops
import tensorflow as tf

from ssa_tf.nn import SVDConv2D, SVDDense
from ssa_tf.nn.graph import TRAINING_ONLY, topological_nodes
from ssa_tf.nn.user import GraphModule

_IDENTITY = (keras.layers.LayerNormalization, keras.layers.BatchNormalization,
             *TRAINING_ONLY)
# nonlinearities: the linear network passes the signal, the gated one gates it
_ACTIVATIONS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                keras.layers.ELU, keras.layers.PReLU)
# linear in their input: the feedback network applies them as they are
_LINEAR = (keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
           keras.layers.Flatten, keras.layers.Reshape, keras.layers.ZeroPadding2D,
           keras.layers.Cropping2D)


def linear_feedback(step, x, kernels):
    """Apply the linear feedback version of ``step`` to ``x``.

    ``kernels`` maps a plain Dense/Conv2D layer's name to its fixed kernel.
    """
    return gated_feedback(step, x, kernels, None)[0]


def norm_jacobian(step, a, x):
    """(the normalization ``step``'s Jacobian at its forward input ``x`` applied to
    ``a``, the forward value ``step(x)``), from one computation of the statistics.

    Layer norm: its exact Jacobian, gamma/sigma (a - mean(a) - xhat mean(xhat a))
    over the normalized axes. Batch norm: gamma/sigma a with the batch's sigma, as
    in a local backward (statistics constant, docs/ALGORITHM.md §4), and the forward
    value with the batch's statistics, as in training, without touching the
    moving ones.
    """
    if isinstance(step, keras.layers.LayerNormalization):
        axis = step.axis if isinstance(step.axis, (list, tuple)) else [step.axis]
        axes = [d % len(x.shape) for d in axis]
    else:  # batch norm, channels last
        axes = list(range(len(x.shape) - 1))
    mean = ops.mean(x, axis=axes, keepdims=True)
    inv = ops.rsqrt(ops.var(x, axis=axes, keepdims=True) + step.epsilon)
    xhat = (x - mean) * inv
    if isinstance(step, keras.layers.LayerNormalization):
        out = (a - ops.mean(a, axis=axes, keepdims=True)
               - xhat * ops.mean(xhat * a, axis=axes, keepdims=True)) * inv
    else:
        out = a * inv
    y = xhat
    if step.gamma is not None:
        out, y = out * step.gamma, y * step.gamma
    if step.beta is not None:
        y = y + step.beta
    return out, y


def gated_feedback(step, a, kernels, x, jacobians=True):
    """(feedback signal, forward value) after ``step``.

    With ``x`` (the forward input of ``step``) the ReLUs of the feedback
    network are gated by the forward pass's own: a' = 1[z > 0] a, as in
    feedback alignment proper (Lillicrap et al. 2016), and with
    ``jacobians=True`` each normalization and max-pool applies its own
    Jacobian at the forward input (``False``: normalizations pass the signal
    unchanged and max-pools average, as in the linear network of algorithm §3). With
    ``x=None`` the network is purely linear (the chain route of algorithm §3).
    """
    fwd = x is not None
    if step is None:
        return a, x
    if fwd and jacobians:
        if isinstance(step, (keras.layers.LayerNormalization, keras.layers.BatchNormalization)):
            return norm_jacobian(step, a, x)
        if isinstance(step, (keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D)):
            # the forward's own routing: each window passes its maximum's signal
            with tf.autodiff.ForwardAccumulator(x, a) as acc:
                y = step(x)
            return acc.jvp(y), y
    if isinstance(step, GraphModule):
        return graph_feedback(step.graph, a, kernels, x, jacobians)
    if isinstance(step, _ACTIVATIONS):
        if fwd:  # an Activation layer's function, or the layer itself (ReLU, PReLU, ...)
            x, a = gate(getattr(step, "activation", step), x, a)
        return a, x
    if isinstance(step, _IDENTITY):
        return a, (step(x) if fwd else x)
    if isinstance(step, (SVDDense, SVDConv2D)):
        return step.feedback_call(a), (step(x) if fwd else x)
    if isinstance(step, keras.layers.Dense):
        return ops.matmul(a, kernels[step.name]), (step(x) if fwd else x)
    if isinstance(step, keras.layers.Conv2D):
        out = ops.conv(a, kernels[step.name], strides=step.strides, padding=step.padding)
        return out, (step(x) if fwd else x)
    if isinstance(step, keras.layers.MaxPooling2D):
        return (ops.average_pool(a, step.pool_size, step.strides, step.padding),
                step(x) if fwd else x)
    if isinstance(step, _LINEAR):
        return step(a), (step(x) if fwd else x)
    if isinstance(step, keras.layers.GlobalMaxPooling2D):  # the linear network averages
        return ops.mean(a, axis=(1, 2)), (step(x) if fwd else x)
    raise TypeError(f"no linear feedback for layer {step.name!r} of type {type(step).__name__}")


def graph_feedback(graph, a, kernels, x=None, jacobians=True):
    """(feedback signal, forward value) after a functional ``graph`` (a module): every
    layer replaced by its feedback (``gated_feedback``), node by node; an Add sums its
    inputs' signals (and forward values), a Concatenate joins them. With ``x`` the
    graph's forward input, the signals are gated by the forward pass as in
    ``gated_feedback``; with ``x=None`` the feedback network is linear."""
    values = {id(graph.inputs[0]): (a, x)}
    for node in topological_nodes(graph):
        op, ins = node.operation, [values[id(t)] for t in node.input_tensors]
        if isinstance(op, keras.layers.Add):
            out = (sum(s for s, _ in ins[1:]) + ins[0][0],
                   None if x is None else op([v for _, v in ins]))
        elif isinstance(op, keras.layers.Concatenate):
            out = (ops.concatenate([s for s, _ in ins], axis=op.axis),
                   None if x is None else op([v for _, v in ins]))
        else:
            (signal, value), = ins
            out = gated_feedback(op, signal, kernels, value, jacobians)
        values[id(node.outputs[0])] = out
    return values[id(graph.outputs[0])]


def gate(activation, z, a):
    """(activation(z), activation'(z) a): the forward value and the gated signal."""
    if activation is keras.activations.relu:
        return activation(z), a * ops.cast(z > 0, a.dtype)
    with tf.autodiff.ForwardAccumulator(z, a) as acc:
        y = activation(z)
    return y, acc.jvp(y)


def chain_signals(modules, outputs, error, kernels, gated=False, jacobians=True):
    """delta_i = J_i^T e for every module but the last, each of module i's output shape.

    Zero probes p_i are added at every module boundary of the feedback
    network; the gradient of <e, feedback logits> with respect to p_i is
    J_i^T e, for all i in one backward pass. ``gated=True`` gates the
    feedback network's ReLUs with the forward pass's (recomputed from each
    module's forward input, in inference mode so batch statistics are not
    updated twice); ``jacobians`` then says how normalizations and max-pools act
    (``gated_feedback``).
    """
    probes = [tf.zeros_like(h) for h in outputs[:-1]]
    with tf.GradientTape() as tape:
        tape.watch(probes)
        a = probes[0]
        for j, (m, p) in enumerate(zip(modules[1:-1], probes[1:]), start=1):
            x = ops.stop_gradient(outputs[j - 1]) if gated else None
            a = gated_feedback(m, a, kernels, x, jacobians)[0] + p
        x = ops.stop_gradient(outputs[-2]) if gated else None
        logits = gated_feedback(modules[-1], a, kernels, x, jacobians)[0]
        score = ops.sum(logits * error)
    return tape.gradient(score, probes)


def plain_feedback_kernels(modules, init, rng):
    """Fixed kernels for the plain Dense/Conv2D layers of a DFA network.

    ``init="forward"``: a copy of each layer's initial kernel; ``"random"``:
    an independent draw with the same scale (He for conv, Glorot for dense).
    A zero-initialized kernel (the head, ``head_init="zero"``) has nothing to
    copy and would silence every signal: it gets a draw too.
    """
    import numpy as np

    out = {}
    for m in modules:
        for layer in m._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
                k = ops.convert_to_numpy(layer.kernel)
                if init == "random" or not np.any(k):
                    if isinstance(layer, keras.layers.Conv2D):
                        fan_in = int(np.prod(k.shape[:-1]))
                        std = np.sqrt(2.0 / fan_in)
                    else:
                        std = np.sqrt(2.0 / (k.shape[0] + k.shape[1]))
                    k = rng.standard_normal(k.shape) * std
                out[layer.name] = k.astype("float32")
    return out
