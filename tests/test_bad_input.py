"""Bad input through the real command lines: one line, the right status, nothing left
behind that was not there. (The checks behind the flag messages are unit-tested in
test_config.py; docs/ARCHITECTURE.md, "Exit codes", lists every status. Finished,
unfinished and restarted workdirs: test_finished_runs.py.)"""

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import TFDS_DIR, cifar10_available, files, one_line
from conftest import run_cli as run

MNIST_TINY = ["--model=mlp", "--set=data.max_train_examples=128"]


# --------------------------------------------------------------------------
# Data that cannot be read.
# --------------------------------------------------------------------------

def test_dataset_dir_that_is_a_file(tmp_path):
    not_a_dir = tmp_path / "tfds"
    not_a_dir.write_text("")
    line = one_line(run("train", "--dataset=cifar10", f"--data_dir={not_a_dir}",
                        f"--workdir={tmp_path / 'w'}", timeout=60))
    assert "cifar10" in line and str(not_a_dir) in line
    assert not (tmp_path / "w").exists()


def _copy_cifar10(tmp_path, version="3.0.2"):
    if not cifar10_available():
        pytest.skip(f"the prepared CIFAR-10 is not at {TFDS_DIR} (SSA_TF_TFDS_DIR)")
    target = tmp_path / "tfds" / "cifar10" / version
    shutil.copytree(os.path.join(TFDS_DIR, "cifar10", "3.0.2"), target)
    return tmp_path / "tfds", target


def test_data_prepared_by_another_tfds_version_fails_fast(tmp_path):
    data_dir, _ = _copy_cifar10(tmp_path, version="9.9.9")
    start = time.perf_counter()
    line = one_line(run("train", "--dataset=cifar10", f"--data_dir={data_dir}",
                        f"--workdir={tmp_path / 'w'}", timeout=60))
    assert "version 9.9.9" in line and "reads version 3.0.2" in line and "tfds build" in line
    assert time.perf_counter() - start < 10  # before TensorFlow
    assert not (tmp_path / "w").exists()


def test_truncated_tfrecord_is_one_line_and_leaves_nothing(tmp_path):
    data_dir, folder = _copy_cifar10(tmp_path)
    shard = folder / "cifar10-train.tfrecord-00000-of-00001"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    workdir = tmp_path / "w"
    result = run("train", "--dataset=cifar10", f"--data_dir={data_dir}", f"--workdir={workdir}",
                 timeout=300)
    line = one_line(result)
    assert "cannot be read" in line and "tfds build cifar10" in line
    assert "{{" not in line and "function_node" not in line  # no TensorFlow internals
    # no third-party INFO lines (TensorFlow Datasets logged 8) before the one error line
    assert not [l for l in result.stderr.splitlines() if l[:1] == "I" and l[1:5].isdigit()]
    assert not workdir.exists()


# --------------------------------------------------------------------------
# Workdirs: read-only, in use, a file (finished ones: test_finished_runs.py).
# --------------------------------------------------------------------------

