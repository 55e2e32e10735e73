"""Locality proven over a whole run, by record and replay (docs/ALGORITHM.md §3a).

    from ssa_tf.testing import locality
    scenario = locality.Scenario("ssa", epochs=3, cut_after=1, resume=(2, 1))
    report = locality.check(scenario, tmp_path)
    assert not report.disagreements(), report.text()

**Record.** A small run through the real entry, ``ssa_tf.training.run.train``: its
``fit_loop`` with the run's callbacks, its checkpoints, a rank cut inside the run (the
``RankPruning`` callback), and with ``resume`` the run stopped mid-epoch and started
again, from its checkpoint, by a second ``run.train``. A ``Recorder`` callback keeps:

* the whole state before and after every step, and after every epoch (after the rank
  cut, before the checkpoint). The state is found by walking every object reachable
  from the model, its rule and its route (attributes, lists, dicts, recursively; a
  library's internals excepted): every Keras variable, ``tf.Variable``, eager tensor
  and numpy array, not a list of known attributes;
* the batch, and for every module each call's input and output and the gradient that
  output received (the module's signal, ``d loss / d h_i``).

**Replay.** Every step, once per module i, in a replica built from the same settings
(``Replica``; the run's last model itself at its final ranks), one real ``train_step`` on
the recorded batch, in which:

* module i holds its recorded state (parameters, optimizer moments, dropout seeds, norm
  statistics, its learned feedback) and computes from its recorded input;
* the head returns, call by call, the recorded logits (so the output error e is the run's)
  and the module before i its recorded output (module i's input);
* every other module returns random activations, and every module but i holds random
  forward state (weights, statistics, seeds and their optimizer moments); gradients still
  flow through each module's own computation, with those random weights;
* the feedback state (everything that is not a module's forward state, an optimizer
  moment of one, a metric or the clock: fixed matrices, feedback factors, chain matrices, a
  learned feedback and its moments, anything a rule hides on itself) and the clock are the
  recorded ones.

Module i's state after the step and its signal must be the run's, bit for bit
(``DEPENDS``: any read of another module's weights or activations, a gated chain, a chain
recomputed from the forward factors, shows here); so must the signals of the two modules
whose outputs are recorded, whose own weights are random (``SIGNAL``: a signal that reads
the module's own forward weights), and the feedback state after the step (``FEEDBACK``; a
learned feedback where its module's output is recorded). Over the replays each module's
signal and learned feedback are replayed with its own weights random and every other
module's weights and activations random in turn. And, without replay:

* *fixed feedback* (``CHANGED``): for every step, the feedback state before and after
  (a learned feedback aside when the card says it learns);
* *between steps* (``BETWEEN``): nothing changes between one step and the next, nor at an
  epoch's end without a cut;
* *at a rank cut* (``CUT``): the feedback factors must be what the card's ``at_cuts``
  says (their slots chosen by the forward energy, their first r columns, or their own
  best rank r), computed here from the recorded state, and every other feedback state
  what the replica's ``feedback_changed`` derives from them with random forward weights;
* *at the resume* (``RESUME``): the restored state must be the checkpointed one.

A finding is a disagreement with the card unless the card says so: a sequential rule
must show ``DEPENDS`` (the harness confirms the card by finding the dependency), a rule
whose feedback copies the forward weights ``FEEDBACK``, one whose feedback is the forward
weights ``SIGNAL``; a direct rule must show none (``Report.disagreements``).

What it does not prove: behaviour on steps, settings or shapes the run did not take (a
leak that first acts after the run's last step; a module whose own forward reads another
module's weight in a way that leaves the recorded values unchanged); it runs eagerly
(``tf.config.run_functions_eagerly``), as compiled steps are not bit-for-bit comparable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

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


class _Stopped(Exception):
    """Raised by ``StopAt`` to end the first run mid-epoch (a killed run, resumed)."""


# --------------------------------------------------------------------------
# The scenario: a small run through the real entry.
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scenario:
    """One run to record: the rule ``mode`` with ``options`` (method options), on
    ``model`` (a built-in architecture or a ``.py`` file), ``epochs`` of ``steps``
    steps of ``batch`` 8x8x3 synthetic images; ``cut_after``: one rank cut (tau 0.9, every
    layer) after that epoch (from 1), the feedback cut ``feedback_cut`` (None: the
    default); ``resume``: (epoch from 1, steps done in it) at which the first run stops,
    a second ``run.train`` resuming from its last checkpoint; ``settings``: further
    ``SECTION.FIELD=VALUE``; ``cache_limit``: the routes' full-map limit
    (``routes.MAX_FULL_MAP_ENTRIES``) for the run and the replay (0: the chain is never
    cached, it runs its linear network every step, as at ImageNet sizes); ``replay_every``:
    a long run's steps replayed (every n-th and the last; every step's state is checked
    without replay all the same)."""
    mode: str
    options: tuple = ()  # ((name, value), ...)
    model: str = "mlp"
    epochs: int = 1
    steps: int = 2
    batch: int = 8
    cut_after: int | None = None
    feedback_cut: str | None = None
    resume: tuple | None = None
    settings: tuple = ()
    cache_limit: int | None = None
    shape: tuple = (8, 8, 3)
    seed: int = 1
    replay_every: int = 1  # replay every n-th step (and the last); the rest is checked whole

    @property
    def name(self) -> str:
        parts = [self.mode, *(f"{k}={v}" for k, v in self.options)]
        if self.model != "mlp":
            parts.append(os.path.basename(self.model))
        parts += list(self.settings)
        if self.cut_after:
            parts.append(f"cut={self.feedback_cut or 'default'}")
        if self.resume:
            parts.append("resumed")
        if self.epochs * self.steps > 4:
            parts.append(f"{self.epochs * self.steps} steps")
        if self.cache_limit is not None:
            parts.append("uncached")
        return ",".join(parts)

    def config(self, workdir):
        from ssa_tf.config import RunConfig

        n = self.steps * self.batch
        sets = ["data.dataset=synthetic", f"data.synthetic_shape={','.join(map(str, self.shape))}",
                f"data.max_train_examples={n + self.batch // 2}",
                f"data.validation_split={(self.batch // 2) / (n + self.batch // 2)}",
                f"train.batch_size={self.batch}", f"train.epochs={self.epochs}",
                f"model.model={self.model}", f"method.mode={self.mode}",
                "runtime.progress=none", f"runtime.workdir={workdir}", f"seed={self.seed}"]
        sets += [f"method.{k}={v}" for k, v in self.options]
        if self.cut_after:
            sets += ["rank.tau=0.9", f"rank.start={self.cut_after}", "rank.interval=1000",
                     "rank.keep_ends=false"]
            if self.feedback_cut:
                sets.append(f"rank.feedback_cut={self.feedback_cut}")
        return RunConfig().with_overrides([*sets, *self.settings])


@contextlib.contextmanager
def harness_context(scenario):
    """Eager steps (compiled ones are not bit-for-bit comparable with eager replays), a
    small synthetic test split, and the scenario's cache limit."""
    from ssa_tf.data import small
    from ssa_tf.methods import routes

    eager = tf.config.functions_run_eagerly()
    saved = small.SYNTHETIC_TEST, routes.MAX_FULL_MAP_ENTRIES
    tf.config.run_functions_eagerly(True)
    small.SYNTHETIC_TEST = 2 * scenario.batch
    if scenario.cache_limit is not None:
        routes.MAX_FULL_MAP_ENTRIES = scenario.cache_limit
    try:
        with warnings.catch_warnings():
            # TensorFlow's notice that tf.data's functions stay compiled (they may)
            warnings.filterwarnings(
                "ignore", message=r"Even though the `tf\.config\.experimental_run_functions_"
                r"eagerly` option is set")
            yield
    finally:
        tf.config.run_functions_eagerly(eager)
        small.SYNTHETIC_TEST, routes.MAX_FULL_MAP_ENTRIES = saved


