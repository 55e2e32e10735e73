"""Layer norms in the ONNX graph: the mean moves into the weight layer before them.

Every layer norm of an ssa_tf model normalizes the channels of a weight
layer's output, ``y = (x - mean_c x) / sqrt(var_c x + eps) * gamma + beta``.
tf2onnx 1.17 writes Keras 3's layer norm as about fourteen ops, nine of which
read or write a full activation tensor, and onnxruntime fuses none of them on
the channel axis of an NCHW graph (its LayerNormalization fusion wants the
last axis). The channel mean of a linear layer's output is itself linear in
the input, so it folds into the layer: with every output channel's weights
(and bias) centred, ``x`` already has zero channel mean and the norm is
``x * rsqrt(mean_c x^2 + eps) * gamma + beta``, five full passes. The result
is the same function up to float rounding (the export's parity check holds it
to 1e-4 per logit).

``fold_layer_norm_means(model)`` rewrites a ModelProto in place and returns
(norms folded, layer norms found). A norm is left as it was when its input
has another consumer or does not come straight from a Conv, a MatMul or a
MatMul plus a constant bias whose weights nothing else reads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fold_layer_norm_means(model) -> tuple[int, int]:
    graph = model.graph
    view = _GraphView(model)
    found = folded = 0
    for node in list(graph.node):
        match = _match(view, node)
        if match is None:
            continue
        found += 1
        if _fold_mean(view, match):
            _rewrite(view, match, f"{match['out']}__rms")
            folded += 1
    if folded:
        view.commit()
    return folded, found


class _GraphView:
    """Producers, consumers and initializers of a graph, and pending edits."""

    def __init__(self, model):
        graph = self.graph = model.graph
        inferred = onnx.shape_inference.infer_shapes(model).graph  # a new model: ranks only
        self.rank = {v.name: len(v.type.tensor_type.shape.dim)
                     for v in (*inferred.value_info, *inferred.input, *inferred.output)
                     if v.type.tensor_type.HasField("shape")}
        self.inits = {init.name: init for init in graph.initializer}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers = {}
        for n in graph.node:
            for name in dict.fromkeys(n.input):  # Mul(d, d) uses d once
                self.consumers.setdefault(name, []).append(n)
        self.outputs = {v.name for v in graph.output}
        self.removed, self.inserted = set(), {}

    def const(self, name):
        """The initializer's array, or None for a computed tensor."""
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def set_const(self, name, array):
        self.inits[name].CopyFrom(numpy_helper.from_array(array, name))

    def users(self, name):
        return self.consumers.get(name, [])

    def sole_user(self, name, op_type):
        users = self.users(name)
        if len(users) != 1 or users[0].op_type != op_type or name in self.outputs:
            return None
        return users[0]

    def commit(self):
        nodes = []
        for n in self.graph.node:
            nodes.extend(self.inserted.get(id(n), ()))
            if id(n) not in self.removed:
                nodes.append(n)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {name for n in self.graph.node for name in n.input}
        keep = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _axes(view, node):
    """A ReduceMean's axes (attribute up to opset 17, input from 18), or None."""
    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    if len(node.input) > 1:
        axes = view.const(node.input[1])
        return None if axes is None else [int(a) for a in axes.ravel()]
    return None


def _keepdims(node):
    return all(attr.i == 1 for attr in node.attribute if attr.name == "keepdims")


def _other(node, name):
    """The input of a two-input node that is not ``name`` (None if neither or both are)."""
    if len(node.input) != 2 or list(node.input).count(name) != 1:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _scalar_const(view, name):
    value = view.const(name)
    return value is not None and value.size == 1


