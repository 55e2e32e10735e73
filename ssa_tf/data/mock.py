"""Mocked TFDS data with real metadata: the loaders' own code path, without the data.

For tests and for throughput measurements of the ImageNet pipeline
(``benchmarks/data_bench.py --mock``); never used by a training run.
"""

from __future__ import annotations

import contextlib


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
