"""The built-in networks, built as Keras models and converted like a user's.

    network, ends, outputs = build_network("resnet32", (32, 32, 3), 10, norm="layer",
                                           seed=1, activation="leaky_relu")

Each builder writes a plain functional ``keras.Model`` (Dense, Conv2D, normalization,
activation, pooling, Add) whose layers carry stable names (``m0_conv``, ``s1b0_conv1``,
``classifier``: the names rank cuts are recorded under), and says where its local modules
end and which weight layer each emits from (a block's conv2, not its shortcut's
projection). ``build_modules`` then hands it to the one converter every network goes through
(``nn.user.modules_from_keras``): SVD layers for the rules that train SVD factors, local
batch norms, the cut into modules. The last module always holds the classifier.

Seeds: the i-th weight layer (1-based, in building order) draws its weights with seed
``seed * 10007 + i`` for the plain rules, and for the SVD rules with ``seed * 10007 + 2i - 1``,
the converter drawing its random feedback with ``... + 2i + 5003`` (the built-in models'
draws since their first version).
"""

from __future__ import annotations

import keras

from ssa_tf.allowed_values import ACTIVATIONS, HEAD_INITS, MODELS, NORMS  # noqa: F401
from ssa_tf.nn.user import modules_from_keras


class _Layers:
    """Makes one network's layers: seeded initializers, its norm and activation."""

    def __init__(self, norm, seed, activation, svd):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {ACTIVATIONS}")
        self.norm, self.seed, self.activation = norm, int(seed), activation
        self._count, self._stride = 0, 2 if svd else 1

    def _init(self, kind):
        self._count += 1
        return kind(seed=self.seed * 10007 + self._stride * self._count - (self._stride - 1))

    def dense(self, x, units, name):
        return keras.layers.Dense(units, kernel_initializer=self._init(
            keras.initializers.GlorotUniform), name=name)(x)

    def conv(self, x, filters, kernel_size, strides, name):
        # a bias before a normalization layer is redundant
        return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                                   use_bias=self.norm == "none",
                                   kernel_initializer=self._init(keras.initializers.HeNormal),
                                   name=name)(x)

    def normalize(self, x, name):
        if self.norm == "layer":
            return keras.layers.LayerNormalization(axis=-1, name=name)(x)
        if self.norm == "batch":
            # the converter makes it a LocalBatchNorm (statistics constant in a local backward)
            return keras.layers.BatchNormalization(name=name)(x)
        return x

    def act(self, x, name):
        return keras.layers.Activation(self.activation, name=name)(x)

    def unit(self, x, name, weight):
        """weight layer -> norm -> activation, the body of one module."""
        return self.act(self.normalize(weight, f"{name}_norm"), f"{name}_act")


def mlp(f, x, num_classes, hidden=(256, 256)):
    """3 weight layers: flatten -> 256 -> 256 -> classes."""
    x = keras.layers.Flatten(name="m0_flatten")(x)
    ends = []
    for i, units in enumerate(hidden):
        x = f.unit(x, f"m{i}", f.dense(x, units, f"m{i}_dense"))
        ends.append(f"m{i}_act")
    return f.dense(x, num_classes, "classifier"), ends, [f"m{i}_dense" for i in range(len(hidden))]


