"""A user's model file (``--model=FILE.py``): what can be checked before TensorFlow starts,
and the one line that names a failure inside the file.

    problem = model_file.static_problem("net.py")   # one line or None; no TensorFlow
    line = model_file.failure("net.py", error)      # "--model=net.py, line 7, in build: ..."

``static_problem`` compiles the file and reads its syntax tree without running it: a
syntax error (with its line), no ``build``, a ``build`` that cannot take
``(input_shape, num_classes)``, a literal ``MODULE_ENDS`` that is not a tuple of layer
names. What needs the model itself (its layers, shapes, output) is checked once
TensorFlow runs (``user_network``, which imports Keras when called). No imports beyond the
standard library at import time.

    network, ends = model_file.user_network("net.py", (32, 32, 3), 10)
"""

from __future__ import annotations

import ast
import os
import traceback


def static_problem(path) -> str | None:
    """The first problem of the model file at ``path`` as one line, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError as e:
        return f"--model={path} is not UTF-8 text (byte {e.start}: {e.reason})"
    except OSError as e:
        return f"--model={path} cannot be read: {e.strerror or e}"
    try:
        # compile, not just parse: it also finds what only the compiler refuses
        # ('return' outside a function, a misplaced nonlocal, ...)
        compile(source, path, "exec", dont_inherit=True)
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        return syntax_line(path, e)
    except ValueError as e:  # source with a null byte
        return f"--model={path} cannot be compiled: {e}"
    build, ends = None, None
    for node in _top_level(tree):
        if "build" in _bound_names(node):
            build = node
        if "MODULE_ENDS" in _bound_names(node):
            ends = node
    if build is None:
        return f"--model={path} defines no build(input_shape, num_classes)"
    if isinstance(build, (ast.FunctionDef, ast.AsyncFunctionDef)):
        problem = _signature_problem(build)
        if problem:
            return f"--model={path}, line {build.lineno}: {problem}"
    if isinstance(ends, (ast.Assign, ast.AnnAssign)) and ends.value is not None:
        try:
            value = ast.literal_eval(ends.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None  # computed: checked when the file runs
        problem = module_ends_problem(value)
        if problem:
            return f"--model={path}, line {ends.lineno}: {problem}"
    return None


def module_ends_problem(ends) -> str | None:
    """Why ``ends`` (a file's ``MODULE_ENDS``) is not a tuple of layer names, or None."""
    if isinstance(ends, str):
        return (f"MODULE_ENDS = {ends!r} is one string, not a tuple of layer names; write "
                f"({ends!r},)")
    if not isinstance(ends, (tuple, list)) or not all(isinstance(n, str) for n in ends):
        return f"MODULE_ENDS must be a tuple of layer names, got {ends!r}"
    return None


def syntax_line(path, error: SyntaxError) -> str:
    """``--model=FILE, line N: SyntaxError: what`` for a syntax error in the file."""
    where = f", line {error.lineno}" if error.lineno else ""
    text = (error.text or "").strip()
    shown = f": {text[:80]}" if text else ""
    return f"--model={path}{where}: {type(error).__name__}: {error.msg}{shown}"


def failure(path, error: BaseException) -> str:
    """One line naming ``error`` (raised while the file ran, or inside its ``build``) and
    the line of the user's file it came from: the last frame of the traceback that is in
    the file."""
    if isinstance(error, SyntaxError) and _same_file(error.filename, path):
        return syntax_line(path, error)
    mine = [f for f in traceback.extract_tb(error.__traceback__)
            if _same_file(f.filename, path)]
    where = ""
    if mine:
        frame = mine[-1]
        where = f", line {frame.lineno}" + (f", in {frame.name}"
                                            if frame.name != "<module>" else "")
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"--model={path}{where}: {type(error).__name__}" + (f": {text}" if text else "")


def _same_file(a, b) -> bool:
    return bool(a) and os.path.realpath(a) == os.path.realpath(b)


def _top_level(tree):
    """The statements that run when the module is imported (inside top-level if/try/with
    blocks too, not inside functions or classes)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        yield node
        if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.TryStar)):
            for field in ("body", "orelse", "finalbody"):
                todo.extend(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                todo.extend(handler.body)


def _bound_names(node) -> set:
    """The names a top-level statement binds (a star import may bind anything)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = {(a.asname or a.name).split(".")[0] for a in node.names}
        return names | ({"build", "MODULE_ENDS"} if "*" in names else set())
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _signature_problem(fn) -> str | None:
    """Why ``def build(...)`` cannot be called as build(input_shape, num_classes), or None."""
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    required = len(positional) - len(a.defaults)
    required_keywords = [k.arg for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    if (len(positional) < 2 and a.vararg is None) or required > 2 or required_keywords:
        shown = ast.unparse(a)
        return (f"build({shown}) cannot be called as build(input_shape, num_classes); "
                "give it those two arguments")
    return None


def user_network(path, input_shape, num_classes, dataset=None):
    """(the ``keras.Model`` that ``build(input_shape, num_classes)`` in the user's file
    returns, the file's ``MODULE_ENDS`` or None: the layers after which its local modules
    end, to override the automatic split); ``errors.UsageError``, one line, when the file
    cannot give a model for data of ``input_shape`` (``dataset``'s, named in the line):
    a failure while the file runs names its line (``ssa_tf.model_file``)."""
    import importlib.util

    import keras

    from ssa_tf.errors import UsageError

    spec = importlib.util.spec_from_file_location("ssa_tf_user_model", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        build = getattr(module, "build", None)
        if not callable(build):
            raise UsageError(f"--model={path} defines no build(input_shape, num_classes)")
        network = build(tuple(input_shape), int(num_classes))
    except UsageError:
        raise
    except Exception as e:  # the user's code: any failure in it is their input problem
        raise UsageError(failure(path, e)) from None
    if not isinstance(network, keras.Model):
        raise UsageError(f"--model={path}: build() returned a {type(network).__name__}, "
                         "not a keras.Model")
    try:
        declared = tuple(network.inputs[0].shape[1:])
    except (AttributeError, ValueError, IndexError):  # a Sequential without keras.Input
        raise UsageError(f"--model={path}: build() returned a model without an input shape; "
                         "begin it with keras.Input(input_shape)") from None
    shape = tuple(int(d) for d in input_shape)
    if len(declared) != len(shape) or any(d is not None and d != e
                                          for d, e in zip(declared, shape)):
        data = f"the data ({dataset})" if dataset else "the data"
        raise UsageError(f"--model={path}: the model takes inputs of shape {declared}; {data} "
                         f"has shape {shape} (make its keras.Input from build's input_shape)")
    out = tuple(network.outputs[0].shape[1:]) if network.outputs else ()
    if out != (int(num_classes),):
        raise UsageError(f"--model={path}: the model's output has shape {out}; the dataset "
                         f"has {num_classes} classes (return one logit per class)")
    ends = getattr(module, "MODULE_ENDS", None)
    problem = None if ends is None else module_ends_problem(ends)
    if problem:
        raise UsageError(f"--model={path}: {problem}")
    return network, None if ends is None else tuple(ends)