def check(scenario, workdir, until=None, card=None) -> "Report":
    """Record ``scenario`` in ``workdir`` and replay it (``record``, ``replay``)."""
    with harness_context(scenario):
        rec = record(scenario, workdir)
        return replay(rec, until=until, card=card)


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
# Recording.
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    segment: int
    epoch: int
    index: int
    ranks: dict
    before: dict
    after: dict
    x: np.ndarray
    y: np.ndarray
    inputs: list  # per module, per call
    outputs: list
    signals: list  # per module, per call: d loss / d output (None: no gradient reached it)

    @property
    def name(self):
        return f"run {self.segment + 1}, epoch {self.epoch + 1}, step {self.index + 1}"


@dataclasses.dataclass
class EpochEnd:
    segment: int
    epoch: int
    ranks: dict
    state: dict


@dataclasses.dataclass
class Start:
    segment: int
    ranks: dict
    state: dict


def capture(t, sink):
    """``t`` unchanged; ``sink(dy)`` receives the gradient that reaches it."""
    @tf.custom_gradient
    def identity(v):
        def grad(dy):
            sink(dy)
            return dy
        return tf.identity(v), grad

    return identity(t)


class _Calls:
    """Each module's calls in one step: inputs, outputs, and the gradients their outputs
    receive; with ``plan`` (a replay), module j's k-th call returns the planned output
    (its value; its gradient still flows through the module's own computation) unless j
    is in ``real``."""

    def __init__(self, n):
        self.n = n
        self.active = False
        self.plan, self.real = None, set()
        self.reset()

    def reset(self):
        self.inputs = [[] for _ in range(self.n)]
        self.outputs = [[] for _ in range(self.n)]
        self.signals = [[] for _ in range(self.n)]
        self.extra_calls = []

    def install(self, modules):
        self._modules = list(modules)
        for j, m in enumerate(self._modules):
            original = m.call

            def call(*args, _j=j, _original=original, **kwargs):
                out = _original(*args, **kwargs)
                if not self.active:
                    return out
                k = len(self.outputs[_j])
                self.inputs[_j].append(np.array(args[0]))
                if self.plan is not None and _j not in self.real:
                    planned = self.plan[_j]
                    if k >= len(planned):
                        self.extra_calls.append(_j)
                    else:
                        out = tf.constant(planned[k]) + (out - tf.stop_gradient(out))
                self.outputs[_j].append(np.array(out))
                self.signals[_j].append(None)

                def sink(dy, _k=k):
                    self.signals[_j][_k] = np.array(dy)
                return capture(out, sink)

            m.call = call

    def uninstall(self):
        for m in self._modules:
            if "call" in vars(m):
                del m.call


