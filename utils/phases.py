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


def flop_counter():
    """A dispatch mode adding up the FLOPs of the matrix products and convolutions run inside (its
    `flops`), by torch's own formulas. torch's FlopCounterMode also tracks modules with hooks that
    autograd.grad(create_graph=True), the gradient penalties' call, refuses."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class FlopCounter(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **(kwargs or {}), out_val=out)
            return out
    return FlopCounter()


@contextlib.contextmanager
def phase(name):
    recording = _recording
    if recording is None:
        yield
        return
    recording.synchronize()
    start = time.perf_counter()
    counter = flop_counter() if recording.count_flops else None
    with counter or contextlib.nullcontext():
        yield
    recording.synchronize()
    totals = recording.totals[name]
    totals[0] += time.perf_counter() - start
    totals[1] += counter.flops if counter else 0
    totals[2] += 1
