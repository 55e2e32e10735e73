"""The network: SVD layers (``layers``, ``svd``), the local batch norm (``norm``) and the
model builders (``models``)."""

from ssa_tf.nn.layers import SVDConv2D, SVDDense, svd_layers
from ssa_tf.nn.norm import LocalBatchNorm, noise_state, replaying
from ssa_tf.nn.models import MODELS, Module, ResidualBlock, build_modules
from ssa_tf.nn.svd import SVDLayer, energy_rank, exact_singular_values, svd_factors

__all__ = ["LocalBatchNorm", "MODELS", "Module", "ResidualBlock", "SVDConv2D", "SVDDense",
           "SVDLayer", "build_modules", "energy_rank", "exact_singular_values", "noise_state",
           "replaying",
           "svd_factors", "svd_layers"]
