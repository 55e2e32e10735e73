"""The network: SVD layers (``layers``, ``svd``), the local batch norm (``norm``) and the
built-in networks (``models``), converted like a user's model (``user``)."""

from ssa_tf.nn.layers import SVDConv2D, SVDDense, svd_layers
from ssa_tf.nn.norm import LocalBatchNorm, noise_state, replaying
from ssa_tf.nn.models import MODELS, build_modules, build_network
from ssa_tf.nn.svd import SVDLayer, energy_rank, exact_singular_values, svd_factors

__all__ = ["LocalBatchNorm", "MODELS", "SVDConv2D", "SVDDense",
           "SVDLayer", "build_modules", "build_network", "energy_rank", "exact_singular_values", "noise_state",
           "replaying",
           "svd_factors", "svd_layers"]
