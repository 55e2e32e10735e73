"""What a learning rule is, without TensorFlow: ``RuleSpec`` and the feedback routes' names.

A rule is one file in ``ssa_tf/methods/rules/`` holding its ``RuleSpec``: its
name, options and their defaults, allowed values and ranges, its default rate
and head, its locality card, and ``implementation``, the function that
returns its TensorFlow class (imported only when a model is built, so that
``python -m ssa_tf.train`` checks a run's settings and prints its card in a
fraction of a second). ``registry.py`` lists the files.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ssa_tf.methods.card import LocalityCard

SPATIAL = ("broadcast", "full")
# the name of every variable a learned-feedback rule trains with its own rate
# (training.optimizer.FactorAdam reads it)
LEARNED_FEEDBACK = "learned_feedback"
FEEDBACK_INIT = ("random", "forward")
# the dtype the ungated chain's linear network runs in (``rule.chain_dtype``): its fixed
# feedback path only; the forward pass, every gradient and every weight stay float32
CHAIN_DTYPES = ("float32", "bfloat16")
ALIGN_FORMS = ("factors", "cosine")

# SSA's loss terms, shared by every rule with SVD factors so that a control differs from
# SSA in one thing (the fair controls): the paper's beta 0.01; gamma 0 (the paper's 0.1 cost SSA 3
# points, benchmarks/reports/ssa_direct.md, and svd-bp 7, benchmarks/reports/recipe_5ep.md)
FACTOR_OPTIONS = dict(beta=0.01, gamma=0.0, ortho_lambda=0.0, stiefel_retraction=False,
                      s_rate_scale=1.0, align_form="factors")
FACTOR_CHOICES = {"feedback_init": FEEDBACK_INIT, "align_form": ALIGN_FORMS}


@dataclasses.dataclass(frozen=True)
class Range:
    """The values an option takes: lo <= v (or lo < v, ``open_lo``) and v <= hi."""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def problem(self, name, value) -> str | None:
        low = self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo)
        high = self.hi is not None and value > self.hi
        if not (low or high):
            return None
        if self.lo is not None and self.hi is not None:
            return f"rule.{name} must be in [{self.lo:g}, {self.hi:g}], got {value}"
        return f"rule.{name} must be {'>' if self.open_lo else '>='} {self.lo:g}, got {value}"


# ranges of the options several rules share; a rule adds its own (``RuleSpec.ranges``)
RANGES = {"alpha": Range(0), "beta": Range(0), "gamma": Range(0), "ortho_lambda": Range(0),
          "s_rate_scale": Range(0, open_lo=True), "readout_grid": Range(1),
          "readout_width": Range(0), "readout_depth": Range(1), "readout_sim": Range(0, 1),
          "direct_weight": Range(0), "replay_slices": Range(1)}
# values of numeric options that change what a card says (the locality harness tries them
# beside every choice and boolean): predsim's weight turns a fixed read-out into a head
CARD_PROBES = {"readout_sim": (0.99,)}
# the local route's read-out: linear (a probe of the pooled map), a small trained head
# (DGL's), or one shaped like the later modules, shallower with depth (AugLocal's)
READOUT_HEADS = ("linear", "conv", "later")


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    """How the output error reaches a non-final module (docs/ALGORITHM.md §3)."""
    name: str
    options: tuple  # the options only this route reads
    error: Callable[[dict], str]  # the card's "error" for the resolved options
    needs_error: bool = True  # False: each module learns from its own labels (no e)
    # the layer's own feedback factors or kernels are in the path (feedback_init matters)
    reads_layer_feedback: bool = False


def _global_error(o):
    return (f"e = softmax(z) - onehot(y) through a fixed matrix per module "
            f"({o['feedback_spatial']})")


def _local_error(o, alone=True):
    """The local route's signal; ``alone``: no direct term beside it, so the module
    needs no global forward pass (the card says so)."""
    sim = float(o.get("readout_sim") or 0.0)
    text = _local_pred(o, alone)
    if sim:
        return (f"{text[:-1]}; weighted {1 - sim:g}, plus {sim:g} x predsim's similarity "
                "matching (Noekland & Eidnes 2019): a trained 3x3 projection of the output "
                "against the labels, sample to sample within the batch)")
    return text


def uses_local_head(o) -> bool:
    """The local route trains a read-out or head on each module's own loss."""
    return bool(o.get("readout_trained") or o.get("readout_head") in ("conv", "later")
                or o.get("readout_sim"))


def _local_pred(o, alone=True):
    forward = "; no global forward" if alone else ""
    if o.get("readout_head") == "later":
        depth = int(o.get("readout_depth") or 1)
        return ("the module's own cross-entropy through a trained head shaped like the later "
                f"modules (AugLocal, Ma et al. 2024: up to {depth} x (3x3 convolution pooled "
                "to a later module's size, or dense layer on the pooled grid to its width; "
                "ReLU), fewer for later modules, the last hidden one a linear read-out only; "
                f"reads the module's output and the label{forward})")
    if o.get("readout_head") == "conv":
        depth = int(o.get("readout_depth") or 1)
        layers = "3x3 convolution, ReLU" if depth == 1 else f"{depth} x (3x3 convolution, ReLU)"
        return (f"the module's own cross-entropy through a trained head ({layers}, "
                f"pooled grid, linear; reads the module's output and the label{forward})")
    if o.get("readout_trained") or o.get("readout_sim"):
        return ("the module's own cross-entropy through a read-out trained on it (reads "
                f"the module's output and the label{forward})")
    return "the module's own cross-entropy through a fixed read-out" + (
        " (no global forward)" if alone else "")


def _local_global_error(o):
    w = float(o.get("direct_weight", 1.0))
    return (f"{_local_error(o, alone=False)}, plus {w:g} x the output error's direct term: "
            f"{_global_error(o)}")


