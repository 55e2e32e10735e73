"""The coefficient search's report (ssa_tf.tuning.report) on made-up trials, no search
run: the noise band and whether there is a winner, what the report prints, the
sensitivity plot, best.flags and the suggested training command. The search itself
is tests/test_tuning.py.
"""

import json
import os
import re

import pytest

from ssa_tf.tuning import report
from tuning_helpers import small_search


def _reported_search(tmp_path):
    """A search folder with its search.json and no trials run: for report() alone."""
    cfg = small_search(tmp_path)
    os.makedirs(cfg.project)
    with open(os.path.join(cfg.project, "search.json"), "w") as f:
        json.dump({"config": cfg.to_json(), "train_split": "t", "validation_split": "v",
                   "validation_examples": 400}, f)
    return cfg


def _trial(i, score):
    return {"trial_id": str(i), "status": "COMPLETED", "score": score,
            "hyperparameters": {"values": {"alpha": 1.0, "beta": 0.01 * (i + 1), "gamma": 0.1}}}


def test_the_noise_band_decides_whether_there_is_a_winner(tmp_path):
    assert report.noise_band(0.5, 400) == pytest.approx(0.0707, abs=1e-4)
    cfg = _reported_search(tmp_path)

    tied = report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.53), _trial(2, 0.20)])
    assert tied["best"] is None and tied["top"]["trial"] == 2
    assert not os.path.exists(os.path.join(cfg.project, "best.flags"))
    clear = report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.62)])
    assert clear["best"]["trial"] == 2
    assert os.path.exists(os.path.join(cfg.project, "best.flags"))


# --------------------------------------------------------------------------
# The sensitivity plot and the printed verdict.
# --------------------------------------------------------------------------

def test_sensitivity_plot_marks_failed_trials(tmp_path):
    cfg = small_search(tmp_path, learning_rate_range=(1e-4, 1e-2))
    rows = [
        {"trial": "0", "alpha": 1.0, "beta": 0.01, "gamma": 0.1, "lr": 3e-4, "val_accuracy": 0.9,
         "epochs": 1, "status": "COMPLETED", "seconds": 1.0, "reason": ""},
        {"trial": "1", "alpha": 0.2, "beta": 0.5, "gamma": 5.0, "lr": 1e-2, "val_accuracy": None,
         "epochs": 1, "status": "FAILED", "seconds": 1.0, "reason": "Diverged: loss nan"},
    ]
    path = str(tmp_path / "s.png")
    report.plot_sensitivity(rows, cfg, path, rows[0], 0.05, rows[0])  # four panels, lr log
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"
    assert report.reason("Traceback ...\nkeras_tuner.src.errors.FailedTrialError: x: y") == \
        "FailedTrialError: x: y"


def test_the_report_prints_the_noise_band_and_the_tied_trials(tmp_path, capsys):
    """The search says how wide its noise is, names the trials
    (numbered as KerasTuner's 'Running Trial #N') tied inside it, and calls no winner."""
    cfg = _reported_search(tmp_path)

    report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.53), _trial(2, 0.20)])
    out = capsys.readouterr().out
    assert "no winner: 2 trials (#2, #1) lie within 0.0706 of the highest, 0.5300 (trial #2)" \
        in out and "400 validation examples" in out and "no best.flags written" in out
    assert "best:" not in out
    report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.62)])
    out = capsys.readouterr().out
    assert "best: trial #2, " in out and "0.1200 above the next (noise band 0.0686)" in out


def test_the_sensitivity_plot_says_what_the_verdict_says(tmp_path):
    """The plot once starred a best trial when the search called no winner,
    showed no band, and drew gamma's "seed value" at 0.1 where SSA's default is 0."""
    cfg = small_search(tmp_path)
    rows = [{"trial": k + 1, "alpha": 1.0, "beta": b, "gamma": g, "lr": 1e-3,
             "val_accuracy": acc, "epochs": 1, "status": "COMPLETED", "seconds": 1.0,
             "reason": ""} for k, (b, g, acc) in enumerate([(0.01, 0.1, 0.50), (0.1, 1.0, 0.52),
                                                             (0.5, 5.0, 0.20)])]
    top = rows[1]
    tied_fig = report.sensitivity_figure(rows, cfg, top, 0.07, winner=None)
    labels = {t.get_text() for t in tied_fig.axes[0].get_legend().get_texts()}
    assert "winner" not in labels and "tied with the highest (no winner)" in labels
    assert "noise band under the highest" in labels and "seed value" not in labels
    assert "no winner: 2 trials" in tied_fig._suptitle.get_text()
    gamma = [ax for ax in tied_fig.axes if ax.get_xlabel().startswith("gamma")][0]
    assert gamma.get_xlabel() == "gamma (default 0: off the log axis)"  # SSA's default
    won = report.sensitivity_figure(rows, cfg, top, 0.01, winner=top)
    labels = {t.get_text() for t in won.axes[0].get_legend().get_texts()}
    assert "winner" in labels and "winner: trial #2" in won._suptitle.get_text()


