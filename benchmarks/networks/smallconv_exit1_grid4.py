"""``smallconv_exit1.py`` with the head's map averaged to a 4x4 grid (the heads of
``--set rule.readout_grid=4``)."""

import functools

from benchmarks.networks.smallconv_exit1 import build as _build

build = functools.partial(_build, grid=4)
