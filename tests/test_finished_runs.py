"""Finished, unfinished and restarted workdirs through the real command line: the one
line and its status, nothing touched that was not to be (split from test_bad_input.py so
that the two files run side by side under ``pytest -n 2 --dist loadfile``)."""

import json
import shutil

import pytest

from conftest import one_line
from conftest import run_cli as run

MNIST_TINY = ["--model=mlp", "--set=data.max_train_examples=128"]


def _backups(workdir):
    folder = workdir / "backup" / "local"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _checkpoint(workdir, state="{}"):
    """An epoch-1 checkpoint whose variables cannot be read."""
    ckpt = workdir / "backup" / "local" / "epoch-1"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(state)
    (ckpt / "variables.npz").write_bytes(b"not an npz")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (its last epoch's checkpoint kept, the others removed).

    One process serves two purposes: it is made by ``--restart`` over an unfinished run
    of the same settings (an unreadable epoch-1 checkpoint, a file of the user's beside
    it), which test_restart_trains_again_from_scratch checks."""
    from ssa_tf.config import RunConfig

    workdir = tmp_path_factory.mktemp("finished") / "w"
    workdir.mkdir()
    cfg = RunConfig.from_settings({"runtime.workdir": str(workdir), "model.model": "mlp",
                                   "data.max_train_examples": 128, "train.epochs": 1})
    (workdir / "config.json").write_text(json.dumps(cfg.record(), default=list))
    _checkpoint(workdir)
    (workdir / "metrics.csv").write_text("epoch\n0\n")
    (workdir / "mine.txt").write_text("kept")
    result = run("train", *MNIST_TINY, "--epochs=1", "--restart", f"--workdir={workdir}",
                 timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _backups(workdir) == ["epoch-1"] and not (workdir / ".lock").exists()
    return workdir


def test_restart_trains_again_from_scratch(finished):
    # the fixture's run: --restart over an unfinished run with an unreadable checkpoint
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 0 and len(summary["epoch_seconds"]) == 1
    assert (finished / "mine.txt").read_text() == "kept"
    assert _backups(finished) == ["epoch-1"]  # the restarted run's own, not the old one's
    assert (finished / "backup" / "local" / "epoch-1" / "variables.npz").read_bytes()[:2] == b"PK"
    assert len((finished / "metrics.csv").read_text().strip().splitlines()) == 1 + 1


def test_finished_workdir_needs_restart(finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    line = one_line(run("train", *MNIST_TINY, "--epochs=1", f"--workdir={finished}",
                        timeout=120))
    assert "finished run of 1 epochs" in line and "--restart" in line
    assert "--epochs=N with N > 1" in line  # how to train it further
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before


def test_a_finished_run_trains_further_as_if_never_stopped(finished, tmp_path):
    # --epochs=2 on a finished 1-epoch workdir used to point to --restart;
    # now it continues from the kept checkpoint, bit for bit the 2-epoch run
    extended, straight = tmp_path / "extended", tmp_path / "straight"
    shutil.copytree(finished, extended)
    result = run("train", *MNIST_TINY, "--epochs=2", f"--workdir={extended}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run("train", *MNIST_TINY, "--epochs=2", f"--workdir={straight}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = (json.loads((w / "summary.json").read_text()) for w in (extended, straight))
    assert a["resumed_from_epoch"] == 1 and b["resumed_from_epoch"] == 0
    assert a["history"] == b["history"] and a["test_accuracy"] == b["test_accuracy"]
    assert len((extended / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    assert _backups(extended) == ["epoch-2"]


def test_a_finished_run_with_cuts_is_extended_only_where_the_cuts_agree(tmp_path):
    from ssa_tf.config import RunConfig, UsageError
    from ssa_tf.training.workdir import extension_problem
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"epochs": 2}))
    (tmp_path / "backup" / "local" / "epoch-2").mkdir(parents=True)
    (tmp_path / "backup" / "local" / "epoch-2" / "state.json").write_text("{}")
    cfg = RunConfig().with_overrides([f"runtime.workdir={tmp_path}", "rank.tau=0.9",
                                      "rank.interval=1"])
    # a 2-epoch run cut after epoch 1 only; a 3-epoch run also after epoch 2
    with pytest.raises(UsageError, match=r"after epochs \[1\]\) differ .* \(after \[1, 2\]\)"):
        extension_problem(cfg.with_overrides(["train.epochs=3"]), str(summary))
    cfg = cfg.with_overrides(["rank.interval=1", "rank.final_cut=true", "train.epochs=3"])
    assert extension_problem(cfg, str(summary)) is None  # the final cut was that cut


def _unfinished(finished, tmp_path, state="{}"):
    """The finished run's files as an unfinished run with one checkpoint."""
    workdir = tmp_path / "unfinished"
    workdir.mkdir()
    (workdir / "config.json").write_text((finished / "config.json").read_text())
    _checkpoint(workdir, state)
    return workdir


def test_resuming_with_other_settings_names_them(finished, tmp_path):
    workdir = _unfinished(finished, tmp_path)
    line = one_line(run("train", *MNIST_TINY, "--epochs=1", "--set=rule.beta=0.5",
                        "--set=model.norm=none", f"--workdir={workdir}", timeout=120))
    assert "rule.beta=0.01 then, 0.5 now" in line and "model.norm='layer' then" in line
    assert "--restart" in line


def test_corrupt_checkpoint_is_one_line(finished, tmp_path):
    workdir = _unfinished(finished, tmp_path)
    line = one_line(run("train", *MNIST_TINY, "--epochs=2", f"--workdir={workdir}",
                        timeout=300))
    assert "epoch-1 is unreadable" in line and "--restart" in line
    assert not (workdir / ".lock").exists()
    assert not list(workdir.rglob("*.tmp*"))
