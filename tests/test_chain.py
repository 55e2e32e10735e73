"""Route `chain`: the error through the fixed linear feedback network."""

import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import chain, losses
from ssa_tf.training.model import SSAModel


def signals(model, outs, e):
    return model.rule.route.signals(model, outs, e)


def test_chain_signals_are_the_linear_networks_jacobian_transpose():
    model = SSAModel("mlp", (5, 5, 1), 10, rule="dfa", feedback="chain", norm="none")
    k = model.rule.route.kernels
    K0, K1, K2 = k["m0_dense"], k["m1_dense"], k["classifier"]
    x = tf.random.normal((4, 5, 5, 1))
    outs, h = [], x
    for m in model.local_modules:
        h = m(h)
        outs.append(h)
    e = losses.output_error(outs[-1], tf.constant([1, 2, 3, 4]), 10)
    d0, d1 = chain.chain_signals(model.local_modules, outs, e, k)
    np.testing.assert_allclose(d1, e.numpy() @ K2.numpy().T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d0, e.numpy() @ K2.numpy().T @ K1.numpy().T, rtol=1e-4, atol=1e-6)
    assert K0.shape == (25, 256)


def test_forward_init_feedback_copies_the_initial_weights():
    dfa = SSAModel("smallconv", (16, 16, 3), 10, rule="dfa", feedback="chain",
                   feedback_init="forward")
    conv = dfa.local_modules[1].output_layer
    np.testing.assert_array_equal(dfa.rule.route.kernels[conv.name].numpy(), conv.kernel.numpy())
    ssa = SSAModel("smallconv", (16, 16, 3), 10, rule="ssa", feedback="chain",
                   feedback_init="forward")
    layer = ssa.local_modules[1].output_layer
    np.testing.assert_allclose(layer.feedback_matrix(), layer.merged_matrix(), atol=1e-5)


def test_svd_feedback_conv_uses_the_feedback_kernel():
    model = SSAModel("smallconv", (16, 16, 3), 10, rule="ssa", feedback="chain")
    layer = model.local_modules[1].output_layer  # 3x3, 32 -> 64
    kernel = layer.kernel_from_matrix(layer.feedback_matrix()).astype(np.float32)
    x = tf.random.normal((2, 8, 8, 32))
    expected = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
    np.testing.assert_allclose(chain.linear_feedback(layer, x, {}), expected, rtol=1e-4, atol=1e-4)
    # max pooling is linearized as average pooling
    pool = model.local_modules[0].graph.get_layer("m0_pool")
    y = chain.linear_feedback(pool, x, {})
    np.testing.assert_allclose(y, tf.nn.avg_pool2d(x, 2, 2, "VALID"), rtol=1e-6)


def test_chain_signal_is_rescaled_to_the_error_std():
    model = SSAModel("resnet32", (8, 8, 3), 10, rule="ssa", feedback="chain")
    x = tf.random.normal((4, 8, 8, 3))
    outs, h = [], x
    for m in model.local_modules:
        h = m(h)
        outs.append(h)
    e = losses.output_error(outs[-1], tf.constant([0, 1, 2, 3]), 10)
    deltas = signals(model, outs, e)
    assert len(deltas) == 15
    for s, o in zip(deltas, outs):
        assert s.shape == o.shape
        assert abs(float(tf.math.reduce_std(s)) - float(tf.math.reduce_std(e))) < 1e-5


def test_feedback_scale_does_not_change_the_chain_signals():
    # the feedback's scale, a choice on the global route, is moot on the chain route, since
    # each signal is linear in every feedback layer and rescaled to the error's std
    model = SSAModel("smallconv", (16, 16, 3), 10, rule="fa")
    x = tf.random.normal((4, 16, 16, 3))
    outs, h = [], x
    for m in model.local_modules:
        h = m(h, training=True)
        outs.append(h)
    e = losses.output_error(outs[-1], tf.constant([0, 1, 2, 3]), 10)
    before = signals(model, outs, e)
    for k, layer in enumerate(model.svd_layers()):
        layer.B_s.assign(layer.B_s * (0.1 if k % 2 else 7.0))
    after = signals(model, outs, e)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_lagged_copy_moves_b_towards_the_forward_factors_and_fa_does_not():
    x = tf.random.normal((16, 6, 6, 1))
    y = tf.constant(np.arange(16) % 10)
    fixed = SSAModel("mlp", (6, 6, 1), 10, rule="fa")
    moving = SSAModel("mlp", (6, 6, 1), 10, rule="bp-lagged-copy", feedback_tracking=0.25)
    for model in (fixed, moving):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    layer_f, layer_m = fixed.svd_layers()[0], moving.svd_layers()[0]
    b_fixed = layer_f.B_U.numpy().copy()
    b0 = layer_m.B_U.numpy().copy()
    fixed.train_on_batch(x, y)
    moving.train_on_batch(x, y)
    np.testing.assert_array_equal(layer_f.B_U.numpy(), b_fixed)  # fixed: never changes
    # B_U <- B_U + eta (U - B_U), with U after the optimizer step
    np.testing.assert_allclose(layer_m.B_U.numpy(), b0 + 0.25 * (layer_m.U.numpy() - b0),
                               rtol=1e-5, atol=1e-6)


