"""Where a training step's time goes, by TensorFlow op type, from TensorFlow's profiler.

    python -m benchmarks.step_profile --batch=64 --row="ssa (chain), held within the peak"

The rows are ``benchmarks.step_cost``'s (resnet18, 224x224, 1000 classes; its flags:
``--batch``, ``--image_size``, ``--classes``, ``--steps``, ``--row``, ``--out``). Each row is
built, traced and warmed up, then ``--steps`` steps run under ``tf.profiler``; the trace
(an XSpace) is turned into TensorFlow's own op statistics (``framework_op_stats``, the
table TensorBoard's profile plugin shows; the converter ships in TensorFlow itself, no
plugin needed) and summed by op type. Times are self-times summed over the CPU's threads
("thread ms" a step: on 2 cores a step's wall time is at least half its busy thread time);
IDLE is the time the profiler saw threads wait. Profiling slows ops a little; compare rows
of one run.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import tempfile
import time

from absl import flags

from benchmarks import step_cost
from benchmarks.timing import chosen_rows, publish, warm_up
from ssa_tf import cli

FLAGS = flags.FLAGS
TOP = 14  # op types shown; the rest summed in one line


def op_stats(xplane) -> dict:
    """{op type: (self-time in microseconds, occurrences)} from one profile's XSpace file."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, ok = plugin.xspace_to_tools_data([xplane], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"TensorFlow could not read the profile {xplane}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    out = collections.defaultdict(lambda: [0.0, 0])
    for row in table["rows"]:
        v = dict(zip(cols, (c.get("v") for c in row["c"])))
        out[v["type"]][0] += v["total_self_time"]
        out[v["type"]][1] += v["occurrences"]
    return dict(out)


def profile(model, x, y, steps) -> tuple:
    """(wall ms a step, {op type: thread ms a step}) over ``steps`` profiled steps."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        wall = (time.perf_counter() - start) / steps * 1000
        tf.profiler.experimental.stop()
        xplane, = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        stats = op_stats(xplane)
    return wall, {k: us / 1000 / steps for k, (us, _) in stats.items()}


def table(results) -> str:
    names = list(results)
    busy = {n: sum(v for k, v in results[n][1].items() if k != "IDLE") for n in names}
    order = sorted({k for n in names for k in results[n][1] if k != "IDLE"},
                   key=lambda k: -max(results[n][1].get(k, 0.0) for n in names))
    lines = [f"resnet18 at {FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.classes} classes, "
             f"batch {FLAGS.batch}; {FLAGS.steps} profiled steps a row; thread ms a step "
             "(self-time summed over threads).", "",
             "| op type | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in order[:TOP]:
        lines.append(f"| {k} | " + " | ".join(f"{results[n][1].get(k, 0.0):.0f}"
                                               for n in names) + " |")
    rest = order[TOP:]
    lines.append("| (other op types) | " + " | ".join(
        f"{sum(results[n][1].get(k, 0.0) for k in rest):.0f}" for n in names) + " |")
    lines.append("| **busy, all op types** | " + " | ".join(f"**{busy[n]:.0f}**"
                                                           for n in names) + " |")
    lines.append("| IDLE | " + " | ".join(f"{results[n][1].get('IDLE', 0.0):.0f}"
                                         for n in names) + " |")
    lines.append("| wall ms a step (profiled) | " + " | ".join(f"{results[n][0]:.0f}"
                                                            for n in names) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("image_size", "classes", "batch", "steps"):
        if FLAGS[name].value < 1:
            cli.usage_error(f"--{name} must be >= 1, got {FLAGS[name].value}")
    rows = chosen_rows(step_cost.ROWS, FLAGS.row)
    cli.import_tensorflow()
    x, y = step_cost.inputs()
    results = {}
    for name, options, form, fraction in rows:
        model = step_cost.build(options, form, fraction, x.shape[1:])
        warm_up(model, name, x, y)
        results[name] = profile(model, x, y, FLAGS.steps)
        del model
    publish(table(results), FLAGS.out, "Where a training step's time goes, by op type",
            "benchmarks.step_profile")


if __name__ == "__main__":
    cli.run(main, help_text=__doc__)
