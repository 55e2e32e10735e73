"""``rule.replay_slices``: a recomputing step replays a large module in slices of the batch,
one slice's activations at a time, with the same gradient (``Local._sliced_step``)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import holds
from ssa_tf.training.model import SSAModel, build_model, compile_model
from tests.test_holds import _ancestors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(shape, n=10, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *shape)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def test_each_module_is_cut_by_its_share_of_the_largest():
    assert holds.slices([10, 5, 2, 1], 2, {0, 1, 2, 3}) == {0: 2, 1: 1, 2: 1, 3: 1}
    assert holds.slices([10, 5, 2, 1], 4, {0, 1, 2, 3}) == {0: 4, 1: 2, 2: 1, 3: 1}
    assert holds.slices([10, 5, 2, 1], 4, {1, 2}) == {0: 1, 1: 2, 2: 1, 3: 1}
    # the held modules fit within the largest slice's tape, no longer the largest's
    assert holds.held_within_peak([10, 4, 3, 2, 1], budget=5) == {3, 4}
    assert holds.held_within_peak([10, 4, 3, 2, 1]) == {1, 2, 3, 4}


def test_only_modules_whose_examples_never_meet_are_sliced():
    model = build_model("resnet32", (16, 16, 3), 10, rule="ssa", replay_slices=2)
    assert all(holds.per_example(m) for m in model.local_modules)
    cuts = model.rule.replay_slices(model)
    assert max(cuts.values()) == 2 and cuts[len(cuts) - 1] == 1  # the head never
    batch_norm = build_model("resnet32", (16, 16, 3), 10, rule="ssa", norm="batch",
                             replay_slices=2)
    assert not any(holds.per_example(m) for m in batch_norm.local_modules)
    assert set(batch_norm.rule.replay_slices(batch_norm).values()) == {1}

    # batch norm (its batch statistics) and dropout (its masks) in a user's network
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.ReLU(name="r0")(keras.layers.Conv2D(16, 3, name="conv")(inputs))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 1, name="c1")(x))
    x = keras.layers.Dropout(0.5, name="drop")(keras.layers.Conv2D(4, 3, name="c2")(x))
    x = keras.layers.Conv2D(4, 1, name="c3")(keras.layers.ReLU(name="relu")(x))
    x = keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flat")(x))
    model = SSAModel("mine", (6, 6, 2), 10, rule="dfa", network=keras.Model(inputs, x),
                     head_init="glorot", module_ends=("r0", "bn", "drop"),
                     replay_slices=4)
    per = [holds.per_example(m) for m in model.local_modules]
    assert per[:3] == [True, False, False]
    # a layer of a known kind over the batch's axis mixes the examples too
    for over_the_batch in (keras.layers.LayerNormalization(axis=0, center=False, scale=False),
                           keras.layers.LayerNormalization(axis=[-4], center=False,
                                                           scale=False)):
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.ReLU(name="r0")(over_the_batch(x))
        x = keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flat")(x))
        mixed = SSAModel("mixed", (6, 6, 2), 10, rule="dfa", network=keras.Model(inputs, x),
                         head_init="glorot", module_ends=("r0",), replay_slices=4)
        assert not holds.per_example(mixed.local_modules[0])
    cuts = model.rule.replay_slices(model)
    assert cuts[0] == 4 and cuts[1] == cuts[2] == 1


@pytest.mark.parametrize("rule,options", [("ssa", {}), ("ssa", {"feedback": "global"}),
                                          ("ssa", {"hold_within_peak": True}),
                                          ("dfa", {}), ("dkp", {})])
def test_sliced_replays_give_the_same_gradients(rule, options):
    x, y = batch((16, 16, 3))
    grads, cuts = {}, {}
    for n in (1, 3):
        keras.utils.set_random_seed(4)
        model = build_model("smallconv", (16, 16, 3), 10, rule=rule, replay_slices=n,
                            **options)
        step = tf.function(lambda x, y: model.local_gradients(x, y)[0])
        grads[n] = [g.numpy() for g, _ in step(x, y)]
        cuts[n] = model.rule.replay_slices(model)
    assert not cuts[1] and max(cuts[3].values()) == 3  # the comparison slices something
    assert len(grads[1]) == len(grads[3])
    for a, b in zip(grads[1], grads[3]):  # to float rounding, against each tensor's scale
        assert np.max(np.abs(b - a)) <= 1e-5 * np.max(np.abs(a)) + 1e-9


@pytest.mark.parametrize("how", ["eager", "traced", "traced, batch size unknown"])
def test_a_batch_smaller_than_the_slices_leaves_the_empty_ones_out(how):
    # an epoch's last batch (or a replica's) of 2 in 3 slices: the first slice is empty
    x, y = batch((16, 16, 3), n=2)
    unknown = (tf.TensorSpec((None, 16, 16, 3)), tf.TensorSpec((None,), tf.int32))
    grads = {}
    for n in (1, 3):
        keras.utils.set_random_seed(4)
        model = build_model("smallconv", (16, 16, 3), 10, rule="ssa", replay_slices=n)
        step = lambda x, y: model.local_gradients(x, y)[0]  # noqa: E731
        if how != "eager":
            step = tf.function(step, input_signature=unknown if "unknown" in how else None)
        grads[n] = [g for g, _ in step(x, y)]
    assert [g is None for g in grads[1]] == [g is None for g in grads[3]]
    for a, b in zip(grads[1], grads[3]):
        if a is not None:
            assert np.max(np.abs(b - a)) <= 1e-5 * np.max(np.abs(a)) + 1e-9


def test_three_steps_and_a_cut_train_the_same_sliced_or_not():
    from ssa_tf.training.rank import apply_ranks

    x, y = batch((16, 16, 3), n=12)
    weights = {}
    for n in (1, 2):
        keras.utils.set_random_seed(5)
        model = build_model("smallconv", (16, 16, 3), 10, rule="ssa", replay_slices=n,
                            hold_within_peak=True)
        compile_model(model, learning_rate=0.01)
        model.train_on_batch(x, y)
        apply_ranks(model, {l.name: max(1, l.full_rank // 2) for l in model.svd_layers()})
        for _ in range(2):
            model.train_on_batch(x, y)
        weights[n] = [w.numpy() for w in model.weights]
    for a, b in zip(weights[1], weights[2]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_resnet18_at_224_in_two_slices_holds_within_half_the_stems_tape():
    # the stem (1.8M numbers an example) replays in two slices; modules 1 and 2 (under
    # half of it) whole; the held modules fit within a slice's tape: 5-8, not 3-8
    model = build_model("resnet18", (224, 224, 3), 1000, rule="ssa", hold_within_peak=True,
                        replay_slices=2)
    tapes = [holds.tape_elements(m, s) for m, s in
             zip(model.local_modules, [model.input_dims, *model.module_output_shapes[:-1]])]
    cuts, held = model.rule.replay_slices(model), model.rule.held_modules(model)
    assert cuts == {0: 2, **{i: 1 for i in range(1, 9)}}
    assert held == set(range(5, 9))
    assert sum(tapes[i] for i in held) <= tapes[0] / 2 < sum(tapes[i] for i in range(4, 9))


def _big_first(slices, rule="ssa"):
    """A network whose first module (64x64x32 maps) holds far more than the rest."""
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(keras.layers.LayerNormalization(name="norm")(x))
    x = keras.layers.MaxPooling2D(4, name="pool")(x)
    x = keras.layers.ReLU(name="relu2")(keras.layers.Conv2D(8, 3, name="conv2")(x))
    x = keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flat")(x))
    return SSAModel("big_first", (64, 64, 3), 10, rule=rule, network=keras.Model(inputs, x),
                    head_init="glorot", module_ends=("pool",), replay_slices=slices)


_PEAK = """
import json, sys
import keras
import numpy as np
from benchmarks.timing import peak_step_mb
from ssa_tf.training.model import compile_model
from tests.test_replay_slices import _big_first
keras.utils.set_random_seed(1)
model = _big_first(int(sys.argv[1]))
compile_model(model, learning_rate=1e-3)
x = np.random.default_rng(0).standard_normal((64, 64, 64, 3)).astype("float32")
print(json.dumps([peak_step_mb(model, x, np.arange(64) % 10),
                  model.rule.replay_slices(model).get(0, 1)]))
