"""What every command-line entry point shares: one line and exit status 2 for a user's
mistake, a short ``--help`` that exits 0, and absl flag parsing that never dumps a
usage text or a traceback.

    from ssa_tf import cli
    cli.run(main, help_text=HELP)   # instead of absl.app.run(main)

No TensorFlow import: the CLIs check their flags before TensorFlow starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import time

from absl import app, flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


# --------------------------------------------------------------------------
# The run's settings as flags: a handful daily, --set for any other field.
# --------------------------------------------------------------------------

def _run_flags():
    from ssa_tf import config as cfg_lib
    from ssa_tf.config import presets

    d = cfg_lib.RunConfig()
    return {  # flag: (SECTION.FIELD, metavar, help)
        "dataset": ("data.dataset", "NAME", f"{', '.join(cfg_lib.DATASETS)} ({d.data.dataset})"),
        "data_dir": ("data.data_dir", "DIR", "TFDS data_dir holding the prepared dataset"),
        "model": ("model.model", "NAME|FILE", f"{', '.join(cfg_lib.MODELS)} ({d.model.model}), or "
                  "your .py with build(input_shape, num_classes)"),
        "rule": ("rule.name", "NAME", f"learning rule: {', '.join(cfg_lib.RULE_NAMES)} "
                 f"({d.rule.name}); --{OLD_RULE_FLAG}=NAME is an alias"),
        "epochs": ("train.epochs", "N", f"training epochs ({d.train.epochs})"),
        "batch_size": ("train.batch_size", "N", f"global batch size ({d.train.batch_size})"),
        "learning_rate": ("train.learning_rate", "R", "Adam rate (default: the rule's)"),
        "workdir": ("runtime.workdir", "DIR", "output folder (default "
                    "runs/<dataset>-<model>-<rule>-<time>)"),
        "seed": ("seed", "N", f"random seed ({d.seed})"),
        "preset": (None, "NAME|FILE", f"{', '.join(presets.NAMES)}, your .py; flags win"),
    }


# --rule's name before it had one word: an alias (the same effect; both given must agree)
OLD_RULE_FLAG = "mode"
RUN_FLAGS = _run_flags()


def define_run_flags(names):
    """The daily flags ``names`` (of RUN_FLAGS), and --set SECTION.FIELD=VALUE; with
    --rule, its alias --mode."""
    for name in names:
        flags.DEFINE_string(name, None, RUN_FLAGS[name][2])
    if "rule" in names:
        flags.DEFINE_string(OLD_RULE_FLAG, None, "an alias of --rule")
    flags.DEFINE_multi_string("set", [], "SECTION.FIELD=VALUE for any setting (repeatable)")


def run_flags_help(names):
    """One line per daily flag, for a --help text."""
    return "\n".join(textwrap.fill(f"  {'--' + n + '=' + RUN_FLAGS[n][1]:<21}{RUN_FLAGS[n][2]}",
                                   84, subsequent_indent=" " * 23) for n in names)


def run_config_from_flags(names, extra=()):
    """The run's settings: defaults < preset < the daily flags given < ``extra`` < --set.

    ValueError (one line) for a malformed value."""
    from ssa_tf import config as cfg_lib
    from ssa_tf.config import presets

    values = {n: flags.FLAGS[n].value for n in names}
    if "rule" in names:
        values["rule"] = given_rule()
    given = _apply_flags(cfg_lib.RunConfig(), names, values, extra)
    if not values.get("preset"):
        return given
    # the preset sees what was asked without it (the rule, its route), then sits under it
    preset = presets.values(presets.load(values["preset"]), given)
    cfg = _overridden(cfg_lib.RunConfig(), [f"{k}={_text(v)}" for k, v in preset.items()])
    return _apply_flags(cfg, names, values, extra)


def given_rule():
    """The rule named by --rule or its alias --mode (None: neither); ValueError when both
    are given and differ."""
    rule, old = flags.FLAGS["rule"].value, flags.FLAGS[OLD_RULE_FLAG].value
    if rule is not None and old is not None and rule != old:
        raise ValueError(f"--rule={rule} and --{OLD_RULE_FLAG}={old} differ (--{OLD_RULE_FLAG} "
                         "is an alias of --rule); give one of them")
    return old if rule is None else rule


def _apply_flags(cfg, names, values, extra):
    for name in names:
        field = RUN_FLAGS[name][0]
        if field is not None and values[name] is not None:
            try:
                cfg = cfg.with_overrides([f"{field}={values[name]}"])
            except ValueError as e:
                raise ValueError(f"--{name}={values[name]}: {str(e).rsplit(': ', 1)[-1]}") \
                    from None
    return _overridden(cfg, [*extra, *flags.FLAGS.set])


def _overridden(cfg, assignments):
    """``cfg.with_overrides(assignments)``; a setting named as files of an older version
    name it (``method.beta``, ``beta``: ``config.legacy``) is refused, its message naming
    today's name."""
    from ssa_tf.config import legacy

    for text in assignments:
        try:
            cfg = cfg.with_overrides([text])
        except ValueError as e:
            path = text.partition("=")[0].strip()
            now = legacy.read_name(path)
            raise ValueError(f"{e} ({path} is {now} now)" if now != path else str(e)) from None
    return cfg