def smallconv(f, x, num_classes):
    """conv32-pool-conv64-pool-conv128, pool to 2x2, fc512, classifier (5 modules)."""
    h, w = x.shape[1], x.shape[2]
    if h // 4 < 2 or w // 4 < 2:
        raise ValueError(f"smallconv needs inputs of at least 8x8, got {tuple(x.shape[1:])}")
    x = f.unit(x, "m0", f.conv(x, 32, 3, 1, "m0_conv"))
    x = keras.layers.MaxPooling2D(2, name="m0_pool")(x)
    x = f.unit(x, "m1", f.conv(x, 64, 3, 1, "m1_conv"))
    x = keras.layers.MaxPooling2D(2, name="m1_pool")(x)
    x = f.unit(x, "m2", f.conv(x, 128, 3, 1, "m2_conv"))
    x = keras.layers.AveragePooling2D((h // 8, w // 8), name="m2_pool")(x)
    x = keras.layers.Flatten(name="m3_flatten")(x)
    x = f.unit(x, "m3", f.dense(x, 512, "m3_dense"))
    return (f.dense(x, num_classes, "classifier"), ["m0_pool", "m1_pool", "m2_pool", "m3_act"],
            ["m0_conv", "m1_conv", "m2_conv", "m3_dense"])


def residual_block(f, x, filters, strides, name):
    """Basic ResNet block, conv-norm-act-conv-norm (+ shortcut) -act: one local module
    (inside a module ordinary backprop is allowed; supplementary §2: a "fundamental
    layer")."""
    y = f.act(f.normalize(f.conv(x, filters, 3, strides, f"{name}_conv1"), f"{name}_norm1"),
              f"{name}_act1")
    y = f.normalize(f.conv(y, filters, 3, 1, f"{name}_conv2"), f"{name}_norm2")
    if strides != 1 or x.shape[-1] != filters:
        x = f.normalize(f.conv(x, filters, 1, strides, f"{name}_proj"), f"{name}_proj_norm")
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return f.act(y, f"{name}_act2")


def _resnet(f, x, num_classes, stem_end, stages, blocks_per_stage):
    ends, outputs = [stem_end], ["m0_conv"]
    for si, filters in enumerate(stages):
        for bi in range(blocks_per_stage):
            strides = 2 if (bi == 0 and si > 0) else 1
            x = residual_block(f, x, filters, strides, f"s{si}b{bi}")
            ends.append(f"s{si}b{bi}_act2")
            outputs.append(f"s{si}b{bi}_conv2")  # a block's output channels: conv2's
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # the last block shares the classifier's module
    return f.dense(x, num_classes, "classifier"), ends[:-1], outputs[:-1]


def resnet32(f, x, num_classes):
    """CIFAR ResNet-32: stem + 3 stages x 5 blocks (16/32/64); 16 local modules."""
    x = f.unit(x, "m0", f.conv(x, 16, 3, 1, "m0_conv"))
    return _resnet(f, x, num_classes, "m0_act", (16, 32, 64), 5)


def resnet18(f, x, num_classes):
    """ImageNet ResNet-18: 7x7/2 stem + max-pool, 4 stages x 2 blocks; 9 local modules."""
    x = f.unit(x, "m0", f.conv(x, 64, 7, 2, "m0_conv"))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="m0_pool")(x)
    return _resnet(f, x, num_classes, "m0_pool", (64, 128, 256, 512), 2)


BUILDERS = {"mlp": mlp, "smallconv": smallconv, "resnet32": resnet32, "resnet18": resnet18}


def build_network(name, input_shape, num_classes, *, norm, seed=1, activation, svd=False):
    """(the plain Keras model of architecture ``name``, the names of the layers after
    which its modules end but the last, the names of its modules' output layers: the
    weight layer whose channels each module emits, the classifier last). ``svd``: seeded
    for the SVD rules (see above)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    f = _Layers(norm, seed, activation, svd)
    inputs = keras.Input(tuple(input_shape), name="image")
    logits, ends, outputs = BUILDERS[name](f, inputs, num_classes)
    return keras.Model(inputs, logits, name=name), ends, [*outputs, "classifier"]


def build_modules(name, input_shape, num_classes, svd=True, local=True, *, norm, seed=1,
                  feedback_init="random", ranks=None, activation, head_init, conv_factorization,
                  network=None, ends=None):
    """The local modules of a network: the built-in architecture ``name``, or the user's
    Keras model ``network`` (split after the layers ``ends``, or where its graph allows;
    ``nn.user``). Either is converted by ``nn.user.modules_from_keras``: SVD layers if
    ``svd``; ``local`` rules hold batch statistics constant in their backward pass. A
    built-in network's modules are named m0, m1, ... ``norm``, ``activation``, ``head_init``
    and ``conv_factorization`` have no defaults here: ``SSAModel`` passes them resolved
    (``config.schema.fill_defaults``; a user's network has its own layers)."""
    built_in, outputs = network is None, None
    if built_in:
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {head_init!r}; choose from {HEAD_INITS}")
        network, ends, outputs = build_network(name, input_shape, num_classes, norm=norm,
                                               seed=seed, activation=activation, svd=svd)
    return modules_from_keras(network, svd=svd, local=local, feedback_init=feedback_init,
                              seed=seed, ranks=ranks, head_init=head_init, ends=ends,
                              conv_factorization=conv_factorization or "spatial",
                              numbered=built_in, output_layers=outputs)