"""


def test_a_sliced_replay_holds_one_slices_activations():
    # the first module's replay sets the peak (103-138 MB at batch 64, by how the
    # executor orders its ops); in 4 slices it holds a quarter of its activations at a
    # time, and the first pass's full-batch forward sets the peak (65-69 MB)
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": REPO}
    peaks = {}
    for n in (1, 4):
        out = subprocess.run([sys.executable, "-c", _PEAK, str(n)], capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n], first = json.loads(out.stdout.strip().splitlines()[-1])
        assert first == n
    assert peaks[4] < 0.8 * peaks[1], peaks


@pytest.mark.parametrize("known_batch", [True, False])
def test_each_slice_waits_for_the_gradient_of_the_one_before(known_batch):
    # the order is in the graph, not left to the executor: a slice's replay starts after
    # the slice before has sent its gradient back (without it, nothing stops the executor
    # from running the slices side by side, at one replay's peak). A trace that does not
    # know the batch size makes each slice a branch that an empty slice skips
    model = _big_first(4)
    x, y = batch((64, 64, 3), n=8)
    specs = (x, y) if known_batch else (tf.TensorSpec((None, 64, 64, 3)),
                                        tf.TensorSpec((None,), tf.int32))
    graph = tf.function(lambda x, y: model.local_gradients(x, y)[0]).get_concrete_function(
        *specs).graph
    ops = graph.get_operations()
    if known_batch:  # the replays' inputs: the four slices of the images
        slices = [op for op in ops if op.type == "StridedSlice"
                  and tuple(op.inputs[0].shape[1:]) == (64, 64, 3)]
        assert not [op for op in ops if op.type in ("If", "StatelessIf")]
    else:
        slices = [op for op in ops if op.type in ("If", "StatelessIf")]
    assert len(slices) == 4
    for first, then in zip(slices, slices[1:]):
        assert first in _ancestors(then)  # the ops ``then`` runs after
