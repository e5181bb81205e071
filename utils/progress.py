"""Progress bars, one style for the whole program: transient, and off when stderr is not a terminal
(log files get the one summary line per epoch instead) or on torchrun's ranks other than 0."""
import os

from tqdm import tqdm


def bar(iterable, desc, total=None):
    disable = None if os.environ.get('RANK', '0') == '0' else True
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=disable)
