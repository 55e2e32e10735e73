"""How the output error reaches each local module (docs/ALGORITHM.md §3).

A ``Feedback`` object owns one fixed matrix per module (except the last,
which learns from the true cross-entropy) and turns a module's output into
the CE term of its local loss:

* the global route (DFA): the surrogate mean_b <stop_grad(delta_i), h_i>,
  delta_i = e D_i^T, broadcast over positions (``spatial="broadcast"``) or
  sent to every unit of the map (``spatial="full"``);
* the local route: the true CE of read-out logits pool(h_i) Q_i, the map
  average-pooled to a small grid (2x2 by default; LLS pools the first layer
  to 4x4); Q_i fixed, or trained on that CE alone (``readout_trained``).

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
from ssa_tf.nn.svd import serial_blas

def bar_feedback_U(layer) -> np.ndarray:
    """B_U of a layer as an (out_channels, r) matrix (a convolution's spatial view: summed
    over the kernel width; its channel view's B_U already is one)."""
    B_U = np.asarray(ops.convert_to_numpy(layer.B_U), np.float64)
    if hasattr(layer, "kernel_size") and getattr(layer, "factorization", None) != "channel":
        n = layer.filters
        B_U = B_U.reshape(n, layer.kernel_size[1], -1).sum(axis=1)
    return B_U


@serial_blas
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


def readout_grid(out_shape, grid):
    """(rows, columns) a local read-out pools a feature map of ``out_shape`` to."""
    return min(int(grid), int(out_shape[0])), min(int(grid), int(out_shape[1]))


def feedback_shape(out_shape, num_classes, spatial="full", grid=None):
    """(positions, channels, std) of a module's matrix for an output of ``out_shape`` (no
    batch): sent to every unit (``spatial="full"``) or one per channel (broadcast); with
    ``grid``, a local read-out of the map average-pooled to that grid."""
    channels = int(out_shape[-1])
    if len(out_shape) == 1:
        positions = 1
    elif grid is not None:
        gh, gw = readout_grid(out_shape, grid)
        positions = gh * gw  # average-pooled to a grid
    elif spatial == "full":
        positions = int(np.prod(out_shape[:-1]))
    else:
        positions = 1
    if grid is not None:
        std = 1.0 / math.sqrt(positions * channels)  # logits of order one
    else:
        std = 1.0 / math.sqrt(num_classes * positions * channels)  # Launay et al. 2019
    return positions, channels, std


def direct_features(h, spatial="full"):
    """What a direct matrix meets of h: every unit (full), or each channel's mean over a
    feature map's positions (broadcast), as (batch, features)."""
    if len(h.shape) == 4 and spatial == "broadcast":
        # <delta/(HW) broadcast over positions, h> = <delta, mean over positions of h>
        return ops.mean(h, axis=(1, 2))
    return ops.reshape(h, (ops.shape(h)[0], -1))


def direct_ce_term(h, matrix, error, spatial="full"):
    """The surrogate mean_b <stop_grad(e D^T), h> (its gradient at h is DFA's signal / batch),
    e D^T broadcast over a feature map's positions when ``spatial="broadcast"``."""
    feat = direct_features(h, spatial)
    delta = ops.stop_gradient(ops.matmul(error, ops.transpose(matrix)))
    return ops.mean(ops.sum(delta * feat, axis=-1))


def readout_logits(h, matrix, grid=2):
    """The read-out logits pool(h) Q (a map pooled to ``grid``)."""
    if len(h.shape) == 4:
        h = pool_to_grid(h, *readout_grid(h.shape[1:], grid))
    return ops.matmul(ops.reshape(h, (ops.shape(h)[0], -1)), matrix)


def readout_ce_term(h, matrix, labels, grid=2):
    """The cross-entropy of the read-out logits (``readout_logits``)."""
    return losses.cross_entropy(readout_logits(h, matrix, grid), labels)


def head_hidden_layer(out_shape, width, rng):
    """A local head's first layer for a module output of ``out_shape``: a 3x3 convolution
    (a map) or a dense layer (a vector) to ``width`` units, He-initialized, zero bias."""
    channels = int(out_shape[-1])
    shape = (3, 3, channels, width) if len(out_shape) == 3 else (channels, width)
    fan_in = int(np.prod(shape[:-1]))
    kernel = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    return kernel.astype(np.float32), np.zeros((width,), np.float32)


def head_hidden(h, kernel, bias):
    """ReLU(conv3x3(h) + b) for a map, ReLU(h W + b) for a vector."""
    if len(h.shape) == 4:
        return ops.relu(ops.conv(h, kernel, padding="same") + bias)
    return ops.relu(ops.matmul(h, kernel) + bias)


def later_head_targets(shapes, i, depth):
    """The output shapes a head shaped like the later modules (AugLocal, Ma et al. 2024)
    steps through for module i of the hidden modules' ``shapes``: ``depth`` of the n
    modules after i for module 0, fewer in proportion for later ones (round(depth n_i /
    n_0), Python's round: halves to even; at least 1 while any is left), sampled evenly and
    always ending at the last."""
    later = [tuple(int(d) for d in s) for s in shapes[i + 1:]]
    first = len(shapes) - 1
    if not later:
        return []
    d = min(len(later), max(1, round(int(depth) * len(later) / first)))
    picks = [len(later) - 1] if d == 1 else np.round(np.linspace(0, len(later) - 1, d))
    return [later[int(k)] for k in picks]


def later_head_layer(in_shape, target, grid, rng):
    """A later-shaped head's layer from ``in_shape`` to ``target``: a 3x3 convolution to
    the target's channels (map to map) or a dense layer to its width (a map pooled to the
    read-out grid and flattened first); He-initialized, zero bias."""
    if len(target) == 3 and len(in_shape) == 3:
        if int(target[0]) > int(in_shape[0]) or int(target[1]) > int(in_shape[1]):
            raise ValueError(f"a later-shaped head cannot grow a {tuple(in_shape)} map to "
                             f"{tuple(target)}: a later module's map is larger than an "
                             "earlier one's")
        return head_hidden_layer(in_shape, int(target[-1]), rng)
    if len(in_shape) == 3:
        rows, cols = readout_grid(in_shape, grid)
        in_shape = (rows * cols * int(in_shape[-1]),)
    return head_hidden_layer(in_shape, int(target[-1]), rng)


def later_head_hidden(h, kernel, bias, target, grid):
    """One layer of a later-shaped head: ReLU(conv3x3(h) + b), average-pooled to the target
    map's size when it is smaller; or ReLU(flat(h) W + b) for a vector target."""
    if len(target) == 3 and len(h.shape) == 4:
        h = head_hidden(h, kernel, bias)
        rows, cols = int(target[0]), int(target[1])
        if (h.shape[1], h.shape[2]) != (rows, cols):  # never larger: later_head_layer
            h = ops.reshape(pool_to_grid(h, rows, cols), (-1, rows, cols, h.shape[-1]))
        return h
    if len(h.shape) == 4:
        h = pool_to_grid(h, *readout_grid(h.shape[1:], grid))
    return head_hidden(ops.reshape(h, (ops.shape(h)[0], -1)), kernel, bias)


def similarity_matrix(x):
    """The batch's adjusted cosine similarity (B, B): a map of more than 3 channels and
    more than one row is first reduced to each channel's standard deviation over
    positions (Noekland & Eidnes 2019, as their code, anokland/local-loss; a 1x1 map
    would have none), then each row is centred and normalized."""
    if len(x.shape) == 4 and x.shape[3] > 3 and x.shape[1] > 1:
        n = ops.cast(ops.shape(x)[1] * ops.shape(x)[2], x.dtype)
        var = ops.var(x, axis=(1, 2)) * n / ops.maximum(n - 1.0, 1.0)  # unbiased, as torch
        x = ops.sqrt(var + 1e-12)
    x = ops.reshape(x, (ops.shape(x)[0], -1))
    xc = x - ops.mean(x, axis=1, keepdims=True)
    xn = xc / (1e-8 + ops.sqrt(ops.sum(ops.square(xc), axis=1, keepdims=True)))
    return ops.clip(ops.matmul(xn, ops.transpose(xn)), -1.0, 1.0)


def similarity_loss(h, kernel, labels, num_classes):
    """predsim's "sim": the mean squared difference between the similarity matrix of
    the projection h K (a 3x3 convolution for a map) and that of the one-hot labels.
    It compares the samples of one batch (a replica's, under a strategy)."""
    proj = ops.conv(h, kernel, padding="same") if len(h.shape) == 4 else ops.matmul(h, kernel)
    target = similarity_matrix(ops.one_hot(ops.cast(labels, "int32"), num_classes))
    return ops.mean(ops.square(similarity_matrix(proj) - ops.stop_gradient(target)))


def pool_to_grid(h, rows, cols):
    """Average-pool a feature map (B, H, W, C) to a (rows x cols) grid, adaptively (the
    cells of PyTorch's adaptive_avg_pool2d: [floor(i H / n), ceil((i + 1) H / n))).
    Returns (B, rows * cols, C), cells in row-major order."""
    H, W = h.shape[1], h.shape[2]
    if H % rows == 0 and W % cols == 0:
        # equal cells: one reshape and mean (slicing each cell costs its backward a
        # full-size gradient a cell: 64 maps for a 16x16 map pooled to 8x8)
        cells = ops.reshape(h, (-1, rows, H // rows, cols, W // cols, h.shape[-1]))
        return ops.reshape(ops.mean(cells, axis=(2, 4)), (-1, rows * cols, h.shape[-1]))

    def bounds(n, size):
        return [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]

    cells = [ops.mean(h[:, r0:r1, c0:c1], axis=(1, 2))
             for r0, r1 in bounds(rows, H) for c0, c1 in bounds(cols, W)]
    return ops.stack(cells, axis=1)