class Recorder(keras.callbacks.Callback):
    """The callback that records a run (and a resumed one: one segment per model)."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.segment = -1
        self._models = []
        self._calls = None
        self._epoch = 0

    def set_model(self, model):
        super().set_model(model)
        if any(m is model for m in self._models):
            return
        self._models.append(model)
        self.segment += 1
        self._calls = _Calls(len(model.local_modules))
        self._calls.install(model.local_modules)
        calls = self._calls

        def train_step(data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            self._batch = (np.array(x), np.array(y))
            calls.active = True
            try:
                return type(model).train_step(model, data)
            finally:
                calls.active = False

        model.train_step = train_step

    def on_train_begin(self, logs=None):
        self.events.append(Start(self.segment, self.model.ranks(), snapshot(self.model)))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._before = snapshot(self.model)
        self._calls.reset()

    def on_train_batch_end(self, batch, logs=None):
        c = self._calls
        self.events.append(Step(self.segment, self._epoch, batch, self.model.ranks(),
                                self._before, snapshot(self.model), *self._batch, c.inputs,
                                c.outputs, c.signals))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(EpochEnd(self.segment, epoch, self.model.ranks(),
                                    snapshot(self.model)))

    def on_train_end(self, logs=None):
        self._calls.uninstall()
        if "train_step" in vars(self.model):
            del self.model.train_step


def _stop_at(epoch, steps):
    """A callback ending the run after ``steps`` steps of ``epoch`` (from 1)."""
    class StopAt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self._epoch = e

        def on_train_batch_end(self, batch, logs=None):
            if self._epoch + 1 == epoch and batch + 1 == steps:
                raise _Stopped()

    return StopAt()


@dataclasses.dataclass
class Record:
    scenario: Scenario
    cfg: object
    events: list
    input_shape: tuple
    num_classes: int
    steps_per_epoch: int
    model: object = None  # the last run's model (a replica at its final ranks)

    @property
    def steps(self):
        return [e for e in self.events if isinstance(e, Step)]


def record(scenario, workdir) -> Record:
    """Run ``scenario`` through ``ssa_tf.training.run.train`` in ``workdir``, recorded (call
    inside ``harness_context``)."""
    from ssa_tf.training import run

    cfg = scenario.config(str(workdir))
    recorder = Recorder()
    extra = [recorder]
    if scenario.resume:
        extra.append(_stop_at(*scenario.resume))
    # Keras's generated names start over: a replica's (and a resumed run's) are the same
    keras.backend.clear_session(free_memory=False)
    try:
        run.train(cfg, verbose=0, extra_callbacks=extra)
    except _Stopped:
        keras.backend.clear_session(free_memory=False)
        run.train(cfg, verbose=0, extra_callbacks=[recorder])
    else:
        if scenario.resume:
            raise HarnessError(f"the run ended before the stop at {scenario.resume}")
    return Record(scenario, cfg, recorder.events, tuple(scenario.shape),
                  cfg.data.synthetic_classes, scenario.steps, recorder.model)


# --------------------------------------------------------------------------
# Replaying.
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


class Replica:
    """A model built from the record's settings at the given ranks, its modules able to
    return the run's outputs call by call (``_Calls``), its state classified by role."""

    def __init__(self, rec: Record, ranks: dict, model=None, roles=None):
        from ssa_tf.training import loop
        from ssa_tf.training import rank as rank_lib
        from ssa_tf.training.model import compile_model, model_from_config
        from ssa_tf.training.run import learning_rate_schedule

        cfg = rec.cfg
        if model is None:  # a new one, built as the run built its own
            keras.backend.clear_session(free_memory=False)  # the run's names (the keys)
            model = model_from_config(cfg, rec.input_shape, rec.num_classes)
            compile_model(model, learning_rate_schedule(cfg, rec.steps_per_epoch),
                          steps_per_epoch=rec.steps_per_epoch)
            if ranks and ranks != model.ranks():
                rank_lib.apply_ranks(model, ranks, cfg.rank.feedback_cut)
            batch = np.zeros((2, *rec.input_shape), np.float32), np.zeros((2,), np.int64)
            loop.build_for(model, tf.data.Dataset.from_tensors(batch))
        self.model, self.rec = model, rec
        self.calls = _Calls(len(model.local_modules))
        self.calls.install(model.local_modules)
        self.items = walk(model_roots(model))
        # the roles are the same at every rank (the keys are): classified once per record
        if roles is not None and set(roles) >= set(self.items):
            self.roles = {k: roles[k] for k in self.items}
        else:
            self.roles = self._classify()

    # -- roles ----------------------------------------------------------------
    def _classify(self) -> dict:
        model = self.model
        ids = {id(item.obj): key for key, item in self.items.items()}
        roles = {}
        for v in model.metrics_variables:
            if id(v) in ids:
                roles[ids[id(v)]] = METRIC
        route = getattr(model.rule, "route", None)
        learned = {}
        for i in range(len(model.local_modules)):
            for v in (route.extra_variables(model, i) if route is not None else []):
                learned[id(v)] = i
        for i, m in enumerate(model.local_modules):
            for v in self._forward_state(i, m):
                if id(v) in ids and id(v) not in learned:
                    roles[ids[id(v)]] = ("own", i)
        for key, item in self.items.items():
            if id(item.obj) in learned:
                roles[key] = ("learned", learned[id(item.obj)])
        # the optimizer: each moment belongs to its variable; the rest is the clock
        opt = model.optimizer
        owners = {}
        targets = list(getattr(opt, "_trainable_variables", []))
        for name, value in vars(opt).items():
            if (isinstance(value, (list, tuple)) and name != "_trainable_variables"
                    and len(value) == len(targets) and targets):
                for slot, target in zip(value, targets):
                    owners[id(slot)] = id(target)
        for key, item in walk([("optimizer", opt)]).items():
            k = ids.get(id(item.obj))
            if k is None or k in roles:
                continue
            owner = ids.get(owners.get(id(item.obj)))
            roles[k] = roles.get(owner, FEEDBACK_ROLE) if owner is not None else CLOCK
        for key in self.items:
            roles.setdefault(key, FEEDBACK_ROLE)
        return roles

    def _forward_state(self, i, module) -> list:
        """Module i's forward state: its trainable variables, and each other variable Keras
        tracks in it whose change changes its output (in training or in inference): its
        norms' statistics, its dropout seeds; not its feedback factors. (State a module
        holds outside Keras's tracking counts as feedback: it must not move.)"""
        shapes = [self.rec.input_shape, *self.model.module_output_shapes]
        x = tf.constant(np.random.default_rng(i).standard_normal((4, *shapes[i])), tf.float32)
        trainable = {id(v) for v in module.trainable_variables}
        # a forward pass moves none of the trainable ones; the others it may (statistics,
        # seeds): each call puts them back
        others = [Item(v) for v in module.variables if id(v) not in trainable]
        saved = [item.value() for item in others]

        def run(training, item=None, value=None):
            if item is not None:
                item.set(value)
            out = np.array(module(x, training=training))
            for each, was in zip(others, saved):
                each.set(was)
            return out

        plain = {training: run(training) for training in (False, True)}
        forward = list(module.trainable_variables)
        rng = np.random.default_rng(1000 + i)
        for item, value in zip(others, saved):
            other = _random_like(value, rng)
            if np.array_equal(other, value):
                other = value + 1
            if any(not np.array_equal(plain[t], run(t, item, other)) for t in (False, True)):
                forward.append(item.obj)
        return forward

    def keys(self, *roles):
        return [k for k, r in self.roles.items() if r in roles]

    def own(self, i):
        return self.keys(("own", i), ("learned", i))

    @property
    def forward(self):
        return [k for k, r in self.roles.items() if isinstance(r, tuple) and r[0] == "own"]

    @property
    def feedback(self):
        return [k for k, r in self.roles.items()
                if r == FEEDBACK_ROLE or (isinstance(r, tuple) and r[0] == "learned")]

    @property
    def learned(self):
        return [k for k, r in self.roles.items() if isinstance(r, tuple) and r[0] == "learned"]

    # -- replaying --------------------------------------------------------------
    def load(self, state, randomize=(), rng=None):
        """Set every piece of state but the metrics to ``state``'s, those in
        ``randomize`` to random values of their scale."""
        randomize = set(randomize)
        for key, item in self.items.items():
            if self.roles[key] == METRIC:
                continue
            if key not in state:
                raise HarnessError(f"the replica holds {key}, the run did not")
            item.set(_random_like(state[key], rng) if key in randomize else state[key])

    def step(self, step: Step, real=(), outputs=None):
        """One real ``train_step`` on the step's batch, each module returning, call by call,
        ``outputs`` (the run's by default) unless in ``real``; returns (the calls, the state
        after)."""
        c = self.calls
        c.reset()
        c.plan, c.real, c.active = outputs or step.outputs, set(real), True
        try:
            self.model.train_step((tf.constant(step.x), tf.constant(step.y)))
        finally:
            c.active, c.plan = False, None
        self.items = walk(model_roots(self.model))
        return c, {k: item.value() for k, item in self.items.items()}


