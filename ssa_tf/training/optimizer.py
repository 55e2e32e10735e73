"""The optimizers: ``FusedAdam`` (Keras's Adam, one fused op a variable) and, for a rule
with rates of its own, ``FactorAdam`` (a scaled rate for singular values and a learned
feedback's own, decaying rate)."""

from __future__ import annotations

import keras
import tensorflow as tf

from ssa_tf.methods.spec import LEARNED_FEEDBACK


@keras.saving.register_keras_serializable(package="ssa_tf")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam with each variable's update as one ``ResourceApplyAdam`` op (the same
    arithmetic to float rounding: m, v and the bias-corrected step of Kingma & Ba at step
    iterations + 1, epsilon added to sqrt(v); 1 - beta is computed in float32, so the
    weights agree with Keras's to about 1e-6 after a few steps).

    Keras's own update builds about 25 ops a variable; with one SVD layer holding three
    trainable factors, the optimizer was 45% of a resnet32 SSA step's 18,000 traced ops,
    and a rank cut retraces the step (``benchmarks/reports/EFFICIENCY.md``). AMSGrad and
    sparse gradients take Keras's path."""

    # Keras's names for its Adam and for ours before this class: a checkpoint keeps the
    # optimizer's variables by path (adam/..._momentum), so a resumed run finds them
    DEFAULT_NAME = "adam"
    _constants = None  # (beta_1^t, beta_2^t, beta_1, beta_2, epsilon) during one update

    def __init__(self, *args, name=None, **kwargs):
        super().__init__(*args, name=name or self.DEFAULT_NAME, **kwargs)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # the step's scalars once, not once a variable
        step = tf.cast(self.iterations + 1, tf.float32)
        b1, b2 = tf.constant(self.beta_1, tf.float32), tf.constant(self.beta_2, tf.float32)
        self._constants = (tf.pow(b1, step), tf.pow(b2, step), b1, b2,
                           tf.constant(self.epsilon, tf.float32))
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._constants = None

    def update_step(self, gradient, variable, learning_rate):
        if (self.amsgrad or isinstance(gradient, tf.IndexedSlices) or self._constants is None
                or variable.dtype != tf.float32):
            return super().update_step(gradient, variable, learning_rate)
        i = self._get_variable_index(variable)
        b1_power, b2_power, b1, b2, epsilon = self._constants
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[i].value.handle,
            v=self._velocities[i].value.handle, beta1_power=b1_power, beta2_power=b2_power,
            lr=tf.cast(learning_rate, tf.float32), beta1=b1, beta2=b2, epsilon=epsilon,
            grad=tf.cast(gradient, tf.float32))


@keras.saving.register_keras_serializable(package="ssa_tf")
class FactorAdam(FusedAdam):
    """Adam whose rate for the singular values s is ``s_rate_scale`` times the
    rate of everything else (to test whether U, V and s want different rates), and, for a
    rule whose feedback learns (``LEARNED_FEEDBACK`` in the variable's name), the rule's
    own feedback rate ``feedback_lr``, times ``feedback_decay`` per epoch of
    ``steps_per_epoch`` steps (DKP's schedule: its own Adam, x0.8 per epoch)."""

    DEFAULT_NAME = "factor_adam"

    def __init__(self, s_rate_scale=1.0, feedback_lr=None, feedback_decay=1.0,
                 steps_per_epoch=0, **kwargs):
        super().__init__(**kwargs)
        self.s_rate_scale = float(s_rate_scale)
        self.feedback_lr = None if feedback_lr is None else float(feedback_lr)
        self.feedback_decay = float(feedback_decay)
        self.steps_per_epoch = int(steps_per_epoch)

    def feedback_rate(self):
        """The learned feedback's rate at the current step."""
        rate = tf.constant(self.feedback_lr, tf.float32)
        if self.steps_per_epoch and self.feedback_decay != 1.0:
            epoch = tf.math.floordiv(tf.cast(self.iterations, tf.float32),
                                     float(self.steps_per_epoch))
            rate = rate * tf.pow(self.feedback_decay, epoch)
        return rate

    def update_step(self, gradient, variable, learning_rate):
        if self.feedback_lr is not None and is_learned_feedback(variable):
            learning_rate = tf.cast(self.feedback_rate(), variable.dtype)
        elif is_singular_values(variable):
            learning_rate = learning_rate * self.s_rate_scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "s_rate_scale": self.s_rate_scale,
                "feedback_lr": self.feedback_lr, "feedback_decay": self.feedback_decay,
                "steps_per_epoch": self.steps_per_epoch}


def is_learned_feedback(variable) -> bool:
    return variable.name.split(":")[0].split("/")[-1].startswith(LEARNED_FEEDBACK)


def is_singular_values(variable) -> bool:
    """True for an SVD layer's trainable s (named "s"; U and V are "U" and "V")."""
    return variable.name.split(":")[0].split("/")[-1] == "s"
