"""``rule.hold_within_peak``: a recomputing step keeps the tapes of the modules that fit
together in the largest module's tape instead of replaying them (``methods.holds``)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import holds
from ssa_tf.training.model import SSAModel, build_model, compile_model


def batch(shape, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((n, *shape)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def test_the_smallest_modules_are_held_while_they_fit_in_the_largest():
    # largest (10) replayed; 1 + 2 + 4 = 7 fit in it, adding 8 would not
    assert holds.held_within_peak([10, 8, 4, 2, 1]) == {2, 3, 4}
    # the largest anywhere; a tie keeps the earlier module replayed
    assert holds.held_within_peak([1, 5, 5, 3]) == {0, 3}
    assert holds.held_within_peak([3]) == frozenset()
    # only eligible modules are held, the budget still the largest's
    assert holds.held_within_peak([10, 8, 4, 2, 1], eligible={1, 2, 4}) == {2, 4}


def test_tape_elements_counts_what_the_backward_pass_reads_per_example():
    # the second Dense's kernel gradient reads the first's output (6 an example); the
    # first's reads the module's input (a boundary, not counted); nobody reads the logits
    two = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6), keras.layers.Dense(4)])
    assert holds.tape_elements(two, (3,)) == 6
    # the ReLU's gradient and the next kernel's both read the ReLU's output: counted once;
    # the pre-activation, which no gradient reads, not at all
    relu = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6), keras.layers.ReLU(),
                             keras.layers.Dense(4)])
    assert holds.tape_elements(relu, (3,)) == 6
    # a bfloat16 tensor counts half
    low = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6),
                            keras.layers.ReLU(dtype="mixed_bfloat16"),
                            keras.layers.Dense(4, dtype="mixed_bfloat16")])
    assert holds.tape_elements(low, (3,)) == 3


def test_resnet18_at_224_holds_the_module_its_forward_tensors_would_have_replayed():
    # what the stem's backward reads (1.8M numbers an example, nn.fast's layer norm and
    # leaky ReLU; 3.4M with Keras's) holds modules 3-8 (1.6M together; 2.8M); counted as
    # every tensor their forward passes make, module 3 would not fit
    model = build_model("resnet18", (224, 224, 3), 1000, rule="ssa", hold_within_peak=True)
    tapes = [holds.tape_elements(m, s) for m, s in
             zip(model.local_modules, [model.input_dims, *model.module_output_shapes[:-1]])]
    assert tapes[0] == max(tapes) and sum(tapes[3:]) <= tapes[0] < sum(tapes[2:])
    assert model.rule.held_modules(model) == set(range(3, 9))


def test_resnet32_holds_the_later_small_modules_and_replays_the_first():
    model = build_model("resnet32", (32, 32, 3), 10, rule="ssa", hold_within_peak=True)
    held = model.rule.held_modules(model)
    n = len(model.local_modules)
    assert 0 not in held and n - 1 in held  # the stem's 32x32 maps; the head
    # the 8x8 blocks of the third stage after its first (29,056 numbers an example each
    # kept for the backward pass, the last with the head) fit in a first-stage block's
    # 120,832; its first block would not
    assert held == set(range(n - 4, n))
    assert model.card().held_activations == "within the largest module's"
    assert model.card().columns()[2] == "within largest"


@pytest.mark.parametrize("rule,options", [("ssa", {}), ("ssa", {"feedback": "global"}),
                                          ("dfa", {}), ("dkp", {})])
def test_holding_gives_the_same_gradients_as_replaying_and_as_holding_everything(rule, options):
    x, y = batch((16, 16, 3))
    grads, plans = {}, {}
    for name, extra in (("replay", {}), ("hold", {"hold_within_peak": True}),
                        ("all", {"recompute": False})):
        model = build_model("smallconv", (16, 16, 3), 10, rule=rule, norm="batch", seed=4,
                            **options, **extra)
        grads[name] = [g.numpy() for g, _ in model.local_gradients(x, y)[0]]
        plans[name] = model.rule.held_modules(model)
    assert plans["hold"] and not plans["replay"]  # the comparison holds something
    for a, b, c in zip(grads["replay"], grads["hold"], grads["all"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-7)


def _noisy_network():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Dropout(0.5, name="drop_in")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(4, 3, name="conv2")(x)
    x = keras.layers.Dropout(0.5, name="drop_mid")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dropout(0.5, name="drop_head")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="noisy")


def test_three_steps_with_dropout_and_batch_norm_train_the_same_held_or_replayed():
    # dropout masks drawn once per step for held and replayed modules alike, batch norm's
    # moving statistics moved once: the weights after three steps agree
    x, y = batch((6, 6, 2), n=16)
    weights, plans = {}, {}
    for hold in (False, True):
        keras.utils.set_random_seed(5)
        model = SSAModel("noisy", (6, 6, 2), 10, rule="dfa", network=_noisy_network(),
                         head_init="glorot", module_ends=("relu",), hold_within_peak=hold)
        compile_model(model, learning_rate=0.05)
        for _ in range(3):
            model.train_on_batch(x, y)
        weights[hold] = [w.numpy() for w in model.weights]
        plans[hold] = model.rule.held_modules(model)
    assert plans[True] == {1} and not plans[False]
    for a, b in zip(weights[False], weights[True]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_module_whose_mask_generator_another_shares_is_never_held():
    # a held module's first-pass draws would move the generator a replayed module
    # rewinds: its replay would draw other masks than the pass that made e
    keras.utils.set_random_seed(5)
    model = SSAModel("noisy", (6, 6, 2), 10, rule="dfa", network=_noisy_network(),
                     head_init="glorot", module_ends=("relu",), hold_within_peak=True)
    assert holds.plan(model)[0] == {1}
    first = next(l for l in model.local_modules[0]._flatten_layers() if l.name == "drop_in")
    later = next(l for l in model.local_modules[1]._flatten_layers() if l.name == "drop_mid")
    later.__dict__["_seed_generators"] = list(first._seed_generators)  # one for both
    assert holds.plan(model)[0] == frozenset()


def test_a_rank_cut_plans_the_holds_again():
    from ssa_tf.training.rank import apply_ranks

    model = build_model("smallconv", (16, 16, 3), 10, rule="ssa", hold_within_peak=True)
    first = model.rule.held_modules(model)
    key = model.rule._held_plan[0]
    apply_ranks(model, {l.name: max(1, l.full_rank // 4) for l in model.svd_layers()})
    model.rule.held_modules(model)
    assert model.rule._held_plan[0] != key and first


def _ancestors(op):
    seen, todo = set(), [op]
    while todo:
        o = todo.pop()
        for a in [t.op for t in o.inputs] + list(o.control_inputs):
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def test_a_replayed_modules_signal_is_made_after_the_held_modules_gradients(monkeypatch):
    # the chain runs on from the last signal read (``routes.Signals``): the signals of the
    # replayed modules are not held beside the held modules' tapes
    from ssa_tf.methods import chain

    made, steps = [], chain.adjoint_steps

    def recording(*args):
        for delta in steps(*args):
            made.append(delta)
            yield delta

    monkeypatch.setattr(chain, "adjoint_steps", recording)
    x, y = batch((32, 32, 3))
    model = build_model("resnet18", (32, 32, 3), 10, rule="ssa", hold_within_peak=True,
                        chain_dtype="bfloat16")
    model.rule.route.matrices = []  # the chain's transpose, as at ImageNet size
    held = model.rule.held_modules(model)
    n = len(model.local_modules)
    assert 0 not in held and n - 2 in held

    def gradients_before(t):  # the gradient ops the making of ``t`` waits for
        return {a for a in _ancestors(t.op) if a.name.startswith("gradient_tape")}

    assert model.rule.signals_ahead == 1  # the default
    first = {}
    for ahead in (1, 0):
        made.clear()
        model.rule.signals_ahead = ahead
        tf.function(lambda x, y: model.local_gradients(x, y)[1]).get_concrete_function(x, y)
        assert len(made) == n - 1  # the last non-final module's signal first, module 0's last
        assert not gradients_before(made[0])  # a held module's: before any gradient
        first[ahead] = len(gradients_before(made[-1]))
        assert first[ahead] > 0  # module 0's (replayed): after the held gradients
        assert made[-1].dtype == tf.bfloat16  # kept in the chain's dtype until read
    # one replay ahead (the default), module 0's does not wait for module 1's gradients
    assert first[1] < first[0]


def test_each_held_modules_backward_waits_for_the_one_after_it():
    # left to the executor, the first held modules' backward passes (the largest
    # transients) ran beside the later modules' tapes: resnet18/224's peak at batch 256
    # read 2958-3093 MB with the replays chained, 2685 MB in this order
    x, y = batch((16, 16, 3))
    model = build_model("resnet32", (16, 16, 3), 10, rule="ssa", hold_within_peak=True)
    held = sorted(model.rule.held_modules(model))
    assert len(held) >= 3
    owner = {id(v): i for i, m in enumerate(model.local_modules) for v in m.trainable_variables}

    def first_gradients(x, y):  # one gradient of each module
        out = {}
        for g, v in model.local_gradients(x, y)[0]:
            if g is not None and owner.get(id(v)) is not None:
                out.setdefault(owner[id(v)], g)
        return out

    grads = tf.function(first_gradients).get_concrete_function(x, y).structured_outputs
    for i, g in grads.items():  # the producing ops, not the function's output identities
        while g.op.type == "Identity":
            g = g.op.inputs[0]
        grads[i] = g
    for before, after in zip(held, held[1:]):
        assert grads[after].op in _ancestors(grads[before].op), (before, after)
    replayed = min(set(range(len(model.local_modules))) - set(held))
    assert grads[held[0]].op in _ancestors(grads[replayed].op)  # the replays after them
