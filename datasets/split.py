"""Which rows of a data file are queries, training rows, database and held-out rows.

A Split holds the four as arrays of row numbers. The database lists the training rows first, then
the held-out rows (--select_on valid), then the rest, where a scheme makes them so. Schemes:
- 'ranges': fixed row ranges by layout (SPEC §1; DADH's and AGAH's published splits).
  'query_last' (DADH's MIRFlickr): database [0, db_size), queries after it, training
  [0, training_size); 'query_first' (NUS-WIDE, AGAH): queries [0, query_size), database and
  training after them. A size of None runs to the end of the file.
- 'random': a permutation p of rows [0, query_size + db_size) drawn from the run's seed (SPEC-DCMH
  §2, SPEC-SSAH §2): queries p[:Q], database p[Q:Q+D], training p[Q:Q+T], its first T rows.
- a file (`python main.py split` writes one): JSON with `query`, `training`, `database` and
  optionally `held_out` (lists of row numbers) and `rows` (the data file's row count), or an .npz
  with the same names (and `rows` as a 0-d array).
The held-out rows of a scheme are the valid_size database rows right after the training rows.
"""
import json
from pathlib import Path

import numpy as np

from utils.checkpoint import atomic_write, sha256
from utils.errors import UserError

SCHEMES = ('ranges', 'random')
PARTS = ('query', 'training', 'database', 'held_out')
FORMAT = 'dadh-split/1'


class Split:
    """Row numbers of the four parts (held_out may be None) of a data file of `rows` rows."""

    def __init__(self, query, training, database, held_out=None, rows=None, source=None):
        self.query, self.training, self.database = (np.asarray(x, dtype=np.int64)
                                                    for x in (query, training, database))
        self.held_out = None if held_out is None else np.asarray(held_out, dtype=np.int64)
        self.rows, self.source = rows, source

    def parts(self):
        return {name: getattr(self, name) for name in PARTS if getattr(self, name) is not None}

    def check(self, n):
        """Refuse, in one line, a split that does not fit a data file of n rows."""
        where = self.source or 'the split'
        if self.rows is not None and self.rows != n:
            raise UserError(f'{where}: made for a data file of {self.rows} rows, this one has {n}')
        for name, rows in self.parts().items():
            if not len(rows) and name != 'held_out':
                raise UserError(f'{where}: no {name} rows')
            if len(rows) and (rows.min() < 0 or rows.max() >= n):
                bad = rows[(rows < 0) | (rows >= n)][0]
                raise UserError(f'{where}: {name} row {bad} is outside the data file (rows 0 to {n - 1})')
            if len(np.unique(rows)) != len(rows):
                raise UserError(f'{where}: {name} lists a row twice')
        for a, b in (('query', 'training'), ('query', 'held_out'), ('training', 'held_out')):
            if getattr(self, b) is not None:
                common = np.intersect1d(getattr(self, a), getattr(self, b))
                if len(common):
                    raise UserError(f'{where}: {len(common)} rows are both {a} and {b} rows '
                                    f'(row {common[0]} first)')
        if self.held_out is not None and not np.isin(self.held_out, self.database).all():
            raise UserError(f'{where}: held-out rows must be database rows')

    def save(self, path):
        """As JSON, atomically; returns its sha256."""
        record = {'format': FORMAT, 'rows': self.rows,
                  **{name: rows.tolist() for name, rows in self.parts().items()}}
        atomic_write(path, lambda f: f.write(json.dumps(record).encode()))
        return sha256(path)


def ranges_split(n, layout, query_size, db_size, training_size, valid_size=None):
    """The 'ranges' scheme (module docstring)."""
    if layout == 'query_last':
        database = range(0, db_size)
        query = range(db_size, n if query_size is None else db_size + query_size)
        training = range(0, training_size)
    else:
        query = range(0, query_size)
        database = range(query_size, n if db_size is None else query_size + db_size)
        training = range(query_size, query_size + training_size)
    for name, rows in (('training', training), ('query', query), ('database', database)):
        if rows.stop > n or len(rows) == 0:
            raise UserError(f'the {name} split needs rows [{rows.start}, {rows.stop}) but the data has '
                            f'{n} rows (query_size={query_size}, db_size={db_size}, '
                            f'training_size={training_size})')
    held_out = None
    if valid_size is not None:
        held_out = range(training.stop, training.stop + valid_size)
        if held_out.stop > database.stop:
            raise UserError(f'--valid_size {valid_size}: the held-out rows [{held_out.start}, '
                            f'{held_out.stop}) must be database rows after the training rows, but '
                            f'the database ends at row {database.stop} (lower --valid_size or '
                            '--training_size)')
    return Split(query, training, database, held_out, n)


def random_split(n, query_size, db_size, training_size, valid_size=None, seed=0):
    """The 'random' scheme (module docstring): no-seed-split in the official code, so drawn here
    from `seed` (numpy's default generator) and saved with the run."""
    if query_size is None:
        raise UserError('a random split needs --query_size')
    db_size = n - query_size if db_size is None else db_size
    used = training_size + (valid_size or 0)
    if query_size + db_size > n or used > db_size:
        raise UserError(f'a random split of {n} rows cannot hold query_size={query_size}, '
                        f'db_size={db_size} and training_size={training_size}'
                        + (f' plus valid_size={valid_size} held-out rows' if valid_size else ''))
    p = np.random.default_rng(seed).permutation(query_size + db_size)
    database = p[query_size:]
    held_out = database[training_size:used] if valid_size is not None else None
    return Split(p[:query_size], database[:training_size], database, held_out, n)


def read_split(path):
    """A split file (JSON or .npz, module docstring), checked for form; fit is checked by check()."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'--split {path}: no such file (give published, rows, or a split file of '
                        '`python main.py split`)')
    try:
        if path.suffix == '.npz':
            with np.load(path, allow_pickle=False) as arrays:
                record = {k: arrays[k].tolist() for k in arrays.files}
        else:
            record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable split file ({type(e).__name__}: {e})') from None
    if not isinstance(record, dict) or not {'query', 'training', 'database'} <= set(record):
        raise UserError(f'{path}: a split file needs query, training and database row lists '
                        f'(found {", ".join(record) if isinstance(record, dict) else type(record).__name__})')
    try:
        parts = {name: np.asarray(record[name], dtype=np.int64).reshape(-1)
                 for name in PARTS if record.get(name) is not None}
    except (TypeError, ValueError):
        raise UserError(f'{path}: its row lists must hold integers') from None
    rows = record.get('rows')
    return Split(parts['query'], parts['training'], parts['database'], parts.get('held_out'),
                 None if rows is None else int(rows), str(path))