@dataclasses.dataclass
class Finding:
    kind: str
    where: str
    detail: str

    def __str__(self):
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclasses.dataclass
class Report:
    scenario: Scenario
    card: object
    findings: list = dataclasses.field(default_factory=list)
    steps: int = 0
    replayed: int = 0
    cuts: int = 0
    resumes: int = 0

    def kinds(self) -> set:
        return {f.kind for f in self.findings}

    def disagreements(self) -> list:
        """What the run showed and the card does not say, or the card says and the run
        did not show (empty: the card holds)."""
        card, kinds, out = self.card, self.kinds(), []
        for kind in (BETWEEN, CUT, RESUME, SELF):
            out += [str(f) for f in self.findings if f.kind == kind]
        if card.sequential:
            if DEPENDS not in kinds:
                out.append("the card says sequential; no module's update depended on another "
                           "module")
        else:
            for kind in (DEPENDS, SIGNAL, FEEDBACK):
                out += [str(f) for f in self.findings if f.kind == kind]
        if card.feedback == "copies the forward weights":
            if FEEDBACK not in kinds:
                out.append("the card says the feedback copies the forward weights; its change "
                           "was reproduced without them")
        else:
            out += [str(f) for f in self.findings if f.kind == CHANGED]
        if card.feedback == "is the forward weights" and SIGNAL not in kinds:
            out.append("the card says the feedback is the forward weights; every signal was "
                       "reproduced without them")
        return out

    def text(self) -> str:
        lines = [f"{self.scenario.name}: {self.steps} steps ({self.replayed} replayed), "
                 f"{self.cuts} cuts, {self.resumes} resumes; card: {self.card}"]
        lines += [f"  {f}" for f in self.findings[:20]]
        if len(self.findings) > 20:
            lines.append(f"  ... and {len(self.findings) - 20} more")
        return "\n".join(lines)


