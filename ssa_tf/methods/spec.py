"""The learning rules by name: their options, defaults and locality cards, without TensorFlow.

``python -m ssa_tf.train`` validates a rule's options and prints its card
before TensorFlow starts; the rule objects themselves (``ssa_tf.methods``)
read the same table. Adding a rule is one ``RuleSpec`` here and one class in
``rules.py``.
"""

from __future__ import annotations

import dataclasses

from ssa_tf.methods.card import LocalityCard

ROUTES = ("global", "local", "chain")
SPATIAL = ("broadcast", "full")
FEEDBACK_INIT = ("random", "forward")

# What the options mean (``--help`` and the errors name them):
#   feedback          how a non-final module gets its error (BUILD.md, algorithm §3)
#   feedback_spatial  global route on a feature map: one error per channel
#                     (broadcast) or per unit (full, Noekland 2016)
#   feedback_init     feedback factors (or kernels): an independent random draw,
#                     or the SVD of the layer's own initial weight (a one-time copy)
#   chain_jacobians   gated chain: normalizations and max-pools apply their
#                     Jacobians at the forward pass
#   feedback_tracking lagging copy: after every step B <- B + eta (W - B)
#   beta, gamma       weights of the alignment and orthogonality terms
#   align_form        the alignment term: factors (eq. 5, ||X - B_X||^2) or cosine
#                     (1 - cos^2 per singular vector: direction only)
#   recompute         direct routes: keep only the module boundaries in the forward
#                     pass and replay each module's forward under its own tape
#                     (one module's activations held at a time, one more forward)
#   readout_grid      local route: the grid a feature map is average-pooled to
#   readout_trained   local route: the read-out learns from the module's CE too
#   stiefel_retraction, s_rate_scale   SVD factors: QR retraction, s's own rate
# SSA's loss terms, shared by every rule with SVD factors so that a control differs from
# SSA in one thing (issue 30): the seed's beta 0.01; gamma 0 (the seed's 0.1 cost SSA 3
# points, benchmarks/ssa_direct.md, and svd-bp 7, benchmarks/recipe_5ep.md)
_FACTOR_OPTIONS = dict(beta=0.01, gamma=0.0, ortho_lambda=0.0, stiefel_retraction=False,
                       s_rate_scale=1.0, align_form="factors")
ALIGN_FORMS = ("factors", "cosine")


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    name: str
    svd: bool  # the network's weight layers are SVD layers (U, s, V and B_U, B_s, B_V)
    summary: str
    options: dict  # every option the rule accepts, with its default
    learning_rate: float
    choices: dict = dataclasses.field(default_factory=dict)  # option -> allowed values
    # the classifier's initial weights (model.head_init's default for this rule): glorot,
    # or zero (Noekland 2016's DFA; a zero SVD head has s = 0, which starves backprop
    # through it: issue 30)
    head_init: str = "glorot"

    @property
    def local(self) -> bool:
        """Each module learns from its own loss (False: end to end)."""
        return self.name not in END_TO_END

    def resolve(self, given: dict) -> dict:
        """The rule's options: its defaults, overridden by the non-None ``given``."""
        out = dict(self.options)
        out.update({k: v for k, v in given.items() if k in self.options and v is not None})
        return out

    def card(self, options: dict) -> LocalityCard:
        return _CARDS[self.name](self.resolve(options))


def _transport(options):
    return "once at construction" if options.get("feedback_init") == "forward" else "never"


def _direct_card(rule, route_error):
    def card(o):
        route = o["feedback"]
        held = ("one module at a time" if route == "local" or o.get("recompute")
                else "all modules")
        return LocalityCard(rule, False, _transport(o) if route == "chain" or rule == "ssa"
                            else "never", held, route_error(o))
    return card


def _route_error(o):
    route = o["feedback"]
    if route == "global":
        return (f"e = softmax(z) - onehot(y) through a fixed matrix per module "
                f"({o['feedback_spatial']})")
    if route == "local":
        if o.get("readout_trained"):
            return ("the module's own cross-entropy through a read-out trained on it (reads "
                    "the module's output and the label; no global forward)")
        return "the module's own cross-entropy through a fixed read-out (no global forward)"
    return "e through a fixed, ungated linear copy of the later modules (a fixed matrix)"


