"""Input pipelines: embedded, synthetic, mocked TFDS (cifar100, imagenet2012), the real
prepared CIFAR-10 and a mocked standard `tfds build cifar10`. Preparing the data (a real
ImageNet build from tiny tars) and the offline failures are tests/test_data_preparation.py."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import TFDS_DIR, cifar10_available
from ssa_tf import data
from ssa_tf.data.cifar import CIFAR_MEAN, CIFAR_STD
from ssa_tf.data.mock import mock_prepared


def batches(ds):
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds))
    return np.concatenate(xs), np.concatenate(ys)


def stages(ds):
    """The names of a pipeline's tf.data stages, last first (its options aside)."""
    names = []
    while ds is not None:
        if type(ds).__name__ != "_OptionsDataset":
            names.append(type(ds).__name__)
        inputs = ds._inputs()
        ds = inputs[0] if inputs else None
    return names


def zero_padded(x, value):
    """Per image: is a whole outer row or column equal to ``value`` (a padded pixel)?"""
    pad = np.all(np.isclose(x, value, atol=1e-4), axis=-1)  # (n, h, w)
    return pad[:, 0].all(1) | pad[:, -1].all(1) | pad[:, :, 0].all(1) | pad[:, :, -1].all(1)


# --------------------------------------------------------------------------
# Embedded, synthetic, split arithmetic.
# --------------------------------------------------------------------------

def test_embedded_split_is_fixed_and_stratified():
    xtr, ytr, xte, yte = data.embedded_arrays()
    assert xtr.shape == (4000, 28, 28, 1) and xte.shape == (1000, 28, 28, 1)
    assert np.bincount(yte).tolist() == [100] * 10
    assert np.bincount(ytr).sum() == 4000 and np.bincount(ytr).min() > 300
    # raw pixels (the model normalizes them: spec.input_stats)
    assert xtr.min() == 0 and xtr.max() == 255 and 25 < float(xtr.mean()) < 45
    again = data.embedded_arrays()
    np.testing.assert_array_equal(again[3], yte)


def test_validation_is_carved_from_the_end_of_train():
    assert data.carve(4000, 0.0, None) == ((0, 4000), None)
    assert data.carve(4000, 0.1, None) == ((0, 3600), (3600, 4000))
    # max_train_examples trims what is left for training, never the validation part
    assert data.carve(4000, 0.1, 1000) == ((0, 1000), (3600, 4000))
    assert data.slice_name("train", (0, 3600), 4000) == "train[:3600]"
    assert data.slice_name("train", (3600, 4000), 4000) == "train[3600:]"
    with pytest.raises(data.DataError, match="validation_split=0.0001"):
        data.carve(4000, 0.0001, None)

    spec = data.load("mnist5k", 500, validation_split=0.1)
    assert (spec.train_examples, spec.validation_examples, spec.test_examples) == (3600, 400, 1000)
    assert (spec.train_split, spec.validation_split, spec.test_split) == (
        "mnist5k:train[:3600]", "mnist5k:train[3600:]", "mnist5k:test")
    _, yv = batches(spec.validation)
    np.testing.assert_array_equal(yv, data.embedded_arrays()[1][3600:])
    # the default keeps the old behaviour: no validation split, validate on test
    plain = data.load("mnist5k", 500)
    assert plain.validation is None and plain.train_split == "mnist5k:train"


