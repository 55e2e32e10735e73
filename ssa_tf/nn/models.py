"""One model builder for every rule: a network is a list of local modules.

The learning rules differ in how a module gets its error, not in how the
network is built. A ``LayerFactory`` makes SVD layers for the
rules that train SVD factors (``ssa``, ``svd-bp``, ``fa``, ...) and plain
Keras layers for the others (``bp``, ``dfa``); the builders below only say
which layers go into which module. The last module always holds the
classifier.
"""

from __future__ import annotations

import keras

from ssa_tf.allowed_values import ACTIVATIONS, HEAD_INITS, MODELS, NORMS  # noqa: F401
from ssa_tf.nn.layers import SVDConv2D, SVDDense
from ssa_tf.nn.norm import LocalBatchNorm


class LayerFactory:
    """Makes the layers of one network consistently for a rule."""

    def __init__(self, svd, local, norm, seed, feedback_init, ranks, activation, head_init,
                 conv_factorization):
        self.svd, self.local = bool(svd), bool(local)
        self.conv_factorization = conv_factorization
        self.norm, self.seed = norm, int(seed)
        self.feedback_init = feedback_init
        self.ranks = dict(ranks or {})
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {ACTIVATIONS}")
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {head_init!r}; choose from {HEAD_INITS}")
        self.activation, self.head_init = activation, head_init
        self._count = 0

    def _next_seed(self):
        self._count += 1
        return self.seed * 10007 + self._count

    def dense(self, units, name, head=False):
        init = keras.initializers.GlorotUniform(seed=self._next_seed())
        # a zero head (head_init="zero", Noekland 2016's DFA) lets the hidden
        # modules' first updates count: a random head scrambles them until it aligns
        zero = head and self.head_init == "zero"
        if self.svd:
            return SVDDense(units, rank=self.ranks.get(name), kernel_initializer=init,
                            feedback_seed=self._next_seed() + 5003,
                            feedback_init=self.feedback_init, init_scale=0.0 if zero else 1.0,
                            name=name)
        if zero:
            init = keras.initializers.Zeros()
        return keras.layers.Dense(units, kernel_initializer=init, name=name)

    def conv(self, filters, kernel_size, strides, name, use_bias=None):
        init = keras.initializers.HeNormal(seed=self._next_seed())
        # a bias before a normalization layer is redundant
        use_bias = (self.norm == "none") if use_bias is None else use_bias
        if self.svd:
            return SVDConv2D(filters, kernel_size, strides=strides, padding="same",
                             rank=self.ranks.get(name), use_bias=use_bias, kernel_initializer=init,
                             feedback_seed=self._next_seed() + 5003,
                             feedback_init=self.feedback_init,
                             factorization=self.conv_factorization, name=name)
        return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                                   use_bias=use_bias, kernel_initializer=init, name=name)

    def normalization(self, name):
        if self.norm == "layer":
            return keras.layers.LayerNormalization(axis=-1, name=name)
        if self.norm == "batch":
            # statistics are constants in a local backward (docs/ALGORITHM.md §4)
            return LocalBatchNorm(stop_stat_gradient=self.local, name=name)
        return None


@keras.saving.register_keras_serializable(package="ssa_tf")
class Module(keras.layers.Layer):
    """A local module: layers applied in sequence, trained by one local loss.

    ``output_layer`` is the weight layer whose output channels the module
    emits; SSA builds the module's feedback from its feedback factors.
    """

    def __init__(self, steps, output_layer, **kwargs):
        super().__init__(**kwargs)
        self.steps = list(steps)
        self.output_layer = output_layer

    def call(self, x, training=False):
        for step in self.steps:
            x = _apply(step, x, training)
        return x


@keras.saving.register_keras_serializable(package="ssa_tf")
class ResidualBlock(keras.layers.Layer):
    """Basic ResNet block: conv-norm-relu-conv-norm (+ shortcut) -relu.

    Inside a module ordinary backprop is allowed, so the whole block is one
    local module (supplementary §2: a "fundamental layer").
    """

    def __init__(self, factory: LayerFactory, filters, strides, in_filters, name):
        super().__init__(name=name)
        f = factory
        self.activation = keras.activations.get(f.activation)
        self.conv1 = f.conv(filters, 3, strides, f"{name}_conv1")
        self.norm1 = f.normalization(f"{name}_norm1")
        self.conv2 = f.conv(filters, 3, 1, f"{name}_conv2")
        self.norm2 = f.normalization(f"{name}_norm2")
        if strides != 1 or in_filters != filters:
            self.proj = f.conv(filters, 1, strides, f"{name}_proj")
            self.proj_norm = f.normalization(f"{name}_proj_norm")
        else:
            self.proj = self.proj_norm = None

    def call(self, x, training=False):
        y = _apply(self.norm1, self.conv1(x), training)
        y = self.activation(y)
        y = _apply(self.norm2, self.conv2(y), training)
        shortcut = x if self.proj is None else _apply(self.proj_norm, self.proj(x), training)
        return self.activation(y + shortcut)


