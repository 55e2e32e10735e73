"""A layer norm and a leaky ReLU whose training gradients are written out.

The converter (``nn.user``) puts them in place of Keras's ``LayerNormalization`` (over
the last axis, float32, centred and scaled) and of a leaky-ReLU ``Activation`` layer in every
model, for every rule (an activation given inside a Dense or Conv2D stays Keras's); the
export (``export.merge``) puts Keras's layers back. They compute the same functions, to
float rounding (where a norm's inputs have a mean large against their spread, nearer
float64's than Keras's form, which cancels):

- Keras's layer norm computes ``x * (rsqrt(var + eps) * gamma) + (beta - mean * ...)``,
  whose per-pixel times per-channel factors are full-size tensors, and its automatic
  gradient keeps its input and one of them (two activation-sized tensors a norm) and
  runs about a dozen full passes. ``LayerNormalization`` keeps the normalized input ``xhat`` and
  the per-pixel ``1/sigma``, and computes ``dx = (g - mean(g) - xhat mean(g xhat)) / sigma``
  with ``g = dy gamma``: about 30% less time for norm and activation, forward and
  backward (resnet18's stem at batch 64), in less memory.
- TensorFlow's leaky-ReLU gradient reads the activation's input (the norm's output, kept
  only for it). With a positive or zero slope the output has the input's sign, so
  ``LeakyReLU`` takes the same gradient from its output, which the next layer keeps
  anyway: the same values, bit for bit, one activation-sized tensor fewer a norm.

- A replay (a recomputing rule's second forward pass of a module) computes the first
  pass's activations again: ``keeping`` keeps each norm's per-pixel mean and ``1/sigma``
  in the first pass, and ``reading`` has the replay's norms read them instead of reducing
  their input twice more (``Moments``; the same values, bit for bit).

Under inference (``training`` false) both are Keras's own layers' computations.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf


def _gradient(dy, xhat, inv, gamma):
    """The layer norm's gradient at x (through its statistics too), gamma and beta."""
    # the channel means of dy gamma and dy gamma xhat as products with gamma, before dx (no
    # g = dy gamma kept beside it); against the plain form (means of g and g xhat)
    # resnet18/224's peak at batch 256 read 3412 against 3437 MB, within one reading's spread
    axes = list(range(len(dy.shape) - 1))
    scale = 1.0 / dy.shape[-1]
    dy_xhat = dy * xhat
    dgamma = tf.reduce_sum(dy_xhat, axes)
    m2 = tf.tensordot(dy_xhat, gamma * scale, [[-1], [0]])[..., None]
    m1 = tf.tensordot(dy, gamma * scale, [[-1], [0]])[..., None]
    dbeta = tf.reduce_sum(dy, axes)
    with tf.control_dependencies([dgamma, m2, m1, dbeta]):
        dx = (dy * gamma - m1 - xhat * m2) * inv
    return dx, dgamma, dbeta


@tf.custom_gradient
def _layer_norm(x, gamma, beta, epsilon):
    """(the layer norm of x, its per-pixel mean and 1/sigma)."""
    mean = tf.reduce_mean(x, -1, keepdims=True)
    centred = x - mean
    inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), -1, keepdims=True) + epsilon)
    xhat = centred * inv

    def grad(dy, *_):  # (the statistics' own gradients are not asked for)
        return (*_gradient(dy, xhat, inv, gamma), None)

    return (xhat * gamma + beta, mean, inv), grad


@tf.custom_gradient
def _layer_norm_from(x, gamma, beta, mean, inv):
    """The layer norm of x from its statistics (``_layer_norm``'s), computed again as
    ``_layer_norm`` computes them: the same values, bit for bit, and the same gradient."""
    xhat = (x - mean) * inv

    def grad(dy):
        return (*_gradient(dy, xhat, inv, gamma), None, None)

    return xhat * gamma + beta, grad


class Moments:
    """The per-pixel statistics the fast layer norms of one module computed in a forward
    pass, by layer and call, for its replay (``keeping``, ``reading``): a replay computes
    the first pass's activations from the same input, so its norms' statistics are the
    first pass's, bit for bit, and reading them skips two of a norm's passes over its
    input (the mean's and the variance's). Two numbers a pixel a norm are kept from the
    first pass to the replay (1/32 of a 64-channel activation)."""

    def __init__(self):
        self.kept = {}
        self.rewind()

    def rewind(self, rows=None):
        """Read from each layer's first call again (of the examples ``rows``, (start,
        stop), if given): a replay, or a slice of one."""
        self.rows, self._read = rows, {}

    def put(self, layer, moments):
        self.kept.setdefault(id(layer), []).append(moments)

    def take(self, layer):
        """The moments of ``layer``'s next call in this replay (of its examples ``rows``),
        or None where the first pass kept none (a norm off the fast path)."""
        kept, k = self.kept.get(id(layer), ()), self._read.get(id(layer), 0)
        if k >= len(kept):
            return None
        self._read[id(layer)] = k + 1
        if self.rows is None:
            return kept[k]
        return tuple(m[self.rows[0]:self.rows[1]] for m in kept[k])


