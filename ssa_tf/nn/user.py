"""A Keras model as a network of local modules: a user's, and the built-in ones
(``nn.models`` writes them as Keras models and converts them here).

    modules = modules_from_keras(model, svd=True, local=True, feedback_init="forward")

``model`` is a Sequential or functional ``keras.Model`` with one input and one output
(the logits). Its Dense and Conv2D layers become SVD layers computing exactly what they
computed (for the rules that train SVD factors; plain copies for the others), each batch
norm a ``LocalBatchNorm`` (its statistics constants in a local backward, docs/ALGORITHM.md
§4), every other layer a copy of itself. The network is then cut into local
modules where the whole graph passes through one tensor (a residual block, whose paths
fork and join again, stays inside one module), each module holding one weight layer or
one such block; a shape-changing Flatten or Reshape starts the module after it. The last
module holds the classifier. ``ends`` (a user file's ``MODULE_ENDS``) chooses the split
instead.

Layers the rules cannot train locally are refused in one line naming the layer
(``UnsupportedLayerError``): a depthwise or separable convolution, attention, recurrent
layers, embeddings, anything without a linear feedback form here.

A model whose first layers are preprocessing (``Rescaling``, ``Normalization``: the
Keras tutorials' first layers) preprocesses its own input: it receives raw
pixels and the run's built-in normalization steps aside (``leading_preprocessing``); the
layers stay at the head of the first module, where they compute what they computed (they
have no trainable weights; an adapted Normalization keeps its statistics). Preprocessing
anywhere else, or of another kind (resizing, augmentation), is refused in one line.
"""

from __future__ import annotations

import keras
from keras.src.layers.preprocessing.data_layer import DataLayer

from ssa_tf.nn.graph import (BATCH_NORMS, PASS_THROUGH, TRAINING_ONLY, UnsupportedLayerError,
                             _is_functional, activation_name, clone_call, linear_copy, rewrite,
                             topological_nodes)
from ssa_tf.nn.layers import SVDConv2D, SVDDense, SVDLayer
from ssa_tf.nn.fast import faster
from ssa_tf.nn.norm import LocalBatchNorm

WEIGHT_TYPES = (keras.layers.Dense, keras.layers.Conv2D)
NORMS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
# what becomes a module boundary's neighbour in the next module, not the previous one
STARTS_A_MODULE = (keras.layers.Flatten, keras.layers.Reshape)
# preprocessing a model may do to its own input, as its first layers
PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization)


@keras.saving.register_keras_serializable(package="ssa_tf")
class GraphModule(keras.layers.Layer):
    """A local module cut out of a network's graph (a user's or a built-in one): ``graph``
    maps its input to its output; ``output_layer`` is the weight layer whose channels it
    emits (SSA builds the module's feedback from its feedback factors)."""

    def __init__(self, graph, output_layer, **kwargs):
        super().__init__(**kwargs)
        self.graph = graph
        self.output_layer = output_layer

    def call(self, x, training=False):
        return self.graph(x, training=training)


def refusal(layer) -> str | None:
    """Why ``layer`` cannot be part of a locally trained network, or None."""
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if isinstance(layer, keras.Model):
        return "a nested model; build your network as one flat functional model"
    if isinstance(layer, WEIGHT_TYPES):
        if type(layer) not in WEIGHT_TYPES:
            return (f"a {type(layer).__name__}, a subclass of Dense/Conv2D whose call may "
                    "differ from theirs")
        if isinstance(layer, keras.layers.DepthwiseConv2D) or (
                isinstance(layer, keras.layers.Conv2D) and layer.groups != 1):
            return "a grouped convolution"
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.dilation_rate) != (1, 1):
            return "a dilated convolution"
        return None
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        return ("a depthwise convolution: it has no matrix to factor as U diag(s) V^T, "
                "so SSA has no factors and no feedback for it")
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return ("attention: its output is not linear in its input, so no fixed feedback "
                "network carries the error through it")
    if isinstance(layer, DataLayer):  # where it stands is check()'s question
        return None if type(layer) in PREPROCESSING else (
            f"a {type(layer).__name__}, a preprocessing layer: a model may begin with "
            "Rescaling or Normalization (it then receives raw pixels); resizing and "
            "augmentation are the data pipeline's (data.augment)")
    if type(layer) in PASS_THROUGH or type(layer) in TRAINING_ONLY or isinstance(layer, NORMS):
        return None
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                          keras.layers.Activation, keras.layers.PReLU)):
        return None
    return (f"a {type(layer).__name__}: the rules here train Dense and Conv2D layers and "
            "carry the error through activations, norms, pooling, flatten/reshape, add "
            "and dropout")


