"""What the README and the other documents promise, held against the code and the tree."""

import glob
import os
import re

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
    # "the seed's", routes and cards once met a newcomer unexplained
    words = README.index("Words used below")
    for term in ("*rule*", "*card*", "*module*", "*the paper*"):
        assert README.index(term) > words
    assert words < README.index("the paper's") and words < README.index("card")
    assert README.index("In plain words") < README.index("## Quick start")


def test_third_party_deprecation_notices_stay_out_of_the_test_summary(tmp_path):
    # once 4,201 warnings (Keras, TensorFlow, tf2onnx notices) in the summary
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


def readme_python_blocks():
    import re
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_every_python_block_in_the_readme_runs(tmp_path):
    # the library snippet once used names it never defined, a parameter
    # SSAModel does not have, an import ssa_tf did not offer, and no compile
    import subprocess
    import sys

    blocks = readme_python_blocks()
    assert blocks, "the README has no Python block"
    for i, block in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(block)
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=600, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2",
                              "KERAS_HOME": str(tmp_path / ".keras")})
        assert result.returncode == 0, f"README block {i}:\n{result.stderr[-3000:]}"
        if "merge(model)" in block:
            lines = result.stdout.strip().splitlines()
            assert lines[0].startswith("rule ssa: sequential no")
            assert float(lines[-1]) < 1e-4  # the merged model computes the SSA model
            assert (tmp_path / "ssa_model.keras").is_file()


def _indented_commands():
    return [l.strip() for l in README.splitlines() if l.startswith("    python3 -m venv")]


def test_the_ci_runs_the_readmes_test_command_which_shows_skip_reasons():
    # -q once hid the skip reasons the README promised; no duration given;
    # [dev] pinned tensorflow-cpu, so .[gpu] + .[dev] installed both TensorFlow wheels
    import tomllib
    test_command = next(c for c in _indented_commands() if "pytest" in c)
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert test_command in f.read()
    assert " -rs " in test_command and "'.[cpu,dev]'" in test_command
    assert "minutes on 2 CPU cores" in README[:README.index(test_command)]
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert not [p for p in extras["dev"] if p.startswith("tensorflow")]
    assert any(p.startswith("tensorflow-cpu") for p in extras["cpu"])
    assert any(p.startswith("tensorflow[and-cuda]") for p in extras["gpu"])


def test_the_readme_activates_the_venv_before_its_first_bare_python():
    # after the quick start every command was once a bare `python`
    first_bare = README.index("    python -m ssa_tf.train")
    assert README.index(". .venv/bin/activate") < first_bare


def test_the_quick_start_says_what_it_runs_and_what_to_expect():
    # once no epochs, accuracy or time next to the command
    from ssa_tf.config import RunConfig
    d = RunConfig()
    quick = README[README.index("## Quick start"):README.index("**Every later command")]
    assert f"for {d.train.epochs} epochs" in quick and d.model.model in quick
    assert d.data.dataset in quick and d.rule.name.upper() in quick
    assert "test accuracy 0.89" in quick and " s training" in quick


def test_every_setting_is_in_the_readmes_settings_table():
    # rule.feedback_lr, feedback_decay and feedback_weight_decay were once
    # in --help but not in the table
    from ssa_tf.config.schema import FIELD_HELP
    from ssa_tf.config.validate import flag
    table = README[README.index("### Settings"):README.index("## Results")]
    daily = README[README.index("The daily flags"):README.index("### Settings")]
    missing = [f"{s}.{f}" for s, fields in FIELD_HELP.items() for f in fields
               if f"`{s}.{f}`" not in table and f"`{flag(f'{s}.{f}')}`" not in daily
               and f"`{flag(f'{s}.{f}')}" not in daily]
    assert missing == [], missing


def test_the_readme_says_the_paper_not_the_seed_and_names_no_machine_path():
    # "the seed" (the paper's supplementary) beside --seed; a path of
    # this project's machines given to users
    assert "the seed" not in README.lower() and "../shared" not in README


