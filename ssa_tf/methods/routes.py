"""How the output error reaches a non-final module (docs/ALGORITHM.md §3): the routes.

A route owns its feedback state (weights it creates on the model once, at
construction, and keeps) and turns module i's output h_i into the CE part of
its local loss. Its name and options are ``spec.ROUTES``; ``make_route`` picks
the class by that name:

* ``GlobalRoute`` (DFA): the surrogate mean_b <stop_grad(delta_i), h_i> with
  delta_i = e D_i^T, broadcast over a feature map's positions or sent to every
  unit (``spatial="full"``, Noekland 2016);
* ``LocalRoute``: the module's own cross-entropy through a fixed read-out of
  its pooled output; needs no global forward;
* ``LocalGlobalRoute``: the two together, the head's CE plus a weighted direct term;
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

from ssa_tf.errors import UsageError
from ssa_tf.methods import chain, feedback
from ssa_tf.methods.spec import ROUTES, SPATIAL

# the largest full-map feedback (all modules' D_i together) a model may hold
MAX_FULL_MAP_ENTRIES = 64 * 1024 ** 2  # 256 MiB of float32


class Route:
    spec = None  # its ``spec.RouteSpec``
    direct = True  # the signals are a fixed function of e (no later module's activations)
    structured = False  # build the matrices from the SVD feedback factors (SSA)

    @property
    def needs_error(self) -> bool:
        """False: the module's loss needs no output error."""
        return self.spec.needs_error

    def refresh(self, model):
        """Recompute what the route derives from the feedback weights (after a rank cut)."""

    def feedback_variables(self):
        """Every feedback weight the route owns."""
        return list(getattr(self, "matrices", []))

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
    spec = ROUTES["global"]

    def __init__(self, options, structured=False):
        self.spatial = options.get("feedback_spatial", "full")
        if self.spatial not in SPATIAL:
            raise ValueError(f"unknown feedback_spatial {self.spatial!r}")
        self.structured = structured
        self.matrices = []

    def check_size(self, model):
        """``errors.UsageError`` (one line, exit 2) when the full-map matrices would be too
        large to hold (``python -m ssa_tf.train --dataset=imagenet2012 --rule=dfa``)."""
        shapes = model.module_output_shapes
        entries = sum(int(np.prod(s)) * model.num_classes for s in shapes[:-1])
        if self.spatial == "full" and entries > MAX_FULL_MAP_ENTRIES:
            raise UsageError(f"full-map feedback for {model.architecture} at input "
                             f"{model.input_dims} needs {entries:,} entries (more than "
                             f"{MAX_FULL_MAP_ENTRIES:,}); add --set "
                             "rule.feedback_spatial=broadcast (or --preset=imagenet)")

    def build(self, model, rng, prefix="feedback"):
        self.check_size(model)
        shapes = model.module_output_shapes
        for i, (m, shape) in enumerate(zip(model.local_modules[:-1], shapes[:-1])):
            mat = projection(model, m, self.structured, shape, rng, spatial=self.spatial)
            self.matrices.append(fixed_weight(model, f"{prefix}_{i}", mat))

    def ce_term(self, model, i, h, error, y, signals):
        return feedback.direct_ce_term(h, self.matrices[i], error, self.spatial)


