"""Packed codes in HDF5, one row per encoded item: datasets `image` and/or `text` (uint8, N x bit/8,
utils.hamming.pack), `row` (int64: the item's row in its data file), `data_file` (uint32: which of
the attribute `data_files` it came from), `labels` (its 0/1 labels packed, N x ceil(K/8)), and
`source_id` where the data files have prepare sidecars; attributes naming the model that made them
(file, sha256, method, bit), the image standardisation it encoded with, and the label names.

So a search needs nothing but this file to say what it found, whatever data files were appended.
Written through a temporary file renamed over the target, so a crash leaves the old file (or none).
"""
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from utils.errors import UserError

FORMAT = 'dadh-codes/2'
MODALITIES = ('image', 'text')
# What appending and searching must share: the model, and the image standardisation it encodes with.
IDENTITY = ('model_sha256', 'method', 'bit', 'image_mean', 'image_std')
BLOCK = 4096  # rows a chunk, as stored, and as read where only some rows are wanted


class CodesFile:
    """An opened codes file: attrs (dict), modalities, count, data_files, label_names (None where
    the data files had no sidecar) and num_label; its arrays read whole or at some positions."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f'{path}: no such codes file')
        try:
            with h5py.File(self.path, 'r') as h5:
                self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
                shapes = {name: h5[name].shape for name in h5.keys()}
        except OSError as e:
            raise UserError(f'{path}: not a readable HDF5 file, perhaps truncated ({e})') from None
        if str(self.attrs.get('format', '')).startswith('dadh-codes/') and self.attrs['format'] != FORMAT:
            raise UserError(f'{path}: a codes file of an older version ({self.attrs["format"]}: no '
                            'labels or data file per row); encode it again')
        if self.attrs.get('format') != FORMAT:
            raise UserError(f'{path}: an HDF5 file but not a codes file of `python main.py encode`')
        self.modalities = [m for m in MODALITIES if m in shapes]
        count = shapes.get('row', (None,))[0]
        widths = {**{m: -(-self.attrs['bit'] // 8) for m in self.modalities},
                  'labels': -(-self.attrs['num_label'] // 8)}
        if (not self.modalities or any(shapes.get(name) != (count, width) for name, width in widths.items())
                or shapes.get('data_file') != (count,)):
            raise UserError(f'{path}: the codes file is incomplete (datasets {shapes})')
        self.count = count
        self.data_files = json.loads(self.attrs['data_files'])
        self.label_names = json.loads(self.attrs['label_names']) if 'label_names' in self.attrs else None
        self.num_label = self.attrs['num_label']

    def read(self, name):
        """The whole dataset `name` (None for source ids where there are none)."""
        with h5py.File(self.path, 'r') as h5:
            if name not in h5:
                return None
            return h5[name].asstr()[()] if name == 'source_id' else h5[name][()]

    def read_at(self, name, positions):
        """Dataset `name` at `positions` (an int array), reading only the blocks of rows that hold
        them: a search lists k items of a file of any size (a list of str for source ids, None
        where there are none)."""
        positions = np.asarray(positions, dtype=np.int64)
        with h5py.File(self.path, 'r') as h5:
            if name not in h5:
                return None
            strings = name == 'source_id'
            dataset = h5[name].asstr() if strings else h5[name]
            values = np.empty((len(positions), *h5[name].shape[1:]),
                              dtype=object if strings else h5[name].dtype)
            blocks = positions // BLOCK
            order = np.argsort(blocks, kind='stable')
            starts = np.flatnonzero(np.diff(blocks[order])) + 1
            for mine in np.split(order, starts) if len(positions) else []:
                first = blocks[mine[0]] * BLOCK
                values[mine] = dataset[first:first + BLOCK][positions[mine] - first]
        return values.tolist() if strings else values

    def labels_at(self, positions):
        """The 0/1 label rows (len(positions) x num_label) of the items at `positions`."""
        return np.unpackbits(self.read_at('labels', positions), axis=1)[:, :self.num_label]

    def check_model(self, identity):
        """Refuse codes made by another model, method or bit length than `identity`, or with
        another image standardisation."""
        differences = [f'{k} {self.attrs.get(k)!r} (this model: {identity[k]!r})' for k in IDENTITY
                       if self.attrs.get(k) != identity[k]]
        if differences:
            raise UserError(f'{self.path}: made by another model: {", ".join(differences)}')


def write_codes(path, identity, source, chunks, modalities, append=False):
    """Write (or with `append` add to) the codes file at `path` from `chunks`, an iterable of
    (rows, {modality: packed codes}, source ids or None, packed labels) of the data file that
    `source` names: {'data_file', 'label_names' (None: no sidecar), 'num_label'}. `identity` is
    the model's attributes."""
    path = Path(path)
    temp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    data_files = []
    if append:
        existing = CodesFile(path)
        existing.check_model(identity)
        if existing.modalities != list(modalities):
            raise UserError(f'{path}: holds {"+".join(existing.modalities)} codes; appending '
                            f'{"+".join(modalities)} would leave them uneven')
        if (existing.label_names, existing.num_label) != (source['label_names'], source['num_label']):
            raise UserError(f'{path}: its labels are {existing.label_names or existing.num_label}, '
                            f'those of {source["data_file"]} {source["label_names"] or source["num_label"]}: '
                            'one codes file holds items of one label set')
        data_files = existing.data_files
        shutil.copyfile(path, temp)
    if source['data_file'] not in data_files:
        data_files.append(source['data_file'])
    file_index = data_files.index(source['data_file'])
    try:
        with h5py.File(temp, 'a' if append else 'w') as h5:
            if not append:
                h5.attrs.update({'format': FORMAT, 'num_label': source['num_label'],
                                 **{k: v for k, v in identity.items() if v is not None}})
                if source['label_names'] is not None:
                    h5.attrs['label_names'] = json.dumps(source['label_names'])
                for name, width in [*((m, -(-identity['bit'] // 8)) for m in modalities),
                                    ('labels', -(-source['num_label'] // 8))]:
                    h5.create_dataset(name, (0, width), np.uint8, maxshape=(None, width),
                                      chunks=(BLOCK, width))
                h5.create_dataset('row', (0,), np.int64, maxshape=(None,), chunks=(BLOCK,))
                h5.create_dataset('data_file', (0,), np.uint32, maxshape=(None,), chunks=(BLOCK,))
            h5.attrs['data_files'] = json.dumps(data_files)
            for rows, codes, ids, labels in chunks:
                if ids is not None and 'source_id' not in h5:
                    if len(h5['row']):
                        raise UserError(f'{path}: its rows have no source ids; these have')
                    h5.create_dataset('source_id', (0,), h5py.string_dtype(), maxshape=(None,),
                                      chunks=(BLOCK,))
                if ids is None and 'source_id' in h5:
                    raise UserError(f'{path}: its rows have source ids; these have none')
                columns = {**codes, 'row': rows, 'data_file': np.full(len(rows), file_index),
                           'labels': labels, **({'source_id': ids} if ids is not None else {})}
                for name, values in columns.items():
                    dataset = h5[name]
                    dataset.resize(len(dataset) + len(values), axis=0)
                    dataset[-len(values):] = values
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
