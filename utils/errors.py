"""Problems a user can fix (bad file, bad option, missing checkpoint), and warnings.

main.py turns a UserError into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback.
"""
import sys


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file, key or option."""


def warn(message):
    """One warning line on stderr: something is off, but the run goes on."""
    print(f'warning: {message}', file=sys.stderr, flush=True)