def check(model):
    """``UnsupportedLayerError`` (one line) naming the first layer that cannot be trained
    locally."""
    if not isinstance(model, keras.Model):
        raise UnsupportedLayerError(f"expected a keras.Model, got {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayerError(f"model {model.name!r} has {len(model.inputs)} inputs and "
                                    f"{len(model.outputs)} outputs; give one of each")
    for layer in model.layers:
        why = refusal(layer)
        if why:
            raise UnsupportedLayerError(f"layer {layer.name!r} ({type(layer).__name__}) cannot "
                                        f"be trained locally: {why}")
    leading = {id(layer) for layer in leading_preprocessing(model)}
    for layer in model.layers:
        if isinstance(layer, PREPROCESSING) and id(layer) not in leading:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({type(layer).__name__}) preprocesses inside the "
                "network; preprocessing belongs at its start, right after the input (the "
                "model then receives raw pixels in [0, 255] and preprocesses them itself): "
                "move it there or remove it")
    last = model.layers[-1]
    if activation_name(last) == "softmax" or isinstance(last, keras.layers.Softmax):
        raise UnsupportedLayerError(f"model {model.name!r} ends in a softmax ({last.name!r}); "
                                    "return the logits (the rules compute the error from them)")


def leading_preprocessing(model) -> list:
    """The preprocessing layers (``PREPROCESSING``) that ``model``'s input passes through
    first, in order: the chain from the input along which each tensor has one consumer."""
    if isinstance(model, keras.Sequential):
        layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
        chain = []
        for layer in layers:
            if not isinstance(layer, PREPROCESSING):
                break
            chain.append(layer)
        return chain
    if not _is_functional(model):
        return []  # the conversion refuses it (its layers' order is unknown)
    nodes = topological_nodes(model)
    consumers = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    chain, tensor = [], model.inputs[0] if model.inputs else None
    while tensor is not None:
        users = consumers.get(id(tensor), [])
        if len(users) != 1 or not isinstance(users[0].operation, PREPROCESSING) \
                or len(users[0].input_tensors) != 1 or len(users[0].outputs) != 1:
            break
        chain.append(users[0].operation)
        tensor = users[0].outputs[0]
    return chain


def input_preprocessing(model) -> list:
    """The layers with which an ``SSAModel`` built from a user's network preprocesses its
    own input (the head of its first module), or []."""
    modules = getattr(model, "local_modules", None) or []
    if not modules or not isinstance(modules[0], GraphModule):
        return []
    return leading_preprocessing(modules[0].graph)


def describe_preprocessing(layer) -> str:
    """What one preprocessing layer computes, in numbers: ``rescaling: x * 0.00392 + 0``."""
    import numpy as np

    def numbers(v):
        flat = np.ravel(np.asarray(keras.ops.convert_to_numpy(v), np.float64))
        shown = [float(f"{x:.6g}") for x in flat[:6]]
        if flat.size == 1:
            return f"{shown[0]:g}"
        return "[" + ", ".join(f"{x:g}" for x in shown) + (", ...]" if flat.size > 6 else "]")

    if isinstance(layer, keras.layers.Rescaling):
        return f"{layer.name}: x * {numbers(layer.scale)} + {numbers(layer.offset)}"
    std = np.maximum(np.sqrt(keras.ops.convert_to_numpy(layer.variance)),
                     keras.backend.epsilon())
    if layer.invert:
        return f"{layer.name}: x * {numbers(std)} + {numbers(layer.mean)}"
    return f"{layer.name}: (x - {numbers(layer.mean)}) / {numbers(std)}"


