"""The learning rules by name, without TensorFlow: one import line per rule file.

    from ssa_tf.methods import registry
    registry.get("ssa").card({})            # the locality card, before TensorFlow starts
    rule = registry.make("ssa", {"beta": 0})  # the rule object (imports TensorFlow)

Adding a rule is one file in ``rules/`` defining ``SPEC`` and its import line below.
A rule file imports no TensorFlow (its ``implementation()`` does, when a model is built).
"""

from __future__ import annotations

import types

# The rules, one line each, in --rule's order (--help, the README's table).
from ssa_tf.methods.rules import bp
from ssa_tf.methods.rules import svd_bp
from ssa_tf.methods.rules import dfa
from ssa_tf.methods.rules import ssa
from ssa_tf.methods.rules import fa
from ssa_tf.methods.rules import bp_lagged_copy
from ssa_tf.methods.rules import dkp
from ssa_tf.methods.rules import ssa_dkp

# the rule modules imported above, in their order
FILES = tuple(m for m in dict(globals()).values() if isinstance(m, types.ModuleType)
              and m.__name__.startswith("ssa_tf.methods.rules."))
RULES = {m.SPEC.name: m.SPEC for m in FILES}
NAMES = tuple(RULES)
DEFAULT = "ssa"
# every option some rule accepts, with its type (the type of its defaults)
OPTION_TYPES = {}
for _spec in RULES.values():
    for _name, _value in _spec.options.items():
        OPTION_TYPES.setdefault(_name, type(_value))
OPTIONS = tuple(sorted(OPTION_TYPES))


def get(name):
    if name not in RULES:
        raise ValueError(f"unknown learning rule {name!r}; choose from {', '.join(NAMES)}")
    return RULES[name]


def make(name, options=None):
    """The rule object of ``name`` with ``options`` (None: its defaults)."""
    spec = get(name)
    return spec.implementation()(spec, options)


def inapplicable(name, given: dict) -> list:
    """The options in ``given`` (set, not None) that rule ``name`` does not take."""
    rule = get(name)
    return sorted(k for k, v in given.items() if v is not None and k not in rule.options)


def accepting(option) -> list:
    return [n for n, r in RULES.items() if option in r.options]


def svd_rules() -> list:
    return [n for n, r in RULES.items() if r.svd]


def rules_table() -> str:
    """The README's table of the rules ("The learning rules"), rendered from each rule's
    summary and card at its defaults, and what a rank cut passes to an SVD rule's feedback
    by ``rank.feedback_cut`` (``card.CUT_FLOWS``). Print it with
    ``python -c "from ssa_tf.methods import registry; print(registry.rules_table())"``;
    tests/test_locality.py holds the README to it."""
    from ssa_tf.methods.card import CUT_FLOWS

    lines = ["| `--rule` | what it is | sequential | weight transport | held activations "
             "| feedback |", "|---|---|---|---|---|---|"]
    for name, spec in RULES.items():
        c = spec.card({})
        lines.append(f"| `{name}` | {spec.summary} | {'yes' if c.sequential else 'no'} | "
                     f"{c.weight_transport} | {c.held_activations} | {c.feedback} |")
    svd = ", ".join(f"`{n}`" for n in svd_rules())
    cuts = "; ".join(f"`{k}`{' (the default)' if k == 'slots' else ''}: {v}"
                     for k, v in CUT_FLOWS.items())
    lines += ["", f"With rank cuts (`rank.tau`), the card of an SVD rule ({svd}) also says "
              f"what each cut passes from the forward weights to the feedback factors, by "
              f"`rank.feedback_cut`: {cuts}."]
    return "\n".join(lines)