class LocalRoute(Route):
    """Each module's own CE through a read-out of its pooled output. ``trained``: the
    read-out learns from that CE too (a linear probe trained alongside the module,
    as Noekland & Eidnes 2019's prediction loss); else it stays fixed ((LLS)).
    ``readout_head=conv``: a small trained head instead (DGL, Belilovsky et al. 2020):
    ``readout_depth`` x (a 3x3 convolution to ``readout_width`` channels (0: the module's
    own), ReLU), the pooled grid, then the linear read-out; a dense module gets hidden
    dense layers. ``readout_sim`` = w > 0: the loss is (1 - w) CE + w sim, sim the
    similarity matching of a trained 3x3 projection of the output (Noekland & Eidnes
    2019's predsim, ``feedback.similarity_loss``).
    ``readout_head=later``: a head shaped like the later modules (AugLocal, Ma et al. 2024):
    layers to the widths and sizes of modules sampled evenly from those after it, up to
    ``readout_depth`` for the first module and fewer with depth
    (``feedback.later_head_targets``), then the linear read-out.
    Heads train on the module's own loss only and are dropped at export."""

    spec = ROUTES["local"]

    def __init__(self, options, structured=False):
        self.grid = int(options.get("readout_grid", 2))
        self.head = options.get("readout_head") or "linear"
        self.trained = bool(options.get("readout_trained", False)) or self.head != "linear"
        self.width = int(options.get("readout_width") or 0)
        self.depth = int(options.get("readout_depth") or 1)
        self.sim = float(options.get("readout_sim") or 0.0)
        self.trained = self.trained or self.sim > 0
        self.structured = structured
        self.matrices = []  # the linear read-outs (the last layer of a conv head)
        self.hidden = []  # a conv head's hidden layers per module: [kernel, bias, ...]
        self.projections = []  # predsim's similarity projections, one per module
        self.targets = []  # a later-shaped head's layer output shapes, per module

    def build(self, model, rng):
        for i, (m, shape) in enumerate(zip(model.local_modules[:-1],
                                           model.module_output_shapes[:-1])):
            if self.head == "conv":
                width = self.width or int(shape[-1])
                layers = []
                for d in range(self.depth):
                    kernel, bias = feedback.head_hidden_layer(shape, width, rng)
                    tag = f"readout_{i}" + (f"_{d}" if d else "")  # depth 1: the old names
                    layers += [fixed_weight(model, f"{tag}_kernel", kernel, True),
                               fixed_weight(model, f"{tag}_bias", bias, True)]
                    shape = (*shape[:-1], width)
                self.hidden.append(tuple(layers))
                m = None  # the head's own channels: no feedback factors to structure it
            elif self.head == "later":
                targets = feedback.later_head_targets(model.module_output_shapes[:-1], i,
                                                      self.depth)
                layers = []
                for d, target in enumerate(targets):
                    kernel, bias = feedback.later_head_layer(shape, target, self.grid, rng)
                    layers += [fixed_weight(model, f"readout_{i}_{d}_kernel", kernel, True),
                               fixed_weight(model, f"readout_{i}_{d}_bias", bias, True)]
                    shape = target
                self.hidden.append(tuple(layers))
                self.targets.append(targets)
                m = None if targets else m
            mat = projection(model, m, self.structured and m is not None, shape, rng,
                             grid=self.grid)
            self.matrices.append(fixed_weight(model, f"feedback_{i}", mat, self.trained))
        if self.sim:
            for i, shape in enumerate(model.module_output_shapes[:-1]):
                kernel, _ = feedback.head_hidden_layer(shape, int(shape[-1]), rng)
                self.projections.append(fixed_weight(model, f"readout_sim_{i}", kernel, True))

    def feedback_variables(self):
        return [*self.matrices, *(v for pair in self.hidden for v in pair), *self.projections]

    def extra_variables(self, model, i):
        """The read-out module i trains with its own parameters (none when fixed)."""
        if self.trained and i < len(self.matrices):
            return [*(self.hidden[i] if self.hidden else ()), self.matrices[i],
                    *self.projections[i:i + 1]]
        return []

    def head_input(self, i, h):
        """Module i's output h through its head's hidden layers (itself: a linear head)."""
        layers = self.hidden[i] if self.hidden else ()
        if self.head == "later":
            for kernel, bias, target in zip(layers[::2], layers[1::2], self.targets[i]):
                h = feedback.later_head_hidden(h, kernel, bias, target, self.grid)
            return h
        for kernel, bias in zip(layers[::2], layers[1::2]):
            h = feedback.head_hidden(h, kernel, bias)
        return h

    def logits(self, i, h):
        """Module i's head's class scores for its output h (``benchmarks.module_probes``)."""
        return feedback.readout_logits(self.head_input(i, h), self.matrices[i], self.grid)

    def ce_term(self, model, i, h, error, y, signals):
        out = h
        pred = feedback.readout_ce_term(self.head_input(i, h), self.matrices[i], y, self.grid)
        if not self.sim:
            return pred
        sim = feedback.similarity_loss(out, self.projections[i], y, model.num_classes)
        return (1.0 - self.sim) * pred + self.sim * sim


