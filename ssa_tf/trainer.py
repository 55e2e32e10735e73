"""The trainer: one Keras model whose ``train_step`` knows the three modes.

``bp`` trains end to end through Keras's own ``train_step``. ``dfa`` and
``ssa`` run the forward pass module by module, each under its own
``GradientTape`` with its input stop-gradiented, compute the output error
e = softmax(z) - onehot(y), then each module's local loss
alpha * CE_i + beta * L_align,i + gamma * L_ortho,i (SPEC sections 3-4),
and apply every module's gradients with one optimizer step.
"""

from __future__ import annotations

import numpy as np
import keras
import tensorflow as tf
from keras import ops

from ssa_tf import chain, feedback, losses
from ssa_tf.layers import svd_layers
from ssa_tf.models import build_modules

from ssa_tf.config import DEFAULT_LEARNING_RATE, MODE_DEFAULTS, MODES


@keras.saving.register_keras_serializable(package="ssa_tf")
class SSAModel(keras.Model):
    """A network of local modules trained with SSA, DFA or BP.

    Build it with the architecture's name; ``get_config`` holds everything
    needed to rebuild it at its current ranks, so ``keras.models.load_model``
    restores a (rank-reduced) model exactly.
    """

    def __init__(self, architecture="mlp", input_shape=(28, 28, 1), num_classes=10, mode="ssa",
                 norm="layer", alpha=1.0, beta=0.01, gamma=0.1, ortho_lambda=0.0,
                 feedback_route=None, feedback_spatial="broadcast", feedback_init=None,
                 feedback_tracking=None, chain_gating=None, chain_jacobians=None,
                 stiefel_retraction=False, seed=1, ranks=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        # None: the mode's default (config.MODE_DEFAULTS)
        defaults = MODE_DEFAULTS[mode]
        feedback_route = defaults["feedback"] if feedback_route is None else feedback_route
        feedback_init = defaults["feedback_init"] if feedback_init is None else feedback_init
        if feedback_tracking is None:
            feedback_tracking = defaults["feedback_tracking"]
        chain_gating = defaults["chain_gating"] if chain_gating is None else chain_gating
        if chain_jacobians is None:
            chain_jacobians = defaults["chain_jacobians"]
        if feedback_route not in feedback.ROUTES:
            raise ValueError(f"unknown feedback route {feedback_route!r}")
        if feedback_spatial not in feedback.SPATIAL:
            raise ValueError(f"unknown feedback_spatial {feedback_spatial!r}")
        self.architecture = architecture
        self.input_dims = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.mode = mode
        self.norm = norm
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.ortho_lambda = float(ortho_lambda)
        self.feedback_route = feedback_route
        self.feedback_spatial = feedback_spatial
        self.feedback_init = feedback_init
        # 0: feedback factors fixed (SPEC). eta > 0: after every step each
        # B_X moves a fraction eta towards X, a gradient step on L_align with
        # respect to the feedback side (Kolen-Pollack-like; BUILD.md).
        self.feedback_tracking = float(feedback_tracking)
        # chain route: gate the feedback network's ReLUs with the forward pass's
        self.chain_gating = bool(chain_gating)
        # gated chain: normalizations and max-pools apply their Jacobians at the
        # forward pass (False: identity and average pooling, SPEC's network)
        self.chain_jacobians = bool(chain_jacobians)
        # SSA: after each step U and V are retracted onto the Stiefel manifold
        # (QR; SPEC section 4's option, off by default)
        self.stiefel_retraction = bool(stiefel_retraction)
        self.seed = int(seed)
        self.local_modules = build_modules(architecture, self.input_dims, self.num_classes, mode,
                                           norm, self.seed, feedback_init, ranks)
        # Build every sublayer now: the optimizer must see all variables
        # before it is built ("Unknown variable" otherwise).
        self._build_all()
        # steps with a NaN or Inf, per module and term (reliability.divergence_guard)
        self.nonfinite_tracker = NonFiniteCounter(len(self.module_names()),
                                                  len(self.NONFINITE_TERMS))
        if mode != "bp":
            self.ce_tracker = keras.metrics.Mean(name="ce_term")
            self.align_tracker = keras.metrics.Mean(name="align_term")
            self.ortho_tracker = keras.metrics.Mean(name="ortho_term")

    # -- construction ---------------------------------------------------------
    def _build_all(self):
        x = ops.zeros((1, *self.input_dims))
        shapes = []
        for m in self.local_modules:
            x = m(x, training=False)
            shapes.append(tuple(x.shape[1:]))
        self.module_output_shapes = shapes
        self.feedback_matrices = []
        if self.mode == "bp":
            self.built = True
            return
        rng = np.random.default_rng(self.seed + 7919)
        self.feedback_kernels = {}
        if self.feedback_route == "chain":
            # SVD layers carry their feedback factors; plain layers get a kernel
            kernels = chain.plain_feedback_kernels(self.local_modules, self.feedback_init, rng)
            for name, k in kernels.items():
                self.feedback_kernels[name] = self.add_weight(
                    name=f"feedback_kernel_{name}", shape=k.shape, trainable=False,
                    initializer=keras.initializers.Constant(k))
            self.built = True
            return
        for i, (m, shape) in enumerate(zip(self.local_modules[:-1], shapes[:-1])):
            positions, channels, std = feedback.feedback_shape(
                self.feedback_route, self.feedback_spatial, shape, self.num_classes)
            structured = m.output_layer if self.mode == "ssa" else None
            mat = feedback.projection_matrix(channels, positions, self.num_classes, std, rng,
                                             structured)
            var = self.add_weight(name=f"feedback_{i}", shape=mat.shape, trainable=False,
                                  initializer=keras.initializers.Constant(mat))
            self.feedback_matrices.append(var)
        self.built = True

    def build(self, input_shape=None):
        # everything was built in __init__; Keras calls this on load
        self.built = True

    def svd_layers(self):
        return [l for m in self.local_modules for l in svd_layers(m)]

    def ranks(self) -> dict:
        return {l.name: l.rank for l in self.svd_layers()}

    NONFINITE_TERMS = ("CE term", "alignment term", "orthogonality term", "gradient")

    def module_names(self):
        """The local modules' names; BP trains the network as one module."""
        if self.mode == "bp":
            return ["network (BP)"]
        return [f"{i} ({m.name})" for i, m in enumerate(self.local_modules)]

    def get_config(self):
        return {
            **super().get_config(),
            "architecture": self.architecture, "input_shape": self.input_dims,
            "num_classes": self.num_classes, "mode": self.mode, "norm": self.norm,
            "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
            "ortho_lambda": self.ortho_lambda, "feedback_route": self.feedback_route,
            "feedback_spatial": self.feedback_spatial, "feedback_init": self.feedback_init,
            "feedback_tracking": self.feedback_tracking, "chain_gating": self.chain_gating,
            "chain_jacobians": self.chain_jacobians,
            "stiefel_retraction": self.stiefel_retraction,
            "seed": self.seed, "ranks": self.ranks(),
        }

    # -- forward --------------------------------------------------------------
    def call(self, x, training=False):
        for m in self.local_modules:
            x = m(x, training=training)
        return x

    # -- training -------------------------------------------------------------
    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.mode == "bp":
            with tf.GradientTape() as tape:
                logits = self(x, training=True)
                loss = self._compute_loss(x=x, y=y, y_pred=logits, training=True)
            variables = self.trainable_variables
            grads = tape.gradient(loss, variables)
            bad = tf.stack([[_nonfinite(loss), 0.0, 0.0, _nonfinite(*grads)]])
            grads = _zero_if(bad, grads)
            self.optimizer.apply_gradients(zip(grads, variables))
        else:
            grads_and_vars, logits, terms, bad = self.local_gradients(x, y)
            grads = _zero_if(bad, [g for g, _ in grads_and_vars])
            self.optimizer.apply_gradients(zip(grads, [v for _, v in grads_and_vars]))
            if self.feedback_tracking and self.mode == "ssa":
                eta = self.feedback_tracking
                for layer in self.svd_layers():
                    for b, f in ((layer.B_U, layer.U), (layer.B_s, layer.s), (layer.B_V, layer.V)):
                        b.assign(b + eta * (f - b))
            if self.stiefel_retraction and self.mode == "ssa":
                for layer in self.svd_layers():
                    for factor in (layer.U, layer.V):
                        factor.assign(stiefel_retract(factor))
            # the logged loss is the network's CE, as in BP, so modes compare
            loss = self._compute_loss(x=x, y=y, y_pred=logits, training=True)
            for tracker, value in zip((self.ce_tracker, self.align_tracker, self.ortho_tracker),
                                      terms):
                tracker.update_state(value)
        self.nonfinite_tracker.update_state(bad)
        # Keras scales a compiled loss by 1/replicas (so that replicas' gradients
        # sum to the global mean); the logged value is the unscaled one
        self._loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(x)[0])
        logs = self.compute_metrics(x, y, logits)
        logs.pop(self.nonfinite_tracker.name, None)
        return logs

    def test_step(self, data):
        # the local-loss terms are training quantities; keep them out of val_*
        logs = super().test_step(data)
        return {k: v for k, v in logs.items()
                if not k.endswith("_term") and k != self.nonfinite_tracker.name}

    def local_gradients(self, x, y):
        """Each module's gradient of its own local loss; nothing crosses modules.

        Returns (list of (grad, var)), the logits, the sums over modules of
        the CE, alignment and orthogonality terms (unweighted, per replica),
        and a (modules, 4) matrix: 1 where module i's CE, alignment or
        orthogonality term or its gradient is not finite.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        tapes, outputs = [], []
        h = x
        for m in self.local_modules:
            tape = tf.GradientTape()
            with tape:
                h = m(ops.stop_gradient(h), training=True)
            tapes.append(tape)
            outputs.append(h)
        logits = outputs[-1]
        error = ops.stop_gradient(losses.output_error(logits, y, self.num_classes))
        signals = self.chain_signals(outputs, error)

        grads_and_vars = []
        sums = [0.0, 0.0, 0.0]
        bad = []
        for i, (m, tape, h) in enumerate(zip(self.local_modules, tapes, outputs)):
            with tape:  # re-entering continues recording on module i's tape
                loss, terms = self.module_loss(i, h, error, y, signals)
                # each replica holds a copy of the terms; the optimizer sums
                # replicas' gradients, so divide to get the global mean
                loss = loss / replicas
            variables = m.trainable_variables
            grads = tape.gradient(loss, variables)
            grads_and_vars.extend(zip(grads, variables))
            sums = [a + b for a, b in zip(sums, terms)]
            bad.append(tf.stack([*(_nonfinite(t) for t in terms), _nonfinite(*grads)]))
        return grads_and_vars, logits, sums, tf.stack(bad)

    def chain_signals(self, outputs, error):
        """Route ``chain``: each module's signal J_i^T e, rescaled to the std of e.

        The linear chain's gain differs from module to module (SPEC section 3);
        other routes return None.
        """
        if self.feedback_route != "chain":
            return None
        deltas = chain.chain_signals(self.local_modules, outputs, error, self.feedback_kernels,
                                     gated=self.chain_gating, jacobians=self.chain_jacobians)
        # global-batch statistics, so that replicas rescale alike
        scale = global_std(error)
        return [ops.stop_gradient(d * scale / (global_std(d) + 1e-12)) for d in deltas]

    def module_loss(self, i, h, error, y, signals=None):
        """L_i = alpha CE_i + beta L_align,i + gamma L_ortho,i for module i's output h.

        ``error`` is the (stop-gradiented) output error e; the last module
        uses the true CE of its logits ``h`` instead. Returns (L_i, (CE_i,
        L_align,i, L_ortho,i)).
        """
        if i == len(self.local_modules) - 1:
            ce = losses.cross_entropy(h, y)  # the head learns from the true CE
        elif self.feedback_route == "chain":
            # surrogate whose gradient at h is delta_i / batch
            ce = ops.mean(ops.sum(ops.reshape(signals[i] * h, (ops.shape(h)[0], -1)), axis=-1))
        else:
            ce = feedback.ce_term(self.feedback_route, self.feedback_spatial, h,
                                  self.feedback_matrices[i], error, y)
        loss = self.alpha * ce
        align = ortho = 0.0
        if self.mode == "ssa":
            layers = svd_layers(self.local_modules[i])
            align = sum(losses.alignment_loss(l) for l in layers)
            ortho = sum(losses.orthogonality_loss(l, self.ortho_lambda) for l in layers)
            loss = loss + self.beta * align + self.gamma * ortho
        return loss, (ce, align, ortho)


def _nonfinite(*tensors):
    """1.0 when any element of ``tensors`` is NaN or Inf, else 0.0."""
    flags = [tf.reduce_any(tf.logical_not(tf.math.is_finite(tf.cast(t, tf.float32))))
             for t in tensors if t is not None]
    if not flags:
        return tf.constant(0.0)
    return tf.cast(tf.reduce_any(tf.stack(flags)), tf.float32)


def _zero_if(bad, grads):
    """``grads``, or zeros when ``bad`` flags anything: a non-finite step must not
    reach the weights (Adam then moves by its momentum only)."""
    ok = tf.equal(tf.reduce_sum(bad), 0.0)
    return [g if g is None else tf.where(ok, g, tf.zeros_like(g)) for g in grads]


@keras.saving.register_keras_serializable(package="ssa_tf")
class NonFiniteCounter(keras.metrics.Metric):
    """Counts, per module and term, the steps whose value was NaN or Inf
    (summed over replicas)."""

    def __init__(self, modules=1, terms=4, name="nonfinite", **kwargs):
        super().__init__(name=name, **kwargs)
        self.modules, self.terms = int(modules), int(terms)
        self.counts = self.add_variable(shape=(self.modules, self.terms), initializer="zeros",
                                        name="counts")

    def update_state(self, bad):
        self.counts.assign_add(tf.cast(bad, self.counts.dtype))

    def result(self):
        return tf.convert_to_tensor(self.counts)

    def get_config(self):
        return {**super().get_config(), "modules": self.modules, "terms": self.terms}


def stiefel_retract(X):
    """The Q of X = QR with R's diagonal made positive: orthonormal columns,
    each as close in direction to X's as Gram-Schmidt allows."""
    q, r = tf.linalg.qr(X)
    sign = tf.where(tf.linalg.diag_part(r) < 0, -1.0, 1.0)
    return q * sign


