"""Timing whole models side by side in one process (ratios are what a shared machine
gives reliably): ``benchmarks.chain_cost`` and ``benchmarks.step_cost``; and the cut to a
fraction of full rank that the timing benchmarks share."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fraction_ranks(model, fraction, keep_ends=False) -> dict:
    """{layer: rank} cutting every SVD layer to ``fraction`` of its full rank (at least 1);
    with ``keep_ends`` the first layer and the classifier are left out (``end_layers``),
    as ``rank.keep_ends`` leaves them. For ``training.rank.apply_ranks``."""
    from ssa_tf.training.rank import end_layers

    kept = end_layers(model) if keep_ends else ()
    return {l.name: max(1, int(l.full_rank * fraction)) for l in model.svd_layers()
            if l.name not in kept}


def warm_up(model, name, x, y):
    """Two steps: the trace and the first run of the traced step."""
    for _ in range(2):
        model.train_on_batch(x, y)
    print(f"built and traced: {name}", flush=True)


def time_rounds(models, x, y, repeats, steps) -> dict:
    """{name: [ms per step, a round]}: every model timed in turn in each of ``repeats``
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
    return times


def time_side_by_side(models, x, y, repeats, steps):
    """{name: median ms per step} of ``time_rounds``."""
    rounds = time_rounds(models, x, y, repeats, steps)
    return {name: statistics.median(t) for name, t in rounds.items()}


def paired(rounds, reference) -> dict:
    """{name: (median, lowest, highest)} of each round's ms per step over ``reference``'s
    in the same round (the rows of a round ran back to back): the range shows how far one
    round's comparison can stray, which the ratio of two medians hides."""
    ref = rounds[reference]
    out = {}
    for name, times in rounds.items():
        ratios = [t / r for t, r in zip(times, ref)]
        out[name] = (statistics.median(ratios), min(ratios), max(ratios))
    return out


def peak_step_mb(model, x, y):
    """What TensorFlow's allocator holds at its peak during two training steps, above what
    it held before them (the weights and optimizer state), after a first step (the trace).
    Needs the BFC allocator on the CPU, which ``child_peak_mb`` turns on."""
    import tensorflow as tf

    model.train_on_batch(x, y)
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    for _ in range(2):
        model.train_on_batch(x, y)
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - base) / 2 ** 20


def print_peak(mb):
    """The child's answer to ``child_peak_mb``."""
    print("MEMORY " + json.dumps({"peak_mb": mb}), flush=True)


def child_peak_mb(module, args, what):
    """Peak MB of one model measured by ``python -m module *args`` in a process of its own
    (the allocator's peak is per process), which prints it with ``print_peak``."""
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=3600)
    line = next((l for l in out.stdout.splitlines() if l.startswith("MEMORY ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"memory of {what}: {out.stderr[-1500:]}")
    return json.loads(line[len("MEMORY "):])["peak_mb"]


def chosen_rows(rows, wanted):
    """The rows (their name first) named in ``wanted`` (every row when it is empty), and BP's
    always (the ratios are to it); a name that is no row's is a usage error."""
    from ssa_tf import cli

    unknown = set(wanted) - {r[0] for r in rows}
    if unknown:
        cli.usage_error(f"--row names no row: {sorted(unknown)}")
    return [r for r in rows if not wanted or r[0] in wanted or r[0] == "bp"]


def publish(text, out, title, module):
    """Print a benchmark's table and, with ``out``, write it under ``title`` and the
    command that made it."""
    from ssa_tf import atomic_files

    print(text)
    if out:
        atomic_files.write_text(out, f"# {title}\n\n`python -m {module} "
                                f"{' '.join(map(_portable, sys.argv[1:]))}`\n\n{text}\n")


def _portable(arg):
    """A recorded command's argument without this machine's paths: a path inside the
    repository relative to it, one outside it DIR."""
    flag, eq, value = arg.partition("=")
    if not eq or not os.path.isabs(value):
        return arg
    inside = os.path.relpath(value, REPO)
    return f"{flag}={'DIR' if inside.startswith('..') else inside}"