class LocalGlobalRoute(LocalRoute):
    """The local route's head CE plus ``direct_weight`` x the global route's direct term
    (DFA's, or SSA's structured one): module i's loss reads its own head and the output
    error through a fixed matrix, nothing of another module's. The control of a head
    alone that differs in the direct term only (issue 36, item 2)."""

    spec = ROUTES["local_global"]

    def __init__(self, options, structured=False):
        super().__init__(options, structured)
        self.direct_weight = float(options.get("direct_weight", 1.0))
        self.global_route = GlobalRoute(options, structured)

    def build(self, model, rng):
        super().build(model, rng)
        self.global_route.build(model, rng, prefix="direct_feedback")

    def feedback_variables(self):
        return [*super().feedback_variables(), *self.global_route.matrices]

    def ce_term(self, model, i, h, error, y, signals):
        head = super().ce_term(model, i, h, error, y, signals)
        direct = self.global_route.ce_term(model, i, h, error, y, signals)
        return head + self.direct_weight * direct


class ChainRoute(Route):
    spec = ROUTES["chain"]

    #: the ungated chain, too large to cache, runs its linear network's transpose
    #: (``chain.adjoint_signals``); False: a tape's backward pass through the network,
    #: whose forward pass on zeros costs as much again (``benchmarks.step_cost``'s rows)
    transpose = True

    def __init__(self, options, structured=False, gated=False, jacobians=True):
        self.init = options.get("feedback_init", "random")
        self.gated, self.jacobians = bool(gated), bool(jacobians)
        self.direct = not self.gated
        # the dtype the ungated chain's signals are computed in (``rule.chain_dtype``)
        self.dtype = options.get("chain_dtype") or "float32"
        self.kernels, self.matrices = {}, []

    def feedback_variables(self):
        return [*self.kernels.values(), *self.matrices]

    def build(self, model, rng):
        # (a gated chain on a model of the user's is refused before: ``SSAModel``)
        # SVD layers carry their feedback factors; plain layers get a fixed kernel
        for name, k in chain.plain_feedback_kernels(model.local_modules, self.init,
                                                    rng).items():
            self.kernels[name] = fixed_weight(model, f"feedback_kernel_{name}", k)
        # Ungated, the chain is a fixed linear map from e (K numbers) to each module's
        # output: its matrices J_i^T, computed once (one pass of K unit errors) instead
        # of a backward pass through the feedback network every step. They follow
        # the feedback factors: a rank cut recomputes them (``refresh``).
        shapes = model.module_output_shapes[:-1]
        if not self.gated and sum(int(np.prod(s)) for s in shapes) * model.num_classes \
                <= MAX_FULL_MAP_ENTRIES:
            self.matrices = [fixed_weight(model, f"chain_matrix_{i}", np.zeros((model.num_classes,
                                                                          *s), np.float32))
                             for i, s in enumerate(shapes)]
            self.refresh(model)
        shapes = [(None, *model.input_dims), *((None, *s) for s in shapes)]
        if self.dtype != "float32" and not self.matrices and (self.gated or not (
                self.transpose and chain.transposable(model.local_modules, shapes))):
            raise self._untransposable("model")

    def _untransposable(self, what) -> UsageError:
        return UsageError(f"rule.chain_dtype={self.dtype} computes the chain by its transpose, "
                          f"which needs every map size of the {what} known; this {what} "
                          "leaves some unknown: use rule.chain_dtype=float32")

    def refresh(self, model):
        """Recompute the ungated chain's fixed matrices from the feedback weights."""
        if not self.matrices:
            return
        k = model.num_classes
        outputs = [tf.zeros((k, *s)) for s in model.module_output_shapes]
        deltas = chain.chain_signals(model.local_modules, outputs, tf.eye(k), self.kernels)
        for var, d in zip(self.matrices, deltas):
            var.assign(d)

    def signals(self, model, outputs, error):
        """Each module's J_i^T e, rescaled to the std of e: the linear chain's gain
        differs from module to module (docs/ALGORITHM.md §3)."""
        # each module's input shape, for the transpose (module 0's is never transposed)
        shapes = [(None, *model.input_dims), *(tuple(o.shape) for o in outputs[:-1])]
        low = ops.cast(error, self.dtype)  # float32 unless rule.chain_dtype says otherwise
        if self.matrices:
            deltas = (ops.tensordot(low, ops.cast(m, self.dtype), axes=1)
                      for m in self.matrices[::-1])
        elif not self.gated and self.transpose and chain.transposable(model.local_modules,
                                                                      shapes):
            deltas = chain.adjoint_steps(model.local_modules, low, shapes, self.kernels)
        else:
            if self.dtype != "float32":  # (``build`` refuses it where it knows the tape runs)
                raise self._untransposable("input")
            deltas = chain.chain_signals(model.local_modules, outputs, error, self.kernels,
                                         gated=self.gated, jacobians=self.jacobians)[::-1]
        return Signals(deltas, len(model.local_modules) - 1, global_std(error))

    #: the signal's term as one product (``_signal_dot``); False: elementwise, as before
    fused_term = True

    def ce_term(self, model, i, h, error, y, signals):
        # surrogate whose gradient at h is delta_i / batch
        if not self.fused_term:
            return ops.mean(ops.sum(ops.reshape(signals[i] * h, (ops.shape(h)[0], -1)), -1))
        # (a list: the signals as given, rescaled; made here: as made, and their factor)
        delta, factor = signals.raw(i) if isinstance(signals, Signals) else (signals[i], 1.0)
        return _signal_dot(h, delta, factor / ops.cast(ops.shape(h)[0], "float32"))


