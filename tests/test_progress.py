"""``benchmarks.progress``: a long grid's runs read from their newest checkpoint or summary
(run as the command it is: its flags are its own process's)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def test_the_table_reads_finished_runs_checkpoints_and_runs_not_started(tmp_path):
    grid = os.path.join(tmp_path, "learned_resnet32")
    # bp finished: its summary; dkp mid-run: its newest finished epoch's checkpoint (a
    # mid-epoch one is passed over)
    _write(os.path.join(grid, "bp-s1", "summary.json"),
           {"epoch_seconds": [400.0, 500.0, 450.0],
            "history": {"val_accuracy": [0.30, 0.45, 0.41]}})
    backup = os.path.join(grid, "dkp-s1", "backup", "local")
    for epoch, val in ((1, [0.25]), (2, [0.25, 0.33])):
        _write(os.path.join(backup, f"epoch-{epoch}", "state.json"),
               {"history": {"val_accuracy": val}, "epoch_seconds": [600.0] * epoch})
    _write(os.path.join(backup, "epoch-2-step-40", "state.json"),
           {"history": {"val_accuracy": [0.0]}, "epoch_seconds": [1.0]})
    out = tmp_path / "progress.md"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / ".keras"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.progress",
                             "--grid=learned_resnet32", f"--workdir={tmp_path}",
                             f"--out={out}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.read_text().splitlines()
            if line.startswith("| ") and " | 1 | " in line}
    assert rows["bp"] == "| bp | 1 | 3 of 20 | 0.410 | 0.450 | 450 |"
    assert rows["dkp"] == "| dkp | 1 | 2 of 20 | 0.330 | 0.330 | 600 |"
    assert rows["ssa"] == "| ssa | 1 | 0 of 20 | | | |"
    # the recorded command names no path of this machine
    command = out.read_text().splitlines()[2]
    assert "--workdir=DIR --out=DIR" in command and str(tmp_path) not in command
