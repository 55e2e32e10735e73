"""The command lines through a real process: what only a process shows (exit status, one
line on stderr, nothing written, TensorFlow never started), and one real run.
The checks behind each message are unit-tested in test_config.py."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import CLIS, REPO, files, one_line
from conftest import run_cli as run


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_exits_0_fits_a_screen_and_names_the_flagfile(cli):
    result = run(cli, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert 10 < len(lines) <= 40 and "--flagfile" in result.stdout
    assert result.stderr.strip() == ""


@pytest.mark.parametrize("args,needle", [
    (["--model=vgg99"], "mlp, smallconv, resnet32, resnet18"),
    (["--rule=bp", "--set=rule.beta=0.5"], "rule.beta does not apply to --rule=bp"),
    (["--set=rank.tau=0.9", "--epochs=3"], "would never cut"),
    (["--epochs=three"], "--epochs=three: expected int"),
    (["stray"], "unexpected arguments"),
    (["--rule=dfa", "--mode=bp"], "--rule=dfa and --mode=bp differ"),
    (["--set=method.beta=0"], "(method.beta is rule.beta now)"),
])
def test_train_mistakes_exit_2_with_one_line_before_tensorflow(args, needle, tmp_path):
    start = time.perf_counter()
    line = one_line(run("train", *args, f"--workdir={tmp_path / 'w'}", timeout=60))
    assert needle in line
    assert not (tmp_path / "w").exists()  # nothing written
    assert time.perf_counter() - start < 10  # TensorFlow was never imported


def test_the_search_takes_mode_as_the_alias_of_rule_too():
    line = one_line(run("search", "--rule=ssa", "--mode=fa", timeout=60))
    assert "--rule=ssa and --mode=fa differ" in line
    line = one_line(run("search", "--mode=dfa", "--report_only", timeout=60))
    assert "--rule=dfa has none" in line


def test_unknown_flag_lists_the_valid_ones_in_every_cli():
    for cli, valid in (("train", "mlp, smallconv"), ("search", "random, bayesian, hyperband"),
                       ("export", "auto, merged, factored")):
        flag = {"train": "--model=x", "search": "--tuner=x", "export": "--form=x"}[cli]
        extra = ["--output=x.onnx", "--workdir=no/such/run"] if cli == "export" else []
        line = one_line(run(cli, flag, *extra, timeout=60))
        assert valid in line, (cli, line)


@pytest.mark.parametrize("content,needle", [
    (None, "Unable to open flagfile"),
    (b"\x00\xff\xfe binary\n", "not a text file of flags"),
    (b"--no_such_flag_anywhere=3\n", "no_such_flag_anywhere"),
])
def test_a_missing_or_corrupt_flagfile_is_one_line_and_exit_2(content, needle, tmp_path,
                                                              capsys):
    from absl import flags

    from ssa_tf import cli

    path = tmp_path / "run.flags"
    if content is not None:
        path.write_bytes(content)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.parse_flags(["prog", f"--flagfile={path}"])
    finally:
        flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_every_command_line_reads_its_flagfile_through_that_parser(cli, tmp_path):
    before = files(tmp_path)
    line = one_line(run(cli, f"--flagfile={tmp_path / 'missing.flags'}", timeout=60))
    assert "Unable to open flagfile" in line
    assert files(tmp_path) == before


def test_missing_tfds_dataset_fails_fast(tmp_path):
    start = time.perf_counter()
    line = one_line(run("train", "--dataset=cifar100", f"--data_dir={tmp_path}",
                        f"--workdir={tmp_path / 'w'}", timeout=120))
    assert "cifar100" in line and str(tmp_path) in line and "tfds build cifar100" in line
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One SSA run with every output on: 2 epochs, a cut after each, diagnostics."""
    tmp = tmp_path_factory.mktemp("default_run")
    workdir = tmp / "run"
    result = run("train", "--model=mlp", "--rule=ssa", "--epochs=2", "--set=rank.tau=0.95",
                 "--set=rank.interval=1", "--set=rank.exempt=classifier",
                 "--set=runtime.diagnostics_every=25", f"--workdir={workdir}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, workdir


def test_a_run_prints_its_card_and_one_plain_line_per_epoch(default_run):
    result, _ = default_run
    assert result.stdout.startswith("rule ssa: sequential no, weight transport")
    # not a terminal: one plain line per epoch, no progress bar, no start-up chatter
    assert "Epoch 2/2" in result.stdout and "\x1b[" not in result.stdout
    assert len(result.stdout) < 2000, len(result.stdout)
    assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr


def test_the_summary_names_the_splits_the_card_and_a_trained_accuracy(default_run):
    _, workdir = default_run
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["rule"], summary["epochs"], summary["card"]["sequential"]) == \
        ("ssa", 2, False)
    assert summary["validation_split"] == "mnist5k:train[3600:]"  # carved from train
    assert summary["train_split"] == "mnist5k:train[:3600]" and len(summary["epoch_seconds"]) == 2
    assert summary["test_accuracy"] > 0.6  # chance is 0.10


