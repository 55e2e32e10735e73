"""The names a run's settings choose from: the one list of each (no imports at all).

The modules that act on a setting (``config.validate``, ``nn.models``, ``nn.svd``,
``export``) import their list from here, so a name added here is accepted everywhere at
once. The learning rules' names are ``methods.registry.NAMES``.
"""

MODELS = ("mlp", "smallconv", "resnet32", "resnet18")
DATASETS = ("mnist5k", "cifar10", "cifar100", "imagenet2012", "synthetic")
LABELS = ("fine", "coarse")  # cifar100 only
NORMS = ("layer", "batch", "none")
ACTIVATIONS = ("relu", "leaky_relu", "tanh")
HEAD_INITS = ("zero", "glorot")
# how SVDConv2D views its kernel as a matrix (docs/ALGORITHM.md §2)
CONV_FACTORIZATIONS = ("spatial", "channel")
# how a rank cut treats the feedback factors (nn.svd.truncate)
RANK_FEEDBACK_CUTS = ("slots", "svd", "first")
# what a rank cut keeps a fraction tau of (training.rank, docs/ALGORITHM.md §5): the energy
# of the weight's singular values (the paper's), or of the layer's outputs on training inputs
RANK_ENERGIES = ("weights", "outputs")
# what a rank cut does to the variables (training.rank): recreate them at the new rank (the
# steps after it cheaper, retraced), or zero the dropped components in place (no retrace)
RANK_CUT_FORMS = ("resize", "in_place")
# how SVDConv2D evaluates its convolution, in training and in an export
FORWARD_FORMS = ("auto", "merged", "factored")
# an export's: also "measured", each layer's two forms timed in onnxruntime
EXPORT_FORMS = (*FORWARD_FORMS, "measured")
# auto: mirrored on more than one GPU, else one device (ssa_tf.training.strategies)
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PROGRESS = ("auto", "bar", "epoch", "none")
# the dtype of every convolution's input gradient (nn.precision, train.error_dtype)
ERROR_DTYPES = ("float32", "bfloat16")
