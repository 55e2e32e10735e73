"""One pre-flight for every run: its checks, then its workdir claimed, once.

    claim = preflight.check(cfg)        # errors.UsageError / DataError: one line, exit 2
    try:
        run.train(cfg, claim=claim)    # the run finds its workdir claimed and prepared
    finally:
        claim.release()

``check`` validates the settings, looks for the data on disk, and takes the
workdir's lock and decides resume or restart, all before TensorFlow starts, so a
mistake costs a fraction of a second and leaves nothing behind. A run started
without a claim (``run.train(cfg)`` from a grid or a search) claims its workdir
itself, through the same ``WorkdirClaim.take`` (``training.workdir``). Multi-worker runs
claim theirs in the run (each worker's workdir is known only once the cluster is up).
"""

from __future__ import annotations

import os

from ssa_tf import config as cfg_lib
from ssa_tf import data as data_lib  # file-system checks only; no TensorFlow
from ssa_tf.errors import UsageError
from ssa_tf.training import workdir as workdir_lib
from ssa_tf.training.workdir import WorkdirClaim


def check(cfg: cfg_lib.RunConfig, tf_config: str | None = None,
          workdir_given: bool = True) -> WorkdirClaim:
    """Check ``cfg`` and claim its workdir (``errors.UsageError``, one line, on a mistake).

    ``workdir_given``: the user named the workdir (a multi-worker run needs that)."""
    problem = cfg_lib.validate(cfg, tf_config)
    if problem:
        raise UsageError(problem)
    multi_worker = cfg.runtime.strategy == "multi_worker"
    if multi_worker and not workdir_given:
        # a restarted worker group finds its backups there
        raise UsageError("runtime.strategy=multi_worker needs an explicit --workdir, the "
                         "same on every run")
    check_data(cfg)
    workdir = cfg.runtime.workdir
    claim = WorkdirClaim(cfg, os.path.isdir(workdir))
    problem = writable_problem(workdir)
    if problem:
        raise UsageError(problem)
    if not multi_worker:  # the chief claims it in the run, the workers share the flag
        try:
            claim.take(workdir)
        except UsageError:
            workdir_lib.remove_new_workdir(workdir, claim.existed)
            raise
    return claim


def check_data(cfg: cfg_lib.RunConfig):
    """``errors.DataError`` (one line) unless the run's dataset is on disk, prepared."""
    data_lib.check_available(cfg.data.dataset, cfg.data.data_dir, cfg.data.manual_dir)


def writable_problem(workdir) -> str | None:
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
