"""The scenarios and what a check reports.

``Scenario`` (one small run through the real entry), ``harness_context`` (eager steps,
a small test split, the cache limit), ``variants`` and ``registry_scenarios`` (every rule
and variant of the registry), ``Finding`` and ``Report`` (the findings, judged against
the card: ``Report.disagreements``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import tensorflow as tf

from .state import BETWEEN, CHANGED, CUT, DEPENDS, FEEDBACK, RESUME, SELF, SIGNAL


# --------------------------------------------------------------------------
# The scenario: a small run through the real entry.
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scenario:
    """One run to record: the rule named ``rule`` with ``options`` (its options), on
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
    rule: str
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
        parts = [self.rule, *(f"{k}={v}" for k, v in self.options)]
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
                f"model.model={self.model}", f"rule.name={self.rule}",
                "runtime.progress=none", f"runtime.workdir={workdir}", f"seed={self.seed}"]
        sets += [f"rule.{k}={v}" for k, v in self.options]
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


# --------------------------------------------------------------------------
# What a check found.
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# The scenarios of the registry.
# --------------------------------------------------------------------------

def variants(name, held=False) -> list:
    """The option sets of rule ``name`` to check, read from the registry (a new rule file
    is covered): its defaults; each other route (``feedback``); from each route's
    defaults, each other value of a choice or a boolean option that changes what the card
    says of locality (sequential, weight transport, feedback); from the rule's defaults,
    each that changes what it holds (held activations) when ``held`` (a different code
    path, not a different locality: ``rule.recompute``)."""
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
