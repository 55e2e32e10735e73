"""The shape of the code: no import cycle, no file over 400 lines, every entry point's
``--help`` exits 0 (docs/ARCHITECTURE.md)."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ssa_tf", "tuning", "export", "benchmarks")
MAX_LINES = 400


def _sources(folders=PACKAGES):
    for folder in folders:
        for dirpath, dirnames, names in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(dirpath, name), ROOT)


def _module(path):
    parts = path[:-3].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """module -> the project's modules it imports (anywhere in the file: a function's
    import counts, since a cycle through one is still a cycle to a reader)."""
    modules = {_module(p): p for p in _sources()}
    graph = {}
    for name, path in modules.items():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                # the most specific module of the project the name reaches
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
                    break
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 80 and "ssa_tf.methods.routes" in graph["ssa_tf.methods.base"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_file_over_400_lines():
    long = {}
    for path in _sources(PACKAGES + ("tests",)):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[path] = n
    assert long == {}


def _entry_points():
    out = []
    for path in _sources():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            if 'if __name__ == "__main__":' in f.read():
                out.append(path)
    return out


@pytest.mark.parametrize("path", _entry_points())
def test_every_entry_point_prints_help_and_exits_0(path):
    # the promised command lines run files (tuning/search.py); the rest are modules
    top = path.split(os.sep)[0]
    argv = [path] if top in ("tuning", "export") else ["-m", _module(path)]
    env = dict(os.environ, KERAS_HOME=os.path.join(ROOT, ".keras"))
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) >= 3 and "Traceback" not in result.stderr
