"""Alignment diagnostics: how far each local update is from backprop's.

Per local module, the angle between the update the module actually gets
(its local-loss gradient, SSA or DFA) and the true BP gradient of the
network's cross-entropy for the same parameters on the same batch; per SVD
layer, BioTorch's weight metrics: the angle between the forward matrix W and
the feedback matrix B, and the norm ratio ||W|| / ||B||. The paper's theory
claims positive alignment with BP (angle below 90 degrees); this measures it.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import keras
import tensorflow as tf

from ssa_tf.methods import losses
from ssa_tf.nn import noise_state, replaying
from ssa_tf.training.csvlog import keep_rows


def _angle(a, b):
    # in float64 and by the half-angle form: acos of a float32 cosine reads equal
    # vectors as up to 0.03 degrees apart (1 - 1.2e-7 is the cosine next to 1)
    a = np.concatenate([np.ravel(x) for x in a]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in b]).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    a, b = a / na, b / nb
    return math.degrees(2.0 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


def update_angles(model, x, y):
    """Angle in degrees, per module, between the local update and the BP gradient, both
    on the same dropout masks; the batch norms' moving statistics are left alone (a
    measurement is not a training step)."""
    modules = model.local_modules
    noise = noise_state(modules)
    with replaying(modules):
        grads_and_vars = model.local_gradients(tf.convert_to_tensor(x),
                                               tf.convert_to_tensor(y))[0]
    local = {id(v): g for g, v in grads_and_vars}
    with replaying(modules, noise), tf.GradientTape() as tape:
        ce = losses.cross_entropy(model(x, training=True), y)
    groups = [m.trainable_variables for m in model.local_modules]
    all_vars = [v for vs in groups for v in vs]
    bp_all = tape.gradient(ce, all_vars, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    out, k = [], 0
    for vs in groups:
        bp = [g.numpy() for g in bp_all[k:k + len(vs)]]
        k += len(vs)
        out.append(_angle([local[id(v)].numpy() for v in vs], bp))
    return out


def weight_metrics(model):
    """{layer: (angle W vs B in degrees, ||W|| / ||B||)} for every SVD layer."""
    out = {}
    for layer in model.svd_layers():
        W, B = layer.merged_matrix(), layer.feedback_matrix()
        out[layer.name] = (_angle([W], [B]), float(np.linalg.norm(W) / np.linalg.norm(B)))
    return out


class AlignmentMonitor(keras.callbacks.Callback):
    """Every ``every`` training steps, logs update angles (and SVD weight metrics).

    Uses a fixed batch ``(x, y)`` so that values over time compare. Steps are
    the optimizer's (so a resumed run continues the count). Writes
    ``alignment.csv`` (step, quantity, value) and TensorBoard scalars
    ``alignment/<module>`` into ``workdir``.
    """

    def __init__(self, x, y, every=100, workdir=None):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.x, self.y, self.every, self.workdir = x, y, int(every), workdir
        self.rows = []

    def resume_at(self, epoch, step):
        """After a restore: drop alignment.csv rows after optimizer step ``step``."""
        if self.workdir:
            keep_rows(os.path.join(self.workdir, "alignment.csv"),
                      lambda row: int(row["step"]) <= step)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every == 0 or step == 1:
            self.record(step)

    def record(self, step):
        if not self.model.rule.spec.local:
            return  # end to end: the update is the BP gradient
        angles = update_angles(self.model, self.x, self.y)
        rows = [(step, m.name, a) for m, a in zip(self.model.local_modules, angles)]
        if self.model.rule.svd:
            for name, (ang, ratio) in weight_metrics(self.model).items():
                rows.append((step, f"W_vs_B:{name}", ang))
                rows.append((step, f"norm_ratio:{name}", ratio))
        self.rows.extend(rows)
        if not self.workdir:
            return
        path = os.path.join(self.workdir, "alignment.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "quantity", "value"])
            w.writerows(rows)
        writer = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard", "alignment"))
        with writer.as_default():
            for s, name, value in rows:
                tf.summary.scalar(f"alignment/{name}", value, step=s)
        writer.close()
