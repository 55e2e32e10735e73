"""Throughput of the input pipeline alone and of the training step alone, in images/s.

    python -m ssa_tf.data_bench --dataset=cifar10 --data_dir=../shared/tfds --model=resnet32
    python -m ssa_tf.data_bench --dataset=imagenet2012 --mock --model=resnet18 --train_steps=3
    python -m ssa_tf.data_bench --dataset=synthetic --synthetic_shape=224,224,3 \
        --synthetic_classes=1000 --model=resnet18

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

FLAGS = flags.FLAGS


def define_flags():
    """The bench's flags, defined only when it runs: tests import this module
    (``mock_prepared``) beside ``ssa_tf.train``, which owns the same names."""
    flags.DEFINE_string("dataset", "cifar10", f"one of {', '.join(cfg_lib.DATASETS)}")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset")
    flags.DEFINE_string("manual_dir", None, "ImageNet: folder with ILSVRC2012_img_{train,val}.tar")
    flags.DEFINE_string("label", "fine", "cifar100: fine or coarse")
    flags.DEFINE_integer("image_size", None, "imagenet2012 crop size (default 224)")
    flags.DEFINE_list("synthetic_shape", ["32", "32", "3"], "synthetic: image shape")
    flags.DEFINE_integer("synthetic_classes", 10, "synthetic: number of classes")
    flags.DEFINE_string("model", "resnet32", f"one of {', '.join(cfg_lib.MODELS)}")
    flags.DEFINE_string("mode", "ssa", f"one of {', '.join(cfg_lib.MODES)}")
    flags.DEFINE_string("norm", "layer", f"one of {', '.join(cfg_lib.NORMS)}")
    flags.DEFINE_integer("batch_size", 128, "batch size")
    flags.DEFINE_integer("max_train_examples", None, "use only the first N training examples")
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
# Mocked TFDS data with real metadata: the loader's own code path, no data.
# --------------------------------------------------------------------------

@contextlib.contextmanager
def mock_prepared(name, data_dir, split_sizes, num_examples=None, as_dataset_fn=None):
    """``tfds.testing.mock_data`` for ``name`` as if prepared in ``data_dir``.

    Writes the builder's metadata (features and ``split_sizes``) to
    ``data_dir/<name>/<version>``, as ``tfds build`` would, so
    ``builder.is_prepared()`` is true and split sizes are known; examples come
    from the mock (``num_examples`` random ones per split by default, whatever
    ``split_sizes`` says, or ``as_dataset_fn``). Never touches a real prepared copy.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        raise ValueError(f"{name} is really prepared in {data_dir}; mock it in another folder")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[int(n)], num_bytes=0, filename_template=None)
        for split, n in split_sizes.items()]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(num_examples=num_examples or max(split_sizes.values()),
                                data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES,
                                as_dataset_fn=as_dataset_fn):
        yield