_CARDS = {
    "bp": lambda o: LocalityCard("bp", True, "continuously", "all modules",
                                 "the true gradient, back through every later module"),
    "svd-bp": lambda o: LocalityCard("svd-bp", True, "continuously", "all modules",
                                     "the true gradient through the SVD-factored network"),
    "dfa": _direct_card("dfa", _route_error),
    "ssa": _direct_card("ssa", _route_error),
    # with chain_jacobians each later normalization applies its current gain (gamma)
    # to the signal every step: a continuous read of those forward weights
    "fa": lambda o: LocalityCard(
        "fa", True, "continuously" if o["chain_jacobians"] else _transport(o), "all modules",
        "e back through the fixed feedback factors, gated by the later modules' forward pass"
        + (" and scaled by their current norm gains" if o["chain_jacobians"] else "")),
    "bp-lagged-copy": lambda o: LocalityCard(
        "bp-lagged-copy", True, "continuously", "all modules",
        f"backprop through a copy of the forward weights that lags them (eta "
        f"{o['feedback_tracking']:g} per step)"),
}

RULES = {
    "bp": RuleSpec("bp", False, "backpropagation, end to end, ordinary layers", {}, 1e-3),
    "svd-bp": RuleSpec(
        "svd-bp", True, "backpropagation through the SVD-factored network, with SSA's "
        "alignment and orthogonality terms (the control for the parametrization)",
        # the rate chosen as SSA's was, on the validation split at SSA's head and terms:
        # 3e-4 (0.556 +- 0.011) against 1e-3 (0.509 +- 0.019; benchmarks/recipe_5ep.md)
        dict(alpha=1.0, feedback_init="forward", **_FACTOR_OPTIONS), 3e-4,
        {"feedback_init": FEEDBACK_INIT, "align_form": ALIGN_FORMS}),
    "dfa": RuleSpec(
        "dfa", False, "direct feedback alignment: fixed random feedback, ordinary layers",
        dict(alpha=1.0, feedback="global", feedback_spatial="full", feedback_init="random",
             readout_grid=2, readout_trained=False, recompute=True),
        3e-4, {"feedback": ROUTES, "feedback_spatial": SPATIAL, "feedback_init": FEEDBACK_INIT},
        head_init="zero"),  # a glorot head cost DFA 5 points (benchmarks/recipe_5ep.md)
    "ssa": RuleSpec(
        "ssa", True, "SVD-space alignment: direct, transport-free local learning of SVD factors",
        dict(_FACTOR_OPTIONS, alpha=1.0, feedback="chain", feedback_spatial="full",
             feedback_init="forward", readout_grid=2, readout_trained=False,
             recompute=True),
        1e-3, {"feedback": ROUTES, "feedback_spatial": SPATIAL, "feedback_init": FEEDBACK_INIT,
               "align_form": ALIGN_FORMS}),
    "fa": RuleSpec(
        "fa", True, "feedback alignment through the SVD feedback factors (sequential)",
        dict(alpha=1.0, feedback_init="forward", chain_jacobians=True, **_FACTOR_OPTIONS),
        3e-4, {"feedback_init": FEEDBACK_INIT, "align_form": ALIGN_FORMS}),
    "bp-lagged-copy": RuleSpec(
        "bp-lagged-copy", True, "backprop with a lagging copy of the weights in the feedback "
        "path (the former SSA default; not SSA)",
        dict(alpha=1.0, feedback_init="forward", chain_jacobians=True, feedback_tracking=0.1,
             **_FACTOR_OPTIONS),
        3e-4, {"feedback_init": FEEDBACK_INIT, "align_form": ALIGN_FORMS}),
}
NAMES = tuple(RULES)
END_TO_END = ("bp", "svd-bp")
# every option some rule accepts
OPTIONS = tuple(sorted({k for r in RULES.values() for k in r.options}))


def get(name) -> RuleSpec:
    if name not in RULES:
        raise ValueError(f"unknown learning rule {name!r}; choose from {', '.join(NAMES)}")
    return RULES[name]


def inapplicable(name, given: dict) -> list:
    """The options in ``given`` (set, not None) that rule ``name`` does not take."""
    rule = get(name)
    return sorted(k for k, v in given.items() if v is not None and k not in rule.options)


def accepting(option) -> list:
    return [n for n, r in RULES.items() if option in r.options]
