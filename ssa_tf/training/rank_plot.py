"""The rank callback's picture: SVD rank per layer over epochs (``ranks.png``)."""

from __future__ import annotations

import numpy as np

from ssa_tf import atomic_files


def plot_ranks(history, path):
    """Rank per layer over epochs, one small panel per layer (its name above it), written
    atomically as PNG."""
    atomic_files.save_figure(rank_figure(history), path)


def rank_figure(history):
    """The figure of ``plot_ranks``: a panel per layer, integer epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [e for e, _ in history]
    layers = list(history[0][1])
    cols = min(len(layers), 4)
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows + 0.6), squeeze=False)
    for ax, name in zip(axes.flat, layers):
        ranks = [r.get(name, np.nan) for _, r in history]
        ax.step(epochs, ranks, where="post", color="C0")
        ax.set_title(f"{name}: {ranks[0]} -> {ranks[-1]}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, max(ranks[0], 1) * 1.05)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel("rank", fontsize=9)
    fig.suptitle("SVD rank per layer (title: first -> last)", fontsize=10)
    fig.tight_layout()
    return fig
