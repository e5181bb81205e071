"""Progress bars, one style for the whole program: transient, and off when stderr is not a terminal
(log files get the one summary line per epoch instead)."""
from tqdm import tqdm


def bar(iterable, desc):
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None)
