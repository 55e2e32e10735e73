"""Train an image classifier with one learning rule: SSA, DFA, BP, or a named variant.

    python -m ssa_tf.train                     # embedded MNIST sample, smallconv, SSA
    python -m ssa_tf.train --dataset=cifar10 --data_dir=DIR --rule=bp --epochs=5
    python -m ssa_tf.train --rule=ssa --set rule.beta=0 --set rank.tau=0.9 --set rank.interval=1

Flags and wiring only; the run is ``ssa_tf.training.run``. Every setting is
checked before TensorFlow starts: a mistake ends with one line on stderr and
exit status 2.
"""

from __future__ import annotations

import errno
import os
import sys
import textwrap

from absl import flags

from ssa_tf import cli, errors, preflight
from ssa_tf import config as cfg_lib
from ssa_tf.cli import usage_error

FLAGS = flags.FLAGS
DAILY = ("dataset", "data_dir", "model", "rule", "epochs", "batch_size", "learning_rate",
         "workdir", "seed", "preset")
cli.define_run_flags(DAILY)
flags.DEFINE_boolean("restart", False, "discard the workdir's previous run and start over "
                     "(default: resume an unfinished run with the same settings)")

HELP = f"""Train an image classifier with SSA, DFA, BP or a named variant.

usage: python -m ssa_tf.train [flags] [--set SECTION.FIELD=VALUE ...]

{cli.run_flags_help(DAILY)}
  --restart            discard the workdir's run (finished or not) and start over
  --set S.F=VALUE      any other setting: --set rule.beta=0 --set rank.tau=0.9
  --flagfile=FILE      read flags from FILE, one per line

settings (--set SECTION.FIELD=VALUE; README.md, "Settings", says what each does):
""" + "\n".join(textwrap.fill(f"{s}: {', '.join(fields)}", 84, initial_indent="  ",
                            subsequent_indent="      ")
              for s, fields in cfg_lib.FIELD_HELP.items()) + """

Checkpoints every epoch; the same command resumes the run. Outputs in the workdir:
model.keras, metrics.csv, config.json, summary.json, TensorBoard logs. Exit status:
0 done, 2 a mistake in what was asked (one line), 3 diverged, 130 interrupted."""


def config_from_flags() -> cfg_lib.RunConfig:
    """The run's configuration: defaults < preset < daily flags < --set (ValueError)."""
    cfg = cli.run_config_from_flags(DAILY, ["runtime.restart=true"] if FLAGS.restart else [])
    if cfg.runtime.workdir is None:
        cfg.runtime.workdir = cli.default_workdir(cfg)
    return cfg


# what a full disk, a read-only file system or a folder without permission raise
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_from_flags()
    except ValueError as e:
        usage_error(str(e))
    workdir_given = FLAGS.workdir is not None or any(
        s.startswith("runtime.workdir=") for s in FLAGS.set)
    execute(cfg, os.environ.get("TF_CONFIG"), workdir_given)


def execute(cfg, tf_config=None, workdir_given=True):
    """The run of ``cfg`` as the command line makes it: the pre-flight (before TensorFlow
    starts), the card, the run, one line at the end; every failure one line and its exit
    status (``ssa_tf.errors``)."""
    try:
        claim = preflight.check(cfg, tf_config, workdir_given)
    except errors.Error as e:
        cli.fail(e)
    print(cfg.card().line(), flush=True)
    try:
        summary = _train(cfg, claim)
    finally:
        claim.release()
    print(f"{cfg.rule.name} {cfg.model.model} on {cfg.data.dataset}: test accuracy "
          f"{summary['test_accuracy']:.4f} ({summary['test_split']}), "
          f"{sum(summary['epoch_seconds']):.1f} s training; outputs in {cfg.runtime.workdir}")


def _train(cfg, claim):
    def fail(message, status=2, clean=True):
        if clean:
            claim.clean_failed_run()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)

    # TensorFlow starts only now, after the settings are known to be good.
    try:
        cli.import_tensorflow()
    except KeyboardInterrupt:
        fail("interrupted before the run started; nothing was kept", 130)
    from ssa_tf.training import strategies

    # before anything else touches a device
    strategies.configure_logical_cpus(cfg.runtime.logical_cpus)
    from ssa_tf.training import run

    workdir = cfg.runtime.workdir
    progress = cfg.runtime.progress
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "epoch"
    try:
        return interruptible(lambda: run.train(
            cfg, verbose={"bar": 1, "epoch": 2, "none": 0}[progress], claim=claim))
    except errors.Error as e:
        fail(str(e), e.status, e.cleans_up)
    except KeyboardInterrupt:
        from ssa_tf.training import workdir as workdir_lib

        where = workdir_lib.last_checkpoint(workdir)
        if where is None:
            fail("interrupted before the first checkpoint; nothing was kept", 130)
        print(f"interrupted: the run resumes from its checkpoint ({where}) when the same "
              "command runs again", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        fail(f"cannot write the run's outputs in {workdir}: {e.strerror or e}"
             + (f" ({e.filename})" if e.filename else ""))


def interruptible(call):
    """``call()``, where any exception that follows a Ctrl-C during it is the interrupt.

    A SIGINT raises KeyboardInterrupt wherever Python is; while Keras traced a step, a
    conversion caught it and raised a TypeError of its own ("Failed to convert elements
    of (None, 784) to Tensor"), and the run ended with a traceback instead of the resume
    hint. Outside the main thread (no signal handler can be set there) it is ``call()``."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return call()
    arrived = []

    def on_sigint(signum, frame):
        arrived.append(signum)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return call()
    except Exception as e:
        if arrived:
            raise KeyboardInterrupt from e
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def run_main():
    """``python -m ssa_tf.train`` and the ``ssa-train`` console script (pyproject.toml)."""
    cli.run(main, help_text=HELP, command="python -m ssa_tf.train")


if __name__ == "__main__":
    run_main()
