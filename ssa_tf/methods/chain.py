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
import numpy as np
from keras import ops
import tensorflow as tf

from ssa_tf.nn import SVDConv2D, SVDDense
from ssa_tf.nn.graph import TRAINING_ONLY, topological_nodes
from ssa_tf.nn.layers import _conv_len
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


def _sizes(g, in_shape):
    """``in_shape`` with its batch taken from the signal ``g``, as a shape tensor."""
    return tf.concat([tf.shape(g)[:1], tf.constant(in_shape[1:], tf.int32)], 0)


def _conv_transpose(g, kernel, in_shape, strides, padding):
    """The adjoint of ``ops.conv(., kernel, strides, padding)`` at input shape ``in_shape``
    (per example) applied to ``g``: its gradient with respect to its input."""
    return tf.raw_ops.Conv2DBackpropInput(input_sizes=_sizes(g, in_shape),
                                          filter=tf.cast(kernel, g.dtype), out_backprop=g,
                                          strides=(1, *strides, 1),
                                          padding=padding.upper())


def _svd_conv_adjoint(layer, g, in_shape):
    """The adjoint of an SVD convolution's feedback map (``feedback_call``): the merged
    B kernel's transpose, or the factored pair's, in the form the forward would run."""
    if layer.uses_merged_forward(in_shape):
        kernel = layer.kernel_tensor(feedback=True, dtype=g.dtype)  # merged in the chain's
        return _conv_transpose(g, kernel, in_shape, layer.strides, layer.padding)
    first, second = layer.sub_kernels(feedback=True)
    n, h, w, _ = in_shape
    if layer.factorization == "channel":
        mid = (n, *layer.compute_output_shape(in_shape)[1:3], layer.rank)
        g = _conv_transpose(g, second, mid, (1, 1), "valid")
        return _conv_transpose(g, first, in_shape, layer.strides, layer.padding)
    sh, sw = layer.strides
    mid = (n, _conv_len(h, layer.kernel_size[0], sh, layer.padding), w, layer.rank)
    g = _conv_transpose(g, second, mid, (1, sw), layer.padding)
    return _conv_transpose(g, first, in_shape, (sh, 1), layer.padding)


def _pool_adjoint(g, in_shape, pool_size, strides, padding):
    return tf.raw_ops.AvgPoolGrad(orig_input_shape=_sizes(g, in_shape), grad=g,
                                  ksize=(1, *pool_size, 1), strides=(1, *strides, 1),
                                  padding=padding.upper())