class _Converter:
    """The handler of ``rewrite``: SVD layers, local batch norms, copies of the rest."""

    def __init__(self, svd, local, feedback_init, seed, ranks, conv_factorization):
        self.svd, self.local, self.feedback_init = svd, local, feedback_init
        self.seed, self.ranks = int(seed), dict(ranks or {})
        self.conv_factorization = conv_factorization
        self._count = 0

    def weight(self, layer, x):
        if not self.svd:
            return clone_call(layer, (x,), {})
        self._count += 1
        linear = linear_copy(layer)
        # random feedback is drawn like the layer's own weights, with its own seed
        # (nn.models: the i-th weight layer's weights have seed * 10007 + 2i - 1)
        kwargs = dict(rank=self.ranks.get(layer.name), feedback_init=self.feedback_init,
                      feedback_seed=self.seed * 10007 + 2 * self._count + 5003)
        if "seed" in layer.kernel_initializer.get_config():  # a random draw (not zeros, ...)
            kwargs["kernel_initializer"] = layer.kernel_initializer
        if isinstance(layer, keras.layers.Dense):
            new = SVDDense.from_dense(linear, **kwargs)
        else:
            new = SVDConv2D.from_conv(linear, factorization=self.conv_factorization, **kwargs)
        y = new(x)
        if activation_name(layer) != "linear":
            y = keras.layers.Activation(layer.activation, name=f"{layer.name}_activation")(y)
        return y

    def __call__(self, layer, args, kwargs):
        if isinstance(layer, WEIGHT_TYPES):
            return self.weight(layer, args[0])
        if isinstance(layer, BATCH_NORMS):
            config = {k: v for k, v in layer.get_config().items() if k != "stop_stat_gradient"}
            new = LocalBatchNorm(stop_stat_gradient=self.local, **config)
            y = new(args[0])
            new.set_weights(layer.get_weights())
            return y
        if (cls := faster(layer)) is not None:
            # the same layer with its training gradient written out (nn.fast)
            return clone_call(layer, args, {}, cls=cls)
        if isinstance(layer, keras.layers.Normalization):
            # its statistics as the user's (adapted, or given), not those built with the copy
            new = type(layer).from_config(layer.get_config())
            y = new(*args)
            new.set_weights(layer.get_weights())
            new.finalize_state()
            return y
        return clone_call(layer, args, {})


def _segments(model):
    """[(boundary tensor in, [nodes], boundary tensor out)], cut wherever every path
    from the input to the output passes through one tensor."""
    nodes = topological_nodes(model)
    uses = {}
    for node in nodes:
        for t in node.input_tensors:
            uses[id(t)] = uses.get(id(t), 0) + 1
    out_id = id(model.outputs[0])
    live = {id(model.inputs[0]): model.inputs[0]}
    segments, current, start = [], [], model.inputs[0]
    for node in nodes:
        for t in node.input_tensors:
            uses[id(t)] -= 1
            if uses[id(t)] == 0:
                live.pop(id(t), None)
        for t in node.outputs:
            if uses.get(id(t), 0) > 0 or id(t) == out_id:
                live[id(t)] = t
        current.append(node)
        if len(live) == 1:
            (end,) = live.values()
            segments.append((start, current, end))
            current, start = [], end
    if current:
        raise UnsupportedLayerError(f"model {model.name!r}: the graph does not end in one "
                                    "output tensor")
    return segments


def modules_from_keras(model, svd=True, local=True, feedback_init="forward", seed=1,
                       ranks=None, head_init=None, ends=None, conv_factorization="spatial",
                       numbered=False, output_layers=None) -> list:
    """The local modules (``GraphModule``) of a Keras model; see the module docstring.

    ``head_init="zero"`` zeroes the classifier's weights (s = 0 in SVD form), as the
    built-in models do for the rules whose head starts at zero (dfa, dkp: with the
    user's random head DFA diverged on a small residual CNN); None or "glorot" keeps the
    user's own initialization. ``ends`` overrides the split: the names of the layers
    after which a module ends (each must be a place where the whole graph passes
    through its output), the last module ending at the model's output. ``conv_factorization``
    is how SVD convolutions view their kernels (``SVDConv2D``). ``numbered`` names the
    modules m0, m1, ... (the built-in models') instead of after their weight layers.
    ``output_layers`` names each module's output layer (whose feedback factors SSA's
    structured feedback is built from); None: its last weight layer in the graph's order,
    which in a residual block without norms may be the shortcut's projection."""
    check(model)
    converted = rewrite(model, _Converter(svd, local, feedback_init, seed, ranks,
                                          conv_factorization), inference=True)
    segments = _segments(converted)
    groups = _chosen(model, segments, ends) if ends is not None else _automatic(segments)
    modules = []
    for k, group in enumerate(groups):
        weights = _weights(group)
        if not weights:
            raise UnsupportedLayerError(f"model {model.name!r} has no Dense or Conv2D layer to "
                                        "train")
        graph = keras.Model(group[0][0], group[-1][2], name=f"{model.name}_m{k}")
        # named after what it trains ("m0", "m1" told a user nothing): its weight
        # layer, or the first and last of them ("branch1..branch2"; a name scope takes no +)
        name = weights[0].name + (f"..{weights[-1].name}" if len(weights) > 1 else "")
        if numbered:
            name = f"m{k}"
        output = weights[-1]
        if output_layers is not None:
            (output,) = [w for w in weights if w.name == output_layers[k]]
        modules.append(GraphModule(graph, output, name=name))
    if head_init == "zero":
        head = modules[-1].output_layer
        for v in ([head.s] if isinstance(head, SVDLayer) else [head.kernel]):
            v.assign(keras.ops.zeros(v.shape, v.dtype))
    return modules