def test_synthetic_any_shape_and_class_count():
    spec = data.load("synthetic", 8, synthetic_shape=(5, 7, 2), synthetic_classes=3,
                     max_train_examples=20, validation_split=0.2)
    assert spec.input_shape == (5, 7, 2) and spec.num_classes == 3
    assert (spec.train_examples, spec.validation_examples) == (16, 4)
    assert spec.train_split == "synthetic:train[:16]"
    assert spec.validation_split == "synthetic:train[16:]"
    x, y = batches(spec.train)
    assert x.shape == (16, 5, 7, 2) and x.dtype == np.float32 and y.dtype == np.int64
    assert [b[0].shape[0] for b in spec.train] == [8, 8]
    assert set(y.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(batches(spec.train)[0], x)  # the same tensors every pass
    assert abs(float(x.std()) - 1) < 0.2


# --------------------------------------------------------------------------
# CIFAR-100 on tfds.testing.mock_data.
# --------------------------------------------------------------------------

@pytest.fixture
def mock_cifar100(tmp_path):
    with mock_prepared("cifar100", str(tmp_path), {"train": 64, "test": 64}):
        yield str(tmp_path)


def test_cifar100_pipeline_on_mock_data(mock_cifar100):
    lo, hi = 0.0, 255.0  # raw pixels; the model normalizes them (spec.input_stats)
    spec = data.load("cifar100", 64, data_dir=mock_cifar100, seed=3)
    assert spec.input_stats == (CIFAR_MEAN["cifar100"], CIFAR_STD["cifar100"])
    assert spec.input_shape == (32, 32, 3) and spec.num_classes == 100
    assert (spec.train_split, spec.test_split) == ("cifar100:train", "cifar100:test")
    names = stages(spec.train)
    assert names[0] == "_PrefetchDataset" and "_ParallelMapDataset" in names
    xe, ye = batches(spec.test)
    assert xe.shape == (64, 32, 32, 3) and xe.dtype == np.float32 and ye.dtype == np.int64
    assert np.all(xe >= lo - 1e-5) and np.all(xe <= hi + 1e-5)
    assert 0 <= ye.min() and ye.max() < 100
    np.testing.assert_array_equal(batches(spec.test)[0], xe)  # evaluation is deterministic

    # training: same shuffle with and without augmentation, different pixels
    plain = data.load("cifar100", 64, data_dir=mock_cifar100, seed=3, augment=False)
    xp, yp = batches(plain.train)
    xa, ya = batches(spec.train)
    np.testing.assert_array_equal(yp, ya)
    assert float(np.abs(xp - xa).mean()) > 0.1
    # crops of the raw image padded with zeros (black), not reflected
    assert zero_padded(xa, lo).mean() > 0.8 and not zero_padded(xp, lo).any()
    # a new pass draws new crops
    assert float(np.abs(batches(spec.train)[0] - xa).mean()) > 0.1


@pytest.mark.parametrize("autotune", [False, True])
def test_every_pipeline_runs_without_autotuning_unless_asked(mock_cifar100, autotune):
    # with it on, deleting an epoch's iterator sometimes waited for the autotuning
    # thread's next wake-up (data.core.without_autotune)
    specs = [data.load("mnist5k", 32, validation_split=0.1, autotune=autotune),
             data.load("synthetic", 32, validation_split=0.1, max_train_examples=64,
                       autotune=autotune),
             data.load("cifar100", 64, data_dir=mock_cifar100, validation_split=0.5,
                       autotune=autotune)]
    for spec in specs:
        for ds in (spec.train, spec.validation, spec.test):
            assert (ds.options().autotune.enabled is not False) == autotune, spec.name
            if not autotune:  # the same batches either way
                assert batches(ds)[0].shape[1:] == spec.input_shape


def test_cifar100_coarse_labels(mock_cifar100):
    spec = data.load("cifar100", 64, data_dir=mock_cifar100, label="coarse")
    assert spec.num_classes == 20
    assert batches(spec.test)[1].max() < 20
    with pytest.raises(ValueError, match="coarse"):
        data.load("cifar10", 64, data_dir=mock_cifar100, label="coarse")


# --------------------------------------------------------------------------
# ImageNet on tfds.testing.mock_data (JPEG bytes, random sizes).
# --------------------------------------------------------------------------

def test_imagenet_pipeline_on_mock_data(tmp_path):
    with mock_prepared("imagenet2012", str(tmp_path), {"train": 24, "validation": 24}):
        spec = data.load("imagenet2012", 24, data_dir=str(tmp_path), image_size=32)
        plain = data.load("imagenet2012", 24, data_dir=str(tmp_path), image_size=32, augment=False)
        assert spec.input_shape == (32, 32, 3) and spec.num_classes == 1000
        assert (spec.train_split, spec.test_split) == ("imagenet2012:train",
                                                       "imagenet2012:validation")
        names = stages(spec.train)
        assert names[0] == "_PrefetchDataset" and "_ParallelMapDataset" in names
        assert spec.train.options().deterministic is False  # throughput first
        xe, ye = batches(spec.test)
        xa, _ = batches(spec.train)
        xp, _ = batches(plain.train)
        xe2, _ = batches(spec.test)
    assert xe.shape == xa.shape == (24, 32, 32, 3) and xe.dtype == xa.dtype == np.float32
    for x in (xe, xa):  # raw pixels in [0, 255]; the model normalizes them
        assert np.all(x >= -1e-3) and np.all(x <= 255 + 1e-3) and x.max() > 1.5
    assert 0 <= ye.min() and ye.max() < 1000
    np.testing.assert_array_equal(xe, xe2)  # evaluation is deterministic
    # the mock yields the same examples in every split: without augmentation the
    # training images are the evaluation images (in shuffled order), with it none is
    distance = lambda a, b: np.abs(a[:, None] - b[None]).mean(axis=(2, 3, 4)).min(1)  # noqa: E731
    assert np.all(distance(xp, xe) < 1e-5)
    assert np.all(distance(xa, xe) > 0.05 * 255)


def test_imagenet_evaluation_is_short_side_256_then_center_224():
    image = np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=100)
    decoded = tf.io.decode_jpeg(jpeg).numpy().astype(np.float32)
    out = data.imagenet_eval_image(jpeg, 224).numpy()
    np.testing.assert_allclose(out, decoded[16:240, 80:304], atol=1e-2)  # raw pixels
    # another size keeps the 256/224 ratio and stays exactly image_size square
    assert data.imagenet_eval_image(jpeg, 32).shape == (32, 32, 3)


