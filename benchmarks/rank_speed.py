"""Seconds per training step before and after rank cuts, side by side with BP.

    python benchmarks/rank_speed.py --data_dir=../shared/tfds --model=smallconv

Trains an SSA model on the real CIFAR-10 for --epochs_between epochs, cuts
every SVD layer at --tau, and repeats --cuts times. Before the first cut and
after each one it times --steps training steps of the SSA model and of the
same architecture trained with BP (ordinary Dense/Conv2D layers), interleaved
in one process so that machine noise hits both alike, and reports the ratio.
Accuracy on the validation split and trainable parameters are reported too.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", os.path.join("..", "shared", "tfds"), "TFDS data_dir")
flags.DEFINE_string("model", "smallconv", "model to train")
flags.DEFINE_float("tau", 0.95, "energy kept at each cut")
flags.DEFINE_integer("cuts", 2, "number of cuts")
flags.DEFINE_integer("epochs_between", 1, "training epochs before each cut")
flags.DEFINE_integer("max_train_examples", 10000, "training images")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("steps", 30, "timed steps per measurement (after 3 warm-up steps)")
flags.DEFINE_integer("repeats", 3, "interleaved repetitions; the median is reported")
flags.DEFINE_string("feedback", "chain", "SSA error route")
flags.DEFINE_string("feedback_init", "forward", "SSA feedback factors")


def time_steps(model, batches, steps):
    for x, y in batches[:3]:
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for k in range(steps):
        x, y = batches[k % len(batches)]
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    import tensorflow as tf

    from ssa_tf import data
    from ssa_tf.training.rank import apply_cut
    from ssa_tf.training.model import build_model

    ds = data.load("cifar10", FLAGS.batch_size, data_dir=FLAGS.data_dir,
                   max_train_examples=FLAGS.max_train_examples)
    batches = [(x, y) for x, y in ds.train.take(20)]
    keras.utils.set_random_seed(1)
    ssa = build_model(FLAGS.model, ds.input_shape, ds.num_classes, mode="ssa",
                      feedback_route=FLAGS.feedback, feedback_init=FLAGS.feedback_init)
    bp = build_model(FLAGS.model, ds.input_shape, ds.num_classes, mode="bp")

    def params(m):
        return int(sum(np.prod(v.shape) for v in m.trainable_variables))

    def measure(label):
        ssa_t, bp_t = [], []
        for _ in range(FLAGS.repeats):
            ssa_t.append(time_steps(ssa, batches, FLAGS.steps))
            bp_t.append(time_steps(bp, batches, FLAGS.steps))
        s, b = float(np.median(ssa_t)), float(np.median(bp_t))
        acc = ssa.evaluate(ds.test, verbose=0, return_dict=True)["accuracy"]
        row = dict(stage=label, ssa_ms=1000 * s, bp_ms=1000 * b, ratio=s / b, params=params(ssa),
                   acc=acc)
        print(f"{label:>12}: SSA {1000 * s:7.1f} ms/step, BP {1000 * b:7.1f} ms/step, "
              f"SSA/BP {s / b:5.2f}, SSA params {params(ssa):,}, SSA accuracy {acc:.3f}",
              flush=True)
        return row

    print(f"{FLAGS.model} on CIFAR-10 ({FLAGS.max_train_examples} images), batch "
          f"{FLAGS.batch_size}, tau {FLAGS.tau}, TF {tf.__version__}, {os.cpu_count()} cores; "
          f"BP params {params(bp):,}", flush=True)
    rows = []
    for k in range(FLAGS.cuts):
        ssa.fit(ds.train, epochs=FLAGS.epochs_between, verbose=0)
        rows.append(measure("before cut" if k == 0 else f"after cut {k}"))
        records = apply_cut(ssa, FLAGS.tau)
        print("    ranks: " + ", ".join(f"{r['layer']} {r['old_rank']}->{r['new_rank']}"
                                        for r in records), flush=True)
    rows.append(measure(f"after cut {FLAGS.cuts}"))
    first = rows[0]["ssa_ms"]
    for r in rows[1:]:
        print(f"speed-up of SSA vs before the first cut, {r['stage']}: {first / r['ssa_ms']:.2f}x")


if __name__ == "__main__":
    app.run(main)
