"""The splits of SPEC §1 as row ranges, the held-out rows of --select_on valid, and the data as
tensors on the training device."""
import torch

from datasets.data_handler import RawImages
from utils.errors import UserError


def split_ranges(n, layout, query_size, db_size, training_size, valid_size=None):
    """Row ranges (train, query, database, held-out) of a file with n rows (SPEC §1).

    'query_last' (DADH's MIRFlickr): database [0, db_size), queries after it, training [0, training_size).
    'query_first' (NUS-WIDE, AGAH): queries [0, query_size), database and training after them.
    A size of None runs to the end of the file. With a valid_size, the held-out rows are the
    valid_size database rows right after the training rows: neither queries nor trained on
    (--select_on valid); otherwise the held-out range is None."""
    if layout == 'query_last':
        database = range(0, db_size)
        query = range(db_size, n if query_size is None else db_size + query_size)
        train = range(0, training_size)
    else:
        query = range(0, query_size)
        database = range(query_size, n if db_size is None else query_size + db_size)
        train = range(query_size, query_size + training_size)
    for name, rows in (('training', train), ('query', query), ('database', database)):
        if rows.stop > n or len(rows) == 0:
            raise UserError(f'the {name} split needs rows [{rows.start}, {rows.stop}) but the data has '
                            f'{n} rows (query_size={query_size}, db_size={db_size}, '
                            f'training_size={training_size})')
    if valid_size is None:
        return train, query, database, None
    held_out = range(train.stop, train.stop + valid_size)
    if held_out.stop > database.stop:
        raise UserError(f'--valid_size {valid_size}: the held-out rows [{held_out.start}, '
                        f'{held_out.stop}) must be database rows after the training rows, but the '
                        f'database ends at row {database.stop} (lower --valid_size or --training_size)')
    return train, query, database, held_out


class Splits:
    """Images, text and labels on `device` (one copy each) with the query, database and held-out
    (or None) row ranges as slices and the training rows as an index tensor. Raw images stay on disk (RawImages)."""

    def __init__(self, data, layout, query_size, db_size, training_size, device, valid_size=None):
        ranges = split_ranges(len(data), layout, query_size, db_size, training_size, valid_size)
        train, self.query, self.database, self.held_out = (
            None if r is None else slice(r.start, r.stop) for r in ranges)
        self.train_rows = torch.arange(train.start, train.stop, device=device)
        self.raw_images = isinstance(data.images, RawImages)
        # from_numpy shares the arrays' memory on the CPU; .to() copies once onto a GPU.
        self.images = (data.images.to(device) if self.raw_images
                       else torch.from_numpy(data.images).to(device))
        self.text = torch.from_numpy(data.text).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)

    def sizes(self):
        return {'train': len(self.train_rows), 'query': self.query.stop - self.query.start,
                'database': self.database.stop - self.database.start,
                'held_out': self.held_out.stop - self.held_out.start if self.held_out else 0}

    def held_out_positions(self):
        """(positions of the held-out rows in the database, positions of the other database rows):
        the held-out rows query the rest of the database, so none retrieves itself."""
        positions = torch.arange(self.database.stop - self.database.start)
        held = (positions >= self.held_out.start - self.database.start) & (
            positions < self.held_out.stop - self.database.start)
        return positions[held], positions[~held]

    def append_mixed_training(self, generator, c=0.5):
        """AGAH's data_enhance: n/2 more training samples c·a + (1 − c)·b, a and b from two random
        permutations of the first half of the training rows, for images, text and labels alike."""
        if self.raw_images:
            raise UserError('--data_enhance True needs a feature file: it mixes image rows in memory')
        half = self.train_rows[:len(self.train_rows) // 2]
        a, b = (half[torch.randperm(len(half), generator=generator).to(half.device)] for _ in range(2))
        first_new = len(self.labels)
        for name in ('images', 'text', 'labels'):
            x = getattr(self, name)
            setattr(self, name, torch.cat([x, c * x[a] + (1 - c) * x[b]]))
        self.train_rows = torch.cat([self.train_rows, torch.arange(first_new, first_new + len(half),
                                                                   device=half.device)])
