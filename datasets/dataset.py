"""The splits of SPEC §1 as row ranges, and the data as tensors on the training device."""
import torch

from utils.errors import UserError


def split_ranges(n, layout, query_size, db_size, training_size):
    """Row ranges (train, query, database) of a file with n rows (SPEC §1).

    'query_last' (DADH's MIRFlickr): database [0, db_size), queries after it, training [0, training_size).
    'query_first' (NUS-WIDE, AGAH): queries [0, query_size), database and training after them.
    A size of None runs to the end of the file."""
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
    return train, query, database


class Splits:
    """Images, text and labels on `device` (one copy each) with the three row ranges as slices."""

    def __init__(self, data, layout, query_size, db_size, training_size, device):
        self.train, self.query, self.database = (
            slice(r.start, r.stop) for r in split_ranges(len(data), layout, query_size, db_size,
                                                        training_size))
        # from_numpy shares the arrays' memory on the CPU; .to() copies once onto a GPU.
        self.images = torch.from_numpy(data.images).to(device)
        self.text = torch.from_numpy(data.text).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)

    def sizes(self):
        return {name: getattr(self, name).stop - getattr(self, name).start
                for name in ('train', 'query', 'database')}