class _Stop(Exception):
    pass


class Replay:
    def __init__(self, rec: Record, card, until=None, tolerance=None):
        self.rec, self.card = rec, card
        self.report = Report(rec.scenario, card)
        self.until, self.tolerance = until, tolerance
        self._replicas = {}
        self.rng = np.random.default_rng(20261206)

    def replica(self, ranks) -> Replica:
        """The replica at ``ranks``: the run's last model itself (its state is set from the
        record before every use) when it has them, else a new one."""
        key = tuple(sorted((ranks or {}).items()))
        if key not in self._replicas:
            last = self.rec.model
            known = next(iter(self._replicas.values())).roles if self._replicas else None
            if last is not None and last.ranks() == (ranks or {}):
                self._replicas[key] = Replica(self.rec, ranks, model=last, roles=known)
            else:
                self._replicas[key] = Replica(self.rec, ranks, roles=known)
        return self._replicas[key]

    def find(self, kind, where, detail):
        self.report.findings.append(Finding(kind, where, detail))
        if self.until is not None and set(self.until) <= self.report.kinds():
            raise _Stop()

    def compare(self, kind, where, keys, got, want):
        """A finding for each of ``keys`` whose value in ``got`` is not ``want``'s."""
        for k in keys:
            if k not in want or k not in got:
                self.find(kind, where, f"{k}: absent {'from the run' if k not in want else ''}")
            elif not _same(got[k], want[k], self.tolerance):
                self.find(kind, where, f"{k}: {_difference(got[k], want[k])}")

    def run(self) -> Report:
        try:
            self._run()
        except _Stop:
            pass
        return self.report

    def _run(self):
        """Pass 1, no replay: every transition outside the steps, and each step's fixed
        feedback. Pass 2: every step replayed module by module."""
        # the roles of the state: the run's last model's (keys are the same at every rank)
        self.last = self.replica(self.rec.model.ranks())
        epoch_ends, previous = {}, None
        for event in self.rec.events:
            if isinstance(event, Start):
                if event.segment > 0:
                    self._resume(event, epoch_ends)
            elif isinstance(event, Step):
                self._between(previous, event)
                self._fixed(event)
                self.report.steps += 1
            elif isinstance(event, EpochEnd):
                epoch_ends[(event.segment, event.epoch)] = event
                self._epoch_end(previous, event)
            previous = event
        steps, every = self.rec.steps, self.rec.scenario.replay_every
        for n, step in enumerate(steps):
            if self._confirmed():
                return  # a sequential card's findings are all shown: the rest adds nothing
            if n % every == 0 or n == len(steps) - 1:
                self._replay(step)
                self.report.replayed += 1

    # -- transitions outside steps ----------------------------------------------
    def _kept(self):
        """Every key but the metrics'."""
        return [k for k, r in self.last.roles.items() if r != METRIC]

    def _between(self, previous, step):
        """Nothing changes from the previous event (start, step, epoch end) to a step."""
        state = previous.after if isinstance(previous, Step) else previous.state
        self.compare(BETWEEN, f"before {step.name}", self._kept(), step.before, state)

    def _epoch_end(self, previous, end):
        if not isinstance(previous, Step):
            return
        if end.ranks == previous.ranks:  # validation, checkpoint: the feedback stays
            self.compare(BETWEEN, f"end of epoch {end.epoch + 1}", self.last.feedback,
                         end.state, previous.after)
            return
        self.report.cuts += 1
        self._cut(previous, end)

    def _resume(self, start, epoch_ends):
        """The restored state is the checkpoint's: the state at the end of the last epoch
        the stopped run finished (its checkpoint)."""
        self.report.resumes += 1
        done = [e for (seg, _), e in epoch_ends.items() if seg == start.segment - 1]
        if done:
            saved = max(done, key=lambda e: e.epoch)
            self.compare(RESUME, f"resume of run {start.segment}", self._kept(), start.state,
                         saved.state)

    # -- a rank cut ---------------------------------------------------------------
    def _cut(self, before, end):
        """The feedback factors after the cut are what the card states, computed here from
        the recorded state; every other piece of feedback state is what the replica's
        ``feedback_changed`` derives from them, its forward weights random."""
        from ssa_tf.nn.svd import exact_singular_values, resolve_feedback_cut, slot_order

        where = f"rank cut after epoch {end.epoch + 1}"
        if not getattr(self.card, "at_cuts", None):
            self.find(CUT, where, "the card does not say what a cut passes to the feedback")
        cfg = self.rec.cfg
        mode = resolve_feedback_cut(cfg.rank.feedback_cut,
                                    True if cfg.rank.energy == "outputs" else None)
        old, new = before.after, end.state
        expected = {}
        for layer in self.last.model.svd_layers():
            keys = {n: f"var:{getattr(layer, n).path}" for n in ("U", "s", "V", "B_U", "B_s",
                                                              "B_V")}
            r_old, r = before.ranks[layer.name], end.ranks[layer.name]
            B = [old[keys[n]] for n in ("B_U", "B_s", "B_V")]
            if r == r_old:
                fb = B
            elif mode == "slots":
                fwd = [old[keys[n]].astype(np.float64) for n in ("U", "s", "V")]
                keep = np.sort(slot_order(*fwd)[:r])
                fb = [b[..., keep] for b in B]
            elif mode == "first":
                fb = [b[..., :r] for b in B]
            else:  # svd: its own best rank r, each column's sign matched to the forward's
                bu, bs, bv = exact_singular_values(*B)
                bu, bs, bv = bu[:, :r], bs[:r], bv[:, :r]
                got = new[keys["B_U"]].astype(np.float64)
                flip = np.where(np.sum(bu * new[keys["U"]], axis=0) < 0, -1.0, 1.0)
                # a column whose sign test is a tie may go either way
                ties = np.abs(np.sum(bu * new[keys["U"]], axis=0)) < 1e-6
                own = np.where(np.sum(got * bu, axis=0) < 0, -1.0, 1.0)
                flip = np.where(ties, own, flip)
                fb = [bu * flip, bs, bv * flip]
            for n, value in zip(("B_U", "B_s", "B_V"), fb):
                expected[keys[n]] = np.asarray(value, np.float32)
        self.compare(CUT, where, sorted(expected), new, expected)
        # everything else the feedback holds: derived from the cut factors alone
        replica = self.replica(end.ranks)
        state = dict(old)
        state.update({k: v for k, v in new.items() if replica.roles.get(k) in (CLOCK, METRIC)
                      or (isinstance(replica.roles.get(k), tuple)
                          and replica.roles[k][0] == "own")})
        state.update(expected)
        replica.load(state, replica.forward, self.rng)
        replica.model.feedback_changed()
        after = {k: item.value() for k, item in replica.items.items()}
        rest = [k for k in replica.feedback if k not in expected]
        self.compare(CUT, where, rest, after, new)

    # -- a step -------------------------------------------------------------------
    def _fixed(self, step):
        """A fixed feedback does not change in a step (a learned one aside, when the card
        says it learns)."""
        learns = self.card.feedback in LEARNING
        fixed = [k for k in self.last.feedback if not (learns and k in self.last.learned)]
        self.compare(CHANGED, step.name, fixed, step.after, step.before)

    def _replay(self, step):
        """Module by module, a real step of the replica in which module i holds its
        recorded state and computes from its recorded input, the head returns the recorded
        logits (so e is the run's), and every other module holds random forward state and
        returns random activations (the module before i: its recorded output, module i's
        input). Module i's state after the step and its signal (``DEPENDS``), the signals of
        the modules whose outputs are the run's (``SIGNAL``: their own weights random) and
        the feedback state (``FEEDBACK``; a learned one where its module's output is the
        run's) must be the run's. Over the replays, each module's signal and learned
        feedback are replayed with its own weights random, and every other module's
        weights and activations random in turn."""
        replica = self.replica(step.ranks)
        n = len(replica.model.local_modules)
        for i in range(n):
            if self._confirmed():
                return
            kept = {i - 1, n - 1} - {-1, i}  # outputs replayed as recorded (besides i's)
            outputs = [list(step.outputs[j]) if j in kept or j == i else
                       [_random_like(step.outputs[j][0], self.rng)] * len(step.outputs[j])
                       for j in range(n)]
            others = [k for k in replica.forward if k not in replica.own(i)]
            replica.load(step.before, others, self.rng)
            calls, after = replica.step(step, real=(i,), outputs=outputs)
            here = f"{step.name}, module {i} replayed"
            self._extra_calls(calls, here)
            for k, (got, want) in enumerate(zip(calls.outputs[i], step.outputs[i])):
                if not _same(got, want, self.tolerance):
                    self.find(SELF, here, f"call {k + 1}: output {_difference(got, want)}")
            self._signals(DEPENDS, here, calls.signals[i], step.signals[i])
            self.compare(DEPENDS, here, replica.own(i), after, step.after)
            for j in sorted(kept):
                self._signals(SIGNAL, f"{here}, module {j}'s signal", calls.signals[j],
                              step.signals[j])
            feedback = [k for k in replica.feedback if k not in replica.learned or
                        any(k in replica.own(j) for j in kept)]
            self.compare(FEEDBACK, here, feedback, after, step.after)

    def _confirmed(self) -> bool:
        """A sequential card's expected findings are all in (nothing more to learn)."""
        card, kinds = self.card, self.report.kinds()
        if not card.sequential or DEPENDS not in kinds:
            return False
        if card.feedback == "copies the forward weights" and FEEDBACK not in kinds:
            return False
        return card.feedback != "is the forward weights" or SIGNAL in kinds

    def _signals(self, kind, where, got, want):
        if len(got) != len(want):
            self.find(kind, where, f"{len(got)} calls where the run made {len(want)}")
            return
        for k, (a, b) in enumerate(zip(got, want)):
            if not _same(a, b, self.tolerance):
                self.find(kind, where, f"call {k + 1}: signal {_difference(a, b)}")

    def _extra_calls(self, calls, where):
        if calls.extra_calls:
            self.find(SELF, where, f"modules {sorted(set(calls.extra_calls))} called more "
                      "often than in the run")


