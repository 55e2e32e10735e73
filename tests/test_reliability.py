"""Resumable runs, the workdir lock, the divergence guard and the warm-up after cuts."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from ssa_tf.config import RunConfig, UsageError
from ssa_tf.training import callbacks
from ssa_tf.training import workdir as reliability

# --------------------------------------------------------------------------
# The lock.
# --------------------------------------------------------------------------


def test_lock_refuses_a_live_holder_and_clears_a_dead_one(tmp_path):
    with reliability.WorkdirLock(str(tmp_path)):
        assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())
        # the same process may take it again (the CLI takes it before run.train does)
        inner = reliability.WorkdirLock(str(tmp_path)).acquire()
        inner.release()
        assert (tmp_path / ".lock").exists()  # still the outer one's
    assert not (tmp_path / ".lock").exists()

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(f"{socket.gethostname()} {holder.pid}\n")
        with pytest.raises(UsageError, match=f"in use by process {holder.pid}"):
            reliability.WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / ".lock").unlink()

    # a lock left by a process that is gone (a kill -9) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    with reliability.WorkdirLock(str(tmp_path)):
        assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())
    assert not (tmp_path / ".lock").exists()

    # another host's lock cannot be checked from here: refused
    (tmp_path / ".lock").write_text(f"not-{socket.gethostname()} 1\n")
    with pytest.raises(UsageError, match="in use by process 1 on not-"):
        reliability.WorkdirLock(str(tmp_path)).acquire()


# --------------------------------------------------------------------------
# Resume or restart.
# --------------------------------------------------------------------------

def _unfinished_run(tmp_path, settings):
    cfg = RunConfig.from_settings({"runtime.workdir": str(tmp_path), **settings})
    (tmp_path / "config.json").write_text(json.dumps(cfg.record(), default=list))
    ckpt = tmp_path / "backup" / "local" / "epoch-1"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (tmp_path / "metrics.csv").write_text("epoch\n0\n")
    (tmp_path / "notes.txt").write_text("mine")
    return cfg


def test_prepare_workdir_resumes_refuses_and_restarts(tmp_path):
    cfg = _unfinished_run(tmp_path, {"model.model": "mlp", "train.epochs": 2})
    assert reliability.prepare_workdir(cfg) == "resume"
    # longer training, other checkpointing: still the same run
    assert reliability.prepare_workdir(
        cfg.replace({"train.epochs": 5, "runtime.checkpoint_steps": 7})) == "resume"
    with pytest.raises(UsageError, match=r"rule.beta=0.01 then, 0.5 now.*--restart"):
        reliability.prepare_workdir(cfg.replace({"rule.beta": 0.5}))
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UsageError, match="finished run"):
        reliability.prepare_workdir(cfg)
    assert reliability.prepare_workdir(cfg.replace({"runtime.restart": True})) == "restart"
    # the run's outputs are gone, the user's own file is not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------
# Warm-up after rank cuts.
# --------------------------------------------------------------------------

def test_warmup_after_cuts_composes_with_decay_and_serializes():
    import keras
    from ssa_tf.training.rank import cut_epochs
    from ssa_tf.training.schedules import WarmupAfterCuts

    assert cut_epochs(30, start=0, interval=10) == [10, 20]  # none after the last epoch
    assert cut_epochs(40, start=20, interval=10) == [20, 30]
    decay = keras.optimizers.schedules.PiecewiseConstantDecay([100], [1.0, 0.1])
    sched = WarmupAfterCuts(decay, cut_steps=[50, 150], warmup_steps=4)
    rates = [float(sched(s)) for s in (0, 49, 50, 51, 53, 54, 120, 150, 151)]
    np.testing.assert_allclose(rates, [1, 1, .25, .5, 1, 1, .1, .025, .05], rtol=1e-6)
    again = WarmupAfterCuts.from_config(
        json.loads(json.dumps(sched.get_config())))
    assert [float(again(s)) for s in (50, 151)] == pytest.approx([.25, .05])


# --------------------------------------------------------------------------
# The divergence guard (in process, a real model and optimizer).
# --------------------------------------------------------------------------

def _poisoned_fit(rule, skip, poison_step, steps=6):
    import tensorflow as tf
    from ssa_tf.training.model import build_model

    model = build_model("mlp", (8, 8, 1), 4, rule=rule)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16 * steps, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, size=16 * steps)
    x[16 * poison_step] = np.nan  # one batch holds a NaN image
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    guard = callbacks.divergence_guard(model, skip=skip, log=lambda *a: None)
    before = [v.numpy().copy() for v in model.trainable_variables]
    try:
        model.fit(ds, epochs=1, verbose=0, callbacks=[guard])
        error = None
    except callbacks.Diverged as e:
        error = str(e)
    finite = all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    moved = any(not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    return error, finite, moved, guard.skipped


@pytest.mark.parametrize("rule,where", [("ssa", "module 0 (m0)"), ("bp", "network (bp)")])
def test_divergence_stops_naming_module_and_term(rule, where):
    error, finite, moved, _ = _poisoned_fit(rule, skip=0, poison_step=2)
    assert error is not None and where in error and "step 3" in error, error
    assert ("CE term" in error) if rule == "ssa" else ("CE term" in error or "gradient" in error)
    assert finite and moved  # the two good steps trained; the NaN never reached the weights


def test_skip_nonfinite_steps_skips_then_trains_on():
    error, finite, moved, skipped = _poisoned_fit("ssa", skip=1, poison_step=2)
    assert error is None and finite and moved and skipped == 1


# --------------------------------------------------------------------------
# kill -9 in the middle of a run, then resume: same final weights.
# --------------------------------------------------------------------------

EPOCHS, STEPS_PER_EPOCH = 2, 12
RESUME_ARGS = ["--model=mlp", "--rule=ssa", f"--epochs={EPOCHS}", "--batch_size=32",
               "--seed=3", "--set=data.max_train_examples=384", "--set=runtime.checkpoint_steps=3",
               "--set=rank.tau=0.95", "--set=rank.interval=1",
               "--set=runtime.diagnostics_every=5"]
STEPS = EPOCHS * STEPS_PER_EPOCH


def _train(workdir, *extra, wait=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_DETERMINISTIC_OPS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssa_tf.train", *RESUME_ARGS,
                             f"--workdir={workdir}", *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return out + err
    return proc


def _checkpoints(workdir):
    folder = workdir / "backup" / "local"
    found = []
    for d in folder.glob("epoch-*"):
        if (d / "state.json").exists():
            parts = d.name.split("-")
            found.append(int(parts[1]) * STEPS_PER_EPOCH + (int(parts[3]) if len(parts) == 4 else 0))
    return found


def _weights(workdir):
    import keras
    import ssa_tf.training.model  # noqa: F401  (registers the classes)
    model = keras.models.load_model(workdir / "model.keras")
    return {v.path: v.numpy() for v in model.weights}


def kill_and_resume(tmp_path, trial, rng, reference):
    """Kill a run with SIGKILL at a random step, resume it; return the largest
    weight difference to ``reference`` and where it was killed."""
    workdir = tmp_path / f"killed-{trial}"
    target = rng.randrange(2, STEPS - 3)  # the step after which it dies, at the latest
    proc = _train(workdir, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = _checkpoints(workdir)
        if done and max(done) >= target:
            break
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.3))  # somewhere between two checkpoints
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = max(_checkpoints(workdir))
    assert not (workdir / "summary.json").exists()
    log = _train(workdir)  # the same command again
    assert "resuming from the" in log
    summary = json.loads((workdir / "summary.json").read_text())
    resumed = summary["resumed_from_epoch"] * STEPS_PER_EPOCH + summary["resumed_from_step"]
    assert resumed >= killed_at - 3  # at most one checkpoint interval lost
    rows = (workdir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + EPOCHS  # one row per epoch, none twice
    assert not (workdir / ".lock").exists()  # the stale lock was cleared, then released
    weights = _weights(workdir)
    assert weights.keys() == reference.keys()
    diff = max(float(np.max(np.abs(weights[k] - reference[k]))) for k in reference)
    return diff, resumed


def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path):
    trials = int(os.environ.get("SSA_TF_RESUME_TRIALS", "1"))
    seed = int(os.environ.get("SSA_TF_RESUME_SEED", str(random.randrange(10**6))))
    rng = random.Random(seed)
    reference_dir = tmp_path / "reference"
    _train(reference_dir)
    reference = _weights(reference_dir)
    results = [kill_and_resume(tmp_path, t, rng, reference) for t in range(trials)]
    print(f"kill/resume (seed {seed}): " +
          ", ".join(f"resumed at step {at}: max |diff| {d:.3g}" for d, at in results))
    # deterministic ops, the same data order and restored optimizer/metric state:
    # bit-identical weights
    assert all(d == 0.0 for d, _ in results), results


def test_a_checkpoint_of_another_model_is_a_one_line_error_naming_restart():
    """A backup written by another version (other variable names or shapes) is the
    user's input: CheckpointError (exit 2, one line), not a traceback."""
    import keras
    from ssa_tf.training import checkpoints

    var = keras.Variable(np.zeros((2, 3), "float32"), name="w")
    with pytest.raises(checkpoints.CheckpointError, match="--restart"):
        checkpoints._assign({"a/w": var}, {"optimizer/a/other": np.zeros((2, 3))}, "optimizer/")
    with pytest.raises(checkpoints.CheckpointError, match=r"shape \(3, 2\) there"):
        checkpoints._assign({"a/w": var}, {"optimizer/a/w": np.zeros((3, 2))}, "optimizer/")
