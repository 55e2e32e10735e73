"""The one reader of the flat names: files written before the dotted vocabulary.

Up to ed60e35 (2026-12-06) ``config.json``, the grids' records (their keys and
configs) and a search's ``search.json`` named each setting by its field alone
("beta", "epochs"), the rank section's with a prefix ("rank_tau"). Everything this
version writes says ``SECTION.FIELD``; every reader of a file that may be older
passes it through here, so saved runs keep loading, resuming and exporting:

    cfg = legacy.read_config(json.load(open("run/config.json")))   # either age
    key = legacy.read_key(record["key"])                          # a record's key
"""

from __future__ import annotations

import dataclasses
import json

from ssa_tf.config.schema import SECTIONS, RunConfig


def _flat_name(section, field):
    return f"rank_{field}" if section == "rank" else field


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
                  "rank.energy": ("weights",), "method.align_form": (None, "factors"),
                  # learned feedback's own rate (dkp, ssa-dkp): None for every other rule
                  "method.feedback_lr": (None,), "method.feedback_decay": (None,),
                  "method.feedback_weight_decay": (None,),
                  # the local route's trained heads: the linear read-out before
                  "method.readout_head": (None, "linear"), "method.readout_width": (None, 0),
                  "method.readout_depth": (None, 1),
                  # predsim's weight: the prediction loss alone before
                  "method.readout_sim": (None, 0.0)}


def at_later_default(name, value) -> bool:
    """``value`` of setting ``name`` is what a record from before the setting trained."""
    return name in LATER_DEFAULTS and value in LATER_DEFAULTS[name]


def read_settings(values: dict) -> dict:
    """``values`` with every old flat name replaced by its ``SECTION.FIELD``; names of
    today (and ``seed``, ``card``, names neither knows) pass as they are."""
    return {FLAT_TO_PATH.get(k, k) if "." not in k else k: v for k, v in values.items()}


def read_config(values: dict) -> RunConfig:
    """The ``RunConfig`` of a ``config.json`` (``RunConfig.record``'s, of either age;
    its locality card is left out: it follows from the settings)."""
    settings = read_settings(values)
    settings.pop("card", None)
    return RunConfig.from_settings(settings)


def read_key(key: str) -> str:
    """A grid record's key (canonical JSON of what a run trains) in today's names."""
    return json.dumps(read_settings(json.loads(key)), sort_keys=True, default=list)