def replay(rec: Record, until=None, card=None, tolerance=None) -> Report:
    """Replay ``rec`` (call inside ``harness_context``): the findings, judged against
    ``card`` (the run's, ``cfg.card()``, by default); ``until`` (kinds): stop once each
    has been found (a mutant's test); ``tolerance``: compare floats to that relative
    tolerance instead of bit for bit."""
    card = card or rec.cfg.card()
    return Replay(rec, card, until, tolerance).run()


# --------------------------------------------------------------------------
# The scenarios of the registry.
# --------------------------------------------------------------------------

def variants(name, held=False) -> list:
    """The option sets of rule ``name`` to check, read from the registry (a new rule file
    is covered): its defaults; each other route (``feedback``); from each route's
    defaults, each other value of a choice or a boolean option that changes what the card
    says of locality (sequential, weight transport, feedback); from the rule's defaults,
    each that changes what it holds (held activations) when ``held`` (a different code
    path, not a different locality: ``method.recompute``)."""
    from ssa_tf.methods import registry
    from ssa_tf.methods.spec import CARD_PROBES, ROUTES

    spec = registry.get(name)
    o = spec.options

    def card(given):
        c = spec.card(given)
        return (c.sequential, c.weight_transport, c.feedback), c.held_activations

    candidates = [(k, v) for k, vals in spec.choices.items() if k != "feedback"
                  for v in vals if v != o[k]]
    candidates += [(k, not v) for k, v in o.items() if isinstance(v, bool)]
    candidates += [(k, v) for k, vals in CARD_PROBES.items() if k in o for v in vals]
    out = [{}]
    routes = spec.choices.get("feedback", ()) if "feedback" in o else ()
    out += [{"feedback": r} for r in routes if r != o["feedback"]]
    for base in list(out):
        route = base.get("feedback", o.get("feedback"))
        foreign = {k for r in ROUTES.values() if r.name != route for k in r.options}
        if route in ROUTES:
            foreign -= set(ROUTES[route].options)
        for k, v in candidates:
            given = {**base, k: v}
            if k in foreign or spec.problem(given) is not None:
                continue
            if card(given)[0] != card(base)[0] or \
                    (held and not base and card(given) != card(base)):
                out.append(given)
    return out


def registry_scenarios(held=False, **kwargs) -> list:
    """One ``Scenario`` (``kwargs``) per rule of the registry and variant (``variants``)."""
    from ssa_tf.methods import registry

    return [Scenario(name, tuple(sorted(v.items())), **kwargs)
            for name in registry.NAMES for v in variants(name, held)]
