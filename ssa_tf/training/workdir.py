"""A run's workdir: the lock, and resume or restart.

    with WorkdirLock(workdir):            # a second run on the same workdir refuses
        prepare_workdir(cfg)              # resume check, or --restart's clean slate

No TensorFlow import: the CLI takes the lock and checks resumability before
TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket

from ssa_tf.config import RunConfig, UsageError, flag
from ssa_tf.config import legacy
from ssa_tf.config.schema import OPERATIONAL, canonical_model_settings

LOCK_NAME = ".lock"
# settings a resumed run may change: where things are, how long, how it is checkpointed
RESUMABLE_CHANGES = {"train.epochs", *OPERATIONAL}
# what a run writes into its workdir; --restart removes these and nothing else
RUN_OUTPUTS = ("backup", "tensorboard", "metrics.csv", "ranks.csv", "ranks.png", "alignment.csv",
               "summary.json", "model.keras", "config.json")


# --------------------------------------------------------------------------
# The workdir lock.
# --------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class WorkdirLock:
    """An exclusive lock on a workdir: ``<workdir>/.lock`` holds ``host pid``.

    Taken with O_EXCL, so two processes cannot both succeed. A lock left by a
    process that no longer exists on this host (killed, crashed) is stale and
    is taken over; a lock held by a live process, or by a process on another
    host (whose liveness cannot be checked from here), refuses with
    ``UsageError``.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.held = False

    def acquire(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner() == (socket.gethostname(), os.getpid()):
                    return self  # this process holds it already (the CLI took it early)
                if not self._clear_if_stale():
                    raise UsageError(self._held_message()) from None
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise UsageError(self._held_message())

    def _owner(self):
        try:
            with open(self.path) as f:
                host, pid = f.read().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None, None  # being written, or garbage

    def _held_message(self):
        host, pid = self._owner()
        who = f"process {pid} on {host}" if pid else "another process"
        return (f"workdir {os.path.dirname(self.path)} is in use by {who}; wait for it to end "
                f"or choose another --workdir (if no such run exists, delete {self.path})")

    def _clear_if_stale(self) -> bool:
        host, pid = self._owner()
        if pid is None:
            # unreadable: a writer between open and write, or a torn file from a crash
            try:
                if os.path.getsize(self.path) > 0:
                    os.remove(self.path)  # garbage, not a lock being written
                    return True
            except OSError:
                return True  # gone meanwhile
            return False
        if host != socket.gethostname() or _alive(pid):
            return False
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        return True

    def release(self):
        if self.held:
            host, pid = self._owner()
            if pid == os.getpid():
                os.remove(self.path)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------
# A run's claim: the lock, then resume or restart, once.
# --------------------------------------------------------------------------

@dataclasses.dataclass
class WorkdirClaim:
    """A run's claim on its workdir: the lock it holds, and what it does there."""
    cfg: RunConfig
    existed: bool  # the workdir was there before this run
    workdir: str | None = None  # the claimed (locked and prepared) workdir, or None
    state: str | None = None  # "new", "resume" or "restart" once claimed
    lock: "WorkdirLock | None" = None

    @classmethod
    def unchecked(cls, cfg):
        """A claim for a run whose settings its caller has checked (grids, searches)."""
        return cls(cfg, os.path.isdir(cfg.runtime.workdir))

    def take(self, workdir, chief=True, cfg=None) -> str:
        """Lock ``workdir`` and decide resume or restart (once: a second claim of the same
        workdir returns the first's answer); "new", "resume" or "restart"."""
        if self.workdir == workdir:
            return self.state
        lock = WorkdirLock(workdir).acquire()
        try:
            state = prepare_workdir(
                (cfg or self.cfg).replace({"runtime.workdir": workdir}), chief=chief)
        except UsageError:
            lock.release()
            raise
        self.workdir, self.state, self.lock = workdir, state, lock
        return state

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock, self.workdir = None, None

    def clean_failed_run(self):
        """A run that failed before its first checkpoint leaves nothing behind."""
        clean_failed_run(self.cfg.runtime.workdir, self.existed)


# --------------------------------------------------------------------------
# Resume or restart.
# --------------------------------------------------------------------------

def has_checkpoint(workdir: str) -> bool:
    backup = os.path.join(workdir, "backup")
    if not os.path.isdir(backup):
        return False
    for _, _, files in os.walk(backup):
        if "state.json" in files:
            return True
    return False


def prepare_workdir(cfg: RunConfig, chief: bool = True) -> str:
    """Decide what a run does with its workdir; return "new", "resume" or "restart".

    - ``--restart``: remove the previous run's outputs (only those), start over.
    - a finished run (``summary.json``): refuse; the user asks for ``--restart``.
    - checkpoints of an unfinished run: resume, if the settings agree with the
      saved ``config.json`` (except those in RESUMABLE_CHANGES); refuse with
      the differing settings otherwise.
    - a finished run asked for more epochs: resumed the same way, from its last
      checkpoint (``extension_problem`` says when it cannot be).
    """
    workdir = cfg.runtime.workdir
    if not os.path.isdir(workdir):
        return "new"
    if cfg.runtime.restart:
        if chief:
            remove_outputs(workdir)
        return "restart"
    finished = os.path.join(workdir, "summary.json")
    if os.path.exists(finished):
        extension_problem(cfg, finished)  # a longer run continues it; anything else: refused
    if not has_checkpoint(workdir):
        return "new"  # nothing to resume (stopped before its first checkpoint)
    saved_path = os.path.join(workdir, "config.json")
    try:
        with open(saved_path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object of settings")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot resume: {saved_path} is unreadable ({e}); pass --restart "
                         "to start over") from None
    mine = json.loads(json.dumps(cfg.record(), default=list))
    # an older record: flat names, and a norm and activation claimed for a user's model
    saved = canonical_model_settings(legacy.read_settings(saved))
    # the card follows from the settings: a changed card is a changed flag, named below
    # a setting added since the run was saved is absent from its record: the same run
    # when today's value trains what the code of its day did (config.legacy)
    differ = [k for k in sorted(set(saved) | set(mine))
              if k not in RESUMABLE_CHANGES and k != "card" and saved.get(k) != mine.get(k)
              and not (k not in saved and legacy.at_later_default(k, mine.get(k)))]
    if differ:
        shown = ", ".join(f"{flag(k)}={saved.get(k)!r} then, "
                          f"{mine.get(k)!r} now" for k in differ)
        raise UsageError(f"workdir {workdir} holds a run with other settings "
                         f"({shown}); rerun with the same settings to resume it, pass "
                         "--restart to start over, or choose another --workdir")
    return "resume"


def extension_problem(cfg: RunConfig, summary_path: str):
    """``UsageError`` unless the finished run at ``summary_path`` can train on to
    ``cfg``'s ``--epochs`` (more epochs than it has, its last checkpoint kept, the same
    rank cuts up to its end); the settings are compared as for any resume."""
    from ssa_tf.config.schema import cut_epochs

    workdir = cfg.runtime.workdir
    try:
        with open(summary_path) as f:
            done = int(json.load(f)["epochs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"workdir {workdir} holds a finished run whose {summary_path} is "
                         f"unreadable ({e}); pass --restart to train it again") from None
    if cfg.train.epochs <= done:
        raise UsageError(f"workdir {workdir} holds a finished run of {done} epochs; pass "
                         f"--epochs=N with N > {done} to train it further, --restart to "
                         "train it again, or choose another --workdir")
    if not has_checkpoint(workdir):
        raise UsageError(f"workdir {workdir} holds a finished run of {done} epochs with no "
                         "checkpoint left to continue from; pass --restart to train it again")
    r = cfg.rank
    if r.tau is not None and cfg.rule_spec.svd:
        then = cut_epochs(done, r.start, r.interval, r.final_cut)
        now = [e for e in cut_epochs(cfg.train.epochs, r.start, r.interval, r.final_cut)
               if e <= done]
        if then != now:
            raise UsageError(
                f"workdir {workdir} holds a finished run of {done} epochs whose rank cuts "
                f"(after epochs {then or 'none'}) differ from a {cfg.train.epochs}-epoch "
                f"run's (after {now or 'none'}): training it further would not be that run; "
                "pass --restart to train it again, or choose another --workdir")


def last_checkpoint(workdir):
    """'epoch N' or 'epoch N, step S' of the newest checkpoint in ``workdir``, or None."""
    backup = os.path.join(workdir, "backup")
    found = []
    for root, _, files in os.walk(backup):
        if "state.json" in files:
            parts = os.path.basename(root).split("-")
            try:
                found.append((int(parts[1]), int(parts[3]) if len(parts) == 4 else 0))
            except (IndexError, ValueError):
                continue
    if not found:
        return None
    epoch, step = max(found)
    return f"epoch {epoch}" + (f", step {step} of the next" if step else "")


def remove_outputs(workdir):
    """Remove what a run writes into ``workdir`` (RUN_OUTPUTS), and nothing else."""
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def clean_failed_run(workdir, existed):
    """A run that failed before its first checkpoint leaves nothing behind."""
    if last_checkpoint(workdir) is None:
        remove_outputs(workdir)
        remove_new_workdir(workdir, existed)


def remove_new_workdir(workdir, existed):
    """Remove the workdir if this run created it and left nothing of the user's in it."""
    if existed or not os.path.isdir(workdir):
        return
    leftovers = [n for n in os.listdir(workdir) if n != ".lock"]
    if not leftovers:
        shutil.rmtree(workdir, ignore_errors=True)
