"""The deploy script, export/to_onnx.py, through a real process: export, parity check,
every mistake in one line with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import keras

from conftest import REPO, require_export

require_export()
from ssa_tf.export import config as export_config  # noqa: E402
from ssa_tf.export import deploy as export  # noqa: E402
from ssa_tf.export.config import ExportConfig, UsageError  # noqa: E402
from ssa_tf.training.model import SSAModel  # noqa: E402

SCRIPT = os.path.join(REPO, "export", "to_onnx.py")
ATOL = 1e-5  # round trips on O(1) outputs: float32 rounding only


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A finished run: an SSA mlp on the embedded MNIST sample, one layer cut to rank 8."""
    path = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(6)
    model = SSAModel("mlp", (28, 28, 1), 10, rule="ssa", norm="layer", seed=6,
                     head_init="glorot")  # a zero head would make every logit 0
    {l.name: l for l in model.svd_layers()}["m1_dense"].truncate(8)
    model.save(path / "model.keras")
    (path / "config.json").write_text(json.dumps({"dataset": "mnist5k", "data_dir": None}))
    return path


def run_script(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_script_exports_verifies_and_reports(workdir, tmp_path):
    out, saved = tmp_path / "model.onnx", tmp_path / "saved"
    result = run_script(f"--workdir={workdir}", f"--output={out}", f"--saved_model={saved}",
                        "--latency_runs=3")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert out.is_file() and (saved / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "saved"]  # no leftovers
    text = result.stdout
    assert "m1_dense" in text and "factored" in text and "dense (all merged)" in text
    assert "top-1 identical" in text and "mnist5k:test" in text
    # raw pixels in: the training normalization is folded into the export, and said
    assert "input: raw pixels in [0, 255], (batch, 28, 28, 1) float32" in text
    import onnx
    proto = onnx.load_from_string(out.read_bytes())
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ssa_tf.input.values"] == "raw pixels in [0, 255]"
    assert meta["ssa_tf.dataset"] == "mnist5k" and meta["ssa_tf.classes"] == "10"
    assert "33.3285" in meta["ssa_tf.input.normalization"]
    # both layer norms lost their mean path to the dense layers before them, and it is said
    assert meta["ssa_tf.layer_norms_folded"] == "2 of 2"
    assert "layer norms with their mean folded into the weight layer before them: 2 of 2" in text
    assert sum(n.op_type == "ReduceMean" for n in proto.graph.node) == 2
    # the file on disk is the verified one: real digits as pixels, against the SSA
    # model (saved before the input contract) fed the normalized tensors it trained on
    from ssa_tf import data
    pixels = data.embedded_arrays()[2][:16]
    assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.max() > 200
    session = export.onnx_session(out.read_bytes())
    model = keras.models.load_model(workdir / "model.keras")
    normalized = (pixels - 33.3285) / 78.5655
    np.testing.assert_allclose(export.run_onnx(session, pixels.astype(np.float32)),
                               model(normalized), atol=1e-4)
    # --input=normalized keeps the old contract; --nofold_norms keeps tf2onnx's norms
    out2 = tmp_path / "normalized.onnx"
    again = run_script(f"--workdir={workdir}", f"--output={out2}", "--input=normalized",
                       "--latency_runs=1", "--nofold_norms")
    assert again.returncode == 0, again.stderr
    plain = onnx.load_from_string(out2.read_bytes())
    assert "ssa_tf.layer_norms_folded" not in {p.key for p in plain.metadata_props}
    assert sum(n.op_type == "ReduceMean" for n in plain.graph.node) == 4
    assert "layer norms with their mean folded" not in again.stdout
    np.testing.assert_allclose(export.run_onnx(export.onnx_session(out2.read_bytes()),
                                               normalized), model(normalized), atol=1e-4)


def test_model_keras_and_its_onnx_take_the_same_raw_pixels(tmp_path):
    """One input contract. A run's model.keras normalizes its own input,
    so it and its ONNX export agree on the same raw 0-255 pixels (top-1 and logits)."""
    from ssa_tf import data

    workdir = tmp_path / "run"
    workdir.mkdir()
    keras.utils.set_random_seed(7)
    model = SSAModel("mlp", (28, 28, 1), 10, rule="ssa", seed=7, head_init="glorot",
                     input_stats=data.input_normalization("mnist5k"))
    model.save(workdir / "model.keras")
    (workdir / "config.json").write_text(json.dumps({"dataset": "mnist5k", "data_dir": None}))
    out = tmp_path / "model.onnx"
    result = run_script(f"--workdir={workdir}", f"--output={out}", "--latency_runs=1")
    assert result.returncode == 0, result.stderr
    assert "normalization inside the model (as in model.keras)" in result.stdout
    pixels = data.embedded_arrays()[2][:64].astype(np.float32)  # raw, 0-255
    loaded = keras.models.load_model(workdir / "model.keras")
    keras_logits = np.asarray(loaded.predict(pixels, verbose=0))
    onnx_logits = export.run_onnx(export.onnx_session(out.read_bytes()), pixels)
    assert np.max(np.abs(keras_logits - onnx_logits)) < 1e-4
    np.testing.assert_array_equal(keras_logits.argmax(1), onnx_logits.argmax(1))
    assert keras_logits.std() > 0.1  # real, distinct logits (a glorot head)
    # a model that normalizes itself has one contract: raw pixels. In process (a second
    # export process cost a TensorFlow start): the script turns export_run's UsageError
    # into exit 2 and that one line, as test_script_unmergeable_layer checks
    cfg = ExportConfig(workdir=str(workdir), output=str(tmp_path / "n.onnx"),
                       input="normalized", latency_runs=1)
    assert export_config.validate(cfg) is None  # the flags pass; the model refuses
    with pytest.raises(UsageError, match="normalizes them itself"):
        export.export_run(cfg, log=lambda *_: None)
    assert not (tmp_path / "n.onnx").exists()


def test_a_measured_export_says_what_it_timed_and_writes_the_fastest(workdir, tmp_path):
    # real timings: which candidate wins is the machine's, but the written model is the
    # one named, it computes the run's function, and the choice is said with its times
    lines = []
    cfg = ExportConfig(workdir=str(workdir), output=str(tmp_path / "m.onnx"), form="measured",
                       latency_runs=1)
    result = export.export_run(cfg, log=lines.append)
    said = [l for l in lines if l.startswith("form measured: ")]
    assert len(said) == 1 and "(batches 1 / 8)" in said[0], lines
    chosen = said[0].rsplit(": ", 1)[1]
    assert chosen in ("per layer", "merged", "factored")
    forms = {r.form for r in result.records}
    assert forms == {"merged"} if chosen == "merged" else (
        forms == {"factored"} if chosen == "factored" else forms <= {"merged", "factored"})
    assert result.onnx_check["max_abs_diff"] < 1e-4 and (tmp_path / "m.onnx").is_file()


def test_export_run_leaves_nothing_when_parity_fails(workdir, tmp_path, monkeypatch):
    real = export.run_onnx
    monkeypatch.setattr(export, "run_onnx", lambda s, x: real(s, x) + 1e-3)
    cfg = ExportConfig(workdir=str(workdir), output=str(tmp_path / "m.onnx"),
                       saved_model=str(tmp_path / "sm"), latency_runs=1)
    with pytest.raises(export.ParityError, match="nothing was written"):
        export.export_run(cfg, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_export_run_fails_clearly_without_its_dataset(workdir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((workdir / "model.keras").read_bytes())
    (run / "config.json").write_text(json.dumps({"dataset": "cifar10", "data_dir": str(tmp_path)}))
    cfg = ExportConfig(workdir=str(run), output=str(tmp_path / "m.onnx"), latency_runs=1)
    with pytest.raises(UsageError, match="tfds build cifar10"):
        export.export_run(cfg, log=lambda *_: None)
    assert not (tmp_path / "m.onnx").exists()


def _bad_workdirs(base, workdir):
    empty = base / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    full = base / "full"
    full.mkdir()
    (full / "x").write_text("")
    return {"empty": empty, "full": full}


@pytest.mark.parametrize("case,needle", [
    ("no_model", "no model in --workdir"),
    ("no_workdir", "is not a folder"),
    ("no_output", "--output is required"),
    ("bad_form", "auto, merged, factored"),
    ("bad_opset", "--opset must be in 13..18"),
    ("missing_folder", "does not exist"),
    ("saved_model_exists", "already exists"),
    ("unfinished", "is unfinished (its last checkpoint: epoch 1)"),
])
def test_export_mistakes_are_one_line_and_touch_nothing(case, needle, workdir, tmp_path):
    dirs = _bad_workdirs(tmp_path, workdir)
    out = str(tmp_path / "m.onnx")
    unfinished = tmp_path / "unfinished"
    (unfinished / "backup" / "local" / "epoch-1").mkdir(parents=True)
    (unfinished / "backup" / "local" / "epoch-1" / "state.json").write_text("{}")
    (unfinished / "config.json").write_text(json.dumps({"dataset": "mnist5k"}))
    kw = {
        "no_model": dict(workdir=str(dirs["empty"]), output=out),
        "no_workdir": dict(workdir=str(tmp_path / "nope"), output=out),
        "no_output": dict(workdir=str(workdir), output=None),
        "bad_form": dict(workdir=str(workdir), output=out, form="lowrank"),
        "bad_opset": dict(workdir=str(workdir), output=out, opset=99),
        "missing_folder": dict(workdir=str(workdir), output=str(tmp_path / "no" / "m.onnx")),
        "saved_model_exists": dict(workdir=str(workdir), output=out,
                                   saved_model=str(dirs["full"])),
        "unfinished": dict(workdir=str(unfinished), output=out),
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    problem = export_config.validate(ExportConfig(**kw))
    assert problem and needle in problem and "\n" not in problem, problem
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_script_mistake_exits_2_with_one_line_before_tensorflow(workdir, tmp_path):
    result = run_script(f"--workdir={workdir}", f"--output={tmp_path / 'm.onnx'}",
                        "--form=lowrank", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "auto, merged, factored" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_script_read_only_output_folder(workdir, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through 0o555; an immutable folder stops it
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root and chattr +i is unavailable: no read-only folder")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        result = run_script(f"--workdir={workdir}", f"--output={folder / 'm.onnx'}", timeout=60)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot write in folder" in lines[0], result.stderr
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(undo, check=True)


def test_script_corrupt_model(workdir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((workdir / "model.keras").read_bytes()[:2000])
    (run / "config.json").write_text((workdir / "config.json").read_text())
    result = run_script(f"--workdir={run}", f"--output={tmp_path / 'm.onnx'}", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a .keras zip archive" in lines[0], result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_unreadable_model_archive_is_a_usage_error(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:  # a zip, but not a Keras model
        z.writestr("config.json", "{not json")
    with pytest.raises(UsageError, match="cannot load model"):
        export.load_run_model(str(path))


def test_script_unmergeable_layer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    inp = keras.Input((28, 28))
    x = keras.layers.Flatten()(keras.layers.Conv1D(4, 3, name="conv1d_layer")(inp))
    keras.Model(inp, keras.layers.Dense(10)(x)).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "mnist5k"}))
    result = run_script(f"--workdir={run}", f"--output={tmp_path / 'm.onnx'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'conv1d_layer' of type Conv1D cannot be merged" in lines[0], \
        result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_script_on_an_interrupted_run_says_it_resumes(tmp_path):
    """The export of a run stopped by Ctrl-C (checkpoints, no model)
    says, in one line, that the run resumes; nothing is written."""
    from conftest import files, one_line

    run = tmp_path / "run"
    (run / "backup" / "local" / "epoch-1").mkdir(parents=True)
    (run / "backup" / "local" / "epoch-1" / "state.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"dataset": "mnist5k"}))
    before = files(tmp_path)
    line = one_line(run_script(f"--workdir={run}", f"--output={tmp_path / 'm.onnx'}",
                               timeout=60))
    assert "is unfinished (its last checkpoint: epoch 1)" in line
    assert "run its training command again to resume" in line
    assert files(tmp_path) == before