def test_imagenet_training_crop_flip_jitter_are_random_and_seeded():
    image = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(image)
    a = data.imagenet_train_image(jpeg, tf.constant([1, 2], tf.int64), 32).numpy()
    b = data.imagenet_train_image(jpeg, tf.constant([1, 3], tf.int64), 32).numpy()
    again = data.imagenet_train_image(jpeg, tf.constant([1, 2], tf.int64), 32).numpy()
    assert a.shape == (32, 32, 3) and float(np.abs(a - b).mean()) > 0.05
    np.testing.assert_array_equal(a, again)


# --------------------------------------------------------------------------
# The real prepared CIFAR-10.
# --------------------------------------------------------------------------

needs_cifar = pytest.mark.skipif(not cifar10_available(),
                                 reason=f"no prepared CIFAR-10 at {TFDS_DIR}")


@needs_cifar
def test_cifar10_from_the_prepared_folder():
    spec = data.load("cifar10", 128, data_dir=TFDS_DIR, max_train_examples=1000)
    assert spec.input_shape == (32, 32, 3) and spec.num_classes == 10
    assert spec.train_examples == 1000 and spec.test_examples == 5000
    assert (spec.train_split, spec.test_split) == ("cifar10:train[:1000]", "cifar10:test")
    x, y = next(iter(spec.test))
    x = x.numpy()
    assert x.shape == (128, 32, 32, 3) and x.dtype == np.float32
    # raw pixels, which the model normalizes with the statistics the spec carries
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 200
    assert spec.input_stats == (CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"])
    mean, std = (np.array(v) for v in spec.input_stats)
    assert np.all(np.abs(((x - mean) / std).mean(axis=(0, 1, 2))) < 0.2)
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
    assert zero_padded(xa.numpy(), np.zeros(3)).mean() > 0.8  # black borders


@needs_cifar
def test_cifar10_validation_split():
    spec = data.load("cifar10", 500, data_dir=TFDS_DIR, validation_split=0.1,
                     max_train_examples=500)
    assert (spec.train_split, spec.validation_split, spec.test_split) == (
        "cifar10:train[:500]", "cifar10:train[40500:]", "cifar10:test")
    assert (spec.train_examples, spec.validation_examples) == (500, 4500)
    xv, yv = next(iter(spec.validation))
    assert xv.shape == (500, 32, 32, 3) and int(yv.numpy().max()) <= 9


# --------------------------------------------------------------------------
# A standard `tfds build cifar10` (50,000 / 10,000), mocked: what a user's clone reads.
# --------------------------------------------------------------------------

def test_standard_tfds_cifar10_validates_on_train_45000_and_tests_on_the_official_test(
        tmp_path):
    """On the layout `tfds build cifar10` makes, a run with the
    default settings trains on train[:45000], validates on train[45000:] (carved from
    train) and takes its final number from the official 10,000-image test split."""
    from ssa_tf import config as cfg_lib
    from ssa_tf.training import run

    # each split's examples carry their own label, so a pipeline shows where it reads
    labels = {"train[:45000]": 3, "train[45000:]": 5, "test": 7}
    asked = []

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        asked.append(str(split))
        label = tf.constant(labels[str(split)], tf.int64)
        return tf.data.Dataset.range(8).map(lambda i: {
            "image": tf.fill((32, 32, 3), tf.cast(i, tf.uint8)), "label": label,
            "id": tf.strings.as_string(i)})

    data_dir = str(tmp_path / "tfds")
    with mock_prepared("cifar10", data_dir, {"train": 50000, "test": 10000},
                       as_dataset_fn=as_dataset):
        data.check_available("cifar10", data_dir)  # what the CLI checks before TensorFlow
        cfg = cfg_lib.RunConfig().with_overrides([
            "data.dataset=cifar10", f"data.data_dir={data_dir}", "model.model=mlp",
            "train.epochs=1", "train.batch_size=4", f"runtime.workdir={tmp_path / 'w'}"])
        assert cfg.data.validation_split == 0.1  # the default, not asked for
        assert cfg_lib.validate(cfg) is None
        spec = run.load_data(cfg)
        assert (spec.train_split, spec.validation_split, spec.test_split) == (
            "cifar10:train[:45000]", "cifar10:train[45000:]", "cifar10:test")
        assert (spec.train_examples, spec.validation_examples, spec.test_examples) == (
            45000, 5000, 10000)
        assert set(batches(spec.train)[1].tolist()) == {3}
        assert set(batches(spec.validation)[1].tolist()) == {5}  # never the test split
        xe, ye = batches(spec.test)
        assert set(ye.tolist()) == {7}
        # raw pixels out: image i is all i
        pixels = np.arange(8, dtype=np.float32)[:, None, None, None]
        np.testing.assert_allclose(xe, np.broadcast_to(pixels, xe.shape), atol=1e-5)
        summary = run.train(cfg, verbose=0)
    assert sorted(set(asked)) == sorted(labels)
    assert summary["train_split"] == "cifar10:train[:45000]"
    assert summary["validation_split"] == "cifar10:train[45000:]"
    assert summary["test_split"] == "cifar10:test"
    assert "val_accuracy" in summary["history"]


def test_a_run_loads_its_pipelines_without_autotuning_unless_its_setting_says():
    from ssa_tf.config import RunConfig
    from ssa_tf.training.run import load_data

    for value in (False, True):
        cfg = RunConfig().replace({"data.dataset": "mnist5k", "data.autotune": value})
        spec = load_data(cfg.resolved())
        assert (spec.train.options().autotune.enabled is not False) == value
