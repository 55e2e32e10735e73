"""A replay's layer norms read the statistics the first pass computed (``nn.fast.Moments``,
``Local.keep_moments``): the same activations and gradients, bit for bit, two fewer
reductions over each replayed norm's input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.nn import fast
from ssa_tf.training.model import build_model
from ssa_tf.training.rank import apply_ranks


def batch(shape, n=10, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *shape)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def _means(graph) -> int:
    """The Mean ops of a traced step, in its nested functions (a cond's branches) too."""
    n = sum(op.type == "Mean" for op in graph.get_operations())
    return n + sum(_means(f.graph) for f in graph._functions.values() if hasattr(f, "graph"))


def _norms(module) -> int:
    return sum(isinstance(l, fast.LayerNormalization)
               for l in module._flatten_layers(include_self=False, recursive=True))


@pytest.mark.parametrize("rule,model,options", [
    ("ssa", "resnet32", {}),
    ("ssa", "resnet32", {"hold_within_peak": True, "replay_slices": 2, "replay_chained": True}),
    ("ssa", "smallconv", {"replay_slices": 3}),
    ("dfa", "smallconv", {})])
def test_replays_read_the_first_pass_statistics_and_give_the_same_gradients(rule, model,
                                                                            options):
    x, y = batch((16, 16, 3))
    grads, means = {}, {}
    for keep in (False, True):
        keras.utils.set_random_seed(4)
        m = build_model(model, (16, 16, 3), 10, rule=rule, norm="layer", **options)
        if options.get("hold_within_peak"):  # a cut: held and replayed modules interleave
            apply_ranks(m, {l.name: max(1, l.full_rank // (2 + i % 3))
                            for i, l in enumerate(m.svd_layers())})
        m.rule.keep_moments = keep
        step = tf.function(lambda x, y: m.local_gradients(x, y)[0])
        grads[keep] = [g.numpy() for g, _ in step(x, y)]
        means[keep] = _means(step.get_concrete_function(x, y).graph)
    held, cuts = m.rule.held_modules(m), m.rule.replay_slices(m)
    replayed = [i for i in range(len(m.local_modules)) if i not in held]
    calls = sum(_norms(m.local_modules[i]) * cuts.get(i, 1) for i in replayed)
    assert calls >= 3 and len(grads[True]) == len(grads[False])
    # each replayed norm's call skips the mean's and the variance's reductions
    assert means[False] - means[True] == 2 * calls
    for a, b in zip(grads[False], grads[True]):
        np.testing.assert_array_equal(b, a)


def _twice():
    """One layer norm called on two tensors (a shared layer), then again."""
    inputs = keras.Input((4, 4, 8))
    norm = fast.LayerNormalization(name="norm")
    a = norm(keras.layers.Dense(8, name="first")(inputs))
    b = norm(keras.layers.Dense(8, name="second")(a) * 3.0 + 1.0)
    return keras.Model(inputs, b)


def test_a_layer_called_twice_reads_each_calls_statistics_in_order_and_by_rows():
    keras.utils.set_random_seed(2)
    model = _twice()
    x = tf.random.normal((6, 4, 4, 8))
    plain = model(x, training=True)
    kept = fast.Moments()
    with fast.keeping(kept):
        first = model(x, training=True)
    assert [len(v) for v in kept.kept.values()] == [2]  # one layer, two calls
    with fast.reading(kept):
        again = model(x, training=True)
    with fast.reading(kept, (2, 5)):
        rows = model(x[2:5], training=True)
    np.testing.assert_array_equal(first.numpy(), plain.numpy())
    np.testing.assert_array_equal(again.numpy(), plain.numpy())
    np.testing.assert_array_equal(rows.numpy(), plain.numpy()[2:5])
    # read on other inputs, the statistics are the kept ones, not the input's own: the
    # replay must be fed the first pass's input (which the recomputing step guarantees)
    with fast.reading(kept):
        other = model(x * 2.0, training=True)
    assert not np.allclose(other.numpy(), model(x * 2.0, training=True).numpy(), atol=1e-3)


def test_the_gradient_from_kept_statistics_is_the_whole_layer_norms():
    # through the statistics too: the same as Keras's own layer norm's automatic gradient
    keras.utils.set_random_seed(3)
    ours, stock = fast.LayerNormalization(), keras.layers.LayerNormalization()
    x = tf.random.normal((3, 5, 16)) * 2.0 + 0.5
    ours.build(x.shape), stock.build(x.shape)
    for w in (ours.gamma, ours.beta):
        w.assign(tf.random.normal(w.shape))
    stock.set_weights(ours.get_weights())
    dy = tf.random.normal(x.shape)
    kept = fast.Moments()
    with fast.keeping(kept):
        ours(x, training=True)
    got = {}
    for name, layer, moments in (("read", ours, kept), ("stock", stock, None)):
        with tf.GradientTape() as tape, fast.reading(moments):
            tape.watch(x)
            out = layer(x, training=True)
        got[name] = tape.gradient(out, [x, *layer.trainable_variables], output_gradients=dy)
    for a, b in zip(got["read"], got["stock"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_a_trace_that_does_not_know_the_batch_slices_the_kept_statistics_too():
    # an epoch's short last batch: the slices' bounds are tensors, each replay a branch
    x, y = batch((16, 16, 3), n=7)
    spec = (tf.TensorSpec((None, 16, 16, 3)), tf.TensorSpec((None,), tf.int32))
    grads, means = {}, {}
    for keep in (False, True):
        keras.utils.set_random_seed(4)
        m = build_model("smallconv", (16, 16, 3), 10, rule="ssa", norm="layer",
                        replay_slices=3)
        m.rule.keep_moments = keep
        step = tf.function(lambda x, y: m.local_gradients(x, y)[0], input_signature=spec)
        grads[keep] = [g.numpy() for g, _ in step(x, y)]
        means[keep] = _means(step.get_concrete_function().graph)
    cuts = m.rule.replay_slices(m)
    assert max(cuts.values()) == 3
    calls = sum(_norms(m.local_modules[i]) * cuts.get(i, 1) for i in range(len(cuts)))
    assert means[False] - means[True] == 2 * calls  # inside the branches too
    for a, b in zip(grads[False], grads[True]):
        np.testing.assert_array_equal(b, a)
