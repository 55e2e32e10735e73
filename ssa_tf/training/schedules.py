"""Learning-rate schedules of a run: ``WarmupAfterCuts``, the ramp after each rank cut
(``rank.warmup_steps``)."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ssa_tf")
class WarmupAfterCuts(keras.optimizers.schedules.LearningRateSchedule):
    """``base`` (a rate or a schedule), ramped up linearly over ``warmup_steps``
    steps after each of ``cut_steps``: the k-th step after a cut (k = 1..W)
    runs at k/W of the base rate.

    Stateless (the cut steps are known in advance from the rank schedule), so
    it composes with the epoch-wise decays and a resumed run continues it
    exactly.
    """

    def __init__(self, base, cut_steps, warmup_steps):
        self.base = base
        self.cut_steps = sorted(int(c) for c in cut_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        rate = self.base(step) if callable(self.base) else self.base
        if not self.cut_steps or self.warmup_steps < 1:
            return rate
        step = tf.cast(step, tf.float32)
        cuts = tf.constant(self.cut_steps, tf.float32)
        last = tf.reduce_max(tf.where(cuts <= step, cuts, -1e12))
        factor = tf.minimum(1.0, (step - last + 1.0) / float(self.warmup_steps))
        return tf.cast(rate, tf.float32) * factor

    def get_config(self):
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {"base": base, "cut_steps": self.cut_steps, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        base = config["base"]
        if isinstance(base, dict):
            base = keras.optimizers.schedules.deserialize(base)
        return cls(base, config["cut_steps"], config["warmup_steps"])