def _true_and_chain(model, x, y, **kwargs):
    """(BP's gradient of the summed CE at each module output, the chain's signals)."""
    with tf.GradientTape() as tape:
        outs, h = [], x
        for m in model.local_modules:
            h = m(h, training=True)
            outs.append(h)
        ce = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(y, h, from_logits=True))
    true = tape.gradient(ce, outs[:-1])
    e = losses.output_error(outs[-1], y, 10)
    return true, chain.chain_signals(model.local_modules, outs, e, model.rule.route.kernels,
                                     **kwargs)


def _cosine(a, b):
    a, b = tf.reshape(a, [-1]), tf.reshape(b, [-1])
    return float(tf.reduce_sum(a * b) / (tf.norm(a) * tf.norm(b)))


def test_gated_chain_with_forward_feedback_is_backprop_at_initialization():
    # B = W0, the forward ReLU gates and max-pool routing: the chain's signal is
    # the true gradient of the summed CE with respect to each module's output
    # (a Glorot head: through a zero head every hidden module's true gradient is 0)
    model = SSAModel("smallconv", (8, 8, 3), 10, rule="dfa", feedback="chain",
                     feedback_init="forward", norm="none", head_init="glorot")
    x = tf.random.normal((4, 8, 8, 3))
    y = tf.constant([0, 1, 2, 3])
    true, gated = _true_and_chain(model, x, y, gated=True)
    for d, t in zip(gated, true):
        np.testing.assert_allclose(d, t, rtol=1e-4, atol=1e-6)
    # the linear network of algorithm §3 averages where the forward max-pools: module 0's signal
    # crosses m1's max pool and differs; module 2's does not
    spec = _true_and_chain(model, x, y, gated=True, jacobians=False)[1]
    assert float(tf.reduce_max(tf.abs(spec[0] - true[0]))) > 1e-3
    np.testing.assert_allclose(spec[2], true[2], rtol=1e-4, atol=1e-6)
    linear = _true_and_chain(model, x, y)[1]
    assert float(tf.reduce_max(tf.abs(linear[2] - true[2]))) > 1e-3  # ungated differs


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_gated_chain_is_backprop_through_normalized_residual_blocks(norm):
    # SSA's own layers (B = W at init) in resnet32: 15 residual blocks with
    # normalizations. With their Jacobians the signals are BP's (layer norm's
    # exact one; batch norm's with the batch statistics constant, which is
    # what a local backward through LocalBatchNorm computes); as identities
    # (the linear network of algorithm §3) they drift from BP with distance from the head.
    model = SSAModel("resnet32", (8, 8, 3), 10, rule="fa", norm=norm, head_init="glorot")
    assert model.options["chain_jacobians"] and model.rule.route.gated
    x = tf.random.normal((8, 8, 8, 3), seed=3)
    y = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    true, gated = _true_and_chain(model, x, y, gated=True)
    assert len(gated) == 15
    for i, (d, t) in enumerate(zip(gated, true)):
        # float32 through up to 15 batch-normalized blocks of 8 examples: 2e-4 measured
        assert _cosine(d, t) > 0.999, i
        assert abs(float(tf.norm(d) / tf.norm(t)) - 1) < 1e-3, i
    spec = _true_and_chain(model, x, y, gated=True, jacobians=False)[1]
    cos = [_cosine(d, t) for d, t in zip(spec, true)]
    assert cos[0] < 0.9 and cos[0] < cos[-1], cos


