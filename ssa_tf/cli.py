"""What every command-line entry point shares: one line and exit status 2 for
a user's mistake, and absl flag parsing that never dumps usage or a traceback.

    from ssa_tf.cli import usage_error, run
    run(main)   # instead of absl.app.run(main)

No TensorFlow import: the CLIs check their flags before TensorFlow starts.
"""

from __future__ import annotations

import sys

from absl import app, flags


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


def run(main):
    app.run(main, flags_parser=parse_flags)