def global_std(t):
    """Standard deviation of ``t`` over the global batch (all replicas)."""
    t = tf.cast(t, tf.float32)
    stats = tf.stack([tf.cast(tf.size(t), tf.float32), tf.reduce_sum(t), tf.reduce_sum(t * t)])
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        stats = ctx.all_reduce(tf.distribute.ReduceOp.SUM, stats)
    n, s1, s2 = stats[0], stats[1], stats[2]
    return tf.sqrt(tf.maximum(s2 / n - (s1 / n) ** 2, 0.0))


@keras.saving.register_keras_serializable(package="ssa_tf")
class FactorAdam(keras.optimizers.Adam):
    """Adam whose rate for the singular values s is ``s_rate_scale`` times the
    rate of everything else (issue 5: do U, V and s want different rates?)."""

    def __init__(self, s_rate_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.s_rate_scale = float(s_rate_scale)

    def update_step(self, gradient, variable, learning_rate):
        if is_singular_values(variable):
            learning_rate = learning_rate * self.s_rate_scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "s_rate_scale": self.s_rate_scale}


def is_singular_values(variable) -> bool:
    """True for an SVD layer's trainable s (named "s"; U and V are "U" and "V")."""
    return variable.name.split(":")[0].split("/")[-1] == "s"


def build_model(architecture, input_shape, num_classes, mode="ssa", learning_rate=None,
                jit_compile=False, s_rate_scale=1.0, **kwargs):
    """An ``SSAModel`` compiled with Adam, sparse CE and accuracy."""
    model = SSAModel(architecture, input_shape, num_classes, mode=mode, **kwargs)
    compile_model(model, learning_rate, jit_compile, s_rate_scale)
    return model


def compile_model(model, learning_rate=None, jit_compile=False, s_rate_scale=1.0):
    lr = DEFAULT_LEARNING_RATE[model.mode] if learning_rate is None else learning_rate
    if s_rate_scale == 1.0:
        optimizer = keras.optimizers.Adam(learning_rate=lr)
    else:
        optimizer = FactorAdam(learning_rate=lr, s_rate_scale=s_rate_scale)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile)
    return model