def test_the_ungated_chain_is_a_fixed_matrix_kept_in_step_with_rank_cuts():
    # computed once from K unit errors, J_i^T e equals the pass through the feedback
    # network; after a rank cut (new feedback factors) it is recomputed
    from ssa_tf.methods.routes import global_std
    from ssa_tf.training.model import build_model
    from ssa_tf.training.rank import apply_cut

    model = build_model("resnet32", (8, 8, 3), 10, rule="ssa")
    x = tf.random.normal((4, 8, 8, 3), seed=1)
    outs, h = [], x
    for m in model.local_modules:
        h = m(h)
        outs.append(h)
    e = losses.output_error(h + tf.random.normal(h.shape, seed=2), tf.constant([0, 1, 2, 3]), 10)

    def through_the_network():
        deltas = chain.chain_signals(model.local_modules, outs, e, model.rule.route.kernels)
        return [d * global_std(e) / (global_std(d) + 1e-12) for d in deltas]

    for _ in range(2):
        for a, b in zip(signals(model, outs, e), through_the_network()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # float32 sums, other order
        apply_cut(model, 0.5)
    assert len(model.rule.route.matrices) == 15


def _padded():
    """Layers whose transposes the built-in models do not exercise: zero padding,
    cropping, a strided valid convolution on an odd map, average pooling, a fork joined
    by Concatenate, a channels-first flatten, reshape, global average pooling kept 4-D."""
    import keras

    inputs = keras.Input((9, 9, 2))
    x = keras.layers.ReLU(name="stem")(keras.layers.Conv2D(4, 1, name="c")(inputs))
    # module 1 (module 0's layers are never transposed: its signal is at its output)
    x = keras.layers.ZeroPadding2D(((1, 2), (0, 1)))(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid", name="c0")(x)
    x = keras.layers.ReLU()(x)
    a = keras.layers.Conv2D(3, 1, name="a")(x)
    b = keras.layers.AveragePooling2D(2, strides=1, padding="same")(x)
    x = keras.layers.Concatenate()([a, keras.layers.Conv2D(2, 3, padding="same", name="b")(b)])
    x = keras.layers.Cropping2D(((1, 0), (0, 1)))(x)
    x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten(data_format="channels_first")(x)  # transposes, then flattens
    x = keras.layers.Reshape((2, 2, 5))(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="padded")


def _context():
    """A user's graph with its map sizes left None, a global-context branch added back to
    every position (an Add that broadcasts a 1x1 map) and a strided same-padded
    convolution on an odd map."""
    import keras

    inputs = keras.Input((None, None, 2))
    x = keras.layers.ReLU(name="stem")(keras.layers.Conv2D(4, 1, name="c")(inputs))
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", name="c1")(x)
    context = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Add()([x, keras.layers.Conv2D(5, 1, name="ctx")(context)])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="context")


ADJOINT_CASES = {
    "resnet18, spatial view": dict(name="resnet18", shape=(32, 32, 3), rule="ssa"),
    "resnet18, channel view": dict(name="resnet18", shape=(32, 32, 3), rule="ssa",
                                   conv_factorization="channel"),
    "resnet32, every SVD convolution factored": dict(name="resnet32", shape=(16, 16, 3),
                                                     rule="ssa", form="factored"),
    "resnet32, channel view factored": dict(name="resnet32", shape=(16, 16, 3), rule="ssa",
                                            conv_factorization="channel", form="factored"),
    "smallconv, plain layers (dfa)": dict(name="smallconv", shape=(16, 16, 3), rule="dfa",
                                          feedback="chain"),
    "mlp": dict(name="mlp", shape=(5, 5, 1), rule="ssa"),
    "a user's padded, forked graph": dict(name="padded", shape=(9, 9, 2), rule="ssa",
                                          network=_padded, module_ends=["stem"]),
    "a user's graph of unknown map size, with a broadcast Add":
        dict(name="context", shape=(9, 9, 2), rule="ssa", network=_context,
             module_ends=["stem"]),
}


@pytest.mark.parametrize("case", ADJOINT_CASES)
def test_the_chains_transpose_gives_the_tapes_signals_without_its_forward_pass(case):
    """The uncached chain's signals come from its linear network's transpose, module by
    module (``chain.adjoint_signals``); a tape's backward pass through the same network
    (``chain_signals``) is the reference, for every layer kind and both SVD forms."""
    import keras

    keras.utils.set_random_seed(2)
    kw = dict(ADJOINT_CASES[case])
    name, shape, form = kw.pop("name"), kw.pop("shape"), kw.pop("form", None)
    if "network" in kw:
        kw["network"] = kw["network"]()
    model = SSAModel(name, shape, 10, **kw)
    for layer in model.svd_layers():
        if form and hasattr(layer, "forward"):
            layer.forward = form
    route = model.rule.route
    outs = [tf.zeros((3, *s)) for s in model.module_output_shapes]
    e = tf.random.normal((3, 10))
    tape = chain.chain_signals(model.local_modules, outs, e, route.kernels)
    shapes = [(None, *model.input_dims), *(o.shape for o in outs[:-1])]
    assert chain.transposable(model.local_modules, shapes)
    adjoint = tf.function(lambda e: chain.adjoint_signals(model.local_modules, e, shapes,
                                                          route.kernels))(e)
    assert len(adjoint) == len(tape) == len(model.local_modules) - 1 >= 1
    for a, t in zip(adjoint, tape):
        assert a.shape == t.shape
        scale = float(tf.reduce_max(tf.abs(t)))
        assert scale > 0
        np.testing.assert_allclose(a / scale, t / scale, atol=1e-5)
    # the route: its uncached signals are the transpose's (``ChainRoute.transpose``)
    route.matrices = []
    via_route = signals(model, outs, e)
    route.transpose = False
    via_tape = signals(model, outs, e)
    for a, t in zip(via_route, via_tape):
        np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-5)


