"""Shared test settings: Keras must not write into the user's home."""

import os
import tempfile

os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "ssa_tf_test_keras_home"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# (OpenBLAS's spinning threads once made the SVDs of model construction 15x slower on a
# loaded 2-core machine; the library now runs its factor algebra on one BLAS thread
# itself, ssa_tf.nn.svd.serial_blas, so tests see what users see)

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


def feedback_routes(rule):
    """None (the rule's default route) and every route ``rule`` takes."""
    from ssa_tf.methods import registry
    return (None, *registry.get(rule).choices.get("feedback", ()))


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


# --------------------------------------------------------------------------
# The order pytest-xdist hands the files out in (README's test command: -n 2 --dist
# loadfile, each file on one worker). xdist's own order, most tests first, left the
# files of a few long tests (the multi-worker run, the kill -9 run) for last, one
# worker running them while the other idled; the longest files first leave only
# short ones for the end (a worker takes the next file as it finishes one).
# Each file's CPU seconds (measured on the 2-core development machine, under load) in
# the comments; a file not named here follows these, in name order.
# --------------------------------------------------------------------------

LONGEST_FIRST = (
    "test_multi_worker.py",  # 80: five training processes, two of them killed
    "test_model.py",  # 70
    "test_reliability.py",  # 60: a kill -9 and a resume
    "test_cli.py",  # 55
    "test_locality_leaks.py",  # 45
    "test_loop.py",  # 40: 2 logical CPUs, eight trainings in one process
    "test_rank.py",  # 40
    "test_tuning.py",  # 35: the shared two-trial search (40 with test_tuning_report.py)
    "test_finished_runs.py",  # 35
    "test_export_script.py",  # 30
    "test_bad_input.py",  # 30
    "test_locality.py",  # 30
    "test_replay.py",  # 25
    "test_user.py",  # 20
    "test_data.py",  # 15 (25 with test_data_preparation.py)
    "test_data_preparation.py",  # 10: an ImageNet build from tars and an epoch
    "test_tuning_report.py",  # 5
)


SHORT_RUN = ["data.dataset=synthetic", "data.synthetic_shape=8,8,3",
             "data.max_train_examples=256", "train.batch_size=32", "train.epochs=3",
             "model.model=smallconv", "runtime.progress=none", "seed=1"]


def short_run(workdir, *sets):
    """(summary, every trained weight in one vector, by path) of a 3-epoch run through
    ``run.train`` with ``SHORT_RUN`` and ``sets``, from its saved ``model.keras``."""
    import keras
    import numpy as np

    from ssa_tf.config import RunConfig
    from ssa_tf.training import run

    keras.backend.clear_session(free_memory=False)
    cfg = RunConfig().with_overrides([*SHORT_RUN, f"runtime.workdir={workdir}", *sets])
    summary = run.train(cfg, verbose=0)
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    weights = sorted(model.trainable_weights, key=lambda v: v.path)
    return summary, np.concatenate([v.numpy().ravel() for v in weights])


def assert_runs_agree(one, other, moved_at_most, rtol):
    """Two ``short_run`` results: not the same run (the weights moved apart, by
    every weight together: a small bias's own sign can flip under Adam's normalized steps),
    yet within ``moved_at_most`` of each other and their logged losses within ``rtol``."""
    import numpy as np

    (a, wa), (b, wb) = one, other
    moved = float(np.linalg.norm(wa - wb) / np.linalg.norm(wa))
    assert 1e-5 < moved < moved_at_most, moved
    for key in ("loss", "val_loss"):
        assert len(a["history"][key]) == len(b["history"][key]) == 3
        np.testing.assert_allclose(b["history"][key], a["history"][key], rtol=rtol)


def pytest_configure(config):
    # hand the files out in the order pytest_collection_modifyitems leaves them (xdist
    # would sort them by their number of tests); the option exists with pytest-xdist
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable sort
