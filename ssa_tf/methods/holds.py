"""Which modules keep their tapes through a recomputing step (``rule.hold_within_peak``).

A direct rule that recomputes (``rule.recompute``) runs the forward pass once for the
output error e, keeping only the module boundaries, then replays each module under its own
tape: its peak memory is one module's activations, the largest module's. Every other
module replayed within that peak costs a forward pass and saves nothing: the modules whose
tapes fit together in the largest one's keep their tapes from the first pass instead, and
their gradients are taken before the first replay, so the peak stays the largest
module's while the step skips their replays. A tape is measured as what the backward
pass reads (``tape_elements``), not every tensor the forward makes: a 224x224 ResNet-18's
stem keeps 3.4M numbers an example of the 6.7M its forward makes, and its later modules
keep about 40% of theirs. On an ImageNet ResNet the stem and
first stage hold most of the activations and the later stages most of the multiply-adds.

The gradients are the same: a replay computes the first pass's activations (same
weights, same dropout masks, same batch statistics).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ssa_tf.nn.graph import PASS_THROUGH
from ssa_tf.nn.svd import SVDLayer
from ssa_tf.nn.user import PREPROCESSING, WEIGHT_TYPES

# a batch size no weight's leading dimension is likely to have: the tensors of a traced
# pass whose leading dimension is this are its activations
_PROBE_BATCH = 17
# ops that read only their input's shape (``tf.gradients`` fills a custom gradient's
# unused outputs with ZerosLike; a tape does not): they keep no activation
_SHAPE_ONLY = frozenset({"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"})


# > 0 while ``tape_elements`` traces a module (``tracing``: the locality harness, which
# records every module call of a step, leaves these out)
_TRACING = [0]


def tracing() -> bool:
    return _TRACING[0] > 0


def tape_elements(module, input_shape) -> int:
    """Per example: the elements of the forward tensors that ``module``'s gradient reads
    (what its tape keeps for the backward pass; a bfloat16 tensor counts half), from one
    trace of a training forward and backward pass on a probe batch. Its input is not
    counted (a boundary, kept by the step either way)."""
    spec = tf.TensorSpec((_PROBE_BATCH, *input_shape), tf.float32)
    variables = module.trainable_variables
    forward = []

    def step(x):
        loss = tf.reduce_sum(module(x, training=True))
        forward.extend(x.graph.get_operations())
        # the graph's own gradients, not a tape: ``plan`` traces under ``tf.init_scope``,
        # which pauses every tape
        return tf.gradients(loss, variables)

    _TRACING[0] += 1
    try:
        graph = tf.function(step).get_concrete_function(spec).graph
    finally:
        _TRACING[0] -= 1
    made = set(forward)
    kept = {}
    for op in graph.get_operations():
        if op in made or op.type in _SHAPE_ONLY:
            continue
        for t in op.inputs:
            t = _aliased(t)
            if t.op in made and t.op.type != "Placeholder" and _per_example(t):
                kept[t.ref()] = int(np.prod(t.shape[1:])) * t.dtype.size / 4
    return int(sum(kept.values()))


def _aliased(t):
    """The tensor whose memory ``t`` shares (an identity's input: a custom gradient's
    inputs are passed through one)."""
    while t.op.type in ("Identity", "IdentityN", "StopGradient"):
        t = t.op.inputs[t.value_index]
    return t


def _per_example(t) -> bool:
    shape = t.shape
    return bool(t.dtype.is_floating and shape.rank and shape.is_fully_defined()
                and shape[0] == _PROBE_BATCH)


def held_within_peak(sizes, eligible=None, budget=None) -> frozenset:
    """The indices of the modules to hold: the largest module is always replayed (it is
    the peak); the others (of ``eligible``, default all), smallest first, are held while
    their sizes together stay within ``budget`` (default the largest module's size)."""
    if len(sizes) < 2:
        return frozenset()
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -i))
    if eligible is not None:
        order = [i for i in order[:-1] if i in eligible] + order[-1:]
    budget, held, total = budget or sizes[order[-1]], set(), 0
    for i in order[:-1]:
        if total + sizes[i] > budget:
            break
        held.add(i)
        total += sizes[i]
    return frozenset(held)