def jpeg_examples(shape, pool=32, seed=0):
    """A mock ``_as_dataset`` yielding ImageNet-like examples: JPEGs of ``shape``.

    The images are smooth noise (about 110 KB at 375x500, like ImageNet's
    average file); ``pool`` distinct files are cycled.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    h, w, c = (int(d) for d in shape)
    files = []
    for _ in range(pool):
        low = rng.uniform(0, 255, (1, max(h // 4, 1), max(w // 4, 1), c)).astype(np.float32)
        img = tf.image.resize(low, (h, w), "bicubic")[0] + rng.normal(0, 8, (h, w, c))
        files.append(tf.io.encode_jpeg(tf.cast(tf.clip_by_value(img, 0, 255), tf.uint8),
                                       quality=90).numpy())
    files = tf.constant(files)

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        n = self.info.splits[split].num_examples
        classes = self.info.features["label"].num_classes

        def example(i):
            jpeg = files[i % pool]
            skip = decoders and "image" in decoders  # the loader decodes the JPEG itself
            image = jpeg if skip else tf.io.decode_jpeg(jpeg, channels=c)
            return {"image": image, "label": i % classes, "file_name": tf.strings.as_string(i)}

        return tf.data.Dataset.range(n).map(example)

    return as_dataset


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
    synthetic_shape = _ints("synthetic_shape")
    mock_shape = _ints("mock_shape")
    cfg = cfg_lib.RunConfig(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, model=FLAGS.model,
                            mode=FLAGS.mode, norm=FLAGS.norm, batch_size=FLAGS.batch_size,
                            label=FLAGS.label, image_size=FLAGS.image_size,
                            manual_dir=FLAGS.manual_dir, synthetic_shape=synthetic_shape,
                            synthetic_classes=FLAGS.synthetic_classes,
                            max_train_examples=FLAGS.max_train_examples)
    problem = cfg_lib.validate(cfg)
    if problem:
        usage_error(problem)
    if FLAGS.mock and cfg.dataset not in ("imagenet2012", "cifar100", "cifar10"):
        usage_error("--mock applies to the TFDS datasets only")
    from ssa_tf import data as data_lib

    with contextlib.ExitStack() as stack:
        if FLAGS.mock:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="data_bench_mock_"))
            cfg.data_dir = tmp
            splits = {split: FLAGS.mock_examples
                      for split in ("train", data_lib.FINAL_SPLIT[cfg.dataset])}
            stack.enter_context(mock_prepared(
                cfg.dataset, tmp, splits,
                as_dataset_fn=jpeg_examples(mock_shape) if cfg.dataset == "imagenet2012" else None))
        try:
            data_lib.check_available(cfg.dataset, cfg.data_dir, cfg.manual_dir)
            spec = data_lib.load(cfg.dataset, cfg.batch_size, data_dir=cfg.data_dir, seed=cfg.seed,
                                 augment=FLAGS.augment, max_train_examples=cfg.max_train_examples,
                                 label=cfg.label, manual_dir=cfg.manual_dir,
                                 image_size=cfg.image_size, synthetic_shape=cfg.synthetic_shape,
                                 synthetic_classes=cfg.synthetic_classes)
        except data_lib.DataError as e:
            usage_error(str(e))
        results = measure(cfg, spec)
    source = f"mock ({'x'.join(map(str, mock_shape))} JPEG)" if FLAGS.mock else spec.train_split
    results = {"dataset": cfg.dataset, "source": source, "input_shape": list(spec.input_shape),
               "batch_size": cfg.batch_size, "model": cfg.model, "mode": cfg.mode,
               "cpus": os.cpu_count(), **results}
    print(json.dumps(results))


def measure(cfg, spec):
    import tensorflow as tf

    out = {}
    if spec.train_examples <= _COLD_PASS_MAX:
        out["pipeline_cold_images_per_s"] = round(full_pass_rate(spec.train), 1)
        print(f"pipeline, first pass ({spec.train_examples} images, reading and decoding): "
              f"{out['pipeline_cold_images_per_s']:.0f} images/s", flush=True)
    out["pipeline_images_per_s"] = round(pipeline_rate(spec.train, FLAGS.pipeline_batches), 1)
    print(f"pipeline ({FLAGS.pipeline_batches} batches of {cfg.batch_size}): "
          f"{out['pipeline_images_per_s']:.0f} images/s", flush=True)
    if FLAGS.train_steps < 1:
        return out

    from ssa_tf.trainer import build_model

    x, y = next(iter(spec.train))
    x, y = tf.identity(x), tf.identity(y)
    model = build_model(cfg.model, spec.input_shape, spec.num_classes, mode=cfg.mode, norm=cfg.norm)
    out["train_images_per_s"] = round(train_rate(model, x, y, FLAGS.train_steps), 1)
    print(f"training step, {cfg.mode} {cfg.model} ({FLAGS.train_steps} steps on one in-memory "
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
