"""A tiny network for the saved-run fixture (tests/test_saved_runs.py)."""

import keras


def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden2")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))
