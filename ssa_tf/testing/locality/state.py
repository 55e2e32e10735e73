"""The state a run holds, found by walking, and its values compared and randomized.

The kinds of finding and the roles of a piece of state; ``walk`` (every Keras variable,
``tf.Variable``, eager tensor and numpy array reachable from the model, its rule and its
route), ``snapshot``; ``Item`` (a piece of state, read and set); ``_random_like``,
``_same``, ``_difference`` (a value randomized at its scale, two compared).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras.src.saving import serialization_lib

# the kinds of finding
DEPENDS = "update depends on another module"
SIGNAL = "signal depends on forward weights"
FEEDBACK = "feedback state depends on forward weights"
CHANGED = "fixed feedback changed"
BETWEEN = "state changed outside a step"
CUT = "rank cut moved more into the feedback than the card states"
RESUME = "resume did not restore the state"
SELF = "module's own forward not reproduced"
KINDS = (DEPENDS, SIGNAL, FEEDBACK, CHANGED, BETWEEN, CUT, RESUME, SELF)
# the cards' feedback values under which a learned feedback (route.extra_variables) moves
LEARNING = ("learns locally", "local head")

# the roles of a piece of state (``Replica.roles``)
FEEDBACK_ROLE = "feedback"  # not a module's forward state: the feedback path's
METRIC = "metric"
CLOCK = "clock"  # the optimizer's step count and rate: the schedule, no weight
# ("own", j): module j's forward state (weights, norms' statistics, dropout seeds) and
# its optimizer moments; ("learned", j): a feedback module j trains with its own
# parameters (route.extra_variables), and its moments

# packages whose objects the walk does not enter (their state is the library's own)
OPAQUE = ("tensorflow", "numpy", "absl", "google", "h5py", "ml_dtypes", "optree", "rich",
          "namex", "packaging", "jax", "torch", "scipy", "matplotlib", "PIL", "pandas",
          "builtins", "weakref", "functools", "threading", "inspect", "types", "typing",
          "collections", "abc", "enum", "re", "logging", "io", "pathlib", "contextlib")


# Keras's records of the arguments a model was compiled with (for saving). The optimizer
# compile() was given stays there after a rank cut replaces it, with the variables it was
# built for: state that nothing reads again (a resumed run's is another, never trained)
SAVING_RECORDS = (serialization_lib.SerializableDict,)


class HarnessError(RuntimeError):
    """The harness could not record or replay the run (not a finding about the rule)."""



# --------------------------------------------------------------------------
# The state: everything reachable, found by walking.
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Item:
    """A piece of state: a variable, or a tensor or array held in ``holder`` at ``at``."""
    obj: object
    holder: object = None
    at: object = None  # attribute name (str) or index / key (in a list or dict)
    attribute: bool = True

    def value(self) -> np.ndarray:
        obj = self.obj
        if isinstance(obj, np.ndarray):
            return obj.copy()
        return np.array(obj.numpy())

    def set(self, value):
        obj = self.obj
        if hasattr(obj, "assign"):
            if tuple(obj.shape) != tuple(np.shape(value)):
                raise HarnessError(f"cannot set {obj} of shape {tuple(obj.shape)} to a value of "
                                   f"shape {np.shape(value)}")
            obj.assign(value)
            return
        if isinstance(obj, np.ndarray):
            np.copyto(obj, value)
            return
        new = tf.constant(value, dtype=obj.dtype)
        if self.attribute:
            setattr(self.holder, self.at, new)
        else:
            self.holder[self.at] = new
        self.obj = new


def _is_opaque(obj) -> bool:
    import types

    if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType,
                        types.BuiltinFunctionType, str, bytes, int, float, complex, bool)):
        return True
    return type(obj).__module__.split(".")[0] in OPAQUE


def walk(roots) -> dict:
    """{key: Item} of every Keras variable, ``tf.Variable``, eager tensor and numpy array
    reachable from ``roots`` ([(name, object)]) through attributes, lists, tuples, dicts
    and sets, recursively (objects of ``OPAQUE`` packages are not entered). A Keras
    variable's key is its path; another item's, the path of attributes that reached it."""
    found, seen = {}, set()
    stack = [(name, obj, None, None, True) for name, obj in reversed(roots)]
    while stack:
        path, obj, holder, at, attribute = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, keras.Variable):
            key = f"var:{obj.path}"
            found[path if key in found else key] = Item(obj)  # two of one path: by place
            continue
        if isinstance(obj, tf.Variable):
            found[path] = Item(obj)
            continue
        if isinstance(obj, tf.Tensor):
            if not tf.is_symbolic_tensor(obj):
                found[path] = Item(obj, holder, at, attribute)
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype != object:
                found[path] = Item(obj, holder, at, attribute)
            continue
        children = []
        if isinstance(obj, dict):
            children = [(f"{path}[{k!r}]", v, obj, k, False) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            children = [(f"{path}[{i}]", v, obj, i, False) for i, v in enumerate(obj)]
        elif isinstance(obj, (set, frozenset)):
            children = [(f"{path}{{{i}}}", v, None, None, False)
                        for i, v in enumerate(sorted(obj, key=repr))]
        elif isinstance(obj, SAVING_RECORDS):
            continue  # what compile() was given, kept to save it: never read in training
        elif not _is_opaque(obj):
            names = dict(getattr(obj, "__dict__", {}))
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    if isinstance(slot, str) and slot not in names and hasattr(obj, slot):
                        names[slot] = getattr(obj, slot)
            children = [(f"{path}.{k}", v, obj, k, True) for k, v in names.items()]
        stack.extend(reversed(children))
    return found


def model_roots(model):
    roots = [("model", model)]
    rule = getattr(model, "rule", None)
    if rule is not None:
        roots.append(("rule", rule))
        if getattr(rule, "route", None) is not None:
            roots.append(("route", rule.route))
    return roots


def snapshot(model) -> dict:
    """{key: value} of the whole state (``walk``)."""
    return {k: item.value() for k, item in walk(model_roots(model)).items()}


# --------------------------------------------------------------------------
# Values: randomized at their scale, compared.
# --------------------------------------------------------------------------

def _random_like(value, rng):
    value = np.asarray(value)
    if value.dtype.kind in "iu":
        return rng.integers(0, 2 ** 20, value.shape).astype(value.dtype)
    if value.dtype.kind == "b":
        return rng.integers(0, 2, value.shape).astype(bool)
    v = value.astype(np.float64)
    mean = float(v.mean()) if v.size else 0.0
    std = max(float(v.std()) if v.size else 0.0, 0.1 * abs(mean), 0.05)
    out = mean + std * rng.standard_normal(value.shape)
    if v.size and v.min() >= 0:
        out = np.abs(out)
    return out.astype(value.dtype)


def _same(a, b, tolerance=None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if tolerance is None or a.dtype.kind not in "fc":
        return np.array_equal(a, b, equal_nan=True)
    return np.allclose(a, b, rtol=tolerance, atol=tolerance * float(np.abs(b).max() or 1.0),
                       equal_nan=True)


def _difference(a, b) -> str:
    if a is None or b is None:
        return f"{'none' if a is None else 'a gradient'} where the run had " \
               f"{'none' if b is None else 'a gradient'}"
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} where the run had {b.shape}"
    if a.dtype.kind not in "fc":
        return f"{int(np.sum(a != b))} of {a.size} entries differ"
    d = float(np.max(np.abs(a.astype(np.float64) - b)))
    return f"max |difference| {d:.3g} (the run's max |value| {float(np.max(np.abs(b))):.3g})"
