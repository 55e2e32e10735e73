"""The one reader of the old names: files written before today's vocabulary.

Two older vocabularies are in saved files:

- up to ed60e35 (2026-12-06) ``config.json``, the grids' records (their keys and
  configs) and a search's ``search.json`` named each setting by its field alone
  ("mode", "beta", "epochs"), the rank section's with a prefix ("rank_tau");
- then, until the rule had one name, the learning rule's section was ``method``, its
  name ``method.mode`` ("method.mode", "method.beta").

Everything this version writes says ``SECTION.FIELD`` with the rule's section ``rule``
("rule.name", "rule.beta"); every reader of a file that may be older passes it through
here, so saved runs keep loading, resuming and exporting:

    cfg = legacy.read_config(json.load(open("run/config.json")))   # any age
    key = legacy.read_key(record["key"])                          # a record's key
    record = legacy.read_record(record)                           # a whole grid record
    model = SSAModel(**legacy.read_model_config(config))          # SSAModel.from_config
"""

from __future__ import annotations

import dataclasses
import json

from ssa_tf.config.schema import SECTIONS, RunConfig

# the learning rule's section and its name in the dotted vocabulary before "rule"
OLD_RULE_SECTION, OLD_RULE_NAME = "method", "mode"


def _flat_name(section, field):
    if section == "rank":
        return f"rank_{field}"
    return OLD_RULE_NAME if (section, field) == ("rule", "name") else field


# the old name of every setting -> its name now (each field's own name, the rank
# section's prefixed: unique, or an old file would be read wrongly)
FLAT_TO_PATH = {_flat_name(section, f.name): f"{section}.{f.name}"
                for section, klass in SECTIONS.items() for f in dataclasses.fields(klass)}
assert len(FLAT_TO_PATH) == sum(len(dataclasses.fields(k)) for k in SECTIONS.values()), \
    "two settings share a flat name"

# settings added after runs were saved: at these values a run trains what it trained
# before the setting existed, so a record without the setting holds one of them (the
# resume check and the grids' run keys read records of either age)
LATER_DEFAULTS = {"model.conv_factorization": ("spatial",), "rank.keep_ends": (False,),
                  "rank.energy": ("weights",), "rule.align_form": (None, "factors"),
                  # learned feedback's own rate (dkp, ssa-dkp): None for every other rule
                  "rule.feedback_lr": (None,), "rule.feedback_decay": (None,),
                  "rule.feedback_weight_decay": (None,),
                  # the local route's trained heads: the linear read-out before
                  "rule.readout_head": (None, "linear"), "rule.readout_width": (None, 0),
                  "rule.readout_depth": (None, 1),
                  # predsim's weight: the prediction loss alone before
                  "rule.readout_sim": (None, 0.0),
                  # the weight of local_global's direct term (no such route before)
                  "rule.direct_weight": (None, 1.0),
                  # the dense layers' own fraction at a cut: tau's before
                  "rank.dense_tau": (None,),
                  # what a cut does to the variables: recreate them before
                  "rank.cut_form": ("resize",),
                  # the dtype of the chain's linear network: float32 before
                  "rule.chain_dtype": (None, "float32"),
                  # the dtype of every convolution's input gradient: float32 before
                  "train.error_dtype": ("float32",),
                  # a recompute's replays in slices of the batch: one slice before
                  "rule.replay_slices": (None, 1),
                  # replays from the boundaries the first pass kept: not chained before
                  "rule.replay_chained": (None, False)}


def at_later_default(name, value) -> bool:
    """``value`` of setting ``name`` is what a record from before the setting trained."""
    return name in LATER_DEFAULTS and value in LATER_DEFAULTS[name]


def read_name(name: str) -> str:
    """One setting's name in today's vocabulary: a flat name ("beta", "rank_tau", "mode")
    or one of the ``method`` section ("method.mode", "method.beta") becomes its
    ``SECTION.FIELD``; names of today (and ``seed``, ``card``, names neither knows) pass
    as they are."""
    if "." not in name:
        return FLAT_TO_PATH.get(name, name)
    section, _, field = name.partition(".")
    if section == OLD_RULE_SECTION:
        return "rule.name" if field == OLD_RULE_NAME else f"rule.{field}"
    return name


def read_settings(values: dict) -> dict:
    """``values`` with every old name replaced by today's (``read_name``)."""
    return {read_name(k): v for k, v in values.items()}


def read_config(values: dict) -> RunConfig:
    """The ``RunConfig`` of a ``config.json`` (``RunConfig.record``'s, of any age;
    its locality card is left out: it follows from the settings)."""
    settings = read_settings(values)
    settings.pop("card", None)
    return RunConfig.from_settings(settings)


def read_key(key: str) -> str:
    """A grid record's key (canonical JSON of what a run trains) in today's names."""
    return json.dumps(read_settings(json.loads(key)), sort_keys=True, default=list)


def read_model_config(config: dict) -> dict:
    """An ``SSAModel``'s config (``get_config``, saved inside model.keras) in today's
    names: the rule's name under "rule" (models saved before it say "mode")."""
    out = dict(config)
    if OLD_RULE_NAME in out:
        out.setdefault("rule", out.pop(OLD_RULE_NAME))
    return out


def read_record(record: dict) -> dict:
    """A grid record (a line of ``benchmarks/results/*.jsonl``) in today's names: its key
    and config, and the rule's name under "rule" (records before it say "mode")."""
    out = dict(record)
    out["key"] = read_key(out["key"])
    if "config" in out:
        out["config"] = read_settings(out["config"])
    if OLD_RULE_NAME in out:
        out.setdefault("rule", out.pop(OLD_RULE_NAME))
    return out
