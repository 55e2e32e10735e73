"""SSA with its default settings learns a convolutional network where DFA does not.

smallconv, 2 epochs (126 steps of 64) on the 4,000 embedded MNIST digits.
Measured on seeds 1, 2, 3 (python /tmp margin script, see BUILD.md):
SSA 0.925 / 0.919 / 0.914, DFA 0.067 / 0.279 / 0.356, a margin of at least
0.56. The test asserts half of that.
"""

import keras

from ssa_tf import data
from ssa_tf.trainer import build_model


def accuracy(mode, seed=2):
    spec = data.load("mnist5k", 64, seed=seed)
    keras.utils.set_random_seed(seed)
    model = build_model("smallconv", (28, 28, 1), 10, mode=mode, seed=seed)
    model.fit(spec.train, epochs=2, verbose=0)
    return model.evaluate(spec.test, verbose=0, return_dict=True)["accuracy"]


def test_ssa_defaults_beat_dfa_clearly_on_a_conv_net():
    ssa, dfa = accuracy("ssa"), accuracy("dfa")
    assert ssa > 0.8, ssa
    assert ssa - dfa > 0.28, (ssa, dfa)