# --------------------------------------------------------------------------
# best.flags and the suggested command; the output.
# --------------------------------------------------------------------------

def _suggested_workdir(out):
    (line,) = [l for l in out.splitlines() if l.startswith("train it: ")]
    return re.search(r"--workdir=(\S+)", line).group(1)


def test_the_suggested_command_trains_into_a_workdir_that_does_not_exist(tmp_path, capsys):
    """The suggested command once always said --workdir=runs/best, which
    after one use holds a finished run. It names a folder of the search that does not
    exist yet, another one once that one does."""
    cfg = _reported_search(tmp_path)
    states = [_trial(0, 0.50), _trial(1, 0.62)]
    report.report(cfg.project, states)
    first = os.path.abspath(_suggested_workdir(capsys.readouterr().out))
    assert not os.path.exists(first)
    assert os.path.dirname(first) == os.path.abspath(cfg.project)
    os.makedirs(first)  # the user trained it
    report.report(cfg.project, states)
    second = os.path.abspath(_suggested_workdir(capsys.readouterr().out))
    assert second != first and not os.path.exists(second)
    assert os.path.dirname(second) == os.path.abspath(cfg.project)


def test_best_flags_only_when_the_best_is_outside_the_noise_band(tmp_path, capsys):
    """best.flags was once written after a single trial, though the README
    says only "when the best trial is outside the noise band of the validation split":
    one completed trial (or an unknown band) has nothing it is shown to beat."""
    cfg = _reported_search(tmp_path)
    flags = os.path.join(cfg.project, "best.flags")
    failed = {"trial_id": "1", "status": "FAILED", "score": None, "message": "Diverged: x",
              "hyperparameters": {"values": {"alpha": 1.0, "beta": 0.5, "gamma": 0.1}}}
    for states in ([_trial(0, 0.62)], [_trial(0, 0.62), failed]):
        one = report.report(cfg.project, states)
        out = capsys.readouterr().out
        assert one["best"] is None and one["top"]["trial"] == 1
        assert not os.path.exists(flags)
        assert "no winner: 1 completed trial, nothing to compare it with" in out, out
        assert "no best.flags written" in out and "train it:" not in out
    assert report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.62)])["best"]["trial"] == 2
    assert os.path.exists(flags)
    # a search whose validation split's size is unknown cannot tell: no winner either
    with open(os.path.join(cfg.project, "search.json")) as f:
        saved = json.load(f)
    del saved["validation_examples"]
    with open(os.path.join(cfg.project, "search.json"), "w") as f:
        json.dump(saved, f)
    assert report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.62)])["best"] is None
    assert not os.path.exists(flags)
    assert "the size of the validation split is unknown" in capsys.readouterr().out


def test_the_report_says_1_epoch_and_numbers_each_trial_once(tmp_path, capsys):
    """Once "after 1 epochs", and "trial #2 (trial_1)": one trial under
    two numbers. Trials are #N as KerasTuner's "Running Trial #N", nothing else."""
    cfg = _reported_search(tmp_path)
    failed = {"trial_id": "2", "status": "FAILED", "score": None, "message": "Diverged: x",
              "hyperparameters": {"values": {"alpha": 1.0, "beta": 0.5, "gamma": 0.1}}}
    report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.62), failed])
    out = capsys.readouterr().out
    assert "best: trial #2, val_accuracy 0.6200 after 1 epoch," in out, out
    assert "trial #3 failed: Diverged: x" in out
    assert "epochs" not in out and "trial_" not in out
    with open(os.path.join(cfg.project, "best.flags")) as f:
        text = f.read()
    assert "(trial #2, 1 epoch;" in text and "1 epochs" not in text and "trial_" not in text
    report.report(cfg.project, [_trial(0, 0.50), _trial(1, 0.53)])  # tied: no winner
    assert "trial_" not in capsys.readouterr().out