def _immutable(folder):
    """A folder even root cannot write into; the command that undoes it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ["chmod", "755", str(folder)]
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is unavailable: no read-only folder")
    return ["chattr", "-i", str(folder)]


def test_read_only_workdir_and_search_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    undo = _immutable(folder)
    try:
        line = one_line(run("train", f"--workdir={folder / 'run'}", timeout=60))
        assert "not writable" in line and str(folder) in line
        line = one_line(run("search", f"--directory={folder / 'searches'}", timeout=60))
        assert "cannot write in" in line and str(folder) in line
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(undo, check=True)


def test_a_workdir_that_is_a_file_is_named_as_a_file(tmp_path):
    from ssa_tf.preflight import writable_problem

    path = tmp_path / "notes.txt"
    path.write_text("mine")
    line = writable_problem(str(path))
    assert line == f"--workdir={path} is a file, not a folder; name a folder (new or existing)"
    assert path.read_text() == "mine"
    assert writable_problem(str(tmp_path / "new")) is None


def _train_in_process(monkeypatch, workdir, fake_train):
    """``python -m ssa_tf.train --model=mlp --workdir=W`` in this process, with
    ``run.train`` replaced by ``fake_train``; returns the exit status."""
    from absl.testing import flagsaver
    from ssa_tf import train
    from ssa_tf.training import run as run_lib

    monkeypatch.setattr(run_lib, "train", fake_train)
    with flagsaver.flagsaver():
        train.FLAGS(["prog", "--model=mlp", f"--workdir={workdir}"])
        try:
            with pytest.raises(SystemExit) as exit_:
                train.main(["prog"])
        finally:
            train.FLAGS.unparse_flags()
    return exit_.value.code


def test_disk_full_during_the_run_is_reported_as_such(tmp_path, monkeypatch, capsys):
    """A full disk cannot be made on demand here; the run raises what a full
    disk raises and the CLI must say so in one line (in process)."""
    def full(cfg, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "w" / "backup"))

    assert _train_in_process(monkeypatch, tmp_path / "w", full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "backup" in err[0]
    assert not (tmp_path / "w").exists()  # created by the run, removed with nothing in it


def test_workdir_in_use_by_a_live_run(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (workdir / ".lock").write_text(f"{socket.gethostname()} {holder.pid}\n")
        line = one_line(run("train", "--model=mlp", f"--workdir={workdir}", timeout=120))
        assert f"in use by process {holder.pid}" in line
        assert files(workdir) == [".lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()


def test_diverging_run_exits_3_and_keeps_its_checkpoint(tmp_path):
    """A rate of 1e6 makes SSA's local losses non-finite within the second epoch."""
    workdir = tmp_path / "w"
    result = run("train", "--model=mlp", "--epochs=3", "--set=data.max_train_examples=256",
                 "--learning_rate=1e6", "--set=runtime.checkpoint_steps=2",
                 f"--workdir={workdir}", timeout=300)
    line = one_line(result, status=3)
    assert line.startswith("error: training diverged: non-finite value in module ")
    assert "term" in line or "gradient" in line
    assert "last good checkpoint" in line or "no checkpoint" in line
    assert not (workdir / "model.keras").exists() and not (workdir / "summary.json").exists()
    if "last good checkpoint" in line:
        assert list((workdir / "backup" / "local").glob("epoch-*/state.json"))
    assert not (workdir / ".lock").exists()


