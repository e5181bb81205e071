"""Ctrl-C and SIGTERM during training: the first asks the loop to stop at its next safe point (after
the current batch), the second exits at once."""
import os
import signal
import sys


class GracefulStop:
    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        print(f'\n{signal.Signals(signum).name}: stopping after the current batch '
              '(send it again to quit at once)', file=sys.stderr, flush=True)

    @property
    def requested(self):
        return self.signum is not None