# (Moments, "keep" or "read"), innermost last, a stack a thread: MirroredStrategy traces
# each replica's step in a thread of its own, which may wait at an all-reduce between them
_ACTIVE = threading.local()


def _stack() -> list:
    return _ACTIVE.__dict__.setdefault("stack", [])


@contextlib.contextmanager
def keeping(moments):
    """Inside, each fast layer norm keeps its statistics in ``moments`` (None: nothing)."""
    with _active(moments, "keep"):
        yield


@contextlib.contextmanager
def reading(moments, rows=None):
    """Inside, each fast layer norm reads the statistics ``keeping`` kept in ``moments``
    in the same order of calls (of the examples ``rows``, (start, stop), if given) instead
    of computing them (None: nothing is read)."""
    if moments is not None:
        moments.rewind(rows)
    with _active(moments, "read"):
        yield


@contextlib.contextmanager
def _active(moments, mode):
    if moments is None:
        yield
        return
    _stack().append((moments, mode))
    try:
        yield
    finally:
        _stack().pop()


@keras.saving.register_keras_serializable(package="ssa_tf")
class LayerNormalization(keras.layers.LayerNormalization):
    """Keras's ``LayerNormalization`` over the last axis, with its gradient written out
    in training (the module docstring); anything else is Keras's own call. Keras's name:
    a saved model's weights file names a layer's variables after its class, so models
    saved with Keras's layer load into this one and back."""

    def call(self, inputs, training=None):
        if not (training and self.fast_path(inputs)):
            return super().call(inputs)
        moments, mode = _stack()[-1] if _stack() else (None, None)
        gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
        kept = moments.take(self) if mode == "read" else None
        if kept is not None:
            return _layer_norm_from(inputs, gamma, beta, *kept)
        y, mean, inv = _layer_norm(inputs, gamma, beta, tf.constant(self.epsilon, inputs.dtype))
        if mode == "keep":
            moments.put(self, (mean, inv))
        return y

    def fast_path(self, inputs) -> bool:
        axis = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        last = [a % len(inputs.shape) for a in axis] == [len(inputs.shape) - 1]
        return bool(last and self.center and self.scale and not self.rms_scaling
                    and inputs.dtype == tf.float32 and self.gamma.dtype == tf.float32
                    and self.compute_dtype == "float32")


_SLOPE = 0.2  # keras.activations.leaky_relu's


@tf.custom_gradient
def _leaky_relu(x):
    y = tf.nn.leaky_relu(x, _SLOPE)
    # the output's sign is the input's (slope >= 0): TensorFlow's own gradient op given
    # the output gives the input's gradient
    return y, lambda dy: tf.raw_ops.LeakyReluGrad(gradients=dy, features=y, alpha=_SLOPE)


@keras.saving.register_keras_serializable(package="ssa_tf")
class LeakyReLU(keras.layers.Activation):
    """An ``Activation("leaky_relu")`` (Keras's slope, 0.2) whose training gradient reads
    its output instead of its input (the module docstring)."""

    def call(self, inputs, training=None):
        if not training or inputs.dtype != tf.float32:
            return super().call(inputs)
        return _leaky_relu(inputs)


#: False: the converter leaves Keras's layers as they are (``benchmarks.step_cost``'s
#: rows "..., Keras's layer norm" measure both; the functions are the same)
ENABLED = True


def faster(layer):
    """The class to put in place of ``layer``'s (same config and weights), or None."""
    if not ENABLED:
        return None
    if type(layer) is keras.layers.LayerNormalization:
        return LayerNormalization
    if type(layer) is keras.layers.Activation and \
            layer.activation is keras.activations.leaky_relu:
        return LeakyReLU
    return None


#: each of them with the Keras class an export puts back
STOCK = {LayerNormalization: keras.layers.LayerNormalization, LeakyReLU: keras.layers.Activation}


__all__ = ["LayerNormalization", "LeakyReLU", "Moments", "STOCK", "faster", "keeping",
           "reading"]
