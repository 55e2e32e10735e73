"""Preparing the datasets and the offline failures: an unprepared dataset or missing
ImageNet tars fail at once in one line that names the data and the fix (before TensorFlow
starts, on the command line), a real ImageNet build by the CLI from tiny tars followed by a
training epoch, and the pinned TFDS versions. The pipelines are tests/test_data.py."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from ssa_tf import data
from ssa_tf.data.core import TFDS_PACKAGE, TFDS_VERSIONS


# --------------------------------------------------------------------------
# Offline safety: fast, one line, names the data and the fix.
# --------------------------------------------------------------------------

def run_cli(*args, timeout=120):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "ssa_tf.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_unprepared_dataset_raises_at_once(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(data.DataError) as e:
        data.load(name, 32, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 2
    message = str(e.value)
    assert f"'{name}'" in message and str(tmp_path) in message
    assert f"`tfds build {name} --data_dir={tmp_path}`" in message and "\n" not in message


def test_imagenet_without_tars_names_the_missing_files(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(data.DataError) as e:
        data.check_available("imagenet2012", str(tmp_path), str(manual))
    message = str(e.value)
    for tar in data.IMAGENET_TARS:
        assert str(manual / tar) in message
    assert f"`tfds build imagenet2012 --data_dir={tmp_path} --manual_dir={manual}`" in message
    # the setting as this project's command line spells it (--manual_dir is tfds's flag)
    assert "--set data.manual_dir=DIR" in message and "point --manual_dir" not in message
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(data.DataError) as e:
        data.load("imagenet2012", 32, data_dir=str(tmp_path), manual_dir=str(manual))
    assert str(manual / "ILSVRC2012_img_train.tar") in str(e.value)
    assert "ILSVRC2012_img_val.tar," not in str(e.value)
    # the default manual_dir is TFDS's own
    with pytest.raises(data.DataError, match=str(tmp_path / "downloads" / "manual")):
        data.check_available("imagenet2012", str(tmp_path))


def test_cli_imagenet_without_data_exits_2_before_tensorflow(tmp_path):
    start = time.perf_counter()
    result = run_cli("--dataset=imagenet2012", f"--data_dir={tmp_path}",
                     f"--workdir={tmp_path / 'w'}", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "imagenet2012" in lines[0] and "ILSVRC2012_img_train.tar" in lines[0]
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in lines[0]
    assert not (tmp_path / "w").exists()
    assert time.perf_counter() - start < 10  # TensorFlow was never imported


# --------------------------------------------------------------------------
# ImageNet for real: TFDS prepares it from the user's tars (tiny ones here).
# --------------------------------------------------------------------------

def _write_tar(path, files):
    with tarfile.open(path, "w") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _jpeg(h, w, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def test_cli_prepares_imagenet_from_the_tars_and_trains(tmp_path):
    manual = tmp_path / "tars"
    manual.mkdir()
    # the training tar holds one tar per class (synset), as ILSVRC2012_img_train.tar does
    classes = {}
    for k, synset in enumerate(["n01440764", "n01443537"]):
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as tar:
            for i in range(4):
                payload = _jpeg(30 + 7 * i, 40, 10 * k + i)
                info = tarfile.TarInfo(f"{synset}_{i}.JPEG")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        classes[f"{synset}.tar"] = inner.getvalue()
    _write_tar(manual / "ILSVRC2012_img_train.tar", classes)
    _write_tar(manual / "ILSVRC2012_img_val.tar",
               {f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(40, 30, 100 + i) for i in range(1, 5)})
    workdir = tmp_path / "run"
    result = run_cli("--dataset=imagenet2012", f"--data_dir={tmp_path / 'tfds'}",
                     f"--set=data.manual_dir={manual}", "--set=data.image_size=16", "--model=mlp",
                     "--rule=ssa", "--epochs=1", "--batch_size=4",
                     "--set=data.validation_split=0.25",
                     f"--workdir={workdir}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["train_split"] == "imagenet2012:train[:6]"
    assert summary["validation_split"] == "imagenet2012:train[6:]"
    assert summary["test_split"] == "imagenet2012:validation"
    assert 0 <= summary["test_accuracy"] <= 1 and "val_accuracy" in summary["history"]
    assert (tmp_path / "tfds" / "imagenet2012").is_dir()


def test_the_versions_checked_before_tensorflow_are_the_ones_tfds_reads():
    import tensorflow_datasets as tfds

    assert tfds.__version__ == TFDS_PACKAGE
    for name, version in TFDS_VERSIONS.items():
        assert str(tfds.builder_cls(name).VERSION) == version


def test_missing_imagenet_tars_do_not_suggest_running_again(tmp_path):
    # "or run this command again to prepare it on first use" read as if
    # rerunning helped while the tars were missing
    from ssa_tf.data.core import not_prepared_message
    message = not_prepared_message("imagenet2012", str(tmp_path))
    assert "ILSVRC2012_img_train.tar" in message and "\n" not in message
    assert "run this command again" not in message
    assert "once the tars are there" in message