def test_the_cut_spares_the_ends_and_is_recorded(default_run):
    _, workdir = default_run
    summary = json.loads((workdir / "summary.json").read_text())
    ranks = summary["ranks"]
    # rank.keep_ends (the default): the first layer and the classifier keep full rank
    assert ranks == {"m0_dense": 256, "m1_dense": ranks["m1_dense"], "classifier": 10}
    assert 1 <= ranks["m1_dense"] < 256
    assert summary["final_trainable_params"] < summary["trainable_params"]
    # one cut (after epoch 1; none after the last epoch), one layer
    assert (workdir / "ranks.csv").read_text().count("\n") == 1 + 1 * 1
    assert (workdir / "ranks.png").read_bytes()[:4] == b"\x89PNG"


def test_the_metrics_log_the_terms_that_count_under_their_names(default_run):
    _, workdir = default_run
    rows = (workdir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "val_accuracy" in rows[0]
    assert "feedback_dot_output" in rows[0] and "ce_surrogate" not in rows[0]
    beta = json.loads((workdir / "config.json").read_text())["rule.beta"]
    assert ("align_term" in rows[0]) == (beta > 0)
    assert "ortho_term" not in rows[0]  # gamma 0


def test_the_workdir_holds_the_model_config_and_logs_and_no_temporary_file(default_run):
    _, workdir = default_run
    assert (workdir / "model.keras").stat().st_size > 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["model.model"] == "mlp" and config["card"]["rule"] == "ssa"
    assert any((workdir / "tensorboard").rglob("events.out.tfevents*"))
    assert not list(workdir.glob("*.tmp*"))


def test_the_diagnostics_record_angles_away_from_bp(default_run):
    _, workdir = default_run
    # module angles to BP at steps 1, 25, 50, ... (57 steps per epoch)
    rows = [r.split(",") for r in (workdir / "alignment.csv").read_text().splitlines()[1:]]
    steps = sorted({int(r[0]) for r in rows})
    assert steps == [1, 25, 50, 75, 100]
    angles = [float(r[2]) for r in rows if r[1] in ("m0", "m1")]
    # the direct rule's hidden updates are what they are: well away from BP's (not
    # near 0, as a rule that copies the forward weights would make them), and
    # within 90 degrees on average once training has started (docs/ALGORITHM.md §7)
    assert len(angles) == 2 * len(steps) and 20 < sum(angles[2:]) / len(angles[2:]) < 90
    assert any(r[1] == "norm_ratio:m0_dense" for r in rows)


def test_ssa_tf_load_model_loads_the_runs_model_in_a_fresh_process(default_run, tmp_path):
    _, workdir = default_run
    code = ("import sys, ssa_tf; m = ssa_tf.load_model(sys.argv[1]); "
            "print(m.rule_name, sorted(m.ranks().values())[0])")
    loaded = subprocess.run([sys.executable, "-c", code, str(workdir / "model.keras")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[0] == "ssa"


@pytest.mark.parametrize("order", ["import ssa_tf, keras", "import keras, ssa_tf"])
def test_keras_load_model_works_after_import_ssa_tf(default_run, tmp_path, order):
    # a Keras user's habit failed with "Could not locate class
    # 'SSAModel'"; importing ssa_tf still starts no TensorFlow
    _, workdir = default_run
    code = (f"import sys; {order}; "
            "print('tf-before-load', 'ssa_tf.training.model' in sys.modules); "
            "m = keras.saving.load_model(sys.argv[1]); print(type(m).__name__, m.rule_name)")
    loaded = subprocess.run([sys.executable, "-c", code, str(workdir / "model.keras")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[-2:] == ["SSAModel", "ssa"]
    assert "tf-before-load False" in loaded.stdout  # registered on Keras's first look-up


# --------------------------------------------------------------------------
# What a new user hit, through the real command line.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--rule=bp", "--set=rule.feedback=chain"], "rule.feedback does not apply to --rule=bp"),
    (["--rule=dfa", "--set=rank.tau=0.9", "--set=rank.interval=1"],
     "rank.tau applies to rules that"),
    (["--set=runtime.progress=loud"], "choose from: auto, bar, epoch, none"),
])
def test_settings_that_do_not_apply_are_refused_in_one_line(args, needle, tmp_path):
    start = time.perf_counter()
    line = one_line(run("train", *args, f"--workdir={tmp_path / 'w'}", timeout=60))
    assert needle in line
    assert files(tmp_path) == []  # nothing written
    assert time.perf_counter() - start < 10  # TensorFlow was never imported


def test_without_a_validation_split_nothing_is_validated_on_test(tmp_path):
    """validation_split=0 (asked for) validates on nothing: no val_* metric and no
    best epoch drawn from the test split, which is evaluated once, at the end."""
    workdir = tmp_path / "w"
    result = run("train", "--model=mlp", "--epochs=2", "--set=data.max_train_examples=128",
                 "--set=data.validation_split=0", f"--workdir={workdir}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["validation_split"] is None and summary["test_split"] == "mnist5k:test"
    assert summary["train_split"] == "mnist5k:train[:128]"
    assert not any(k.startswith("val_") for k in summary["history"])
    # Keras's CSVLogger adds val_* columns of its own; nothing fills them
    import csv
    with open(workdir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "feedback_dot_output" in rows[0] and "ce_term" not in rows[0]
    assert {v for r in rows for k, v in r.items() if k.startswith("val_")} <= {"NA"}
    # off a terminal: plain lines, one per epoch, no bar redraws
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout
    assert result.stdout.count("Epoch ") == 2 and len(result.stdout) < 2000, result.stdout
    # TensorFlow's start-up lines (printed twice by TF 2.21) are silenced
    assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr


def test_tensorflow_comes_from_exactly_one_extra_cpu_or_gpu():
    """tensorflow-cpu and tensorflow[and-cuda] install the same package and overwrote
    each other: neither is a base dependency, each extra brings one, and the GPU
    install is a documented command."""
    import re
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]

    def tensorflows(requirements):
        return [r for r in requirements if re.match(r"tensorflow(-cpu)?(\[|=|$)", r)]

    extras = project["optional-dependencies"]
    assert tensorflows(project["dependencies"]) == []
    assert tensorflows(extras["cpu"]) == ["tensorflow-cpu==2.21.0"]
    assert tensorflows(extras["gpu"]) == ["tensorflow[and-cuda]==2.21.0"]
    # [dev] brings none (it once pulled tensorflow-cpu beside a GPU user's): it goes with
    # [cpu] or [gpu]
    assert tensorflows(extras["dev"]) == []
    with open(os.path.join(REPO, "BUILD.md")) as f:
        assert ".[gpu]" in f.read()  # BUILD.md, "Set-up"
    # without TensorFlow, the error says which extra to install
    with open(os.path.join(REPO, "ssa_tf", "cli.py")) as f:
        assert "pip install -e '.[cpu]' (or '.[gpu]'" in f.read()


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_cites_no_document_outside_the_repository(cli):
    """A document outside the repository (the project's SPEC.md) is not in a clone; --help
    must not send a user there, nor to a file that does not exist."""
    result = run(cli, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SPEC" not in result.stdout
    import re
    for doc in re.findall(r"[\w./-]+\.md\b", result.stdout):  # README.md, docs/..., reports
        assert os.path.isfile(os.path.join(REPO, doc)), doc


def test_a_grid_report_names_its_splits_in_the_caption(tmp_path):
    """Every results table says which images it was trained,
    validated and tested on (here as on a standard `tfds build cifar10`)."""
    code = r"""
import json, os, sys
from benchmarks import grid
out = sys.argv[1]
os.makedirs(os.path.join(out, "results"))
cfg = grid.variant_config("rules_smallconv", "bp", 1)
record = {"key": grid.run_key(cfg), "seed": 1, "rule": "bp",
          "card": {"sequential": True, "weight_transport": "continuously",
                   "held_activations": "all modules"},
          "val_accuracy": [0.4, 0.5], "test_accuracy": 0.49, "epoch_seconds": [3.0, 3.0],
          "splits": {"train": "cifar10:train[:10000]", "validation": "cifar10:train[45000:]",
                     "test": "cifar10:test"}}
with open(os.path.join(out, "results", "rules_smallconv.jsonl"), "w") as f:
    f.write(json.dumps(record) + "\n")
grid.report("rules_smallconv", out)
"""
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = (tmp_path / "reports" / "rules_smallconv.md").read_text()
    caption = text.split("| variant |")[0]
    assert "Trained on `cifar10:train[:10000]`, validated on `cifar10:train[45000:]`" in caption
    assert "tested once at the end on `cifar10:test`" in caption
    assert (tmp_path / "reports" / "rules_smallconv.png").read_bytes()[:4] == b"\x89PNG"