def _apply(layer, x, training):
    if layer is None:
        return x
    if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.Activation,
                          keras.layers.Flatten, keras.layers.MaxPooling2D,
                          keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
                          keras.layers.Dense, keras.layers.Conv2D, SVDDense, SVDConv2D)):
        return layer(x)
    return layer(x, training=training)


def _unit(factory, layer, name, pool=None):
    """weight layer -> norm -> activation (-> pool), as one module."""
    steps = [layer, factory.normalization(f"{name}_norm"),
             keras.layers.Activation(factory.activation)]
    if pool is not None:
        steps.append(pool)
    return Module([s for s in steps if s is not None], output_layer=layer, name=name)


def _head(factory, num_classes, name, pre=()):
    fc = factory.dense(num_classes, "classifier", head=True)
    return Module([*pre, fc], output_layer=fc, name=name)


def mlp(factory, input_shape, num_classes, hidden=(256, 256)):
    """3 weight layers: flatten -> 256 -> 256 -> classes."""
    mods = []
    for i, units in enumerate(hidden):
        name = f"m{i}"
        layer = factory.dense(units, f"{name}_dense")
        mod = _unit(factory, layer, name)
        if i == 0:
            mod.steps.insert(0, keras.layers.Flatten())
        mods.append(mod)
    mods.append(_head(factory, num_classes, f"m{len(hidden)}"))
    return mods


def smallconv(factory, input_shape, num_classes):
    """conv32-pool-conv64-pool-conv128, pool to 2x2, fc512, classifier (5 modules)."""
    h, w = input_shape[0], input_shape[1]
    mods = [
        _unit(factory, factory.conv(32, 3, 1, "m0_conv"), "m0", keras.layers.MaxPooling2D(2)),
        _unit(factory, factory.conv(64, 3, 1, "m1_conv"), "m1", keras.layers.MaxPooling2D(2)),
    ]
    h, w = h // 4, w // 4
    if h < 2 or w < 2:
        raise ValueError(f"smallconv needs inputs of at least 8x8, got {input_shape}")
    mods.append(_unit(factory, factory.conv(128, 3, 1, "m2_conv"), "m2",
                      keras.layers.AveragePooling2D((h // 2, w // 2))))
    fc = factory.dense(512, "m3_dense")
    m3 = _unit(factory, fc, "m3")
    m3.steps.insert(0, keras.layers.Flatten())
    mods.append(m3)
    mods.append(_head(factory, num_classes, "m4"))
    return mods


def _resnet(factory, num_classes, stem, stages, blocks_per_stage):
    mods = [stem]
    in_f = stages[0] if stem is not None else None
    blocks = []
    for si, filters in enumerate(stages):
        for bi in range(blocks_per_stage):
            strides = 2 if (bi == 0 and si > 0) else 1
            blocks.append(ResidualBlock(factory, filters, strides, in_f, f"s{si}b{bi}"))
            in_f = filters
    for j, blk in enumerate(blocks[:-1]):
        mods.append(Module([blk], output_layer=blk.conv2, name=f"m{j + 1}"))
    mods.append(_head(factory, num_classes, f"m{len(blocks)}",
                      pre=(blocks[-1], keras.layers.GlobalAveragePooling2D())))
    return mods


def resnet32(factory, input_shape, num_classes):
    """CIFAR ResNet-32: stem + 3 stages x 5 blocks (16/32/64); 16 local modules."""
    stem = _unit(factory, factory.conv(16, 3, 1, "m0_conv"), "m0")
    return _resnet(factory, num_classes, stem, (16, 32, 64), 5)


def resnet18(factory, input_shape, num_classes):
    """ImageNet ResNet-18: 7x7/2 stem + max-pool, 4 stages x 2 blocks; 9 local modules."""
    stem = _unit(factory, factory.conv(64, 7, 2, "m0_conv"), "m0",
                 keras.layers.MaxPooling2D(3, strides=2, padding="same"))
    return _resnet(factory, num_classes, stem, (64, 128, 256, 512), 2)


BUILDERS = {"mlp": mlp, "smallconv": smallconv, "resnet32": resnet32, "resnet18": resnet18}


def build_modules(name, input_shape, num_classes, svd=True, local=True, *, norm, seed=1,
                  feedback_init="random", ranks=None, activation, head_init, conv_factorization):
    """The local modules of architecture ``name``: SVD layers if ``svd``; ``local``
    rules hold batch statistics constant in their backward pass. ``norm``, ``activation``,
    ``head_init`` and ``conv_factorization`` have no defaults here: ``SSAModel`` passes
    them resolved (``config.schema.fill_defaults``)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    factory = LayerFactory(svd, local, norm, seed, feedback_init, ranks, activation, head_init,
                           conv_factorization)
    return BUILDERS[name](factory, tuple(input_shape), num_classes)
