"""Throughput of the input pipeline alone and of the training step alone, in images/s.

    python -m benchmarks.data_bench --dataset=cifar10 --data_dir=DIR --model=resnet32
    python -m benchmarks.data_bench --dataset=imagenet2012 --mock --model=resnet18 --train_steps=3
    python -m benchmarks.data_bench --dataset=synthetic --set data.synthetic_shape=224,224,3 \
        --set data.synthetic_classes=1000 --model=resnet18

The pipeline is timed by iterating ``spec.train`` with nothing else running;
a split small enough to be cached gets one full cold pass (reading and
decoding, reported on its own) before the warm measurement. The training step
is timed with ``model.train_on_batch`` on one batch already in memory, so it
excludes the pipeline; ``pipeline / train`` is how many times over the
pipeline can feed the model. ``fit`` runs both together, as training does.

``--mock`` reads ImageNet through ``tfds.testing.mock_data`` with JPEGs of
``--mock_shape`` (default 375x500, about 110 KB each, like ImageNet's), so the
real ImageNet pipeline (decode-and-crop, resize, flip, jitter) can be measured
without the dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time

from absl import flags

from ssa_tf import config as cfg_lib
from ssa_tf.cli import usage_error
from ssa_tf import cli
from ssa_tf.data.mock import jpeg_examples, mock_prepared

FLAGS = flags.FLAGS


RUN = ("dataset", "data_dir", "model", "rule", "batch_size", "seed")


def define_flags():
    """The bench's flags, defined only when it runs (tests import ``ssa_tf.train``, which
    owns the run's flags too). The run's settings are the training CLI's: the daily
    flags and --set SECTION.FIELD=VALUE."""
    cli.define_run_flags(RUN)
    flags.DEFINE_boolean("augment", True, "time the augmented training pipeline")
    flags.DEFINE_integer("pipeline_batches", 100, "batches timed for the pipeline (warm)")
    flags.DEFINE_integer("train_steps", 10, "training steps timed (0: skip the model)")
    flags.DEFINE_boolean("fit", True, "also time model.fit on the pipeline (both together)")
    flags.DEFINE_boolean("mock", False, "TFDS datasets: read mocked data (tfds.testing.mock_data)")
    flags.DEFINE_list("mock_shape", ["375", "500", "3"], "--mock imagenet2012: JPEG shape")
    flags.DEFINE_integer("mock_examples", 2048, "--mock: examples in each split")


_WARMUP = 3  # batches or steps before timing starts (tracing, autotuning, thread start-up)
_COLD_PASS_MAX = 100_000  # a train split this small gets one full timed cold pass


# --------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------

def pipeline_rate(ds, batches):
    """Images/s over ``batches`` batches of ``ds``, after a short warm-up."""
    it = iter(ds)
    for _ in range(_WARMUP):
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(ds)
            x, _ = next(it)
        images += int(x.shape[0])
    return images / (time.perf_counter() - start)


def full_pass_rate(ds):
    images, start = 0, time.perf_counter()
    for x, _ in ds:
        images += int(x.shape[0])
    return images / (time.perf_counter() - start)


def train_rate(model, x, y, steps):
    """Images/s of ``model.train_on_batch`` on one in-memory batch."""
    for _ in range(_WARMUP):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * int(x.shape[0]) / (time.perf_counter() - start)


def fit_rate(model, ds, steps):
    """Images/s of ``model.fit`` on the pipeline, timed after the warm-up steps."""
    import keras

    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

    model.fit(ds.repeat(), steps_per_epoch=steps + _WARMUP, epochs=1, verbose=0,
              callbacks=[Clock()])
    return steps * FLAGS.batch_size / (marks[-1] - marks[_WARMUP - 1])


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------



def _ints(name):
    try:
        return tuple(int(d) for d in FLAGS[name].value)
    except ValueError:
        usage_error(f"--{name} must be integers, got {','.join(FLAGS[name].value)}")


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    mock_shape = _ints("mock_shape")
    try:
        cfg = cli.run_config_from_flags(RUN, [f"data.augment={FLAGS.augment}",
                                              "data.validation_split=0"])
    except ValueError as e:
        usage_error(str(e))
    problem = cfg_lib.validate(cfg)
    if problem:
        usage_error(problem)
    if FLAGS.mock and cfg.data.dataset not in ("imagenet2012", "cifar100", "cifar10"):
        usage_error("--mock applies to the TFDS datasets only")
    from ssa_tf import data as data_lib

    with contextlib.ExitStack() as stack:
        name = cfg.data.dataset
        if FLAGS.mock:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="data_bench_mock_"))
            cfg.data.data_dir = tmp
            splits = {split: FLAGS.mock_examples for split in ("train", data_lib.FINAL_SPLIT[name])}
            stack.enter_context(mock_prepared(
                name, tmp, splits,
                as_dataset_fn=jpeg_examples(mock_shape) if name == "imagenet2012" else None))
        try:
            data_lib.check_available(name, cfg.data.data_dir, cfg.data.manual_dir)
            from ssa_tf.training.run import load_data

            spec = load_data(cfg)
        except data_lib.DataError as e:
            usage_error(str(e))
        results = measure(cfg, spec)
    source = f"mock ({'x'.join(map(str, mock_shape))} JPEG)" if FLAGS.mock else spec.train_split
    results = {"dataset": name, "source": source, "input_shape": list(spec.input_shape),
               "batch_size": cfg.train.batch_size, "model": cfg.model.model,
               "rule": cfg.rule.name, "cpus": os.cpu_count(), **results}
    print(json.dumps(results))


def measure(cfg, spec):
    import tensorflow as tf

    out = {}
    if spec.train_examples <= _COLD_PASS_MAX:
        out["pipeline_cold_images_per_s"] = round(full_pass_rate(spec.train), 1)
        print(f"pipeline, first pass ({spec.train_examples} images, reading and decoding): "
              f"{out['pipeline_cold_images_per_s']:.0f} images/s", flush=True)
    out["pipeline_images_per_s"] = round(pipeline_rate(spec.train, FLAGS.pipeline_batches), 1)
    print(f"pipeline ({FLAGS.pipeline_batches} batches of {cfg.train.batch_size}): "
          f"{out['pipeline_images_per_s']:.0f} images/s", flush=True)
    if FLAGS.train_steps < 1:
        return out

    from ssa_tf.training.model import compile_model, model_from_config

    x, y = next(iter(spec.train))
    x, y = tf.identity(x), tf.identity(y)
    model = compile_model(model_from_config(cfg, spec.input_shape, spec.num_classes),
                          cfg.learning_rate())
    out["train_images_per_s"] = round(train_rate(model, x, y, FLAGS.train_steps), 1)
    print(f"training step, {cfg.rule.name} {cfg.model.model} ({FLAGS.train_steps} steps on one "
          "in-memory "
          f"batch): {out['train_images_per_s']:.1f} images/s", flush=True)
    if FLAGS.fit:
        out["fit_images_per_s"] = round(fit_rate(model, spec.train, FLAGS.train_steps), 1)
        print(f"model.fit on the pipeline ({FLAGS.train_steps} steps): "
              f"{out['fit_images_per_s']:.1f} images/s", flush=True)
    # against the faster of the two: what training could consume at best
    consumed = max(out["train_images_per_s"], out.get("fit_images_per_s", 0))
    out["pipeline_over_train"] = round(out["pipeline_images_per_s"] / consumed, 1)
    print(f"the pipeline delivers {out['pipeline_over_train']:.1f}x what training consumes",
          flush=True)
    return out




if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    cli.run(main)
