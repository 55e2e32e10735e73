"""The learning rules by name, without TensorFlow: one line per rule file.

    from ssa_tf.methods import registry
    registry.get("ssa").card({})            # the locality card, before TensorFlow starts
    rule = registry.make("ssa", {"beta": 0})  # the rule object (imports TensorFlow)

Adding a rule is one file in ``rules/`` defining ``SPEC`` and one line in ``FILES``.
"""

from __future__ import annotations

import importlib

FILES = (
    "bp",
    "svd_bp",
    "dfa",
    "ssa",
    "fa",
    "bp_lagged_copy",
    "dkp",
    "ssa_dkp",
)

RULES = {}
for _file in FILES:
    _spec = importlib.import_module(f"ssa_tf.methods.rules.{_file}").SPEC
    RULES[_spec.name] = _spec
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
