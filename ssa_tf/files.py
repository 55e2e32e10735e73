"""Files written whole or not at all: text, and matplotlib figures as PNG (no TensorFlow).

A reader (or a run killed mid-write) sees the previous file or the new one,
never half of one: each is written beside its path and renamed into place.
"""

from __future__ import annotations

import os


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Save ``fig`` as the PNG ``path`` and close it."""
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
