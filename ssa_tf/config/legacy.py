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


# the old name of every setting -> its name now
FLAT_TO_PATH = {_flat_name(section, f.name): f"{section}.{f.name}"
                for section, klass in SECTIONS.items() for f in dataclasses.fields(klass)}


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
