"""Problems a user can fix (bad file, bad option, missing checkpoint), and warnings.

main.py turns a UserError into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback.
"""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file, key or option."""


def warn(message):
    """One warning line on stderr: something is off, but the run goes on."""
    print(f'warning: {message}', file=sys.stderr, flush=True)


def cli(command):
    """Turn a UserError into one line on stderr and exit status 2, and Ctrl-C outside the training
    loop into exit status 130 without a traceback: main.py's commands and the benchmarks."""
    @functools.wraps(command)
    def run(*args, **options):
        from utils.distributed import leave
        try:
            command(*args, **options)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr, flush=True)
            leave(2)
        except KeyboardInterrupt:
            print('\ninterrupted', file=sys.stderr, flush=True)
            leave(130)
    return run