def slices(sizes, n, sliceable) -> dict:
    """``rule.replay_slices``: how many slices of the batch each module of ``sliceable``
    is replayed in, so that no slice's tape is larger than the largest module's over
    ``n`` (``ceil(n * size / largest)``; the others: 1)."""
    largest = max(max(sizes), 1)
    return {i: (max(1, -(-n * s // largest)) if i in sliceable else 1)
            for i, s in enumerate(sizes)}


# the kinds of layer the converter takes (``nn.graph``, ``nn.user``) whose training
# computation treats every example on its own: not batch norm (batch statistics), not
# dropout or noise (random draws)
_PER_EXAMPLE = (*PASS_THROUGH, *WEIGHT_TYPES, *PREPROCESSING, SVDLayer, keras.Model,
                keras.layers.InputLayer, keras.layers.PReLU)


def _over_the_batch(layer) -> bool:
    """``layer`` has an ``axis`` (a norm's, a softmax's, a concatenation's) that is, or
    counts from the end to, the batch's."""
    axes = getattr(layer, "axis", None)
    if axes is None:
        return False
    nodes = getattr(layer, "_inbound_nodes", None) or []
    rank = len(nodes[0].input_tensors[0].shape) if nodes and nodes[0].input_tensors else None
    axes = axes if isinstance(axes, (list, tuple)) else [axes]
    return any(a == 0 or (rank is not None and a < 0 and a % rank == 0) or
               (rank is None and a < 0) for a in axes)


def per_example(module) -> bool:
    """Every layer of ``module`` is of a kind in ``_PER_EXAMPLE`` (or a subclass:
    ``nn.fast``'s, the SVD layers), not over the batch's axis (a layer norm or softmax with
    ``axis=0``); a layer of any other kind (batch norm, dropout) might mix the examples."""
    return all(isinstance(layer, _PER_EXAMPLE) and not _over_the_batch(layer)
               for layer in module._flatten_layers(include_self=False, recursive=True))


def generators(module) -> set:
    """The ids of the mask generators (dropout and noise layers' own) inside ``module``."""
    return {id(g) for layer in module._flatten_layers(include_self=True, recursive=True)
            for g in getattr(layer, "_seed_generators", ())}


def plan(model, replay_slices=1, chained=False, hold=True) -> tuple:
    """(the modules to hold, {module: slices}) for ``model``'s local modules at their
    current ranks: ``held_within_peak`` within the largest replay's tape, which
    ``replay_slices`` divides (``slices``: modules ``per_example`` without mask
    generators). ``chained`` (``rule.replay_chained``): the first pass keeps no boundary
    beside the held tapes but the input (and a sliced module's output, which its gradient
    is taken at), so the held modules fill the largest module's whole tape, and only the
    replays larger than the held tapes together are sliced, to keep below them.
    ``hold``: whether any module is held (``rule.hold_within_peak``; the slices assume
    none when not). A module whose mask generator another module shares is never held. (It
    was needed when the replays restored every generator to its state before the first
    pass; each replay now restores its own module's state as the first pass reached it,
    which a held module's draws cannot disturb, and the rule is kept as the narrower
    plan.)"""
    modules = model.local_modules
    shapes = [model.input_dims, *model.module_output_shapes[:-1]]
    with tf.init_scope():  # traced on its own, also when asked inside a step's trace
        sizes = [tape_elements(m, s) for m, s in zip(modules, shapes)]
    own = [generators(m) for m in modules]
    eligible = {i for i, g in enumerate(own)
                if not any(g & h for j, h in enumerate(own) if j != i)}
    # the head (the last module) learns from the logits: never sliced
    sliceable = {i for i, m in enumerate(modules[:-1]) if not own[i] and per_example(m)}
    if chained:  # the held tapes fill the largest's; the replays larger than them sliced
        held = held_within_peak(sizes, eligible) if hold else frozenset()
        larger = {i for i in sliceable if sizes[i] > sum(sizes[j] for j in held)}
        return held, slices(sizes, replay_slices, larger)
    cuts = slices(sizes, replay_slices, sliceable)
    budget = max(s / cuts[i] for i, s in enumerate(sizes))
    return held_within_peak(sizes, eligible, budget), cuts


def slice_gradients(module, own, x, dh, start, stop):
    """The gradients of ``own`` from ``module`` replayed on examples ``start:stop`` of
    ``x``, its output sending back ``dh``'s; none from an empty slice (a batch smaller
    than the slices: an epoch's last, or a replica's). A trace that does not know the
    batch size makes the replay a branch an empty slice skips (a function call, which the
    known sizes of a fixed batch do without)."""
    def replay():
        with tf.GradientTape() as tape:
            part = module(tf.identity(x[start:stop]), training=True)
        return tape.gradient(part, own, output_gradients=dh[start:stop])

    if tf.executing_eagerly() or isinstance(stop, int):  # known now: no branch
        return replay() if int(stop) > int(start) else [None] * len(own)
    reached = []  # the variables the replay's gradient reaches (None stays None)

    def taken():
        got = replay()
        reached[:] = [j for j, g in enumerate(got) if g is not None]
        return [got[j] for j in reached]

    # (the true branch is traced first: ``reached`` is known when the false one is)
    values = tf.cond(stop > start, taken, lambda: [tf.zeros_like(own[j]) for j in reached])
    got = dict(zip(reached, values if reached else []))
    return [got.get(j) for j in range(len(own))]


__all__ = ["held_within_peak", "per_example", "plan", "slice_gradients", "slices",
           "tape_elements", "tracing"]
