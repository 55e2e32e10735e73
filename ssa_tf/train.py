"""Train an image classifier with one learning rule: SSA, DFA, BP, or a named variant.

    python -m ssa_tf.train                     # embedded MNIST sample, smallconv, SSA
    python -m ssa_tf.train --dataset=cifar10 --data_dir=DIR --mode=bp --epochs=5
    python -m ssa_tf.train --mode=ssa --set method.beta=0 --set rank.tau=0.9 --set rank.interval=1

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

from ssa_tf import cli
from ssa_tf import config as cfg_lib
from ssa_tf.cli import usage_error

FLAGS = flags.FLAGS
DAILY = ("dataset", "data_dir", "model", "mode", "epochs", "batch_size", "learning_rate",
         "workdir", "seed", "preset")
cli.define_run_flags(DAILY)
flags.DEFINE_boolean("restart", False, "discard the workdir's previous run and start over "
                     "(default: resume an unfinished run with the same settings)")

HELP = f"""Train an image classifier with SSA, DFA, BP or a named variant.

usage: python -m ssa_tf.train [flags] [--set SECTION.FIELD=VALUE ...]

{cli.run_flags_help(DAILY)}
  --restart            discard the workdir's run (finished or not) and start over
  --set S.F=VALUE      any other setting: --set method.beta=0 --set rank.tau=0.9
  --flagfile=FILE      read flags from FILE, one per line

settings (--set SECTION.FIELD=VALUE; README.md, "Settings", says what each does):
""" + "\n".join(textwrap.fill(f"{s}: {', '.join(fields)}", 79, initial_indent="  ",
                            subsequent_indent="      ")
              for s, fields in cfg_lib.FIELD_HELP.items()) + """

The run checkpoints every epoch; the same command resumes it. Outputs in the
workdir: model.keras, metrics.csv, config.json, summary.json, TensorBoard logs.
Exit status: 0 done, 2 a mistake in what was asked (one line), 3 diverged, 130
interrupted (the run resumes from its last checkpoint)."""


def config_from_flags() -> cfg_lib.RunConfig:
    """The run's configuration: defaults < preset < daily flags < --set (ValueError)."""
    cfg = cli.run_config_from_flags(DAILY, ["runtime.restart=true"] if FLAGS.restart else [])
    if cfg.runtime.workdir is None:
        cfg.runtime.workdir = cli.default_workdir(cfg)
    return cfg


# what a full disk, a read-only file system or a folder without permission raise
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def writable_problem(workdir):
    """One line if ``workdir`` cannot be created or written into, else None (creates it)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        return f"--workdir={workdir} is a file, not a folder; name a folder (new or existing)"
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return f"--workdir={workdir} is not writable: {e.strerror or e}"
    return None


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_from_flags()
    except ValueError as e:
        usage_error(str(e))
    problem = cfg_lib.validate(cfg, os.environ.get("TF_CONFIG"))
    if problem:
        usage_error(problem)
    multi_worker = cfg.runtime.strategy == "multi_worker"
    if multi_worker and FLAGS.workdir is None and not any(
            s.startswith("runtime.workdir=") for s in FLAGS.set):
        # a restarted worker group finds its backups there
        usage_error("runtime.strategy=multi_worker needs an explicit --workdir, the same on "
                    "every run")

    # the data must be there too (a file-system check; data imports TensorFlow lazily)
    from ssa_tf import data as data_lib
    try:
        data_lib.check_available(cfg.data.dataset, cfg.data.data_dir, cfg.data.manual_dir)
    except data_lib.DataError as e:
        usage_error(str(e))

    workdir = cfg.runtime.workdir
    existed = os.path.isdir(workdir)
    problem = writable_problem(workdir)
    if problem:
        usage_error(problem)
    # the workdir's lock, and resume or restart, also before TensorFlow starts
    # (multi-worker: the chief does it in the run, the workers share the flag)
    from ssa_tf.training import workdir as workdir_lib
    lock = workdir_lib.WorkdirLock(workdir)
    try:
        if not multi_worker:
            lock.acquire()
            workdir_lib.prepare_workdir(cfg)
    except cfg_lib.UsageError as e:
        lock.release()
        workdir_lib.remove_new_workdir(workdir, existed)
        usage_error(str(e))
    print(cfg.card().line(), flush=True)
    try:
        _train(cfg, data_lib, workdir_lib, existed)
    finally:
        lock.release()


def _train(cfg, data_lib, workdir_lib, existed):
    # TensorFlow starts only now, after the settings are known to be good.
    try:
        cli.import_tensorflow()
    except KeyboardInterrupt:
        workdir_lib.clean_failed_run(cfg.runtime.workdir, existed)
        print("error: interrupted before the run started; nothing was kept", file=sys.stderr)
        sys.exit(130)
    from ssa_tf.training import strategies

    # before anything else touches a device
    strategies.configure_logical_cpus(cfg.runtime.logical_cpus)
    from ssa_tf.training import callbacks, checkpoints, run

    workdir = cfg.runtime.workdir

    def fail(message, status=2):
        workdir_lib.clean_failed_run(workdir, existed)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)

    progress = cfg.runtime.progress
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "epoch"
    try:
        summary = run.train(cfg, verbose={"bar": 1, "epoch": 2, "none": 0}[progress])
    except (data_lib.DataError, cfg_lib.UsageError, checkpoints.CheckpointError) as e:
        fail(str(e))
    except callbacks.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
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
    except run.InputError as e:
        fail(str(e))
    print(f"{cfg.method.mode} {cfg.model.model} on {cfg.data.dataset}: test accuracy "
          f"{summary['test_accuracy']:.4f} ({summary['test_split']}), "
          f"{sum(summary['epoch_seconds']):.1f} s training; outputs in {workdir}")


def run_main():
    cli.run(main, help_text=HELP)


if __name__ == "__main__":
    run_main()
