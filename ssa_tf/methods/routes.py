"""How the output error reaches a non-final module (BUILD.md, algorithm §3): the routes.

A route builds its fixed feedback state once (as non-trainable weights of the
model) and turns module i's output h_i into the CE part of its local loss:

* ``GlobalRoute`` (DFA): the surrogate mean_b <stop_grad(delta_i), h_i> with
  delta_i = e D_i^T, broadcast over a feature map's positions or sent to every
  unit (``spatial="full"``, Noekland 2016);
* ``LocalRoute``: the module's own cross-entropy through a fixed read-out of
  its pooled output; needs no global forward;
* ``ChainRoute``: delta_i = J_i^T e through a fixed linear copy of the later
  modules (their feedback weights). Ungated, that copy does not depend on the
  forward pass: a fixed matrix from e to module i (direct). ``gated=True``
  linearizes it at the forward pass instead: feedback alignment, sequential.

SSA builds D_i and Q_i from the feedback factors of the module's output layer
(so the error arrives in their span); DFA draws them Gaussian.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops
import tensorflow as tf

from ssa_tf.methods import chain, feedback

# the largest full-map feedback (all modules' D_i together) a model may hold
MAX_FULL_MAP_ENTRIES = 64 * 1024 ** 2  # 256 MiB of float32


class Route:
    name = ""

    def refresh(self, model):
        """Recompute what the route derives from the feedback weights (after a rank cut)."""
    needs_error = True  # False: the module's loss needs no output error
    direct = True  # the signals are a fixed function of e (no later module's activations)

    def extra_variables(self, model, i):
        """Variables of the route's that module i trains with its own (none: fixed)."""
        return []

    def build(self, model, rng):
        """Create the route's fixed state on ``model`` (``model.add_weight``)."""

    def signals(self, model, outputs, error):
        """Per-module signals computed from all outputs at once (or None)."""
        return None

    def ce_term(self, model, i, h, error, y, signals):
        raise NotImplementedError


class GlobalRoute(Route):
    name = "global"

    def __init__(self, spatial="full"):
        if spatial not in feedback.SPATIAL:
            raise ValueError(f"unknown feedback_spatial {spatial!r}")
        self.spatial = spatial

    def build(self, model, rng):
        model.feedback_matrices = []
        shapes = model.module_output_shapes
        entries = sum(int(np.prod(s)) * model.num_classes for s in shapes[:-1])
        if self.spatial == "full" and entries > MAX_FULL_MAP_ENTRIES:
            raise ValueError(f"full-map feedback for {model.architecture} at input "
                             f"{model.input_dims} needs {entries:,} entries (more than "
                             f"{MAX_FULL_MAP_ENTRIES:,}); use feedback_spatial=broadcast")
        for i, (m, shape) in enumerate(zip(model.local_modules[:-1], shapes[:-1])):
            mat = _projection(model, m, self.name, self.spatial, shape, rng)
            model.feedback_matrices.append(_fixed(model, f"feedback_{i}", mat))

    def ce_term(self, model, i, h, error, y, signals):
        return feedback.ce_term("global", self.spatial, h, model.feedback_matrices[i], error, y)


class LocalRoute(Route):
    """Each module's own CE through a read-out of its pooled output. ``trained``: the
    read-out learns from that CE too (a linear probe trained alongside the module,
    as Noekland & Eidnes 2019's prediction loss); else it stays fixed ((LLS))."""

    name = "local"
    needs_error = False

    def __init__(self, grid=2, trained=False):
        self.grid, self.trained = int(grid), bool(trained)

    def build(self, model, rng):
        model.feedback_matrices = []
        for i, (m, shape) in enumerate(zip(model.local_modules[:-1],
                                           model.module_output_shapes[:-1])):
            mat = _projection(model, m, self.name, "broadcast", shape, rng, self.grid)
            model.feedback_matrices.append(_fixed(model, f"feedback_{i}", mat, self.trained))

    def extra_variables(self, model, i):
        """The read-out module i trains with its own parameters (none when fixed)."""
        if self.trained and i < len(model.feedback_matrices):
            return [model.feedback_matrices[i]]
        return []

    def ce_term(self, model, i, h, error, y, signals):
        return feedback.ce_term("local", None, h, model.feedback_matrices[i], error, y,
                                self.grid)


