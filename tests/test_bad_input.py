"""Bad input through the real command lines: one line, the right status, nothing
half-written. (More cases of each CLI live in test_cli.py, test_tuning.py and
test_export.py; BUILD.md, "Exit codes", counts them all.)"""

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

CLIS = {
    "train": [sys.executable, "-m", "ssa_tf.train"],
    "search": [sys.executable, os.path.join("tuning", "search.py")],
    "export": [sys.executable, os.path.join("export", "to_onnx.py")],
}


def run(cli, *args, timeout=120, env=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([*CLIS[cli], *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


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
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------
# Flags and files every CLI reads: checked before TensorFlow starts.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--rank_warmup_steps=-1"], "--rank_warmup_steps must be >= 0"),
    (["--checkpoint_steps=-5"], "--checkpoint_steps must be >= 0"),
    (["--keep_checkpoints=1"], "--keep_checkpoints must be >= 2"),
    (["--skip_nonfinite_steps=-1"], "--skip_nonfinite_steps must be >= 0"),
    (["--alpha=-1"], "--alpha must be >= 0"),
    (["--rank_tau=0"], "--rank_tau must be in (0, 1]"),
    (["--strategy=mirrored", "--logical_cpus=3"], "must be a multiple of --logical_cpus=3"),
    (["--strategy=multi_worker"], "needs TF_CONFIG"),
    (["--strategy=gpu"], "auto, one_device, mirrored, multi_worker"),
    (["--validation_split=1.5"], "--validation_split must be in [0, 1)"),
    (["--s_rate_scale=0"], "--s_rate_scale must be > 0"),
    (["--mode=bp", "--stiefel_retraction"], "--stiefel_retraction does not apply to --mode=bp"),
])
def test_train_out_of_range_flags(args, needle, tmp_path):
    start = time.perf_counter()
    line = one_line(run("train", *args, f"--workdir={tmp_path / 'w'}", timeout=60,
                        env={"TF_CONFIG": ""}))
    assert needle in line
    assert not (tmp_path / "w").exists()
    assert time.perf_counter() - start < 15  # TensorFlow never started


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("content,needle", [
    (None, "Unable to open flagfile"),
    (b"\x00\xff\xfe binary\n", "not a text file of flags"),
    (b"--no_such_flag_anywhere=3\n", "no_such_flag_anywhere"),
])
def test_missing_or_corrupt_flagfile(cli, content, needle, tmp_path):
    path = tmp_path / "run.flags"
    if content is not None:
        path.write_bytes(content)
    before = files(tmp_path)
    line = one_line(run(cli, f"--flagfile={path}", timeout=60))
    assert needle in line
    assert files(tmp_path) == before


def test_unknown_flag_lists_the_valid_ones_in_every_cli():
    for cli, valid in (("train", "mlp, smallconv"), ("search", "random, bayesian, hyperband"),
                       ("export", "auto, merged, factored")):
        flag = {"train": "--model=x", "search": "--tuner=x", "export": "--form=x"}[cli]
        extra = ["--output=x.onnx", "--workdir=no/such/run"] if cli == "export" else []
        line = one_line(run(cli, flag, *extra, timeout=60))
        assert valid in line, (cli, line)


def test_dataset_dir_that_is_a_file(tmp_path):
    not_a_dir = tmp_path / "tfds"
    not_a_dir.write_text("")
    line = one_line(run("train", "--dataset=cifar10", f"--data_dir={not_a_dir}",
                        f"--workdir={tmp_path / 'w'}", timeout=60))
    assert "cifar10" in line and str(not_a_dir) in line
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------
# Workdirs: read-only, in use, finished, another run's, a corrupt checkpoint.
# --------------------------------------------------------------------------

def _immutable(folder):
    """A folder even root cannot write into; the command that undoes it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ["chmod", "755", str(folder)]
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is unavailable: no read-only folder")
    return ["chattr", "-i", str(folder)]


def test_read_only_workdir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    undo = _immutable(folder)
    try:
        line = one_line(run("train", f"--workdir={folder / 'run'}", timeout=60))
        assert "not writable" in line and str(folder) in line
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(undo, check=True)


def test_disk_full_during_the_run_is_reported_as_such(tmp_path, monkeypatch, capsys):
    """A full disk cannot be made on demand here; the run raises what a full
    disk raises and the CLI must say so in one line (in process)."""
    from absl.testing import flagsaver
    from ssa_tf import run as run_lib
    from ssa_tf import train

    def full(cfg):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      str(tmp_path / "w" / "backup"))

    monkeypatch.setattr(run_lib, "train", full)
    with flagsaver.flagsaver():
        train.FLAGS(["prog", "--model=mlp", f"--workdir={tmp_path / 'w'}"])
        try:
            with pytest.raises(SystemExit) as exit_:
                train.main(["prog"])
        finally:
            train.FLAGS.unparse_flags()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "backup" in err[0]


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


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (its checkpoints removed at the end, as always)."""
    workdir = tmp_path_factory.mktemp("finished") / "w"
    result = run("train", "--model=mlp", "--epochs=1", "--max_train_examples=128",
                 f"--workdir={workdir}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (workdir / "backup").exists() and not (workdir / ".lock").exists()
    return workdir


def test_finished_workdir_needs_restart(finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    line = one_line(run("train", "--model=mlp", "--epochs=1", "--max_train_examples=128",
                        f"--workdir={finished}", timeout=120))
    assert "finished run" in line and "--restart" in line
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before


def _unfinished(finished, tmp_path, state="{}"):
    """The finished run's files as an unfinished run with one checkpoint."""
    workdir = tmp_path / "unfinished"
    workdir.mkdir()
    (workdir / "config.json").write_text((finished / "config.json").read_text())
    ckpt = workdir / "backup" / "local" / "epoch-1"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(state)
    (ckpt / "variables.npz").write_bytes(b"not an npz")
    return workdir


def test_resuming_with_other_settings_names_them(finished, tmp_path):
    workdir = _unfinished(finished, tmp_path)
    line = one_line(run("train", "--model=mlp", "--epochs=1", "--max_train_examples=128",
                        "--beta=0.5", f"--workdir={workdir}", timeout=120))
    assert "--beta=0.01 then, 0.5 now" in line and "--restart" in line


def test_corrupt_checkpoint_is_one_line(finished, tmp_path):
    workdir = _unfinished(finished, tmp_path)
    line = one_line(run("train", "--model=mlp", "--epochs=2", "--max_train_examples=128",
                        f"--workdir={workdir}", timeout=300))
    assert "epoch-1 is unreadable" in line and "--restart" in line
    assert not (workdir / ".lock").exists()
    assert not list(workdir.rglob("*.tmp*"))


def test_restart_trains_again_from_scratch(finished, tmp_path):
    workdir = _unfinished(finished, tmp_path)
    (workdir / "mine.txt").write_text("kept")
    result = run("train", "--model=mlp", "--epochs=1", "--max_train_examples=128", "--restart",
                 f"--workdir={workdir}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 0 and len(summary["epoch_seconds"]) == 1
    assert (workdir / "mine.txt").read_text() == "kept"
    assert not (workdir / "backup").exists()


def test_diverging_run_exits_3_and_keeps_its_checkpoint(tmp_path):
    """A rate of 1e6 makes SSA's local losses non-finite within the second epoch."""
    workdir = tmp_path / "w"
    result = run("train", "--model=mlp", "--epochs=3", "--max_train_examples=256",
                 "--learning_rate=1e6", "--checkpoint_steps=2", f"--workdir={workdir}",
                 timeout=300)
    line = one_line(result, status=3)
    assert line.startswith("error: training diverged: non-finite value in module ")
    assert "term" in line or "gradient" in line
    assert "last good checkpoint" in line or "no checkpoint" in line
    assert not (workdir / "model.keras").exists() and not (workdir / "summary.json").exists()
    if "last good checkpoint" in line:
        assert list((workdir / "backup" / "local").glob("epoch-*/state.json"))
    assert not (workdir / ".lock").exists()
