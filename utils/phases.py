"""Named phases of a training epoch, for benchmarks/train.py: a method marks its parts with
`with phase('image pass'):`; while a benchmark records, each phase's seconds (the device
synchronised at both ends), matrix FLOPs (when counted) and entries add up. Otherwise a phase costs
one global lookup."""
import contextlib
import time
from collections import defaultdict

_recording = None  # the Recording in progress, if any


class Recording:
    """{phase: [seconds, FLOPs, entries]} of what ran inside `with record(...)`."""

    def __init__(self, synchronize, count_flops):
        self.synchronize, self.count_flops = synchronize, count_flops
        self.totals = defaultdict(lambda: [0.0, 0, 0])


@contextlib.contextmanager
def record(synchronize, count_flops=False):
    """Record the phases run inside; `synchronize()` waits for the device."""
    global _recording
    previous, _recording = _recording, Recording(synchronize, count_flops)
    try:
        yield _recording
    finally:
        _recording = previous


@contextlib.contextmanager
def phase(name):
    recording = _recording
    if recording is None:
        yield
        return
    from torch.utils.flop_counter import FlopCounterMode
    recording.synchronize()
    start = time.perf_counter()
    counter = FlopCounterMode(display=False) if recording.count_flops else contextlib.nullcontext()
    with counter:
        yield
    recording.synchronize()
    totals = recording.totals[name]
    totals[0] += time.perf_counter() - start
    totals[1] += counter.get_total_flops() if recording.count_flops else 0
    totals[2] += 1