class ChainRoute(Route):
    name = "chain"

    def __init__(self, gated=False, jacobians=True):
        self.gated, self.jacobians = bool(gated), bool(jacobians)
        self.direct = not self.gated

    def build(self, model, rng):
        # SVD layers carry their feedback factors; plain layers get a fixed kernel
        model.feedback_kernels = {}
        init = model.rule.options.get("feedback_init", "random")
        for name, k in chain.plain_feedback_kernels(model.local_modules, init, rng).items():
            model.feedback_kernels[name] = _fixed(model, f"feedback_kernel_{name}", k)
        # Ungated, the chain is a fixed linear map from e (K numbers) to each module's
        # output: its matrices J_i^T, computed once (one pass of K unit errors) instead
        # of a backward pass through the feedback network every step. They follow
        # the feedback factors: a rank cut recomputes them (``refresh``).
        self.matrices = []
        shapes = model.module_output_shapes[:-1]
        if not self.gated and sum(int(np.prod(s)) for s in shapes) * model.num_classes \
                <= MAX_FULL_MAP_ENTRIES:
            self.matrices = [_fixed(model, f"chain_matrix_{i}", np.zeros((model.num_classes,
                                                                          *s), np.float32))
                             for i, s in enumerate(shapes)]
            self.refresh(model)

    def refresh(self, model):
        """Recompute the ungated chain's fixed matrices from the feedback weights."""
        if not self.matrices:
            return
        k = model.num_classes
        outputs = [tf.zeros((k, *s)) for s in model.module_output_shapes]
        deltas = chain.chain_signals(model.local_modules, outputs, tf.eye(k),
                                     model.feedback_kernels)
        for var, d in zip(self.matrices, deltas):
            var.assign(d)

    def signals(self, model, outputs, error):
        """Each module's J_i^T e, rescaled to the std of e: the linear chain's gain
        differs from module to module (BUILD.md, algorithm §3)."""
        if self.matrices:
            deltas = [ops.tensordot(error, m, axes=1) for m in self.matrices]
        else:
            deltas = chain.chain_signals(model.local_modules, outputs, error,
                                         model.feedback_kernels, gated=self.gated,
                                         jacobians=self.jacobians)
        scale = global_std(error)  # global-batch statistics, so that replicas rescale alike
        return [ops.stop_gradient(d * scale / (global_std(d) + 1e-12)) for d in deltas]

    def ce_term(self, model, i, h, error, y, signals):
        # surrogate whose gradient at h is delta_i / batch
        return ops.mean(ops.sum(ops.reshape(signals[i] * h, (ops.shape(h)[0], -1)), axis=-1))


def make_route(options) -> Route:
    route = options.get("feedback", "chain")
    if route == "global":
        return GlobalRoute(options.get("feedback_spatial", "full"))
    if route == "local":
        return LocalRoute(options.get("readout_grid", 2), options.get("readout_trained", False))
    if route == "chain":
        return ChainRoute(gated=False)
    raise ValueError(f"unknown feedback route {route!r}")


def _projection(model, module, route, spatial, shape, rng, grid=2):
    positions, channels, std = feedback.feedback_shape(route, spatial, shape, model.num_classes,
                                                       grid)
    structured = module.output_layer if model.rule.spec.svd else None
    return feedback.projection_matrix(channels, positions, model.num_classes, std, rng, structured)


def _fixed(model, name, value, trainable=False):
    return model.add_weight(name=name, shape=value.shape, trainable=trainable,
                            initializer=keras.initializers.Constant(value))


def global_std(t):
    """Standard deviation of ``t`` over the global batch (all replicas)."""
    t = tf.cast(t, tf.float32)
    stats = tf.stack([tf.cast(tf.size(t), tf.float32), tf.reduce_sum(t), tf.reduce_sum(t * t)])
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        stats = ctx.all_reduce(tf.distribute.ReduceOp.SUM, stats)
    n, s1, s2 = stats[0], stats[1], stats[2]
    return tf.sqrt(tf.maximum(s2 / n - (s1 / n) ** 2, 0.0))
