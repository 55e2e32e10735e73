"""ImageNet (ILSVRC-2012): JPEG bytes decoded inside tf.data, never cached (140 GB decoded)."""

from __future__ import annotations

from ssa_tf.data.core import finish, make_spec, tfds_splits, with_seeds, count_examples


IMAGENET_SIZE = 224


# evaluation: resize the short side to 256, center-crop 224 (the same ratio at other sizes)
IMAGENET_RESIZE_RATIO = 256 / 224


# the torchvision/fb.resnet recipe the paper's "color jittering" refers to
IMAGENET_JITTER = 0.4  # brightness, contrast and saturation factors in [0.6, 1.4]


# ImageNet training-set statistics on the [0, 1] scale
IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


SHUFFLE_BUFFER = 10_000


def imagenet_train_image(jpeg, seeds, image_size):
    """Random-resized crop (area 8-100%, aspect 3/4-4/3), flip, color jitter; raw pixels out.

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
    return image * 255.0  # raw pixel scale; the model normalizes


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
    """Resize the short side to 256/224 * image_size, center-crop image_size (raw pixels)."""
    import tensorflow as tf

    image = tf.io.decode_jpeg(jpeg, channels=3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    short = round(image_size * IMAGENET_RESIZE_RATIO)
    new_hw = tf.cast(tf.round(hw * short / tf.reduce_min(hw)), tf.int32)
    new_hw = tf.maximum(new_hw, image_size)  # rounding must not leave a side short of the crop
    image = tf.image.resize(image, new_hw, antialias=True)
    top, left = (new_hw[0] - image_size) // 2, (new_hw[1] - image_size) // 2
    # raw pixels; the model normalizes them
    return tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)


def load_imagenet(builder, batch_size, seed, augment, max_train_examples, validation_split,
                   image_size):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    splits = tfds_splits(builder, validation_split, max_train_examples)
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
        return finish(ds, batch_size)

    n = count_examples(builder, splits[0])
    train = read(splits[0], True).shuffle(min(n, SHUFFLE_BUFFER), seed=seed,
                                          reshuffle_each_iteration=True)
    train = with_seeds(train, seed).map(train_fn, num_parallel_calls=tf.data.AUTOTUNE)
    train = finish(train, batch_size).with_options(options)
    return make_spec(builder, splits, (train, evaluation(splits[1]), evaluation(splits[2])),
                 (image_size, image_size, 3), int(builder.info.features["label"].num_classes))