@tf.custom_gradient
def _signal_dot(h, delta, c):
    """c sum(h delta), ``delta`` kept in its own dtype (the chain's) and read in h's; its
    gradient at h is c delta, written once. The elementwise form (the mean over the batch
    of sum(h delta scale / std)) wrote the scaled signal, the product and its reduction's
    tiled gradient, full-size tensors at every module's output."""
    value = tf.reduce_sum(h * tf.cast(delta, h.dtype)) * c

    def grad(dy):
        return tf.cast(delta, h.dtype) * (dy * c), None, None

    return value, grad


class Signals:
    """The chain's signals, made as they are read: ``deltas`` yields them from the last
    non-final module's to the first's (the chain's order), ``count`` of them. Each is
    rescaled to the std of e (``scale``; global-batch statistics, so that replicas rescale
    alike) and cast to float32 where it is read.

    A recomputing step reads the held modules' signals, last first, then each replayed
    module's just before its replay: the chain runs on from the last signal read, so the
    replayed modules' signals are not held while the held modules' tapes are, and each
    is kept only from its making to its module's update, in the chain's dtype (half the
    memory in bfloat16). The values are the same in any order of reading."""

    def __init__(self, deltas, count, scale):
        self._source, self._made, self._stds = iter(deltas), {}, {}
        self.count, self.scale = int(count), scale

    def __len__(self):
        return self.count

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def make(self, i) -> int:
        """Make signal ``i`` (and the chain's steps before it) unless made; its index."""
        i = range(self.count)[i]  # an IndexError past the end, as a list's
        while i not in self._made:
            d = next(self._source)
            j = self.count - 1 - len(self._made)
            self._made[j], self._stds[j] = d, global_std(d)
        return i

    def raw(self, i):
        """(signal ``i`` as made, in the chain's dtype; the factor that rescales it)."""
        i = self.make(i)
        return self._made[i], self.scale / (self._stds[i] + 1e-12)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = self.make(i)
        d = ops.cast(self._made[i], "float32")
        return ops.stop_gradient(d * self.scale / (self._stds[i] + 1e-12))


CLASSES = {c.spec.name: c for c in (GlobalRoute, LocalRoute, LocalGlobalRoute, ChainRoute)}


def make_route(options, structured=False) -> Route:
    """The route ``options["feedback"]`` names (``structured``: from the SVD factors)."""
    return CLASSES[options["feedback"]](options, structured)


def projection(model, module, structured, shape, rng, spatial="broadcast", grid=None):
    positions, channels, std = feedback.feedback_shape(shape, model.num_classes, spatial, grid)
    layer = module.output_layer if structured else None
    return feedback.projection_matrix(channels, positions, model.num_classes, std, rng, layer)


def fixed_weight(model, name, value, trainable=False):
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