def _match(view, mean):
    """tf2onnx's layer norm starting at ReduceMean ``mean`` over axis 1, as a dict, or None.

    mean = ReduceMean(x); d = x - mean (mean possibly reshaped); var = ReduceMean(d * d);
    r = 1 / Sqrt(var + eps); k = r * gamma; out = x * k + (-mean * k + beta), where a zero
    beta may be gone (tf2onnx folds the addition of zeros)
    """
    if mean.op_type != "ReduceMean" or not _keepdims(mean):
        return None
    x, m = mean.input[0], mean.output[0]
    axes = _axes(view, mean)
    if x not in view.rank or axes is None or len(axes) != 1:
        return None
    axis = axes[0] % view.rank[x]
    m_users = view.users(m)
    neg = [n for n in m_users if n.op_type == "Neg"]
    shaped = [n for n in m_users if n.op_type == "Reshape"]
    if len(neg) != 1 or len(m_users) != 1 + len(shaped) + sum(
            n.op_type == "Sub" for n in m_users) or len(shaped) > 1:
        return None
    m_sub = shaped[0].output[0] if shaped else m
    subs = [n for n in view.users(m_sub) if n.op_type == "Sub" and n.input[0] == x]
    if len(subs) != 1 or (shaped and len(view.users(m_sub)) != 1):
        return None
    sub = subs[0]
    square = view.sole_user(sub.output[0], "Mul")
    if square is None or list(square.input) != [sub.output[0]] * 2:
        return None
    var = view.sole_user(square.output[0], "ReduceMean")
    if var is None or _axes(view, var) != axes or not _keepdims(var):
        return None
    add_eps = view.sole_user(var.output[0], "Add")
    if add_eps is None or not _scalar_const(view, _other(add_eps, var.output[0])):
        return None
    sqrt = view.sole_user(add_eps.output[0], "Sqrt")
    recip = sqrt and view.sole_user(sqrt.output[0], "Reciprocal")
    scale = recip and view.sole_user(recip.output[0], "Mul")
    if scale is None:
        return None
    gamma = _other(scale, recip.output[0])
    k_users = view.users(scale.output[0])
    if view.const(gamma) is None or len(k_users) != 2 or scale.output[0] in view.outputs:
        return None
    x_scaled = [n for n in k_users if n.op_type == "Mul" and _other(n, scale.output[0]) == x]
    m_scaled = [n for n in k_users
                if n.op_type == "Mul" and _other(n, scale.output[0]) == neg[0].output[0]]
    if len(x_scaled) != 1 or len(m_scaled) != 1:
        return None
    # + beta, unless beta is zero and tf2onnx folded it away
    shifted = m_scaled[0].output[0]
    shift = beta = None
    if len(view.users(shifted)) != 1 or shifted in view.outputs:
        return None
    after = view.users(shifted)[0]
    if after.op_type == "Add" and view.const(_other(after, shifted)) is not None:
        shift, beta = after, _other(after, shifted)
        shifted = shift.output[0]
        if len(view.users(shifted)) != 1 or shifted in view.outputs:
            return None
    out = view.sole_user(x_scaled[0].output[0], "Add")
    if out is None or _other(out, x_scaled[0].output[0]) != shifted:
        return None
    return {"x": x, "axis": axis, "rank": view.rank[x], "out": out.output[0],
            "gamma": gamma, "beta": beta, "readers": (mean, sub, x_scaled[0]),
            "eps": _other(add_eps, var.output[0]), "var": var, "first": mean,
            "nodes": [mean, *shaped, neg[0], sub, square, var, add_eps, sqrt, recip, scale,
                      x_scaled[0], m_scaled[0], *([shift] if shift else []), out]}


def _fold_mean(view, match):
    """Centre the output channels of the linear layer the norm reads; False if it cannot."""
    readers = sorted(id(n) for n in match["readers"])
    if sorted(id(n) for n in view.users(match["x"])) != readers or match["x"] in view.outputs:
        return False  # x feeds something besides this norm: centring it would change that
    node = view.producer.get(match["x"])
    bias = None
    if node is not None and node.op_type == "Add":  # MatMul + bias
        terms = [name for name in node.input if view.const(name) is None]
        consts = [name for name in node.input if view.const(name) is not None]
        if len(terms) != 1 or len(consts) != 1:
            return False
        bias, node = consts[0], view.producer.get(terms[0])
        if node is None or node.op_type != "MatMul" or len(view.users(node.output[0])) != 1:
            return False
    if node is None or node.op_type not in ("Conv", "MatMul") or len(node.input) < 2:
        return False
    weight = view.const(node.input[1])
    if weight is None or len(view.users(node.input[1])) != 1:
        return False
    # the norm must run over the layer's output channels
    if node.op_type == "Conv":  # (out, in, kh, kw), NCHW output
        if len(node.input) > 2:
            bias = node.input[2]
        axis, channels = 0, 1
    else:  # (in, out), channels last
        if weight.ndim != 2:
            return False
        axis, channels = 1, match["rank"] - 1
    if match["axis"] != channels:
        return False
    if bias is not None:
        b = view.const(bias)
        if b is None or b.size != weight.shape[axis] or len(view.users(bias)) != 1:
            return False
    w64 = weight.astype(np.float64)
    view.set_const(node.input[1], (w64 - w64.mean(axis=axis, keepdims=True)).astype(weight.dtype))
    if bias is not None:
        b = view.const(bias)
        b64 = b.astype(np.float64)
        view.set_const(bias, (b64 - b64.mean()).astype(b.dtype))
    return True


def _rewrite(view, match, prefix):
    """out = x * (1 / Sqrt(ReduceMean(x * x) + eps)) * gamma (+ beta), in place of the match."""
    x, var = match["x"], match["var"]
    reduce = helper.make_node("ReduceMean", [f"{prefix}_sq", *var.input[1:]], [f"{prefix}_var"],
                              name=f"{prefix}_var")
    reduce.attribute.extend(var.attribute)
    new = [helper.make_node("Mul", [x, x], [f"{prefix}_sq"], name=f"{prefix}_sq"),
           reduce,
           helper.make_node("Add", [f"{prefix}_var", match["eps"]], [f"{prefix}_ve"],
                            name=f"{prefix}_ve"),
           helper.make_node("Sqrt", [f"{prefix}_ve"], [f"{prefix}_std"], name=f"{prefix}_std"),
           helper.make_node("Reciprocal", [f"{prefix}_std"], [f"{prefix}_r"],
                            name=f"{prefix}_r"),
           helper.make_node("Mul", [x, f"{prefix}_r"], [f"{prefix}_n"], name=f"{prefix}_n"),
           helper.make_node("Mul", [f"{prefix}_n", match["gamma"]],
                            [f"{prefix}_g" if match["beta"] else match["out"]],
                            name=f"{prefix}_g")]
    if match["beta"]:
        new.append(helper.make_node("Add", [f"{prefix}_g", match["beta"]], [match["out"]],
                                    name=f"{prefix}_out"))
    view.inserted[id(match["first"])] = new
    view.removed.update(id(n) for n in match["nodes"])
