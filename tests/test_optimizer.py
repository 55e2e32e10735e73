"""``FusedAdam``: Keras's Adam with one fused op a variable (``training.optimizer``)."""

import keras
import numpy as np
import tensorflow as tf

from ssa_tf.training.model import build_model, compile_model
from ssa_tf.training.optimizer import FactorAdam, FusedAdam


def _train(optimizer, steps=5):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal((4, 3)).astype("float32")),
                 keras.Variable(rng.standard_normal((3,)).astype("float32"))]
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    for i in range(steps):
        step([tf.constant(rng.standard_normal(v.shape).astype("float32") * (i + 1))
              for v in variables])
    return [v.numpy() for v in variables]


def test_fused_adam_moves_the_weights_as_keras_adam_does():
    ours = _train(FusedAdam(learning_rate=0.01))
    theirs = _train(keras.optimizers.Adam(learning_rate=0.01))
    for a, b in zip(ours, theirs):  # same start, same gradients
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and it moved them: a wrong handle would leave them where they started
    keras.utils.set_random_seed(3)
    start = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    assert np.abs(ours[0] - start).min() > 1e-3


def test_a_traced_step_applies_one_fused_op_a_variable():
    model = build_model("smallconv", (16, 16, 3), 10, rule="ssa")
    compile_model(model)
    assert isinstance(model.optimizer, FusedAdam)
    x = np.zeros((8, 16, 16, 3), np.float32)
    model.train_on_batch(x, np.zeros(8, np.int32))
    kinds = [op.type for op in _traced_step_graph(model).get_operations()]
    assert kinds.count("ResourceApplyAdam") == len(model.trainable_variables)
    # Keras's per-variable update (its square and sqrt of v) is gone
    assert kinds.count("Sqrt") < len(model.trainable_variables)


def _traced_step_graph(model):
    """The graph of ``model``'s traced Keras train step (Keras wraps it in a function):
    the largest of those that captured its first variable."""
    import gc

    from tensorflow.python.eager.polymorphic_function import polymorphic_function as pf

    graphs = [c.graph for o in gc.get_objects()
              if isinstance(o, pf.Function) and "one_step_on_data" in getattr(o, "_name", "")
              for c in o._list_all_concrete_functions()]
    handle = model.trainable_variables[0].value.handle
    mine = [g for g in graphs if any(t is handle for t in g.external_captures)]
    return max(mine, key=lambda g: len(g.get_operations()))


def test_factor_adam_scales_the_singular_values_rate_on_the_fused_path():
    # s at 0 scale does not move; U does (FactorAdam rides on FusedAdam's update)
    model = build_model("mlp", (28, 28, 1), 10, rule="ssa", seed=1)
    compile_model(model, learning_rate=1e-2, s_rate_scale=1e-9)
    assert isinstance(model.optimizer, FactorAdam)
    layer = model.svd_layers()[0]
    s0, u0 = layer.s.numpy().copy(), layer.U.numpy().copy()
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.standard_normal((8, 28, 28, 1)).astype("float32"),
                         rng.integers(0, 10, 8))
    assert np.abs(layer.s.numpy() - s0).max() < 1e-6 < np.abs(layer.U.numpy() - u0).max()
