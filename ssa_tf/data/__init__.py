"""Input pipelines: the embedded MNIST sample, synthetic tensors and TFDS datasets, offline-safe.

Every loader returns a ``DatasetSpec`` with batched ``tf.data`` pipelines for
training, validation and the final evaluation, and the facts the model needs
(input shape, classes, which split each number comes from). Nothing is ever
downloaded (``core``); TensorFlow is imported lazily, inside the functions
that build pipelines, so that the availability check runs before it starts.

    spec = load("cifar10", 128, data_dir="DIR", validation_split=0.1)
    model.fit(spec.train, validation_data=spec.validation)
    model.evaluate(spec.test)  # the number to report, once, from spec.test_split
"""

from __future__ import annotations

from ssa_tf.data.cifar import load_cifar
from ssa_tf.data.core import (DATASETS, EMBEDDED, FINAL_SPLIT, IMAGENET_TARS, LABELS, SYNTHETIC,
                              TFDS_DATASETS, DataError, DatasetSpec, carve, check_available, default_data_dir,
                              default_manual_dir, not_prepared_message, prepared_builder,
                              slice_name, without_autotune)
from ssa_tf.data.imagenet import (IMAGENET_SIZE, color_jitter, imagenet_eval_image,
                                  imagenet_train_image, load_imagenet)
from ssa_tf.data.small import embedded_arrays, load_embedded, load_synthetic

__all__ = ["DATASETS", "DataError", "IMAGENET_TARS", "DatasetSpec", "FINAL_SPLIT", "LABELS", "carve",
           "check_available", "color_jitter", "default_data_dir", "default_manual_dir",
           "embedded_arrays", "imagenet_eval_image", "input_normalization", "imagenet_train_image", "load",
           "not_prepared_message", "slice_name"]


def load(name, batch_size, data_dir=None, seed=1, augment=True, max_train_examples=None, *,
         validation_split=0.0, label="fine", manual_dir=None, image_size=None,
         synthetic_shape=(32, 32, 3), synthetic_classes=10, autotune=False) -> DatasetSpec:
    """The pipelines of dataset ``name``.

    ``validation_split`` holds out that fraction of the end of train as
    ``spec.validation``; ``max_train_examples`` then keeps only the first N
    of what is left. ``label`` picks CIFAR-100's fine or coarse labels;
    ``image_size`` is ImageNet's crop (224). ``manual_dir`` holds the
    ImageNet tars (default ``<data_dir>/downloads/manual``). ``autotune`` leaves
    tf.data's autotuning on (``core.without_autotune`` says why it is off).
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if label not in LABELS or (label == "coarse" and name != "cifar100"):
        raise ValueError(f"label={label!r}: only cifar100 has coarse labels")
    if image_size is not None and name != "imagenet2012":
        raise ValueError(f"image_size applies to imagenet2012 only, not {name!r}")
    stats = input_normalization(name)  # raises DataError for an unknown name
    if name == EMBEDDED:
        spec = load_embedded(batch_size, seed, max_train_examples, validation_split)
    elif name == SYNTHETIC:
        spec = load_synthetic(batch_size, seed, max_train_examples, validation_split,
                              tuple(int(d) for d in synthetic_shape), int(synthetic_classes))
    else:
        data_dir = data_dir or default_data_dir()
        builder = prepared_builder(name, data_dir, manual_dir)
        if name == "imagenet2012":
            spec = load_imagenet(builder, batch_size, seed, augment, max_train_examples,
                                 validation_split, image_size or IMAGENET_SIZE)
        else:
            spec = load_cifar(builder, batch_size, seed, augment, max_train_examples,
                              validation_split, label)
    spec.input_stats = stats
    if not autotune:
        spec.train, spec.test = without_autotune(spec.train), without_autotune(spec.test)
        if spec.validation is not None:
            spec.validation = without_autotune(spec.validation)
    return spec


def input_normalization(name):
    """(mean, std) per channel, in raw pixel units (0-255), that a model of dataset
    ``name`` subtracts and divides by as its first operation (the pipelines give raw
    pixels; ``SSAModel(input_stats=...)``); None for synthetic (already normal)."""
    from ssa_tf.data.cifar import CIFAR_MEAN, CIFAR_STD
    from ssa_tf.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
    from ssa_tf.data.small import MNIST_MEAN, MNIST_STD

    if name == EMBEDDED:
        return (MNIST_MEAN * 255.0,), (MNIST_STD * 255.0,)
    if name in ("cifar10", "cifar100"):
        return tuple(CIFAR_MEAN[name]), tuple(CIFAR_STD[name])
    if name == "imagenet2012":
        return (tuple(m * 255.0 for m in IMAGENET_MEAN),
                tuple(s * 255.0 for s in IMAGENET_STD))
    if name == SYNTHETIC:
        return None
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