def default_workdir(cfg):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = os.path.splitext(os.path.basename(cfg.model.model))[0]  # a user's file: its name
    return os.path.join("runs", f"{cfg.data.dataset}-{model}-{cfg.rule.name}-{stamp}")


def _text(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C++ start-up chatter that no log level reaches)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """Import TensorFlow without its start-up lines: TensorFlow 2.21 prints its oneDNN
    and absl notices twice, before absl's logging starts, whatever TF_CPP_MIN_LOG_LEVEL
    says. A failed import still raises (its message is in the exception)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        with quiet_stderr():
            import tensorflow
    except ImportError as e:
        usage_error(f"TensorFlow cannot be imported ({e}); install it with "
                    "pip install -e '.[cpu]' (or '.[gpu]' for NVIDIA GPUs)")
    return tensorflow


def fail(error):
    """Print ``error: <error>`` (an ``ssa_tf.errors.Error``) on stderr and exit with its
    status."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.status)


def usage_error(message):
    """Print ``error: <message>`` on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl's parser, with every problem (a bad flag, a missing or unreadable
    ``--flagfile``) reported as one line, status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        usage_error(str(e).replace("ERROR:: ", ""))
    except UnicodeDecodeError:
        usage_error("a --flagfile is not a text file of flags (one --name=value per line)")
    except OSError as e:
        usage_error(f"cannot read a --flagfile: {e.strerror or e}")


def run(main, help_text=None, command=None):
    """absl's ``app.run`` with our parser; ``--help`` prints ``help_text`` and exits 0.

    ``command`` is how ``help_text`` names the command (``python -m ssa_tf.train``); run as
    a console script (``ssa-train``, pyproject.toml's ``[project.scripts]``), the help
    names the script instead. Without ``help_text``: the main module's docstring and
    its flags (absl's own ``--help`` exits 1)."""
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        if not help_text:
            doc = (sys.modules["__main__"].__doc__ or "").strip()
            help_text = f"{doc}\n\nflags:\n{flags.FLAGS.main_module_help()}".strip()
        if command:
            help_text = help_text.replace(command, invoked_as(command))
        try:
            print(help_text)
            sys.stdout.flush()
        except BrokenPipeError:  # `... --help | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    app.run(_quiet_logs(main), flags_parser=parse_flags)


def invoked_as(command):
    """The name the user ran: a console script's (``ssa-search``), else ``command``."""
    name = os.path.basename(sys.argv[0])
    return name if name.startswith("ssa-") else command


def _quiet_logs(main):
    """``main`` with absl's log at WARNING unless --verbosity says otherwise: TensorFlow
    Datasets logs eight INFO lines (which files it reads, how it builds the pipeline)
    in every run, and a user's terminal wants the run's own lines."""
    def wrapped(argv):
        from absl import logging as absl_logging

        if not flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_logging.WARNING)
        return main(argv)

    return wrapped
