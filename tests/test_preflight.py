"""ssa_tf.preflight: one pre-flight per run, its workdir claimed once; importing is inert."""

import json
import os
import subprocess
import sys

import pytest

from ssa_tf import config as cfg_lib
from ssa_tf import errors, preflight
from ssa_tf.training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(workdir, *extra):
    return cfg_lib.RunConfig().with_overrides([
        "data.dataset=mnist5k", "model.model=mlp", "train.epochs=1",
        "data.max_train_examples=128", "runtime.progress=none", f"runtime.workdir={workdir}",
        *extra])


def _count(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_command_line_run_takes_its_lock_and_decides_resume_once(tmp_path, monkeypatch):
    from ssa_tf import train

    locks = _count(monkeypatch, workdir_lib.WorkdirLock, "acquire")
    prepared = _count(monkeypatch, workdir_lib, "prepare_workdir")
    workdir = tmp_path / "w"
    train.execute(_tiny(workdir))
    assert len(locks) == 1 and len(prepared) == 1
    summary = json.loads((workdir / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert not (workdir / workdir_lib.LOCK_NAME).exists()  # released at the end


def test_a_run_without_a_claim_claims_its_workdir_once(tmp_path, monkeypatch):
    from ssa_tf.training import run

    locks = _count(monkeypatch, workdir_lib.WorkdirLock, "acquire")
    run.train(_tiny(tmp_path / "w"), verbose=0)
    assert len(locks) == 1
    assert not (tmp_path / "w" / workdir_lib.LOCK_NAME).exists()


def test_a_second_claim_of_the_same_workdir_returns_the_first_answer(tmp_path, monkeypatch):
    locks = _count(monkeypatch, workdir_lib.WorkdirLock, "acquire")
    claim = preflight.check(_tiny(tmp_path / "w"))
    try:
        assert claim.state == "new"
        assert claim.take(str(tmp_path / "w")) == "new"
        assert len(locks) == 1
    finally:
        claim.release()
    assert not (tmp_path / "w" / workdir_lib.LOCK_NAME).exists()


def test_a_held_workdir_is_refused_and_a_new_one_left_nowhere(tmp_path):
    claim = preflight.check(_tiny(tmp_path / "w"))
    try:
        # the lock names this process, so a second claim from another "process" fails
        other = preflight.WorkdirClaim.unchecked(_tiny(tmp_path / "w"))
        lock = tmp_path / "w" / workdir_lib.LOCK_NAME
        lock.write_text("elsewhere 1\n")  # a live lock of another host
        with pytest.raises(errors.UsageError, match="in use by process 1 on elsewhere"):
            other.take(str(tmp_path / "w"))
    finally:
        claim.release()
    with pytest.raises(errors.UsageError, match="rank.tau must be in"):
        preflight.check(_tiny(tmp_path / "new", "rank.tau=2"))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("error,status", [
    (errors.UsageError, 2), (errors.DataError, 2), (errors.InputError, 2),
    (errors.CheckpointError, 2), (errors.Diverged, 3), (errors.ParityError, 1)])
def test_each_error_carries_its_exit_status(error, status):
    assert error("x").status == status and issubclass(error, errors.Error)


def test_importing_the_package_starts_nothing():
    code = ("import sys; sys.argv = ['prog']; import ssa_tf, ssa_tf.config, ssa_tf.preflight, "
            "ssa_tf.methods.registry; print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
