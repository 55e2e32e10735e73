"""Every error ssa-tf reports to a user, each with the exit status the command line gives it.

    try:
        ...
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr); sys.exit(e.status)

No TensorFlow import. The modules that raise them re-export them under their old homes
(``ssa_tf.config.UsageError``, ``ssa_tf.data.DataError``...).
"""


class Error(Exception):
    """An error with a message for the user; ``status`` is the command's exit status."""
    status = 1
    # the run's outputs are removed if it has no checkpoint yet (nothing half-written)
    cleans_up = True


class UsageError(Error):
    """A mistake in what the user asked for (exit status 2)."""
    status = 2


class DataError(UsageError):
    """A dataset the user asked for cannot be read; the message says why and what to do."""


class InputError(UsageError):
    """The data could not be read (a corrupt or truncated file): the user's input."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be read."""


class Diverged(Error, RuntimeError):
    """A local loss or gradient became NaN or Inf (exit status 3); its checkpoints stay."""
    status = 3
    cleans_up = False


class ParityError(Error):
    """An export whose outputs differ from the model's (exit status 1)."""
