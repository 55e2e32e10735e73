"""Input pipelines on real data: the embedded MNIST sample and the prepared CIFAR-10."""

import numpy as np
import pytest

from conftest import TFDS_DIR, cifar10_available
from ssa_tf import data


def test_embedded_split_is_fixed_and_stratified():
    xtr, ytr, xte, yte = data.embedded_arrays()
    assert xtr.shape == (4000, 28, 28, 1) and xte.shape == (1000, 28, 28, 1)
    assert np.bincount(yte).tolist() == [100] * 10
    assert np.bincount(ytr).sum() == 4000 and np.bincount(ytr).min() > 300
    assert abs(float(xtr.mean())) < 0.05 and abs(float(xtr.std()) - 1) < 0.05
    again = data.embedded_arrays()
    np.testing.assert_array_equal(again[3], yte)


needs_cifar = pytest.mark.skipif(not cifar10_available(), reason=f"no prepared CIFAR-10 at {TFDS_DIR}")


@needs_cifar
def test_cifar10_from_the_prepared_folder():
    spec = data.load("cifar10", 128, data_dir=TFDS_DIR, max_train_examples=1000)
    assert spec.input_shape == (32, 32, 3) and spec.num_classes == 10
    assert spec.train_examples == 1000 and spec.test_examples == 5000
    x, y = next(iter(spec.test))
    x = x.numpy()
    assert x.shape == (128, 32, 32, 3) and x.dtype == np.float32
    # per-channel normalization: about zero mean, unit spread
    assert np.all(np.abs(x.mean(axis=(0, 1, 2))) < 0.2)
    assert np.all(np.abs(x.std(axis=(0, 1, 2)) - 1) < 0.2)
    assert 0 <= y.numpy().min() and y.numpy().max() <= 9
    # evaluation is deterministic, training is augmented (crop, flip)
    x2 = next(iter(spec.test))[0].numpy()
    np.testing.assert_array_equal(x, x2)
    plain = data.load("cifar10", 1000, data_dir=TFDS_DIR, max_train_examples=1000, augment=False,
                      seed=1)
    aug = data.load("cifar10", 1000, data_dir=TFDS_DIR, max_train_examples=1000, augment=True,
                    seed=1)
    xp, yp = next(iter(plain.train))
    xa, ya = next(iter(aug.train))
    np.testing.assert_array_equal(yp.numpy(), ya.numpy())  # same shuffle order
    assert float(np.abs(xp.numpy() - xa.numpy()).mean()) > 0.05


def test_unprepared_dataset_raises_at_once(tmp_path):
    with pytest.raises(data.DataError, match="tfds build cifar10"):
        data.load("cifar10", 32, data_dir=str(tmp_path))
