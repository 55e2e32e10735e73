"""How the output error reaches each local module (SPEC section 3).

A ``Feedback`` object owns one fixed matrix per module (except the last,
which learns from the true cross-entropy) and turns a module's output into
the CE term of its local loss:

* route ``global`` (DFA): the surrogate mean_b <stop_grad(delta_i), h_i>,
  delta_i = e D_i^T, broadcast over positions (``spatial="broadcast"``) or
  sent to every unit of the map (``spatial="full"``);
* route ``local``: the true CE of fixed read-out logits pool2x2(h_i) Q_i.

SSA builds each matrix from the feedback factors of the module's output layer
(D_i = Bbar_U diag(B_s) R_i, R_i fixed random); DFA uses a plain Gaussian.
Both are rescaled to the same standard deviation, so the routes differ only
in structure.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from ssa_tf.methods import losses

ROUTES = ("global", "local", "chain")
SPATIAL = ("broadcast", "full")


def bar_feedback_U(layer) -> np.ndarray:
    """B_U of a layer as an (out_channels, r) matrix (conv: summed over the kernel width)."""
    B_U = np.asarray(ops.convert_to_numpy(layer.B_U), np.float64)
    if hasattr(layer, "kernel_size"):
        n = layer.filters
        B_U = B_U.reshape(n, layer.kernel_size[1], -1).sum(axis=1)
    return B_U


def projection_matrix(out_channels, positions, num_classes, std, rng, layer=None) -> np.ndarray:
    """A fixed (positions * out_channels, K) matrix with entries of the given std.

    ``layer`` (an SVD layer) makes it structured: block p is
    Bbar_U diag(B_s) R_p, so the error arrives in the span of the feedback
    factors that the alignment loss pulls U towards. Without it, Gaussian.
    """
    if layer is None:
        mat = rng.standard_normal((positions * out_channels, num_classes))
    else:
        base = bar_feedback_U(layer) * np.asarray(ops.convert_to_numpy(layer.B_s), np.float64)
        if base.shape[0] != out_channels:
            raise ValueError(f"{layer.name}: feedback factors have {base.shape[0]} outputs, "
                             f"module output has {out_channels} channels")
        blocks = [base @ rng.standard_normal((base.shape[1], num_classes)) for _ in range(positions)]
        mat = np.concatenate(blocks, axis=0)
    mat = mat / (mat.std() + 1e-12) * std
    return mat.astype(np.float32)


def feedback_shape(route, spatial, out_shape, num_classes):
    """(positions, channels, std) of module i's matrix for an output of ``out_shape`` (no batch)."""
    channels = int(out_shape[-1])
    if len(out_shape) == 1:
        positions = 1
    elif route == "local":
        positions = 4  # average-pooled to a 2x2 grid
    elif spatial == "full":
        positions = int(np.prod(out_shape[:-1]))
    else:
        positions = 1
    if route == "local":
        std = 1.0 / math.sqrt(positions * channels)  # logits of order one
    else:
        std = 1.0 / math.sqrt(num_classes * positions * channels)  # Launay et al. 2019
    return positions, channels, std


def ce_term(route, spatial, h, matrix, error, labels):
    """The CE part of a (non-final) module's local loss; see module docstring."""
    if route == "global":
        if len(h.shape) == 4 and spatial == "broadcast":
            # <delta/(HW) broadcast over positions, h> = <delta, mean over positions of h>
            feat = ops.mean(h, axis=(1, 2))
        else:
            feat = ops.reshape(h, (ops.shape(h)[0], -1))
        delta = ops.stop_gradient(ops.matmul(error, ops.transpose(matrix)))
        return ops.mean(ops.sum(delta * feat, axis=-1))
    # route == "local"
    if len(h.shape) == 4:
        h = pool_to_2x2(h)
    feat = ops.reshape(h, (ops.shape(h)[0], -1))
    return losses.cross_entropy(ops.matmul(feat, matrix), labels)


def pool_to_2x2(h):
    """Average-pool a feature map to a 2x2 grid (by quadrants)."""
    H, W = h.shape[1], h.shape[2]
    hh, hw = max(H // 2, 1), max(W // 2, 1)
    rows = [h[:, :hh], h[:, hh:]] if H > 1 else [h, h]
    cells = []
    for r in rows:
        cols = [r[:, :, :hw], r[:, :, hw:]] if W > 1 else [r, r]
        cells.extend(ops.mean(c, axis=(1, 2)) for c in cols)
    return ops.stack(cells, axis=1)  # (B, 4, C)