_LOCAL_OPTIONS = ("readout_grid", "readout_trained", "readout_head", "readout_width",
                  "readout_depth", "readout_sim")
ROUTES = {r.name: r for r in (
    RouteSpec("global", ("feedback_spatial",), _global_error),
    RouteSpec("local", _LOCAL_OPTIONS, _local_error, needs_error=False),
    # item 2 of issue 36: does a direct error term add anything to a good head?
    RouteSpec("local_global", (*_LOCAL_OPTIONS, "feedback_spatial", "direct_weight"),
              _local_global_error),
    RouteSpec("chain", ("chain_dtype",), lambda o: "e through a fixed, ungated linear copy "
              "of the later modules (a fixed matrix" + (
                  f", computed in {o['chain_dtype']})" if o.get("chain_dtype", "float32")
                  != "float32" else ")"), reads_layer_feedback=True),
)}


def transport(options) -> str:
    """Feedback built from each layer's initial weight is one read at construction."""
    return "once at construction" if options.get("feedback_init") == "forward" else "never"


def direct_card(rule, from_factors=False, error=None, feedback="fixed"):
    """The card of a direct rule on its route: not sequential; transport once when its
    feedback comes from the layers' initial weights (``from_factors``: SSA's matrices are
    built from the feedback factors); ``error`` replaces the route's description;
    ``feedback`` says whether it stays fixed (``card.FEEDBACK``)."""
    def card(o):
        route = ROUTES[o["feedback"]]
        if not route.needs_error:
            held = "one module at a time"
        elif not o.get("recompute"):
            held = "all modules"
        else:
            held = ("within the largest module's" if o.get("hold_within_peak")
                    else "one module at a time")
        reads = from_factors or route.reads_layer_feedback
        learns = feedback
        if "readout_head" in route.options and uses_local_head(o):  # a route with heads
            learns = "local head"  # trained on the module's own loss and the label only
        return LocalityCard(rule, False, transport(o) if reads else "never", held,
                            (error or route.error)(o), learns)
    return card


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    name: str
    summary: str
    options: dict  # every option the rule accepts, with its default
    learning_rate: float
    card_of: Callable[[dict], LocalityCard]  # the card for the resolved options
    implementation: Callable[[], type]  # the rule's class (imports TensorFlow)
    svd: bool = False  # the network's weight layers are SVD layers (U, s, V; B_U, B_s, B_V)
    end_to_end: bool = False  # one loss through the whole network (else one per module)
    choices: dict = dataclasses.field(default_factory=dict)  # option -> allowed values
    ranges: dict = dataclasses.field(default_factory=dict)  # option -> Range (beyond RANGES)
    # the classifier's initial weights (model.head_init's default for this rule): glorot,
    # or zero (Noekland 2016's DFA; a zero SVD head has s = 0, which starves backprop
    # through it: svd-bp trailed BP by 6 points with one)
    head_init: str = "glorot"
    # a check of the rule's own across its options: the problem as one line, or None
    check: Callable[[dict], str | None] | None = None

    @property
    def local(self) -> bool:
        """Each module learns from its own loss (False: end to end)."""
        return not self.end_to_end

    @property
    def tunes_loss_weights(self) -> bool:
        """The rule has SSA's loss weights alpha, beta, gamma (``tuning/search.py``)."""
        return {"alpha", "beta", "gamma"} <= set(self.options)

    def resolve(self, given: dict) -> dict:
        """The rule's options: its defaults, overridden by the non-None ``given``."""
        out = dict(self.options)
        out.update({k: v for k, v in given.items() if k in self.options and v is not None})
        return out

    def card(self, options: dict) -> LocalityCard:
        return self.card_of(self.resolve(options))

    def problem(self, given: dict) -> str | None:
        """The first problem with the rule's (given and default) option values, or None."""
        o = self.resolve(given)
        for name, valid in self.choices.items():
            if o[name] not in valid:
                return f"rule.{name}={o[name]!r} is not valid; choose from: {', '.join(valid)}"
        for name, value in o.items():
            rng = self.ranges.get(name, RANGES.get(name))
            if rng is not None and rng.problem(name, value):
                return rng.problem(name, value)
        if "feedback" in o:
            route = ROUTES[o["feedback"]]
            for other in ROUTES.values():
                for name in other.options:
                    if other is not route and name not in route.options and \
                            given.get(name) is not None:
                        owners = [r for r in self.choices.get("feedback", ROUTES)
                                  if name in ROUTES[r].options]
                        where = (f"the {owners[0]} route" if len(owners) == 1 else
                                 f"the {', '.join(owners[:-1])} and {owners[-1]} routes")
                        return (f"rule.{name} applies to {where} only, not "
                                f"rule.feedback={route.name}")
        replays = o.get("recompute") and ROUTES[o["feedback"]].needs_error
        for name, what, used in (
                ("hold_within_peak", "chooses which modules a recompute holds",
                 o.get("hold_within_peak")),
                ("replay_slices", "splits a recompute's replays",
                 o.get("replay_slices", 1) > 1),
                ("replay_chained", "feeds each replay the one before's output",
                 o.get("replay_chained"))):
            if used and not replays:
                with_error = ", ".join(r.name for r in ROUTES.values() if r.needs_error)
                return (f"rule.{name} {what}: it needs rule.recompute=true and a route with "
                        f"the output error ({with_error}), got rule.recompute="
                        f"{str(o.get('recompute')).lower()}, rule.feedback={o['feedback']}")
        if self.svd and o["alpha"] == o["beta"] == o["gamma"] == 0:
            return "rule.alpha, beta and gamma are all 0: there would be nothing to learn from"
        return self.check(o) if self.check else None
