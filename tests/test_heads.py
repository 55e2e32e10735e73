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


def _model(rule, **options):
    keras.utils.set_random_seed(3)
    model = SSAModel("smallconv", SHAPE, 10, rule=rule, **{"feedback": "local", **options})
    compile_model(model, learning_rate=1e-2)
    model.run_eagerly = True
    return model


@pytest.mark.parametrize("rule,depth,sim", [("dfa", 1, 0.0), ("ssa", 1, 0.0), ("dfa", 2, 0.0),
                                            ("ssa", 1, 0.99)])
def test_a_conv_head_trains_on_the_modules_own_loss_only(rule, depth, sim):
    model = _model(rule, readout_head="conv", readout_width=4, readout_depth=depth,
                   readout_sim=sim)
    route = model.rule.route
    heads = [v for layers in route.hidden for v in layers] + route.matrices + route.projections
    assert len(route.projections) == (len(model.local_modules) - 1 if sim else 0)
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


@pytest.mark.parametrize("rule", ["dfa", "ssa"])
def test_a_later_shaped_head_steps_through_the_later_modules_shapes(rule):
    # smallconv on 8x8: modules m0..m3 end at 4x4x32, 2x2x64, 2x2x128 and 512
    model = _model(rule, readout_head="later", readout_depth=3)
    route = model.rule.route
    kernels = [[tuple(k.shape) for k in layers[::2]] for layers in route.hidden]
    # the first module's head is the later network's shape (conv to 64, conv to 128, dense
    # to 512); each later module's is shallower (round(3 n_i / 3) of its n_i later modules)
    assert kernels == [[(3, 3, 32, 64), (3, 3, 64, 128), (512, 512)],
                       [(3, 3, 64, 128), (512, 512)], [(512, 512)], []]
    assert [tuple(m.shape) for m in route.matrices] == [(512, 10)] * 4
    x, y = _data(4)
    h0 = model.local_modules[0](x)
    assert tuple(route.head_input(0, h0).shape) == (4, 512)
    # each conv layer ends at its later module's size: pooled 4x4 -> 2x2 after the first
    from ssa_tf.methods import feedback
    first = feedback.later_head_hidden(h0, *route.hidden[0][:2], route.targets[0][0],
                                       route.grid)
    assert tuple(first.shape) == (4, 2, 2, 64)
    # depth 1: every head is one dense layer to the last hidden module's width
    shallow = _model(rule, readout_head="later", readout_depth=1)
    assert [[tuple(k.shape) for k in layers[::2]] for layers in shallow.rule.route.hidden] \
        == [[(128, 512)], [(256, 512)], [(512, 512)], []]
    # module 0 learns from its own head only, whatever the later modules' weights are
    grads0 = {id(v): g for g, v in model.local_gradients(x, y)[0]}
    for v in [v for m in model.local_modules[1:] for v in m.trainable_variables]:
        v.assign(np.random.default_rng(1).standard_normal(v.shape).astype(np.float32))
    grads1 = {id(v): g for g, v in model.local_gradients(x, y)[0]}
    mine = model.local_modules[0].trainable_variables + route.extra_variables(model, 0)
    assert len(route.extra_variables(model, 0)) == 7  # three layers' kernel and bias, Q
    for v in mine:
        np.testing.assert_array_equal(np.asarray(grads0[id(v)]), np.asarray(grads1[id(v)]))
    card = model.card()
    assert card.feedback == "local head" and not card.sequential
    assert "shaped like the later modules" in card.error
    # a map that would have to grow is refused when the head is built
    with pytest.raises(ValueError, match="cannot grow a"):
        feedback.later_head_layer((4, 4, 8), (8, 8, 16), 2, np.random.default_rng(0))


def test_heads_are_training_only_and_gone_at_export():
    pytest.importorskip("tf2onnx", reason="the export extra is not installed")
    from ssa_tf.export.merge import merge
    x, _ = _data(8)
    plain_counts = []
    for head, sim, route in (("linear", 0.0, "local"), ("conv", 0.0, "local"),
                             ("linear", 0.99, "local"), ("later", 0.0, "local"),
                             ("later", 0.0, "local_global")):
        model = _model("dfa", readout_head=head, readout_trained=True, readout_sim=sim,
                       feedback=route)
        merged, _ = merge(model)
        np.testing.assert_allclose(merged.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=1e-5)
        plain_counts.append(merged.count_params())
    # the heads (and predsim's projections, local_global's direct matrices) add nothing
    # to the exported model
    assert len(set(plain_counts)) == 1


def test_a_conv_head_option_is_refused_off_the_local_route():
    from ssa_tf.config import validate
    cfg = RunConfig().with_overrides(["rule.readout_head=conv"])
    assert validate(cfg) == ("rule.readout_head applies to the local and local_global "
                             "routes only, not rule.feedback=chain")
    # local_global's own weight is refused on the local route, and by a rule without it
    weight = RunConfig().with_overrides(["rule.feedback=local", "rule.direct_weight=2"])
    assert validate(weight) == ("rule.direct_weight applies to the local_global route "
                                "only, not rule.feedback=local")
    from ssa_tf.methods import registry
    assert "direct_weight" not in registry.get("ssa-dkp").options
    # the card never says "no global forward" of a route that runs one (predsim too)
    for sim in (0.0, 0.99):
        card = registry.get("ssa").card({"feedback": "local_global", "readout_sim": sim,
                                         "readout_trained": True})
        assert "no global forward" not in card.error and "direct term" in card.error
    bad = RunConfig().with_overrides(["rule.feedback=local", "rule.readout_head=mlp"])
    assert "rule.readout_head='mlp' is not valid" in validate(bad)


