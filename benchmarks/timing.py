"""Timing whole models side by side in one process (ratios are what a shared machine
gives reliably): ``benchmarks.chain_cost`` and ``benchmarks.step_cost``."""

from __future__ import annotations

import statistics
import time


def warm_up(model, name, x, y):
    """Two steps: the trace and the first run of the traced step."""
    for _ in range(2):
        model.train_on_batch(x, y)
    print(f"built and traced: {name}", flush=True)


def time_side_by_side(models, x, y, repeats, steps):
    """{name: median ms per step}: every model timed in turn in each of ``repeats``
    rounds of ``steps`` steps, the order rotated every round."""
    times = {name: [] for name in models}
    names = list(models)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps):
                models[name].train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps * 1000)
        print(f"round {r + 1}/{repeats} done", flush=True)
    return {name: statistics.median(t) for name, t in times.items()}
