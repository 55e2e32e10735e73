"""Batch norm for local learning, and a forward pass replayed exactly.

``LocalBatchNorm`` holds its batch statistics constant in a module's local backward;
``noise_state`` and ``replaying`` make a recomputed forward pass (a rule that saves
memory by running a module again) compute the first pass's activations: the same
dropout masks, the moving statistics updated once.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="ssa_tf")
class LocalBatchNorm(keras.layers.BatchNormalization):
    """Batch norm whose batch statistics are constants in the backward pass.

    docs/ALGORITHM.md §4 / supplementary §2: batch norm acts in the forward pass only;
    a module's local gradient does not flow through the batch mean and
    variance. With ``stop_stat_gradient=False`` it is ordinary batch norm (BP).
    """

    def __init__(self, stop_stat_gradient=True, **kwargs):
        super().__init__(**kwargs)
        self.stop_stat_gradient = bool(stop_stat_gradient)
        # True while a learning rule recomputes a forward pass it already ran (a
        # memory-saving replay): normalize with the batch statistics, as then,
        # but do not update the moving ones a second time
        self.replaying = False

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self.replaying):
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        mean, variance = self._moments(x, mask)
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        out = ops.batch_normalization(x=x, mean=mean, variance=variance, axis=self.axis,
                                      offset=beta, scale=gamma, epsilon=self.epsilon)
        return ops.cast(out, self.compute_dtype)

    def _moments(self, inputs, mask):
        mean, variance = super()._moments(inputs, mask)
        if self.stop_stat_gradient:
            mean, variance = ops.stop_gradient(mean), ops.stop_gradient(variance)
        return mean, variance

    def get_config(self):
        return {**super().get_config(), "stop_stat_gradient": self.stop_stat_gradient}



def noise_state(modules) -> list:
    """[(state variable, its value now)] of every seed generator inside ``modules`` (each
    dropout or noise layer draws its masks from its own): taken before a forward pass,
    ``replaying(modules, noise_state)`` puts the states back so that the replay draws the
    masks that pass drew (new masks made a module's update from other activations than
    those that made the output error)."""
    seen, state = set(), []
    for m in modules:
        for layer in m._flatten_layers(include_self=True, recursive=True):
            for generator in getattr(layer, "_seed_generators", ()):
                if id(generator) not in seen:
                    seen.add(id(generator))
                    state.append((generator.state, tf.identity(generator.state.value)))
    return state


@contextlib.contextmanager
def replaying(modules, noise=()):
    """While inside, the batch norms of ``modules`` leave their moving statistics alone
    (a recomputed forward pass must not update them twice), and with ``noise``
    (``noise_state`` taken before the first pass) every dropout or noise layer draws the
    masks it drew then: the replay computes the first pass's activations exactly."""
    norms = [l for m in modules for l in m._flatten_layers(include_self=True, recursive=True)
             if isinstance(l, LocalBatchNorm)]
    for variable, value in noise:
        variable.assign(value)
    for n in norms:
        n.replaying = True
    try:
        yield
    finally:
        for n in norms:
            n.replaying = False
