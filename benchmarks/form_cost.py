"""What an SVD convolution's two forms cost, measured against their multiply-adds.

    python -m benchmarks.form_cost [--out=benchmarks/reports/FORM_COST.md]

One ``SVDConv2D`` (3x3, C = N channels) at a time, forward and backward to its factors in
a ``tf.function``, the median of 5 calls after 2 warm-ups: the merged form (one
convolution with U diag(s) V^T, the merge included) against the factored pair, for the
spatial and channel views at full rank, 50% and 25%, on CIFAR-sized and ImageNet-sized
maps. "time f/m" against "MACs f/m" (the pair's multiply-adds over the merged form's,
the merge counted) is what ``SVDConv2D.SPATIAL_PAIR_COST`` is read from; the last column
is the automatic form's choice for that batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

CASES = ((64, 32, 64), (128, 28, 8), (256, 14, 8), (512, 7, 8), (512, 7, 64))  # C, H, batch
FRACTIONS = (1.0, 0.5, 0.25)


def measure(channels, size, batch, fraction, factorization, calls=5):
    """(ms merged, ms factored, multiply-adds factored / merged, auto picks merged)."""
    import numpy as np
    import tensorflow as tf

    from ssa_tf.nn import SVDConv2D

    layer = SVDConv2D(channels, 3, factorization=factorization)
    layer.build((None, size, size, channels))
    r = max(1, int(layer.full_rank * fraction))
    if r < layer.full_rank:
        layer.truncate(r, "first")
    x = tf.constant(np.random.default_rng(0).standard_normal(
        (batch, size, size, channels)).astype("float32"))
    ms = {}
    for form in ("merged", "factored"):
        layer.forward = form

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, layer.trainable_variables)

        step(), step()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        ms[form] = statistics.median(times) * 1000
    layer.forward = "auto"
    pixels, c = batch * size * size, channels
    merged = 9 * c * c
    factored = 9 * c * r + r * c if factorization == "channel" else 3 * c * r + 3 * r * c
    rows, columns = layer._matrix_shape
    ratio = pixels * factored / (pixels * merged + r * rows * columns)
    return ms["merged"], ms["factored"], ratio, layer.uses_merged_forward(x.shape), r, \
        layer.full_rank


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    lines = ["| view | C | map | batch | rank | merged ms | factored ms | time f/m | MACs f/m "
             "| auto |", "|---|---|---|---|---|---|---|---|---|---|"]
    for factorization in ("spatial", "channel"):
        for c, size, batch in CASES:
            for fraction in FRACTIONS:
                m, f, macs, auto, r, full = measure(c, size, batch, fraction, factorization)
                lines.append(f"| {factorization} | {c} | {size}x{size} | {batch} | {r}/{full} "
                             f"| {m:.1f} | {f:.1f} | {f / m:.2f} | {macs:.2f} | "
                             f"{'merged' if auto else 'factored'} |")
                print(lines[-1], flush=True)
    if args.out:
        from ssa_tf import atomic_files
        atomic_files.write_text(args.out, "# An SVD convolution's two forms: time against "
                                   "multiply-adds\n\n`python -m benchmarks.form_cost "
                                   f"{' '.join(argv or [])}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
