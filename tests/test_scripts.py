"""What pip installs and what a tool reads: the console scripts of pyproject.toml's
``[project.scripts]`` beside the three documented command lines, and the rule registry's
explicit imports.

The scripts run from the venv's bin in a process whose ``import tensorflow`` fails: their
help and a mistake must not need it. ``pip install -e '.[cpu,dev]'`` (.ci/run) puts them
there; after editing ``[project.scripts]``, run it again.
"""

import ast
import os
import subprocess
import sys
import tomllib

import pytest

from conftest import CLIS, REPO, one_line, run_cli

# script: (the documented command line it is (conftest.CLIS), as its help names it; its
# entry; flags its --help names; a mistake in a value; what the one line then lists)
SCRIPTS = {
    "ssa-train": ("train", "python -m ssa_tf.train", "ssa_tf.train:run_main",
                  ("--rule=NAME", "--restart", "--set"), ["--model=vgg99"], "mlp, smallconv"),
    "ssa-search": ("search", "python tuning/search.py", "ssa_tf.tuning.command:run_main",
                   ("--tuner=NAME", "--max_trials=N", "--report_only"),
                   ["--tuner=grid"], "random, bayesian, hyperband"),
    "ssa-export": ("export", "python export/to_onnx.py", "ssa_tf.export.command:run_main",
                   ("--workdir=DIR", "--output=FILE", "--opset=N"),
                   ["--form=x", "--output=x.onnx", "--workdir=no/such/run"],
                   "auto, merged, factored"),
}


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
    """An environment whose ``import tensorflow`` fails loudly (a PYTHONPATH given, as
    for a worktree of the clone the package is installed from, stays after it)."""
    fake = tmp_path_factory.mktemp("fake_tf")
    (fake / "tensorflow").mkdir()
    (fake / "tensorflow" / "__init__.py").write_text(
        "raise ImportError('tensorflow imported before the flags were checked')\n")
    path = os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}


def script(name, *args, env, cwd):
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.access(path, os.X_OK), (
        f"{path} is not installed: pip install -e '.[cpu,dev]' (pyproject.toml's "
        "[project.scripts])")
    return subprocess.run([path, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_pyproject_installs_one_script_per_command_line():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {name: entry for name, (_, _, entry, *_) in SCRIPTS.items()}
    assert {cli for cli, *_ in SCRIPTS.values()} == set(CLIS)
    # each entry is a function of the installed package (tuning/ and export/ are not)
    for entry in scripts.values():
        module, function = entry.split(":")
        assert module.startswith("ssa_tf.") and function == "run_main"
        path = os.path.join(REPO, *module.split(".")) + ".py"
        tree = ast.parse(open(path).read())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_prints_its_help_and_exits_0_without_tensorflow(name, no_tensorflow,
                                                                   tmp_path):
    cli, command, _, flags, _, _ = SCRIPTS[name]
    result = script(name, "--help", env=no_tensorflow, cwd=tmp_path)  # anywhere, not a clone
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip() == ""
    assert f"usage: {name} " in result.stdout  # the help names the command that was run
    assert all(flag in result.stdout for flag in flags), result.stdout
    # the documented command line prints the same help under its own name
    documented = run_cli(cli, "--help", timeout=60)
    assert documented.returncode == 0, documented.stderr[-2000:]
    assert f"usage: {command} " in documented.stdout
    assert documented.stdout.replace(command, name) == result.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_scripts_unknown_flag_is_one_line_and_exit_2(name, no_tensorflow, tmp_path):
    line = one_line(script(name, "--no_such_flag=1", env=no_tensorflow, cwd=tmp_path))
    assert "no_such_flag" in line
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_scripts_bad_value_is_one_line_and_exit_2_before_tensorflow(name, no_tensorflow,
                                                                      tmp_path):
    *_, args, valid = SCRIPTS[name]
    line = one_line(script(name, *args, env=no_tensorflow, cwd=tmp_path))
    assert valid in line, line


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_each_documented_command_line_refuses_an_unknown_flag_with_exit_2(cli):
    line = one_line(run_cli(cli, "--no_such_flag=1", timeout=60))
    assert "no_such_flag" in line


# --------------------------------------------------------------------------
# The registry: one import line per rule file, read by a reader or a tool.
# --------------------------------------------------------------------------

RULES_DIR = os.path.join(REPO, "ssa_tf", "methods", "rules")


def test_the_registry_imports_each_rule_file_by_name_in_rules_order():
    from ssa_tf.methods import registry

    path = os.path.join(REPO, "ssa_tf", "methods", "registry.py")
    source = open(path).read()
    tree = ast.parse(source)
    imported = [a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                and n.module == "ssa_tf.methods.rules" for a in n.names]
    on_disk = sorted(f[:-3] for f in os.listdir(RULES_DIR)
                     if f.endswith(".py") and f != "__init__.py")
    # every rule file, each once, and nothing loaded by name at run time
    assert sorted(imported) == on_disk
    assert "importlib" not in source and "__import__" not in source
    # the import lines alone register a rule, in their order (--rule's, the README's table)
    assert [m.__name__.rsplit(".", 1)[1] for m in registry.FILES] == imported
    assert registry.NAMES == tuple(m.SPEC.name for m in registry.FILES)
    assert registry.NAMES[:4] == ("bp", "svd-bp", "dfa", "ssa")  # the README's table



def test_export_frontiers_unknown_group_is_one_line_and_exit_2_before_tensorflow(no_tensorflow):
    result = subprocess.run([sys.executable, "-m", "benchmarks.export_frontier", "--group=nope"],
                            cwd=REPO, env=no_tensorflow, capture_output=True, text=True,
                            timeout=120)
    assert "--group names no row: ['nope']" in one_line(result)