def test_the_signals_are_made_as_they_are_read_with_the_same_values_in_any_order():
    from ssa_tf.methods.routes import Signals

    rng = np.random.default_rng(0)
    deltas = [tf.constant(rng.standard_normal((4, 3)).astype(np.float32)) for _ in range(3)]
    taken = []

    def chain_order():  # the last module's first, as the chain makes them
        for i in (2, 1, 0):
            taken.append(i)
            yield tf.cast(deltas[i], tf.bfloat16)

    lazy = Signals(chain_order(), 3, tf.constant(2.0))
    assert len(lazy) == 3 and taken == []
    last = lazy[-1].numpy()
    assert taken == [2]  # module 1's and 0's not made yet
    first = lazy[0].numpy()
    assert taken == [2, 1, 0]
    # kept as the chain made them (bfloat16) until read, cast where read
    assert {d.dtype for d in lazy._made.values()} == {tf.bfloat16}
    eager = list(Signals([tf.cast(d, tf.bfloat16) for d in deltas[::-1]], 3, tf.constant(2.0)))
    np.testing.assert_array_equal(last, eager[2].numpy())
    np.testing.assert_array_equal(first, eager[0].numpy())
    assert eager[0].dtype == tf.float32
    # rescaled to the std of e (2.0), in float32 from the bfloat16 delta
    np.testing.assert_allclose(np.std(first), 2.0, rtol=1e-5)
    with pytest.raises(IndexError):
        lazy[3]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_signal_term_is_the_elementwise_one_in_one_product(dtype):
    # ChainRoute.fused_term: the same value and gradient as mean_b sum(h delta scale / std),
    # without its full-size scaled signal, product and tiled gradient
    from ssa_tf.methods import routes

    rng = np.random.default_rng(0)
    h = tf.constant(rng.standard_normal((6, 5, 5, 4)).astype(np.float32))
    made = tf.cast(tf.constant(rng.standard_normal((6, 5, 5, 4)).astype(np.float32)), dtype)
    sig = routes.Signals(iter([made]), 1, tf.constant(0.7))
    got, want = {}, {}
    for fused in (True, False):
        route = routes.ChainRoute.__new__(routes.ChainRoute)
        route.fused_term = fused
        with tf.GradientTape() as tape:
            tape.watch(h)
            value = route.ce_term(None, 0, h, None, None, sig)
        (got if fused else want)["value"] = float(value)
        (got if fused else want)["grad"] = tape.gradient(value, h).numpy()
    assert got["value"] == pytest.approx(want["value"], rel=1e-5)
    np.testing.assert_allclose(got["grad"], want["grad"], rtol=1e-6, atol=1e-9)
    # the gradient is the rescaled signal over the batch
    scale = 0.7 / (float(routes.global_std(made)) + 1e-12)
    np.testing.assert_allclose(got["grad"], np.asarray(tf.cast(made, tf.float32)) * scale / 6,
                               rtol=1e-5, atol=1e-9)
