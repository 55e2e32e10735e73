"""The optimizer of a rule with rates of its own: ``FactorAdam`` (Adam with a scaled rate
for singular values and a learned feedback's own, decaying rate)."""

from __future__ import annotations

import keras
import tensorflow as tf

from ssa_tf.methods.spec import LEARNED_FEEDBACK


@keras.saving.register_keras_serializable(package="ssa_tf")
class FactorAdam(keras.optimizers.Adam):
    """Adam whose rate for the singular values s is ``s_rate_scale`` times the
    rate of everything else (to test whether U, V and s want different rates), and, for a
    rule whose feedback learns (``LEARNED_FEEDBACK`` in the variable's name), the rule's
    own feedback rate ``feedback_lr``, times ``feedback_decay`` per epoch of
    ``steps_per_epoch`` steps (DKP's schedule: its own Adam, x0.8 per epoch)."""

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
