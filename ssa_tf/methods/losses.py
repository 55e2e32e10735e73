"""The terms of SSA's composite local loss (docs/ALGORITHM.md §4, supplementary eq. 1-19).

Each function returns a scalar for one SVD layer; the trainer sums them over
a module's layers and weights them with alpha, beta, gamma.
"""

from __future__ import annotations

from keras import ops
import tensorflow as tf


def cosine_alignment_loss(layer):
    """sum_j (1 - cos^2(u_j, B_U,j)) + (1 - cos^2(v_j, B_V,j)): each singular vector's
    direction towards its feedback column's line [choice beyond the paper].

    Unlike eq. 5 it is blind to scale and sign (a column and its negative are equally
    aligned) and leaves s alone, so it does not pull the weight back towards the
    feedback factors' values (with feedback from the initial weight: towards the
    initial weight) the way ||X - B_X||^2 does; it pulls only the directions."""
    def term(X, B):
        dot = ops.sum(X * B, axis=0)
        norms = ops.sum(ops.square(X), axis=0) * ops.sum(ops.square(B), axis=0)
        return ops.sum(_live(X) * (1.0 - ops.square(dot) / (norms + 1e-12)))

    return term(layer.U, layer.B_U) + term(layer.V, layer.B_V)


def alignment_loss(layer, form="factors"):
    """The alignment term of ``form``: eq. 5 (``factors``, the paper's) or
    ``cosine_alignment_loss``."""
    if form == "cosine":
        return cosine_alignment_loss(layer)
    return factor_alignment_loss(layer)


def factor_alignment_loss(layer):
    """||U - B_U||_F^2 + ||s - B_s||^2 + ||V - B_V||_F^2 (eq. 5); gradient 2 (X - B_X) (eq. 7)."""
    return (ops.sum(ops.square(layer.U - layer.B_U))
            + ops.sum(ops.square(layer.s - layer.B_s))
            + ops.sum(ops.square(layer.V - layer.B_V)))


def _live(X):
    """1 for each column of X that is not all zero, else 0: a component a cut in place
    zeroed (``SVDLayer.truncate``) adds nothing to a term's value (its gradient is zero
    either way), so the logged terms are the resized layer's."""
    return ops.cast(ops.any(ops.not_equal(X, 0), axis=0), X.dtype)


def _gram_defect(X):
    """||X^T X - I||_F^2, I's ones on the live columns only (``_live``)."""
    return ops.sum(ops.square(ops.matmul(ops.transpose(X), X) - ops.diag(_live(X))))


def orthogonality_loss(layer, lam: float = 0.0):
    """||U^T U - I||_F^2 + ||V^T V - I||_F^2 (eq. 12), plus lam (||U||^2 + ||V||^2) (eq. 19).

    Gradient with respect to U is 4 U (U^T U - I) (eq. 14), likewise for V.
    """
    loss = _gram_defect(layer.U) + _gram_defect(layer.V)
    if lam:
        loss = loss + lam * (ops.sum(ops.square(layer.U)) + ops.sum(ops.square(layer.V)))
    return loss


def stiefel_retract(X):
    """The Q of X = QR with R's diagonal made positive: orthonormal columns, each as close
    in direction to X's as Gram-Schmidt allows (``rule.stiefel_retraction``: the
    orthogonality term's constraint made exact after each step)."""
    q, r = tf.linalg.qr(X)
    sign = tf.where(tf.linalg.diag_part(r) < 0, -1.0, 1.0)
    return q * sign


def output_error(logits, labels, num_classes):
    """e = softmax(z) - onehot(y) (eq. 2), the gradient of CE at the logits."""
    return ops.softmax(logits, axis=-1) - ops.one_hot(ops.cast(labels, "int32"), num_classes)


def cross_entropy(logits, labels):
    """Mean sparse softmax cross-entropy over the batch."""
    return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
