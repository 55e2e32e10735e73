"""SSA with its default settings learns a convolutional network where DFA does not.

smallconv, 2 epochs (126 steps of 64) on the 4,000 embedded MNIST digits.
Measured with the defaults of 2026-12-01 (the chain applying the norms' and
max-pools' Jacobians) by ``python -m benchmarks.accuracy_margin --seeds=1,2,3``:
SSA 0.930 / 0.931 / 0.899, DFA 0.317 / 0.213 / 0.305 on seeds 1, 2, 3, a
margin of at least 0.59. The test asserts about half of that.
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