def test_ctrl_c_exits_130_with_the_resume_hint_and_the_run_resumes(tmp_path):
    workdir = tmp_path / "w"
    # a run far too long to end before the signal (on an idle machine a short one
    # finished between its first checkpoint and the SIGINT); it resumes with fewer
    # epochs, a change a resume allows
    args = [*MNIST_TINY[:1], "--set=data.max_train_examples=512",
            "--set=runtime.checkpoint_steps=2", f"--workdir={workdir}"]
    from conftest import CLIS, REPO
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # the child gets SIGINT's default disposition explicitly, as a process started
    # from a shell has (once, under pytest-xdist, a child ignored its SIGINT)
    proc = subprocess.Popen([*CLIS["train"], *args, "--epochs=1000"], cwd=REPO, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not list(workdir.glob("backup/local/epoch-*/state.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len([l for l in lines if "interrupted" in l]) == 1
    assert "resumes from its checkpoint (epoch " in lines[-1]
    done = int(re.search(r"checkpoint \(epoch (\d+)", lines[-1]).group(1))
    again = run("train", *args, f"--epochs={done + 1}", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_epoch"] + summary["resumed_from_step"] > 0


# --------------------------------------------------------------------------
# A clone without the data, a folder of another version,
# through the grid CLI and through train's default workdir (runs/...).
# --------------------------------------------------------------------------

def _in(cwd, module, *args, timeout=60):
    """``python -m module args`` run from ``cwd`` (the repository on PYTHONPATH)."""
    from conftest import REPO
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    if "KERAS_HOME" in env:  # a relative KERAS_HOME=.keras would land in cwd
        env["KERAS_HOME"] = os.path.abspath(env["KERAS_HOME"])
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _other_version(tmp_path):
    """A data_dir whose cifar10 was prepared by another tensorflow-datasets version."""
    folder = tmp_path / "tfds" / "cifar10" / "9.9.9"
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")
    return tmp_path / "tfds"


@pytest.mark.parametrize("case", ["empty", "other_version"])
def test_grid_without_its_data_is_one_line_and_leaves_nothing(case, tmp_path):
    data_dir = tmp_path / "tfds"
    if case == "empty":
        data_dir.mkdir()
    else:
        _other_version(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = files(tmp_path)
    start = time.perf_counter()
    line = one_line(_in(cwd, "benchmarks.grid", "--grid=rules_smallconv",
                        f"--data_dir={data_dir}", f"--out={tmp_path / 'out'}",
                        f"--workdir={tmp_path / 'runs'}"))
    assert "cifar10" in line and "tfds build cifar10" in line and str(data_dir) in line
    assert ("version 9.9.9" in line) == (case == "other_version")
    assert time.perf_counter() - start < 15  # before any run starts
    assert files(tmp_path) == before  # no results/, no workdir, no config.json


def test_module_probes_of_a_variant_the_grid_lacks_is_one_line(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    table = tmp_path / "probes.md"
    line = one_line(_in(tmp_path, "benchmarks.module_probes", "--grid=heads_20ep",
                        f"--workdir={runs}", "--only=no such variant", f"--table={table}"))
    assert "'no such variant'" in line and "heads_20ep" in line
    assert not table.exists()


@pytest.mark.parametrize("args,needle", [
    (["--grid=no_such_grid"], "'no_such_grid' is not a grid; choose from: heads_20ep"),
    (["--grid=deploy_cut", "--variant=no such cut"], "is not one of grid deploy_cut's: no cut"),
    (["--fraction=1.5"], "--fraction must be in (0, 1]")])
def test_cut_fidelity_mistakes_are_one_line_before_any_training(args, needle, tmp_path):
    out = tmp_path / "fidelity.md"
    line = one_line(_in(tmp_path, "benchmarks.cut_fidelity", "--data_dir=DIR", *args,
                        f"--out={out}"))
    assert needle in line and not out.exists()


def test_retries_on_data_of_another_version_leave_nothing_under_runs(tmp_path):
    data_dir = _other_version(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for _ in range(2):  # each retry used to leave another runs/<...>/config.json
        start = time.perf_counter()
        line = one_line(_in(cwd, "ssa_tf.train", "--dataset=cifar10", f"--data_dir={data_dir}"))
        assert "version 9.9.9" in line and "reads version 3.0.2" in line
        assert time.perf_counter() - start < 10
    assert files(cwd) == []


def test_ctrl_c_before_the_first_checkpoint_exits_130_and_leaves_nothing(tmp_path,
                                                                         monkeypatch, capsys):
    """Ctrl-C while the data loads or the first epoch runs: nothing to resume, so
    nothing is kept (in process: the interrupt is raised where training would run)."""
    def interrupted(cfg, **kwargs):
        os.makedirs(tmp_path / "w" / "tensorboard", exist_ok=True)  # what a run writes first
        (tmp_path / "w" / "config.json").write_text("{}")
        (tmp_path / "w" / "metrics.csv").write_text("")
        raise KeyboardInterrupt

    assert _train_in_process(monkeypatch, tmp_path / "w", interrupted) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: interrupted before the first checkpoint; nothing was kept"]
    assert files(tmp_path) == []  # the workdir this run created is gone


def test_data_unreadable_only_past_the_first_batch_leaves_nothing(tmp_path):
    """The truncated half of the shard holds only the validation part (train[40500:]):
    the run starts, writes config.json, metrics.csv and TensorBoard files, and fails
    at the first validation; it must still end in one line and take them away."""
    data_dir, folder = _copy_cifar10(tmp_path)
    shard = folder / "cifar10-train.tfrecord-00000-of-00001"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    workdir = tmp_path / "w"
    line = one_line(run("train", "--dataset=cifar10", f"--data_dir={data_dir}", "--model=mlp",
                        "--epochs=1", "--set=data.max_train_examples=1000",
                        f"--workdir={workdir}", timeout=300))
    assert "cannot be read" in line and "tfds build cifar10" in line
    assert not workdir.exists()


def test_an_error_that_follows_a_ctrl_c_is_the_interrupt():
    # a Ctrl-C while Keras traced became a TypeError of its conversion, once, under load
    from ssa_tf.train import interruptible

    before = signal.getsignal(signal.SIGINT)

    def swallowed():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs here
        except KeyboardInterrupt:
            raise TypeError("Failed to convert elements of (None, 784) to Tensor") from None

    with pytest.raises(KeyboardInterrupt):
        interruptible(swallowed)

    def plain():
        raise TypeError("a bug of its own")

    with pytest.raises(TypeError, match="a bug of its own"):  # no Ctrl-C: as it was
        interruptible(plain)
    assert interruptible(lambda: 7) == 7
    assert signal.getsignal(signal.SIGINT) is before  # restored
