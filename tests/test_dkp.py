"""The learned-feedback rules (ssa_tf/methods/rules/dkp.py, ssa_dkp.py): the Kolen-Pollack
update, its own rate and decay, and their settings."""

import numpy as np
import pytest
import tensorflow as tf

from ssa_tf import config as cfg_lib
from ssa_tf.training.model import SSAModel, compile_model

SHAPE = (8, 8, 3)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *SHAPE)), tf.float32),
            tf.constant(rng.integers(0, 10, n), tf.int32),
            tf.constant(rng.standard_normal((n, 10)), tf.float32))


@pytest.mark.parametrize("rule,spatial", [("dkp", "full"), ("dkp", "broadcast"),
                                          ("ssa-dkp", "full")])
def test_the_feedback_gradient_is_h_transposed_e_over_the_batch(rule, spatial):
    options = {} if rule == "ssa-dkp" else {"feedback_spatial": spatial}
    model = SSAModel("smallconv", SHAPE, 10, rule=rule, **options)
    x, y, e = _batch()
    grads = model.local_gradients(x, y, error=e)[0]
    for i, D in enumerate(model.rule.route.matrices):
        g = [g for g, v in grads if v is D][0].numpy()
        h = x
        for m in model.local_modules[:i + 1]:
            h = m(h, training=True)
        h = h.numpy()
        feat = (h.mean(axis=(1, 2)) if spatial == "broadcast" and h.ndim == 4
                else h.reshape(len(h), -1))
        want = feat.T @ e.numpy() / len(h) + 1e-6 * D.numpy()  # + the weight decay
        np.testing.assert_allclose(g, want, atol=1e-5 * np.abs(want).max())


def test_the_feedback_trains_at_its_own_rate_decayed_each_epoch():
    model = SSAModel("mlp", SHAPE, 10, rule="dkp", feedback_lr=1e-3, feedback_decay=0.5)
    compile_model(model, learning_rate=1e-2, steps_per_epoch=2)
    x, y, _ = _batch()
    D = model.rule.route.matrices[0]
    moved = []
    for step in range(4):  # epochs 0, 0, 1, 1
        before = D.numpy().copy()
        model.train_on_batch(x, y)
        moved.append(float(np.abs(D.numpy() - before).max()))
    # Adam's first step moves each entry by about its rate; never more than ~the rate
    assert 0.9e-3 < moved[0] <= 1.01e-3
    assert moved[2] <= 0.51e-3 and moved[3] <= 0.51e-3
    assert float(model.optimizer.feedback_rate()) == pytest.approx(1e-3 * 0.5 ** 2)


@pytest.mark.parametrize("sets,message", [
    (["rule.name=dkp", "rule.feedback=chain"], "rule.feedback='chain' is not valid"),
    (["rule.name=ssa-dkp", "rule.feedback=local"], "rule.feedback='local' is not valid"),
    (["rule.name=dkp", "rule.feedback_decay=2"], "rule.feedback_decay must be in [0, 1]"),
    (["rule.name=dkp", "rule.feedback_lr=0"], "rule.feedback_lr must be > 0"),
    (["rule.name=ssa-dkp", "rule.feedback_spatial=broadcast"],
     "rule.feedback_spatial applies to the global route only, not rule.feedback=chain"),
    (["rule.name=ssa", "rule.feedback_lr=1e-4"],
     "rule.feedback_lr does not apply to --rule=ssa (it applies to --rule=dkp|ssa-dkp)"),
])
def test_learned_feedback_settings_are_checked_in_one_line(sets, message):
    assert message in cfg_lib.validate(cfg_lib.RunConfig().with_overrides(sets))


def test_the_cards_say_the_feedback_learns_and_nothing_is_transported():
    for rule, transport in (("dkp", "never"), ("ssa-dkp", "once at construction")):
        card = cfg_lib.RunConfig().with_overrides([f"rule.name={rule}"]).card()
        assert (card.sequential, card.weight_transport, card.feedback, card.direct) == \
            (False, transport, "learns locally", True)