def _reference_similarity(x):
    """anokland/local-loss's similarity_matrix in numpy (torch's std is unbiased)."""
    if x.ndim == 4 and x.shape[3] > 3 and x.shape[1] > 1:
        x = x.reshape(x.shape[0], -1, x.shape[3]).std(axis=1, ddof=1)
    x = x.reshape(x.shape[0], -1)
    xc = x - x.mean(axis=1, keepdims=True)
    xn = xc / (1e-8 + np.sqrt((xc ** 2).sum(axis=1, keepdims=True)))
    return np.clip(xn @ xn.T, -1, 1)


def test_predsim_matches_the_reference_and_weighs_its_two_losses():
    from ssa_tf.methods import feedback
    rng = np.random.default_rng(0)
    h = rng.standard_normal((6, 4, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(feedback.similarity_matrix(h)),
                               _reference_similarity(h), atol=1e-5)
    y = np.array([0, 1, 0, 2, 1, 0], np.int32)
    onehot = np.eye(3, dtype=np.float32)[y]
    # a map of one position (or of 3 channels or fewer) is flattened, as the reference
    # does: a 1x1 map has no spread over positions
    one = rng.standard_normal((6, 1, 1, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(feedback.similarity_matrix(one)),
                               _reference_similarity(one), atol=1e-5)
    assert np.abs(np.asarray(feedback.similarity_matrix(one))).max() > 0.1
    # labels projected by the identity are their own similarity: the loss is 0
    assert float(feedback.similarity_loss(onehot, np.eye(3, dtype=np.float32), y, 3)) < 1e-10
    kernel = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
    proj = np.asarray(keras.ops.conv(h, kernel, padding="same"))
    want = np.mean((_reference_similarity(proj) - _reference_similarity(onehot)) ** 2)
    assert want > 0.05
    np.testing.assert_allclose(float(feedback.similarity_loss(h, kernel, y, 3)), want,
                               rtol=1e-4)
    # the module's loss is (1 - w) CE of its read-out + w sim
    model = _model("dfa", readout_trained=True, readout_sim=0.75)
    x, labels = _data(8)
    route = model.rule.route
    h0 = model.local_modules[0](x)
    pred = feedback.readout_ce_term(h0, route.matrices[0], labels, route.grid)
    sim = feedback.similarity_loss(h0, route.projections[0], labels, 10)
    got = route.ce_term(model, 0, h0, None, labels, None)
    np.testing.assert_allclose(float(got), 0.25 * float(pred) + 0.75 * float(sim), rtol=1e-5)
    # the head's class scores (benchmarks.module_probes) are those its CE is of
    from ssa_tf.methods import losses
    np.testing.assert_allclose(float(losses.cross_entropy(route.logits(0, h0), labels)),
                               float(pred), rtol=1e-6)
    assert "0.75 x predsim's similarity matching" in model.card().error


def test_predsim_weight_is_refused_outside_zero_to_one():
    from ssa_tf.config import validate
    bad = RunConfig().with_overrides(["rule.feedback=local", "rule.readout_sim=1.5"])
    assert validate(bad) == "rule.readout_sim must be in [0, 1], got 1.5"


def _keyed(model, grads):
    """The update keyed alike across models: (module, index) for a module's own
    variables, the name for the route's (heads and feedback)."""
    keys = {id(v): (i, j) for i, m in enumerate(model.local_modules)
            for j, v in enumerate(m.trainable_variables)}
    keys.update({id(v): v.name for v in model.rule.route.feedback_variables()})
    return {keys[id(v)]: np.asarray(g) for g, v in grads}


@pytest.mark.parametrize("rule", ["dfa", "ssa"])
def test_local_global_adds_the_weighted_direct_term_to_the_heads_own_loss(rule):
    # the control of a head alone that differs in the direct term only: at weight 0 the
    # very same update as the local route; the direct term enters linearly in its weight
    x, y = _data()
    local = _model(rule, readout_head="later", readout_depth=2)
    updates = {}
    for w in (0.0, 1.0, 2.0):
        model = _model(rule, feedback="local_global", readout_head="later", readout_depth=2,
                       direct_weight=w)
        updates[w] = _keyed(model, model.local_gradients(x, y)[0])
    alone = _keyed(local, local.local_gradients(x, y)[0])
    assert set(alone) == set(updates[0.0])
    for name, g in alone.items():
        np.testing.assert_allclose(updates[0.0][name], g, rtol=1e-4, atol=1e-6)
        d1, d2 = updates[1.0][name] - g, updates[2.0][name] - g
        np.testing.assert_allclose(d2, 2 * d1, rtol=1e-3, atol=1e-5)
    # the direct term moves every hidden module's own weights, never a head's
    route = model.rule.route
    heads = [v.name for v in route.feedback_variables() if v.name in alone]
    assert len(heads) > len(model.local_modules)
    assert all(np.abs(updates[1.0][n] - alone[n]).max() <= 1e-6 for n in heads)
    hidden = [k for k in alone if isinstance(k, tuple) and k[0] < len(model.local_modules) - 1]
    assert all(np.abs(updates[1.0][k] - alone[k]).max() > 1e-6 for k in hidden)
    # its matrices stay fixed through a step while the heads learn
    fixed = [keras.ops.convert_to_numpy(v).copy() for v in route.global_route.matrices]
    model.train_on_batch(x, y)
    assert all(np.array_equal(f, keras.ops.convert_to_numpy(v))
               for f, v in zip(fixed, route.global_route.matrices))
    card = model.card()
    assert (card.feedback, card.sequential) == ("local head", False)
    assert "direct term" in card.error and "no global forward" not in card.error
