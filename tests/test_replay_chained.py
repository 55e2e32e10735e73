"""``rule.replay_chained``: a recomputing step's replays run first to last, each fed the
output of the replay before instead of a boundary the first pass kept; the same gradients,
and the first pass keeps nothing beside the held tapes but the input."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import holds
from ssa_tf.training.model import SSAModel, build_model
from ssa_tf.training.rank import apply_ranks, end_layers
from tests.test_holds import _ancestors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(shape, n=10, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *shape)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


@pytest.mark.parametrize("rule,model,options", [
    ("ssa", "resnet32", {}), ("ssa", "resnet32", {"hold_within_peak": True}),
    ("ssa", "resnet32", {"hold_within_peak": True, "replay_slices": 2}),
    ("ssa", "smallconv", {"replay_slices": 3}), ("dfa", "smallconv", {}),
    ("dkp", "smallconv", {})])
def test_chained_replays_give_the_same_gradients(rule, model, options):
    # a replay computes the first pass's values again (same weights, same masks): fed the
    # replay before's output, a module sees the input the first pass gave it
    x, y = batch((16, 16, 3))
    grads, held = {}, {}
    for chained in (False, True):
        keras.utils.set_random_seed(4)
        m = build_model(model, (16, 16, 3), 10, rule=rule, replay_chained=chained, **options)
        if options.get("hold_within_peak"):  # a cut: held and replayed modules interleave
            apply_ranks(m, {l.name: max(1, l.full_rank // (2 + i % 3))
                            for i, l in enumerate(m.svd_layers())})
        step = tf.function(lambda x, y: m.local_gradients(x, y)[0])
        grads[chained] = [g.numpy() for g, _ in step(x, y)]
        held[chained] = m.rule.held_modules(m)
    assert len(grads[False]) == len(grads[True])
    for a, b in zip(grads[False], grads[True]):
        assert np.max(np.abs(b - a)) <= 1e-6 * np.max(np.abs(a)) + 1e-9
    if options.get("hold_within_peak"):
        assert held[True] and len(held[True]) < 16  # some modules held, some replayed


def test_resnet18_at_224_chained_holds_within_the_stems_whole_tape():
    # chained, the first pass keeps no boundary for the replays: the held modules fill the
    # stem's whole tape (3-8, as in one slice), and its two slices lower the replays' peak
    model = build_model("resnet18", (224, 224, 3), 1000, rule="ssa", hold_within_peak=True,
                        replay_slices=2, replay_chained=True)
    tapes = [holds.tape_elements(m, s) for m, s in
             zip(model.local_modules, [model.input_dims, *model.module_output_shapes[:-1]])]
    assert model.rule.replay_slices(model) == {0: 2, **{i: 1 for i in range(1, 9)}}
    held = model.rule.held_modules(model)
    assert held == set(range(3, 9))
    assert sum(tapes[i] for i in held) <= tapes[0] < sum(tapes[i] for i in range(2, 9))
    # nothing held: each module by its share of the stem's tape, as unchained
    assert holds.plan(model, 2, chained=True, hold=False) == (frozenset(),
                                                            holds.plan(model, 2)[1])
    # at 50% rank in the channel view modules 1 and 2 (over half the stem's tape) are
    # not sliced: their replays are smaller than the held tapes (4-8) together
    half = build_model("resnet18", (224, 224, 3), 1000, rule="ssa", hold_within_peak=True,
                       replay_slices=2, replay_chained=True, conv_factorization="channel")
    ends = end_layers(half)  # the stem and the classifier kept, as rank.keep_ends
    apply_ranks(half, {l.name: max(1, l.full_rank // 2) for l in half.svd_layers()
                       if l.name not in ends})
    held, cuts = half.rule.held_modules(half), half.rule.replay_slices(half)
    assert held == set(range(4, 9)) and cuts == {0: 2, **{i: 1 for i in range(1, 9)}}
    assert holds.plan(half, 2)[1][1] == 2  # (unchained: sliced)


def _replay_convs(model):
    """The traced step's convolutions of each module's replay (a replay reads
    ``tf.identity`` of its input, the first pass does not), by module."""
    x, y = batch((16, 16, 3), n=4)
    graph = tf.function(lambda x, y: model.local_gradients(x, y)[0]).get_concrete_function(
        x, y).graph
    return {i: [op for op in graph.get_operations() if op.type == "Conv2D"
                and re.match(rf"m{i}(_\d+)?/", op.name)
                and op.inputs[0].op.type == "Identity"]
            for i in range(len(model.local_modules) - 1)}


def test_chained_replays_run_first_to_last():
    # chained, module i+1's replay reads module i's: it runs after it (unchained, the
    # replays run from the last module to the first)
    for chained in (False, True):
        keras.utils.set_random_seed(4)
        model = build_model("smallconv", (16, 16, 3), 10, rule="ssa", replay_chained=chained)
        convs = _replay_convs(model)
        assert convs[0] and convs[1], convs  # (module 3 is a dense layer's)
        first, second = convs[0][0], convs[1][0]
        assert (first in _ancestors(second)) == chained
        assert (second in _ancestors(first)) == (not chained)


def _wide(chained):
    """Four modules of 32x32x32 maps and a head: the boundaries are most of the step. (On
    the global route: the chain's signals, all made at the first chained replay, would
    take the boundaries' place at this size in float32.)"""
    inputs = keras.Input((32, 32, 8))
    x, ends = inputs, []
    for k in range(4):
        x = keras.layers.Conv2D(32, 3, padding="same", name=f"conv{k}")(x)
        x = keras.layers.ReLU(name=f"relu{k}")(x)
        ends.append(f"relu{k}")
    x = keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flat")(x))
    return SSAModel("wide", (32, 32, 8), 10, rule="ssa", network=keras.Model(inputs, x),
                    head_init="glorot", module_ends=tuple(ends), replay_chained=chained,
                    feedback="global", feedback_spatial="broadcast")


_PEAK = """
import json, sys
import keras
import numpy as np
from benchmarks.timing import peak_step_mb
from ssa_tf.training.model import compile_model
from tests.test_replay_chained import _wide
keras.utils.set_random_seed(1)
model = _wide(sys.argv[1] == "1")
compile_model(model, learning_rate=1e-3)
x = np.random.default_rng(0).standard_normal((64, 32, 32, 8)).astype("float32")
print(json.dumps(peak_step_mb(model, x, np.arange(64) % 10)))
"""


def test_chained_replays_keep_no_boundaries():
    # unchained, the first pass keeps every module's input until its replay (four maps of
    # 8.4 MB at batch 64 beside the replays); chained, a replay's input is the output of
    # the one before, and only the input images are kept
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": REPO}
    peaks = {}
    for chained in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _PEAK, chained], capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[chained] = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["1"] < 0.8 * peaks["0"], peaks
