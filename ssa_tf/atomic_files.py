"""Files written whole or not at all: bytes, text, and matplotlib figures as PNG (no
TensorFlow).

A reader (or a run killed mid-write) sees the previous file or the new one,
never half of one: each is written beside its path and renamed into place.
"""

from __future__ import annotations

import os
import tempfile


def write_bytes(path: str, payload: bytes) -> None:
    """Write ``payload`` under a temporary name beside ``path``, then rename; the file gets
    the permissions the umask gives a new file (mkstemp's 0600 would surprise whoever
    deploys it), and no temporary file is left behind when writing fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every
    thread a moment); where /proc is missing, set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Save ``fig`` as the PNG ``path`` and close it."""
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
