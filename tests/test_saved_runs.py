"""A run saved by an earlier version keeps loading, resuming and exporting.

``tests/data/run_v1`` is a real run of the version before the dotted vocabulary
(2026-12-06, ed60e35): an SSA run of ``tests/data/tiny_net.py`` on synthetic data, 2
epochs, a rank cut after the first; its ``config.json`` holds the flat names of that time
("beta", "rank_tau"). Reproduce it (from the repository root, at that commit):

    python -m ssa_tf.train --dataset=synthetic --set "data.synthetic_shape=(6,6,1)" \\
        --model=tests/data/tiny_net.py --mode=ssa --epochs=2 \\
        --set data.max_train_examples=128 --set rank.tau=0.9 --set rank.start=1 \\
        --set rank.interval=10 --set rank.keep_ends=false --workdir=tests/data/run_v1
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "data")
FLAGS = ["--dataset=synthetic", "--set", "data.synthetic_shape=(6,6,1)",
         "--model=tests/data/tiny_net.py", "--mode=ssa", "--set", "data.max_train_examples=128",
         "--set", "rank.tau=0.9", "--set", "rank.start=1", "--set", "rank.interval=10",
         "--set", "rank.keep_ends=false"]


def _run(tmp_path, *argv):
    """A command run from ``tmp_path`` (where the run's relative model path resolves)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(tmp_path / ".keras")}
    return subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def _copy(tmp_path):
    """The saved run and its model file under ``tmp_path``/tests/data (the run names its
    model by that relative path)."""
    where = tmp_path / "tests" / "data"
    shutil.copytree(FIXTURE, where)
    return where / "run_v1"


def test_the_fixture_is_a_run_of_the_flat_vocabulary():
    with open(os.path.join(FIXTURE, "run_v1", "config.json")) as f:
        saved = json.load(f)
    assert saved["rank_tau"] == 0.9 and saved["beta"] == 0.01 and "rank.tau" not in saved


def test_a_saved_run_reads_as_todays_config():
    from ssa_tf.config import legacy

    with open(os.path.join(FIXTURE, "run_v1", "config.json")) as f:
        cfg = legacy.read_config(json.load(f))
    assert (cfg.rank.tau, cfg.rank.interval, cfg.rank.keep_ends) == (0.9, 10, False)
    assert (cfg.rule.name, cfg.rule.beta, cfg.model.model) == (
        "ssa", 0.01, "tests/data/tiny_net.py")
    assert cfg.data.synthetic_shape == (6, 6, 1)


def test_a_record_without_settings_added_since_resumes(tmp_path):
    """A setting added after a run was saved (predsim's weight, the heads' options) is
    absent from its config.json: the run resumes when today's value trains what the
    code of its day did, and is refused when it does not."""
    from ssa_tf.config import legacy
    from ssa_tf.errors import UsageError
    from ssa_tf.training.workdir import prepare_workdir

    run = _copy(tmp_path)
    path = run / "config.json"
    saved = json.loads(path.read_text())
    for name in ("readout_sim", "readout_head", "readout_width", "readout_depth"):
        del saved[name]
    path.write_text(json.dumps(saved))
    (run / "summary.json").unlink()  # an unfinished run
    cfg = legacy.read_config(saved).replace({"runtime.workdir": str(run)})
    assert prepare_workdir(cfg) == "resume"
    with pytest.raises(UsageError, match=r"rule.readout_head=None then, 'conv' now"):
        prepare_workdir(cfg.replace({"rule.feedback": "local", "rule.readout_head": "conv"}))


def test_a_saved_run_resumes_for_more_epochs_and_exports(tmp_path):
    run = _copy(tmp_path)
    result = _run(tmp_path, "-m", "ssa_tf.train", *FLAGS, "--epochs=3", f"--workdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resum" in (result.stdout + result.stderr).lower()
    with open(run / "summary.json") as f:
        summary = json.load(f)
    assert summary["epochs"] == 3
    with open(run / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    with open(run / "ranks.csv") as f:
        cuts = list(csv.DictReader(f))
    # the saved run's cut after epoch 1 is kept (its ranks load): no other cut is due
    assert {int(r["epoch"]) for r in cuts} == {1} and summary["ranks"]["hidden"] < 12
    # a resumed run keeps the record of how it began, in the names of its day
    with open(os.path.join(FIXTURE, "run_v1", "config.json")) as f:
        assert (run / "config.json").read_text() == f.read()
    out = tmp_path / "model.onnx"
    result = _run(tmp_path, os.path.join(REPO, "export", "to_onnx.py"), f"--workdir={run}",
                  f"--output={out}", "--latency_runs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.stat().st_size > 1000 and "top-1 identical" in result.stdout
