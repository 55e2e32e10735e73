"""CIFAR-10 and CIFAR-100 from a prepared TFDS folder: the paper's augmentation; raw pixels out.

The pipelines give float32 pixels in [0, 255]; the model normalizes them itself
(``SSAModel(input_stats=...)``, the one input contract of every saved model)."""

from __future__ import annotations

from ssa_tf.data.core import finish, make_spec, maybe_cache, tfds_splits, with_seeds, count_examples


# per-channel statistics of the CIFAR training sets (0-255 scale)
CIFAR_MEAN = {"cifar10": (125.3, 123.0, 113.9), "cifar100": (129.3, 124.1, 112.4)}


CIFAR_STD = {"cifar10": (63.0, 62.1, 66.7), "cifar100": (68.2, 65.4, 70.4)}


CIFAR_PAD = 4


def load_cifar(builder, batch_size, seed, augment, max_train_examples, validation_split, label):
    import tensorflow as tf

    name = builder.name
    key = "coarse_label" if label == "coarse" else "label"
    splits = tfds_splits(builder, validation_split, max_train_examples)
    shape = tuple(int(d) for d in builder.info.features["image"].shape)

    def read(split):
        # cache the raw uint8 images, before the random parts
        ds = builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex["image"], ex[key]), num_parallel_calls=tf.data.AUTOTUNE)
        return maybe_cache(ds, builder, split)

    def normalize(image, label_):  # to float32 pixels; the model normalizes them
        return tf.cast(image, tf.float32), label_

    def augment_fn(example, seeds):
        # supplementary §2: random 32x32 crop after 4-pixel zero padding of the raw
        # image (black border, as torchvision's RandomCrop(32, padding=4)), flip
        image, label_ = example
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
        p = CIFAR_PAD
        image = tf.pad(image, [[p, p], [p, p], [0, 0]])
        image = tf.image.stateless_random_crop(image, shape, seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return normalize(image, label_)

    def evaluation(split):
        if split is None:
            return None
        return finish(read(split).map(normalize, num_parallel_calls=tf.data.AUTOTUNE), batch_size)

    train = read(splits[0]).shuffle(min(count_examples(builder, splits[0]), 50000), seed=seed,
                                    reshuffle_each_iteration=True)
    if augment:
        train = with_seeds(train, seed).map(augment_fn, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        train = train.map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    pipelines = (finish(train, batch_size), evaluation(splits[1]), evaluation(splits[2]))
    return make_spec(builder, splits, pipelines, shape,
                 int(builder.info.features[key].num_classes))
