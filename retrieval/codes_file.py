"""Packed codes in HDF5: datasets `image` and/or `text` (uint8, N x bit/8, utils.hamming.pack), `row`
(int64 data-file rows), optional `source_id` (a prepare sidecar's ids), and attributes naming the
model that made them (file, sha256, method, bit), the data file and its image standardisation.

Written through a temporary file renamed over the target, so a crash leaves the old file (or none).
"""
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from utils.errors import UserError

FORMAT = 'dadh-codes/1'
MODALITIES = ('image', 'text')
IDENTITY = ('model_sha256', 'method', 'bit')  # what appending and searching must share


class CodesFile:
    """An opened codes file: attrs (dict), modalities, and its arrays read on demand."""

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
        if self.attrs.get('format') != FORMAT:
            raise UserError(f'{path}: an HDF5 file but not a codes file of `python main.py encode`')
        self.modalities = [m for m in MODALITIES if m in shapes]
        count = shapes.get('row', (None,))[0]
        if not self.modalities or any(shapes[m] != (count, -(-self.attrs['bit'] // 8))
                                      for m in self.modalities):
            raise UserError(f'{path}: the codes file is incomplete (datasets {shapes})')
        self.count = count

    def read(self, name):
        with h5py.File(self.path, 'r') as h5:
            if name == 'source_id':
                return h5[name].asstr()[()] if name in h5 else None
            return h5[name][()]

    def check_model(self, identity):
        """Refuse codes made by another model, method or bit length than `identity`."""
        differences = [f'{k} {self.attrs.get(k)!r} (this model: {identity[k]!r})' for k in IDENTITY
                       if self.attrs.get(k) != identity[k]]
        if differences:
            raise UserError(f'{self.path}: made by another model: {", ".join(differences)}')


def write_codes(path, identity, chunks, modalities, append=False):
    """Write (or with `append` add to) the codes file at `path` from `chunks`, an iterable of
    (rows, {modality: packed codes}, source ids or None). `identity` is the attributes."""
    path = Path(path)
    temp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    if append:
        existing = CodesFile(path)
        existing.check_model(identity)
        if existing.modalities != list(modalities):
            raise UserError(f'{path}: holds {"+".join(existing.modalities)} codes; appending '
                            f'{"+".join(modalities)} would leave them uneven')
        shutil.copyfile(path, temp)
    try:
        with h5py.File(temp, 'a' if append else 'w') as h5:
            if not append:
                h5.attrs.update({'format': FORMAT, **{k: v for k, v in identity.items() if v is not None}})
                width = -(-identity['bit'] // 8)
                for m in modalities:
                    h5.create_dataset(m, (0, width), np.uint8, maxshape=(None, width), chunks=(4096, width))
                h5.create_dataset('row', (0,), np.int64, maxshape=(None,), chunks=(4096,))
            for rows, codes, ids in chunks:
                if ids is not None and 'source_id' not in h5:
                    if len(h5['row']):
                        raise UserError(f'{path}: its rows have no source ids; these have')
                    h5.create_dataset('source_id', (0,), h5py.string_dtype(), maxshape=(None,),
                                      chunks=(4096,))
                for name, values in ((*item,) for item in
                                     [*codes.items(), ('row', rows)] + ([('source_id', ids)]
                                                                        if 'source_id' in h5 else [])):
                    if values is None:
                        raise UserError(f'{path}: its rows have source ids; these have none')
                    dataset = h5[name]
                    dataset.resize(len(dataset) + len(values), axis=0)
                    dataset[-len(values):] = values
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
