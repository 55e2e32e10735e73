"""Shared test settings: Keras must not write into the user's home."""

import os
import tempfile

os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "ssa_tf_test_keras_home"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenBLAS's spinning threads made the SVDs of model construction 15x slower
# on a loaded 2-core machine (resnet32 at 8x8: 82 s instead of 2.7 s)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the prepared real CIFAR-10 (../shared/tfds beside the clone); absent in a user's clone
TFDS_DIR = os.environ.get("SSA_TF_TFDS_DIR", os.path.join(REPO, "..", "shared", "tfds"))


def require_export():
    """Skip the calling test module where the export extra is not installed."""
    import pytest

    for module in ("onnx", "onnxruntime", "tf2onnx"):
        pytest.importorskip(module, reason="export needs tf2onnx, onnx and onnxruntime "
                            "(pip install -e '.[cpu,export]'; the pins are in pyproject.toml)")


def cifar10_available():
    return os.path.isdir(os.path.join(TFDS_DIR, "cifar10"))


# --------------------------------------------------------------------------
# The command lines through a real process (test_cli.py, test_bad_input.py, ...).
# --------------------------------------------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402

CLIS = {
    "train": [sys.executable, "-m", "ssa_tf.train"],
    "search": [sys.executable, os.path.join("tuning", "search.py")],
    "export": [sys.executable, os.path.join("export", "to_onnx.py")],
}


def run_cli(cli, *args, timeout=120, env=None, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([*CLIS[cli], *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def one_line(result, status=2):
    """The one ``error:`` line, last on stderr (TensorFlow, once started, may log
    a notice or two before it; never a traceback)."""
    assert result.returncode == status, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return errors[0]


def files(folder):
    """Every path under ``folder``, relative, sorted ([] if it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