# "the seed's", "the seed" and a word that is not a number ("the seed 2" is a random
# seed) and "[choice beyond the seed]": the paper's supplementary once went by that name
# beside --seed and cfg.seed
_SEED_AS_PAPER = re.compile(r"\bthe\s+(?:#\s+)?seed(?:['’]s\b|\s+(?!\d)\w+)"
                            r"|\bbeyond\s+the\s+seed\b", re.I)


def seed_as_paper(name, text):
    """Each place ``text`` says "the seed" for the paper, as "file:line: phrase"."""
    return [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {' '.join(m.group(0).split())}"
            for m in _SEED_AS_PAPER.finditer(text)]


def test_the_seed_check_finds_the_old_name():
    text = ("spatial (the seed's)\nas The Seed does\nbeyond the\nseed says\n"
            "    # keep the\n    # seed's cut\n"
            "[choice beyond the seed]\nthe seed 2 run\nthe seeds\nthe seed.\nseeds\n"
            "the seedling\n")
    assert seed_as_paper("x.py", text) == [
        "x.py:1: the seed's", "x.py:2: The Seed does", "x.py:3: beyond the seed",
        "x.py:5: the # seed's", "x.py:7: beyond the seed"]


def test_the_package_and_the_documents_say_the_paper_not_the_seed():
    names = sorted(glob.glob(os.path.join(REPO, "ssa_tf", "**", "*.py"), recursive=True))
    names += [os.path.join(REPO, n) for n in ("README.md", "BUILD.md")]
    names += sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
    found = []
    for name in names:
        with open(name) as f:
            found += seed_as_paper(os.path.relpath(name, REPO), f.read())
    assert found == [], found


# -- the documents name only what exists ----------------------------------------------

def _documents():
    """README.md, BUILD.md, docs/*.md and the reports: (path from the repository, text)."""
    names = ["README.md", "BUILD.md"] + sorted(
        os.path.relpath(f, REPO) for folder in ("docs", "benchmarks/reports")
        for f in glob.glob(os.path.join(REPO, folder, "*.md")))
    for name in names:
        with open(os.path.join(REPO, name)) as f:
            yield name, f.read()


# a path that starts at one of the repository's top-level folders; <placeholder> and *
# are globs, so `benchmarks/results/<grid>.jsonl` must match at least one file
_TOP = ("ssa_tf", "tests", "benchmarks", "tuning", "export", "examples", "docs", ".ci")
_PATH = r"(?<![\w./<>-])((?:%s)/[\w./<>*-]*[\w/>*])" % "|".join(map(re.escape, _TOP))
_LINK = r"\]\(([^)\s]+)\)"


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    with open(path) as f:
        return {_slug(l.lstrip("#")) for l in f.read().splitlines() if l.startswith("#")}


def missing_paths(text, where="."):
    """The repository paths (anywhere in ``text``, backticks or not) and the targets of
    relative Markdown links (from the folder ``where``) that do not exist."""
    missing = []
    for path in re.findall(_PATH, text):
        pattern = re.sub(r"<[^>]*>", "*", path)
        found = (glob.glob(os.path.join(REPO, pattern)) if "*" in pattern
                 else os.path.exists(os.path.join(REPO, pattern)))
        if not found:
            missing.append(path)
    for target in re.findall(_LINK, text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(REPO, where, file))
        if not os.path.exists(full):
            missing.append(target)
        elif anchor and (not full.endswith(".md") or anchor not in _anchors(full)):
            missing.append(target)
    return missing


def test_the_path_check_finds_an_invented_path():
    # the check can fail: a moved file, a missing link target, a heading that is not there
    text = ("`ssa_tf/export/graph.py`, `ssa_tf/nn/graph.py`, benchmarks/reports/NOSUCH.md, "
            "`benchmarks/results/<grid>.jsonl`, `benchmarks/nosuch_<grid>.py`, "
            "[a](docs/NOSUCH.md), [b](docs/ALGORITHM.md#layout), [c](docs/ARCHITECTURE.md#layout)")
    assert set(missing_paths(text)) == {"ssa_tf/export/graph.py", "benchmarks/reports/NOSUCH.md",
                                        "benchmarks/nosuch_<grid>.py", "docs/NOSUCH.md",
                                        "docs/ALGORITHM.md#layout"}