def adjoint_feedback(step, g, in_shape, kernels):
    """The transpose of ``linear_feedback(step, .)`` applied to ``g``, a signal at
    ``step``'s output; ``in_shape`` is ``step``'s input shape (its batch may be None).
    What a backward pass through the linear network computes, without the forward pass
    on zeros that a tape needs (about half the chain's cost at ImageNet size)."""
    if step is None or isinstance(step, (*_ACTIVATIONS, *_IDENTITY)):
        return g
    if isinstance(step, GraphModule):
        return graph_adjoint(step.graph, g, kernels, in_shape)
    if getattr(step, "data_format", "channels_last") == "channels_first":
        # (pooling, flatten, padding, cropping in the other layout: weightless, so the
        # forward pass on zeros that a tape of this one layer needs costs no multiply-adds)
        zeros = tf.zeros(_sizes(g, in_shape), g.dtype)
        with tf.GradientTape() as tape:
            tape.watch(zeros)
            out = gated_feedback(step, zeros, kernels, None)[0]
        return tape.gradient(out, zeros, output_gradients=g)
    if isinstance(step, SVDDense):
        b_u, b_s, b_v = (tf.cast(t, g.dtype) for t in (step.B_U, step.B_s, step.B_V))
        return ops.matmul(ops.matmul(g, b_u) * b_s, ops.transpose(b_v))
    if isinstance(step, SVDConv2D):
        return _svd_conv_adjoint(step, g, tuple(in_shape))
    if isinstance(step, keras.layers.Dense):
        return ops.matmul(g, ops.transpose(tf.cast(kernels[step.name], g.dtype)))
    if isinstance(step, keras.layers.Conv2D):
        return _conv_transpose(g, kernels[step.name], tuple(in_shape), step.strides,
                               step.padding)
    if isinstance(step, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return _pool_adjoint(g, in_shape, step.pool_size, step.strides, step.padding)
    if isinstance(step, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        h, w = in_shape[1], in_shape[2]
        g = ops.reshape(g, (-1, 1, 1, in_shape[3]))
        return ops.broadcast_to(g / (h * w), (ops.shape(g)[0], h, w, in_shape[3]))
    if isinstance(step, (keras.layers.Flatten, keras.layers.Reshape)):
        return ops.reshape(g, (-1, *in_shape[1:]))
    if isinstance(step, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = step.padding
        return g[:, top:top + in_shape[1], left:left + in_shape[2], :]
    if isinstance(step, keras.layers.Cropping2D):
        (top, bottom), (left, right) = step.cropping
        return ops.pad(g, ((0, 0), (top, bottom), (left, right), (0, 0)))
    raise TypeError(f"no linear feedback for layer {step.name!r} of type {type(step).__name__}")


def graph_shapes(graph, in_shape) -> dict:
    """{id(symbolic tensor): its shape} for every tensor of the functional ``graph`` when
    its input has shape ``in_shape`` (a user's graph may leave its map sizes None; each
    layer's ``compute_output_shape`` fills them in from the input actually given)."""
    shapes = {id(graph.inputs[0]): tuple(in_shape)}
    for node in topological_nodes(graph):
        ins = [shapes.get(id(t), tuple(t.shape)) for t in node.input_tensors]
        try:
            out = node.operation.compute_output_shape(ins[0] if len(ins) == 1 else ins)
        except NotImplementedError:
            out = tuple(node.outputs[0].shape)
        shapes[id(node.outputs[0])] = tuple(out)
    return shapes


def _unbroadcast(g, shape):
    """``g`` summed to ``shape``: the transpose of broadcasting a tensor of ``shape``."""
    extra = len(g.shape) - len(shape)
    if extra > 0:
        g = ops.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return ops.sum(g, axis=axes, keepdims=True) if axes else g


def graph_adjoint(graph, g, kernels, in_shape=None):
    """The transpose of ``graph_feedback``'s linear network for a functional ``graph`` (a
    module) applied to ``g`` at its output, ``in_shape`` the module's input shape: node by
    node from the output back; an Add passes its signal to every input (summed over the
    axes an input was broadcast along), a Concatenate splits it among them."""
    shapes = graph_shapes(graph, in_shape or tuple(graph.inputs[0].shape))
    grads = {id(graph.outputs[0]): g}
    for node in reversed(topological_nodes(graph)):
        out = grads.pop(id(node.outputs[0]), None)
        if out is None:  # a node whose output does not reach the module's output
            continue
        op, ins = node.operation, node.input_tensors
        if isinstance(op, keras.layers.Add):
            parts = [_unbroadcast(out, shapes[id(t)]) for t in ins]
        elif isinstance(op, keras.layers.Concatenate):
            sizes = [shapes[id(t)][op.axis] for t in ins]
            parts = ops.split(out, np.cumsum(sizes)[:-1].tolist(), axis=op.axis)
        else:
            parts = [adjoint_feedback(op, out, shapes[id(ins[0])], kernels)]
        for t, part in zip(ins, parts):
            grads[id(t)] = grads[id(t)] + part if id(t) in grads else part
    return grads[id(graph.inputs[0])]


def transposable(modules, input_shapes) -> bool:
    """Whether ``adjoint_signals`` knows every map size it needs (each module's input
    shape known but for the batch, and every layer's inside it); the route runs the tape
    otherwise, which gives the same signals."""
    for m, shape in zip(modules[1:], input_shapes[1:]):
        if None in tuple(shape)[1:]:
            return False
        if isinstance(m, GraphModule):
            if any(None in s[1:] for s in graph_shapes(m.graph, shape).values()):
                return False
    return True


def adjoint_signals(modules, error, input_shapes, kernels):
    """``chain_signals`` of the linear (ungated) network by its transpose: the output error
    carried back module by module, delta_i = J_i^T e at each module's output, with
    ``input_shapes[i]`` module i's input shape. The same signals as the tape's, without its
    forward pass."""
    return list(adjoint_steps(modules, error, input_shapes, kernels))[::-1]


def adjoint_steps(modules, error, input_shapes, kernels):
    """``adjoint_signals`` one module at a time, the last non-final module's first: each
    delta is made when the caller asks for the next (``routes.Signals``)."""
    a = error
    for m, shape in zip(modules[:0:-1], input_shapes[:0:-1]):
        a = adjoint_feedback(m, a, shape, kernels)
        yield a


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
