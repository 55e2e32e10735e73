"""What every input pipeline shares: the dataset names, ``DatasetSpec``, splits and availability.

Nothing here ever downloads. ``check_available`` decides, from the file system
alone and without importing TensorFlow, whether a TFDS dataset can be read, so
the CLI fails in a fraction of a second with the command that prepares it;
``prepared_builder`` repeats the check through TFDS itself. The one dataset
prepared here is ImageNet, and only from the user's own tars.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import TYPE_CHECKING

import numpy as np

from ssa_tf.errors import DataError  # noqa: F401  (raised here; its home)

if TYPE_CHECKING:  # TensorFlow is imported lazily, inside the pipeline builders
    import tensorflow as tf


EMBEDDED = "mnist5k"


SYNTHETIC = "synthetic"


TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")


DATASETS = (EMBEDDED, *TFDS_DATASETS, SYNTHETIC)


LABELS = ("fine", "coarse")


# The split that gives the final number: the dataset's own held-out split
# (ImageNet's test labels are not public, so its "validation" is the final one).
FINAL_SPLIT = {"cifar10": "test", "cifar100": "test", "imagenet2012": "validation"}


# the versions the pinned tensorflow-datasets builds and reads (tests/test_data_preparation.py checks)
TFDS_PACKAGE = "4.9.10"
TFDS_VERSIONS = {"cifar10": "3.0.2", "cifar100": "3.0.2", "imagenet2012": "5.1.0"}
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


# a decoded split is cached in memory below this many bytes (CIFAR: 150 MB)
CACHE_BYTES = 2 * 1024 ** 3


@dataclasses.dataclass
class DatasetSpec:
    """Batched pipelines and where they come from.

    ``test`` is the final evaluation (``test_split``). ``validation`` is the
    split held out of train for tuning and early decisions; without one
    (``validation_split=0``) it is None and callers validate on ``test``.
    """
    name: str
    train: "tf.data.Dataset"
    test: "tf.data.Dataset"
    input_shape: tuple
    num_classes: int
    train_examples: int
    test_examples: int
    train_split: str
    test_split: str
    validation: "tf.data.Dataset | None" = None
    validation_examples: int = 0
    validation_split: str | None = None
    # (mean, std) per channel in pixel units that the model subtracts and divides by
    # (``SSAModel(input_stats=...)``): the pipelines give raw pixels; None: already normal
    input_stats: tuple | None = None


def default_data_dir():
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def default_manual_dir(data_dir):
    """Where ``tfds build`` looks for manually downloaded files by default."""
    return os.path.join(data_dir, "downloads", "manual")


def carve(n_train, validation_split, max_train_examples):
    """(training [start, stop), validation [start, stop) or None) of a split of n_train."""
    n_val = int(round(n_train * validation_split))
    if validation_split and not 0 < n_val < n_train:
        raise DataError(f"validation_split={validation_split} of {n_train} training examples "
                        f"leaves {n_val} for validation; choose a fraction that leaves both "
                        f"parts non-empty")
    stop = n_train - n_val
    if max_train_examples:
        stop = min(stop, int(max_train_examples))
    return (0, stop), ((n_train - n_val, n_train) if n_val else None)


def slice_name(split, bounds, n):
    """TFDS slicing syntax: 'train', 'train[:900]', 'train[900:]'."""
    start, stop = bounds
    if (start, stop) == (0, n):
        return split
    return f"{split}[{start or ''}:{'' if stop == n else stop}]"


def check_available(name, data_dir=None, manual_dir=None):
    """Raise ``DataError`` at once if ``name`` surely cannot be read from ``data_dir``.

    A prepared TFDS dataset has ``<data_dir>/<name>/<version>/dataset_info.json``
    for the version this tensorflow-datasets reads (``TFDS_VERSIONS``); without
    one, nothing can be read (TFDS itself confirms the rest in ``load``).
    ImageNet without a prepared copy is fine only if both tars are in ``manual_dir``.
    """
    if name not in TFDS_DATASETS:
        return
    data_dir = data_dir or default_data_dir()
    version = TFDS_VERSIONS[name]
    if os.path.isfile(os.path.join(data_dir, name, version, "dataset_info.json")):
        return
    if name == "imagenet2012":
        manual_dir = manual_dir or default_manual_dir(data_dir)
        if not missing_tars(manual_dir):
            return  # load() prepares it from the tars
    others = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(
        os.path.join(glob.escape(data_dir), name, "*", "dataset_info.json")))
    if others:
        raise DataError(f"dataset {name!r} in data_dir {data_dir!r} is prepared as version "
                        f"{', '.join(others)}, and tensorflow-datasets {TFDS_PACKAGE} reads "
                        f"version {version}; prepare it again with `tfds build {name} "
                        f"--data_dir={data_dir}`")
    raise DataError(not_prepared_message(name, data_dir, manual_dir))


def missing_tars(manual_dir):
    return [f for f in IMAGENET_TARS if not os.path.isfile(os.path.join(manual_dir, f))]


def not_prepared_message(name, data_dir, manual_dir=None):
    """One line: what is missing, where it was searched, the command that prepares it."""
    if name != "imagenet2012":
        return (f"dataset {name!r} is not prepared in data_dir {data_dir!r} (nothing is "
                f"downloaded at run time); prepare it on a machine with network access with "
                f"`tfds build {name} --data_dir={data_dir}` and copy that folder here")
    manual_dir = manual_dir or default_manual_dir(data_dir)
    missing = missing_tars(manual_dir)
    return (f"dataset 'imagenet2012' is not prepared in data_dir {data_dir!r} and cannot be "
            f"prepared: missing {', '.join(os.path.join(manual_dir, f) for f in missing)}; "
            f"download them from https://image-net.org/download-images (registration "
            f"required) into {manual_dir} (or point --set data.manual_dir=DIR at the folder "
            f"holding them), "
            f"then run `tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}` "
            f"(hours; once the tars are there, this command also prepares it on first use)")


def prepared_builder(name, data_dir, manual_dir):
    check_available(name, data_dir, manual_dir)
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if name == "imagenet2012":
        manual_dir = manual_dir or default_manual_dir(data_dir)
        if not missing_tars(manual_dir):
            # The user's tars are on disk: preparing is local work (hours for the
            # real ImageNet, like `tfds build`), never a download.
            print(f"preparing imagenet2012 in {data_dir} from the tars in {manual_dir} "
                  f"(one-off; hours for the full dataset)", flush=True)
            config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
            builder.download_and_prepare(download_config=config)
            return builder
    raise DataError(not_prepared_message(name, data_dir, manual_dir))


def with_seeds(ds, seed):
    """Pairs every element with its own stateless-op seed, new on every pass."""
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def without_autotune(ds):
    """``ds`` with tf.data's autotuning off: map parallelism AUTOTUNE then runs at
    tf.data's initial value, min(16, cores); prefetch's buffer is left to prefetch's own
    tuner (its ``legacy_autotune`` attribute, on by default).

    With it on, deleting an iterator (Keras makes one per epoch, training and
    validation alike) sometimes waited for the autotuning thread's next wake-up, whose
    period doubles from 10 ms to a minute: resnet32's 24 s epoch then ended at 41.0 s
    (a native stack showed ``RootDataset::Iterator``'s destructor waiting on its
    thread), and a 4-epoch smallconv run on 10,000 CIFAR-10 images took 48.1 s against
    36.0 s without it, as whole processes (``benchmarks/reports/EFFICIENCY.md``)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def finish(ds, batch_size):
    import tensorflow as tf

    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def tfds_splits(builder, validation_split, max_train_examples):
    """(train, validation or None, final) TFDS split strings."""
    splits = builder.info.splits
    final = FINAL_SPLIT[builder.name]
    for needed in ("train", final):
        if needed not in splits:
            raise DataError(f"dataset {builder.name!r} in {os.fspath(builder.data_dir)!r} has no "
                            f"{needed!r} split (it has: {', '.join(sorted(splits))}); prepare it "
                            f"again with `tfds build {builder.name}`")
    n = int(splits["train"].num_examples)
    fit, val = carve(n, validation_split, max_train_examples)
    return (slice_name("train", fit, n), slice_name("train", val, n) if val else None, final)


def count_examples(builder, split):
    return int(builder.info.splits[split].num_examples)


def maybe_cache(ds, builder, split, image_key="image"):
    """Cache the decoded split when it fits in memory (CIFAR: yes; ImageNet: never)."""
    shape = builder.info.features[image_key].shape
    if None in shape:
        return ds
    if count_examples(builder, split) * int(np.prod(shape)) > CACHE_BYTES:
        return ds
    return ds.cache()


def make_spec(builder, splits, pipelines, input_shape, num_classes):
    (train_split, val_split, test_split), (train, val, test) = splits, pipelines
    count = lambda split: count_examples(builder, split)  # noqa: E731
    name = builder.name
    spec = DatasetSpec(name, train, test, input_shape, num_classes, count(train_split),
                       count(test_split), f"{name}:{train_split}", f"{name}:{test_split}")
    if val_split:
        spec.validation, spec.validation_examples = val, count(val_split)
        spec.validation_split = f"{name}:{val_split}"
    return spec
