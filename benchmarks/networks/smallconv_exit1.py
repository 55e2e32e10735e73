"""smallconv up to its module m1, then the conv head a local-head run trains there.

The network a local-head run of smallconv computes when it answers from module m1's
head (``benchmarks.module_probes``): conv32-norm-leaky ReLU-pool, conv64-norm-leaky
ReLU-pool (smallconv's m0 and m1, layer norm), then the head: a 3x3 convolution to 64
channels with bias and ReLU, the map averaged to a 2x2 grid (``smallconv_exit1_grid4.py``:
4x4), a linear read-out without bias. Trained end to end by BP (``--model=benchmarks/networks/smallconv_exit1.py
--rule=bp``), it is the control of that exit: the same network, another rule.
"""

import keras

GRID = 2  # the head's pooled grid (rule.readout_grid)


def build(input_shape, num_classes, grid=GRID):
    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((32, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                kernel_initializer="he_normal", name=f"m{i}_conv")(x)
        x = keras.layers.LayerNormalization(axis=-1, name=f"m{i}_norm")(x)
        x = keras.layers.Activation("leaky_relu", name=f"m{i}_act")(x)
        x = keras.layers.MaxPooling2D(2, name=f"m{i}_pool")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu",
                            kernel_initializer="he_normal", name="head_conv")(x)
    rows, cols = x.shape[1] // grid, x.shape[2] // grid
    x = keras.layers.AveragePooling2D((rows, cols), name="head_pool")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, use_bias=False,
                                                  name="head_logits")(x))
