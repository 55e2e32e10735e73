"""The names a run's settings choose from (no TensorFlow)."""

from ssa_tf.methods import registry

MODES = registry.NAMES
MODELS = ("mlp", "smallconv", "resnet32", "resnet18")
DATASETS = ("mnist5k", "cifar10", "cifar100", "imagenet2012", "synthetic")
LABELS = ("fine", "coarse")  # cifar100 only
NORMS = ("layer", "batch", "none")
ACTIVATIONS = ("relu", "leaky_relu", "tanh")
HEAD_INITS = ("zero", "glorot")
CONV_FACTORIZATIONS = ("spatial", "channel")  # ssa_tf.nn.svd.CONV_FACTORIZATIONS
RANK_FEEDBACK_CUTS = ("slots", "svd", "first")
RANK_ENERGIES = ("weights", "outputs")  # ssa_tf.nn.svd.CUT_ENERGIES
# auto: mirrored on more than one GPU, else one device (ssa_tf.training.strategies)
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PROGRESS = ("auto", "bar", "epoch", "none")
