"""What the README promises a new user, held against the code (issue 26)."""

import os
from conftest import REPO

README = open(os.path.join(REPO, "README.md")).read()


def test_the_readme_says_when_the_first_cut_comes():
    from ssa_tf.config import RunConfig
    from ssa_tf.training.rank import cut_epochs

    r = RunConfig().rank
    first = cut_epochs(100, r.start, r.interval)[0]
    row = next(l for l in README.splitlines() if l.startswith("| `rank.start`"))
    assert f"the first cut comes after epoch {first}" in row
    assert f"at least {first + 1} epochs" in row
    # and the short run it names really cuts after epoch 1
    assert "`--epochs=2 --set rank.tau=0.9 --set rank.interval=1` cuts after epoch 1" in row
    assert cut_epochs(2, r.start, 1) == [1]


def test_the_readme_explains_the_skipped_tests_and_the_logged_terms():
    assert "SSA_TF_TFDS_DIR" in README and "skipped" in README
    for metric in ("feedback_dot_output", "readout_ce", "align_term", "ortho_term"):
        assert f"`{metric}`" in README, metric


def test_both_presets_adjust_the_rate_at_cuts():
    from ssa_tf.config import presets

    for name in ("cifar100", "imagenet"):
        values = presets.load(name).values("ssa")
        assert values["rank.warmup_steps"] > 0 and values["rank.tau"] is not None
        assert "rank.warmup_steps" not in presets.load(name).values("bp")  # no cuts, no ramp


def test_the_readme_says_its_words_before_using_them():
    # issue 26, item 11: "the seed's", routes and cards met a newcomer unexplained
    words = README.index("Words used below")
    for term in ("*rule*", "*card*", "*module*", "*the seed*"):
        assert README.index(term) > words
    assert words < README.index("the seed's") and words < README.index("card")
    assert README.index("In plain words") < README.index("## Quick start")


def test_third_party_deprecation_notices_stay_out_of_the_test_summary(tmp_path):
    # issue 26, item 7: 4,201 warnings (Keras, TensorFlow, tf2onnx notices) in the summary
    import subprocess
    import sys

    test = tmp_path / "test_notice.py"
    test.write_text(
        "import warnings\n\n\ndef test_notice():\n"
        "    warnings.warn_explicit('old', DeprecationWarning, 'core.py', 1,\n"
        "                           module='keras.src.backend.tensorflow.core')\n"
        "    warnings.warn_explicit('mine', UserWarning, 'x.py', 1, module='ssa_tf.x')\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         os.path.join(REPO, "pyproject.toml"), "--rootdir", str(tmp_path), str(test)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "1 passed, 1 warning" in result.stdout, result.stdout  # only our own notice


def test_the_headline_table_in_the_docs_is_the_one_the_records_give():
    """README.md and ACCURACY.md hold the table benchmarks.tables renders from
    benchmarks/results, not a hand copy."""
    from benchmarks import tables

    table = tables.render()
    assert table.count("\n") == 1 + len(tables.ROWS)
    for path in tables.DOCUMENTS:
        with open(path) as f:
            text = f.read()
        assert tables.replace(text, table) == text, f"{path}: python -m benchmarks.tables"
