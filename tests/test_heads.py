"""Local heads (the local route's trained read-outs): what they train on, what they cost
and that they are gone at export."""

import numpy as np
import pytest
import keras

from ssa_tf.config import RunConfig
from ssa_tf.training.model import SSAModel, compile_model

SHAPE = (8, 8, 3)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (n, *SHAPE)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def _model(mode, **options):
    keras.utils.set_random_seed(3)
    model = SSAModel("smallconv", SHAPE, 10, mode=mode, feedback="local", **options)
    compile_model(model, learning_rate=1e-2)
    model.run_eagerly = True
    return model


@pytest.mark.parametrize("mode,depth", [("dfa", 1), ("ssa", 1), ("dfa", 2)])
def test_a_conv_head_trains_on_the_modules_own_loss_only(mode, depth):
    model = _model(mode, readout_head="conv", readout_width=4, readout_depth=depth)
    route = model.rule.route
    heads = [v for layers in route.hidden for v in layers] + route.matrices
    assert len(route.hidden) == len(model.local_modules) - 1
    assert tuple(route.hidden[0][0].shape) == (3, 3, model.module_output_shapes[0][-1], 4)
    assert [tuple(k.shape) for k in route.hidden[0][::2]][1:] == [(3, 3, 4, 4)] * (depth - 1)
    x, y = _data()
    # module 0's update (its own weights and its head's) is the gradient of its own loss
    # alone: the same whatever every later module's weights are
    grads0 = {id(v): g for g, v in model.local_gradients(x, y)[0]}
    later = [v for m in model.local_modules[1:] for v in m.trainable_variables]
    for v in later:
        v.assign(np.random.default_rng(1).standard_normal(v.shape).astype(np.float32))
    grads1 = {id(v): g for g, v in model.local_gradients(x, y)[0]}
    mine = model.local_modules[0].trainable_variables + route.extra_variables(model, 0)
    for v in mine:
        np.testing.assert_array_equal(np.asarray(grads0[id(v)]), np.asarray(grads1[id(v)]))
    before = [keras.ops.convert_to_numpy(v).copy() for v in heads]
    model.train_on_batch(x, y)
    assert all(not np.array_equal(b, keras.ops.convert_to_numpy(v)) for b, v in zip(before, heads))
    card = model.card()
    assert card.feedback == "local head" and not card.sequential
    assert "trained head" in card.error


def test_heads_are_training_only_and_gone_at_export():
    pytest.importorskip("tf2onnx", reason="the export extra is not installed")
    from ssa_tf.export.merge import merge
    x, _ = _data(8)
    plain_counts = []
    for head in ("linear", "conv"):
        model = _model("dfa", readout_head=head, readout_trained=True)
        merged, _ = merge(model)
        np.testing.assert_allclose(merged.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=1e-5)
        plain_counts.append(merged.count_params())
    assert plain_counts[0] == plain_counts[1]  # the head adds nothing to the exported model


def test_a_conv_head_option_is_refused_off_the_local_route():
    from ssa_tf.config import validate
    cfg = RunConfig().with_overrides(["method.readout_head=conv"])
    assert validate(cfg) == ("method.readout_head applies to the local route only, not "
                             "method.feedback=chain")
    bad = RunConfig().with_overrides(["method.feedback=local", "method.readout_head=mlp"])
    assert "method.readout_head='mlp' is not valid" in validate(bad)