# files the lab notebook names as deleted, with the commit that still holds them
_HISTORY = {"benchmarks/rank_speed.py", "benchmarks/export_resnet32.py",
            "benchmarks/search/SEARCH.md"}


def test_every_path_the_documents_name_exists():
    missing = {name: m for name, text in _documents()
               if (m := [p for p in missing_paths(text, os.path.dirname(name) or ".")
                         if not (name.endswith("NOTEBOOK.md") and p in _HISTORY)])}
    assert missing == {}, missing


def _code_and_documents():
    """Every source and document file that may cite a document's section."""
    for top in ("ssa_tf", "tests", "benchmarks", "tuning", "export", "examples", "docs"):
        for folder, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d not in ("results", "__pycache__")]
            for f in files:
                if f.endswith((".py", ".md")):
                    path = os.path.join(folder, f)
                    with open(path) as fh:
                        yield os.path.relpath(path, REPO), fh.read()
    for name in ("README.md", "BUILD.md", "pyproject.toml"):
        with open(os.path.join(REPO, name)) as f:
            yield name, f.read()


def _headings(name):
    with open(os.path.join(REPO, name)) as f:
        return [l.lstrip("#").strip() for l in f.read().splitlines() if l.startswith("#")]


def wrong_citations(name, text):
    """The citations in ``text`` (of the file ``name``) of a section that is not there:
    "docs/ALGORITHM.md §5" and 'docs/ARCHITECTURE.md, "Exit codes"' name a heading."""
    algorithm = [h.split()[0] for h in _headings("docs/ALGORITHM.md") if h.startswith("§")]
    wrong = []
    for old in re.findall(r"BUILD\.md,?\s+(?:algorithm\s+)?§\w+", text):
        wrong.append(f"{name}: {old} (the algorithm is docs/ALGORITHM.md)")
    for section in re.findall(r"ALGORITHM\.md\)? §(\d+[a-z]?)", text):
        if f"§{section}" not in algorithm:
            wrong.append(f"{name}: docs/ALGORITHM.md §{section}")
    for doc, title in re.findall(r"((?:[\w.-]+/)*[A-Z_]+\.md)`?,? \"([^\"\n]+)\"", text):
        here = os.path.join(os.path.dirname(name), doc)
        doc = here if os.path.isfile(os.path.join(REPO, here)) else doc
        if not os.path.isfile(os.path.join(REPO, doc)):
            wrong.append(f"{name}: {doc} does not exist")
        elif not any(h.startswith(title) for h in _headings(doc)):
            wrong.append(f'{name}: {doc}, "{title}"')
    return wrong


def test_the_citation_check_finds_a_moved_section():
    text = ('(docs/ALGORITHM.md §5, docs/ALGORITHM.md §8) BUILD.md, "Exit codes"; '
            'docs/ARCHITECTURE.md, "Exit codes"; NOSUCH.md, "Set-up"; BUILD.md, algorithm §2')
    assert wrong_citations("x.py", text) == [
        "x.py: BUILD.md, algorithm §2 (the algorithm is docs/ALGORITHM.md)",
        "x.py: docs/ALGORITHM.md §8", 'x.py: BUILD.md, "Exit codes"',
        "x.py: NOSUCH.md does not exist"]


def test_every_cited_section_exists():
    # a section that moves takes its citations with it
    wrong = [w for name, text in _code_and_documents() if name != "tests/test_docs.py"
             for w in wrong_citations(name, text)]  # this file's are invented
    assert wrong == [], wrong
    assert [h.split()[0] for h in _headings("docs/ALGORITHM.md")[1:8]] == [
        "§1", "§2", "§3", "§3a", "§4", "§5", "§6"]  # the numbering the code cites


def test_build_md_indexes_every_document():
    # BUILD.md keeps the set-up and the tests, and points at every other document
    with open(os.path.join(REPO, "BUILD.md")) as f:
        build = f.read()
    assert "## Set-up" in build and "## Tests" in build
    for doc in glob.glob(os.path.join(REPO, "docs", "*.md")):
        name = os.path.relpath(doc, REPO)
        assert f"]({name})" in build, f"BUILD.md does not link {name}"