def split_lines(modules) -> list:
    """One line per module: its name, then the user's layers it holds, in order
    (``1 conv2..conv3: conv2, norm, relu, conv3, add``); preprocessing is marked."""
    lines = []
    for k, module in enumerate(modules):
        own = {id(l) for l in leading_preprocessing(module.graph)} if k == 0 else set()
        layers = [l for l in module.graph.layers if not isinstance(l, keras.layers.InputLayer)]
        # the activations split off the weight layers (_Converter.weight): theirs
        split = {f"{l.name}_activation" for l in layers
                 if isinstance(l, (SVDLayer, *WEIGHT_TYPES))}
        names = [f"{l.name} (preprocessing)" if id(l) in own else l.name for l in layers
                 if not (l.name in split and isinstance(l, keras.layers.Activation))]
        if len(names) > SPLIT_NAMES + 1:  # a long block: its ends, and how many between
            half = SPLIT_NAMES // 2
            names = [*names[:half], f"... {len(names) - 2 * half} more ...", *names[-half:]]
        lines.append(f"{k} {module.name}: {', '.join(names)}")
    return lines


SPLIT_NAMES = 10  # layers named per module in split_lines, at most


def _automatic(segments):
    """One weight layer or one residual block per module; a Flatten starts the next."""
    groups = []  # [[segment, ...], ...]
    pending = []  # weightless segments that start the next module
    for seg in segments:
        ops = [n.operation for n in seg[1]]
        if any(isinstance(o, (SVDLayer, *WEIGHT_TYPES)) for o in ops) or not groups:
            groups.append([*pending, seg])
            pending = []
        elif any(isinstance(o, STARTS_A_MODULE) for o in ops) or pending:
            pending.append(seg)
        else:
            groups[-1].append(seg)
    groups[-1].extend(pending)
    if len(groups) > 1 and not _weights(groups[0]):  # leading weightless layers
        groups[:2] = [groups[0] + groups[1]]
    return groups


def _producer(tensor):
    return tensor._keras_history.operation.name


def _chosen(model, segments, ends):
    """The modules that end after the layers named in ``ends``."""
    cuts = {_producer(seg[2]) for seg in segments[:-1]}
    # a Dense/Conv2D with an activation ends at the activation split off it
    wanted = {f"{n}_activation" if f"{n}_activation" in cuts else n for n in ends}
    unknown = sorted(n for n in wanted if n not in cuts)
    if unknown:
        # in the graph's order, once each: a Dense/Conv2D with an activation ends at
        # both its own output and its activation's (without this it was listed twice)
        places = [_producer(seg[2]) for seg in segments[:-1]]
        places = [c[:-len("_activation")] if c.endswith("_activation") else c for c in places]
        where = ", ".join(dict.fromkeys(places))
        raise UnsupportedLayerError(f"model {model.name!r}: module ends {unknown} are not "
                                    "layers whose output the whole graph passes through; "
                                    f"those are: {where}")
    groups, current = [], []
    for seg in segments:
        current.append(seg)
        if _producer(seg[2]) in wanted:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _weights(group):
    return [n.operation for seg in group for n in seg[1]
            if isinstance(n.operation, (SVDLayer, *WEIGHT_TYPES))]
