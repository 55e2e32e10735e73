"""Presets: small config files, each with the command that runs it and what it gives.

A preset is a module with ``values(rule) -> {"SECTION.FIELD": value}`` (``rule``: the
rule's name), or ``values(rule, given)``, where ``given`` is the ``RunConfig`` the flags
make without the preset (a preset can follow the route asked for, not only the rule);
the CLI applies it under the flags given explicitly. ``--preset=NAME`` takes one
of this folder's, ``--preset=path/to/file.py`` a file of the user's.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os

NAMES = ("cifar100", "compact", "imagenet", "local_heads")


def load(name_or_path):
    """The preset module ``name_or_path`` (ValueError: unknown or unreadable)."""
    if name_or_path in NAMES:
        return importlib.import_module(f"ssa_tf.config.presets.{name_or_path}")
    if name_or_path.endswith(".py"):
        if not os.path.isfile(name_or_path):
            raise ValueError(f"--preset={name_or_path}: no such file")
        spec = importlib.util.spec_from_file_location("ssa_tf_user_preset", name_or_path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's file: any failure to run it is their input problem
            raise ValueError(f"--preset={name_or_path}: {type(e).__name__}: {e}") from None
        if not callable(getattr(module, "values", None)):
            raise ValueError(f"--preset={name_or_path}: defines no values(rule) function")
        return module
    raise ValueError(f"--preset={name_or_path!r} is not valid; choose from: {', '.join(NAMES)}, "
                     "or give a path to a .py preset file")


def values(preset, given) -> dict:
    """``preset.values`` for the run ``given`` asks for (its flags without the preset)."""
    parameters = inspect.signature(preset.values).parameters
    if len(parameters) >= 2:
        return preset.values(given.rule.name, given)
    return preset.values(given.rule.name)
