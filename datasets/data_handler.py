"""Read image features, text and labels from MATLAB files into float32 arrays (SPEC §1).

Three layouts: one MATLAB v5/v7 file (scipy), one MATLAB v7.3 file (HDF5 through h5py: arrays appear
axis-reversed), or a folder holding the three DCMH/AGAH NUS-WIDE files. Large arrays are read in
chunks straight into one float32 array, and the image statistics are streamed, so a NUS-WIDE-sized
file costs little more than its float32 image matrix. Read lazily (as encode and search do), the
matrices stay on disk as FileRows and only the rows asked for are read.
"""
import contextlib
import os

import numpy as np
import torch

from utils.errors import UserError, warn

NUS_FOLDER_FILES = (('nus-wide-tc21-iall.mat', 'IAll'), ('nus-wide-tc21-yall.mat', 'YAll'),
                    ('nus-wide-tc21-lall.mat', 'LAll'))
CHUNK_ROWS = 4096
HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


class Data:
    """The whole file as float32 arrays (or FileRows), one row per sample, with the statistics
    applied to them (`statistics`: image_mean and image_std of the scalar image standardisation,
    text_mean of the column centring, where the method asks for them), which queries from outside
    the file need too."""

    def __init__(self, images, text, labels, source, statistics=None):
        self.images, self.text, self.labels, self.source = images, text, labels, source
        self.statistics = statistics or {}

    @property
    def image_mean(self):
        return self.statistics.get('image_mean')

    @property
    def image_std(self):
        return self.statistics.get('image_std')

    def __len__(self):
        return len(self.labels)


def _is_hdf5(path):
    # MATLAB v7.3 puts a 512-byte text header before the HDF5 superblock; plain HDF5 starts with it.
    with open(path, 'rb') as f:
        head = f.read(1024)
    return head[:8] == HDF5_SIGNATURE or head[512:520] == HDF5_SIGNATURE


class RawImages:
    """Raw N x 3 x 224 x 224 images (DCMH's v7.3 layout: MATLAB's 224 x 224 x 3 x N, axis-reversed),
    read from disk batch by batch rather than all into memory (20015 images are 3 GB).

    images[a:b] is a lazy view; images[index] reads those rows (an index tensor or array) as a
    float tensor on `device`."""

    def __init__(self, path, key, array=None, rows=None, device='cpu'):
        self.path, self.key, self._array, self.device = path, key, array, device
        self._rows = rows if rows is not None else range(len(self._data()))

    def _data(self):
        if self._array is None:  # opened once per process, on first use
            import h5py
            self._array = h5py.File(self.path, 'r')[self.key]
        return self._array

    @property
    def shape(self):
        return (len(self._rows), *self._data().shape[1:])

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RawImages(self.path, self.key, self._array, self._rows[index], self.device)
        rows = np.asarray([self._rows[i] for i in torch.as_tensor(index).cpu().tolist()], dtype=np.int64)
        if len(rows) and (np.diff(rows) == 1).all():  # consecutive rows: one slice read
            batch = self._data()[int(rows[0]):int(rows[-1]) + 1]
        else:
            order = np.argsort(rows)
            batch = np.empty((len(rows), *self._data().shape[1:]), dtype=self._data().dtype)
            batch[order] = self._data()[rows[order].tolist()]  # h5py reads increasing rows
        return torch.from_numpy(np.asarray(batch)).to(self.device).float()

    def to(self, device):
        return RawImages(self.path, self.key, self._array, self._rows, device)


class _Array:
    """One variable of a MATLAB file, read lazily, seen in MATLAB's orientation (rows x columns)."""

    def __init__(self, path, key, shape, read_rows):
        self.path, self.key, self.shape, self._read_rows = path, key, shape, read_rows

    def rows(self, start, stop, sample_axis):
        block = self._read_rows(start, stop, sample_axis)
        return block if sample_axis == 0 else block.T


class FileRows:
    """One matrix of an open data file as N float32 rows read on indexing: rows[a:b] is a 2-D
    array, rows[i] one row; (x - shift) / scale when `shift` is set (a scalar or a row)."""

    def __init__(self, array, n, sample_axis):
        self.array, self.sample_axis, self.shape = array, sample_axis, (n, array.shape[1 - sample_axis])
        self.shift, self.scale = None, 1.0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        if not isinstance(index, slice):
            row = range(len(self))[index]
            return self[row:row + 1][0]
        start, stop, step = index.indices(len(self))
        assert step == 1, 'FileRows reads contiguous rows'
        # C order as _read's array has it: the statistics then sum in the same order
        block = np.ascontiguousarray(self.array.rows(start, max(start, stop), self.sample_axis),
                                     dtype=np.float32)
        if self.shift is None:
            return block
        return ((block - self.shift) / self.scale).astype(np.float32)


def _open_v5(path, keys):
    import scipy.io
    import scipy.sparse
    try:
        found = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except Exception as e:
        raise UserError(f'{path}: not a readable MATLAB file ({type(e).__name__}: {e})') from None
    _check_keys(path, keys, found)
    try:
        loaded = scipy.io.loadmat(path, variable_names=list(keys))
    except Exception as e:
        raise UserError(f'{path}: cannot read {", ".join(keys)} ({type(e).__name__}: {e}); '
                        'the file may be truncated') from None
    arrays = []
    for key in keys:
        value = loaded.pop(key)
        if scipy.sparse.issparse(value):
            value = value.toarray()
        value = np.asarray(value)
        if key == keys[0] and value.ndim == 4:
            arrays.append(RawImages(path, key, value.transpose()))
            continue
        if value.dtype == object or value.ndim != 2:
            raise UserError(f'{path}: {key} must be a numeric 2-D matrix, found '
                            f'{value.dtype} of shape {value.shape}')

        def read_rows(start, stop, axis, value=value):
            return value[start:stop] if axis == 0 else value[:, start:stop]
        arrays.append(_Array(path, key, value.shape, read_rows))
    return arrays, None


def _open_v73(path, keys):
    import h5py
    import scipy.sparse
    try:
        with open(path, 'rb') as f:
            header = f.read(128)
        h5 = h5py.File(path, 'r')
    except OSError as e:
        raise UserError(f'{path}: not a readable HDF5/MATLAB v7.3 file ({e}); '
                        'the file may be truncated') from None
    if not header.startswith(b'MATLAB 7.3 MAT-file'):
        h5.close()
        raise UserError(f'{path}: an HDF5 file without the MATLAB v7.3 header; save it from MATLAB '
                        "with save(..., '-v7.3') or with h5py using a 512-byte MATLAB user block")
    _check_keys(path, keys, {k: None for k in h5.keys()})
    arrays = []
    for key in keys:
        node = h5[key]
        if isinstance(node, h5py.Group) and 'MATLAB_sparse' in node.attrs:
            jc, ir = node['jc'][()], node['ir'][()]
            data = node['data'][()] if 'data' in node else np.ones(len(ir))
            value = scipy.sparse.csc_matrix((data, ir, jc), shape=(int(node.attrs['MATLAB_sparse']),
                                                                    len(jc) - 1)).toarray()

            def read_rows(start, stop, axis, value=value):
                return value[start:stop] if axis == 0 else value[:, start:stop]
            arrays.append(_Array(path, key, value.shape, read_rows))
            continue
        if key == keys[0] and isinstance(node, h5py.Dataset) and node.ndim == 4:
            arrays.append(RawImages(path, key))
            continue
        if not isinstance(node, h5py.Dataset) or node.ndim != 2 or node.dtype.kind not in 'biuf':
            raise UserError(f'{path}: {key} must be a numeric 2-D matrix, found '
                            f'{getattr(node, "dtype", "a group")} of shape {getattr(node, "shape", "?")}')

        # h5py shows MATLAB's column-major arrays transposed: MATLAB row r is h5py column r.
        def read_rows(start, stop, axis, node=node):
            return node[:, start:stop].T if axis == 0 else node[start:stop, :].T
        arrays.append(_Array(path, key, node.shape[::-1], read_rows))
    return arrays, h5


def _check_keys(path, keys, found):
    missing = [k for k in keys if k not in found]
    if missing:
        listed = ', '.join(sorted(k for k in found if not k.startswith('#'))) or 'none'
        raise UserError(f"{path}: no variable {', '.join(map(repr, missing))} (expected "
                        f"{', '.join(keys)}; the file has: {listed})")


def _open(path, keys):
    if not os.path.exists(path):
        raise UserError(f'{path}: no such file')
    if os.path.getsize(path) == 0:
        raise UserError(f'{path}: the file is empty (0 bytes)')
    return (_open_v73 if _is_hdf5(path) else _open_v5)(path, keys)


def _sample_axes(arrays):
    """Return (N, axis per array): the row count the arrays share, and where each keeps it.

    Samples are rows in MATLAB's view; a matrix stored the other way round is accepted when only
    that reading makes the row counts agree."""
    shapes = [a.shape for a in arrays]
    if len({s[0] for s in shapes}) == 1:
        return shapes[0][0], [0] * len(arrays)
    common = set.intersection(*map(set, shapes))
    if len(common) != 1:
        described = ', '.join(f'{a.key} {" x ".join(map(str, a.shape))}' for a in arrays)
        raise UserError(f'{arrays[0].path}: the row counts of images, text and labels differ '
                        f'({described})')
    n = common.pop()
    return n, [0 if s[0] == n else 1 for s in shapes]


def _read(array, n, axis, dtype=np.float32):
    width = array.shape[1 - axis]
    out = np.empty((n, width), dtype=dtype)
    for start in range(0, n, CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = array.rows(start, min(start + CHUNK_ROWS, n), axis)
    return out


def _first_bad_row(x, bad):
    for start in range(0, len(x), CHUNK_ROWS):
        rows = np.nonzero(bad(x[start:start + CHUNK_ROWS]).any(axis=1))[0]
        if len(rows):
            return start + int(rows[0])
    return None


def _chunks(x):
    return (x[s:s + CHUNK_ROWS] for s in range(0, len(x), CHUNK_ROWS))


def image_statistics(images):
    """One scalar mean and std over the whole matrix (SPEC §1), accumulated in float64 chunk by
    chunk over an array or FileRows (two passes, the same sums either way)."""
    count = len(images) * images.shape[1]
    mean = sum(chunk.sum(dtype=np.float64) for chunk in _chunks(images)) / count
    std = np.sqrt(sum(np.square(chunk - mean, dtype=np.float64).sum() for chunk in _chunks(images)) / count)
    if std == 0:
        raise UserError('the image features are constant (standard deviation 0): cannot standardise')
    return mean, std


def column_means(x):
    """The mean of each column over every row, accumulated in float64 chunk by chunk."""
    return sum(chunk.sum(axis=0, dtype=np.float64) for chunk in _chunks(x)) / len(x)


def shift_and_scale(x, shift, scale=1.0):
    """x <- (x - shift) / scale: in place for an array (chunk by chunk), as it is read for
    FileRows; in float64 either way (a Python float would leave float32 arrays in float32)."""
    shift, scale = np.asarray(shift, dtype=np.float64), np.float64(scale)
    if isinstance(x, FileRows):
        x.shift, x.scale = shift, scale
        return
    for s in range(0, len(x), CHUNK_ROWS):
        x[s:s + CHUNK_ROWS] = (x[s:s + CHUNK_ROWS] - shift) / scale


def load_data(path, keys, image_dim, text_dim, num_label, standardise_images=False,
              centre_text=False, statistics=None, lazy=False):
    """Load (images, text, labels) from `path` and check them against the expected widths.

    `keys` names the image, text and label variables of a single file; a folder is read as the
    three-file NUS-WIDE layout (NUS_FOLDER_FILES) whatever the keys. Image features become float32
    arrays, raw images stay on disk as RawImages. `standardise_images`: image features less one
    scalar mean, over one scalar std (SPEC §1); `centre_text`: text less each column's mean over
    every row (SPEC-DCMH §2); both with the given `statistics` (a run's own, as Data.statistics
    holds them) or else those of this file. With `lazy` every matrix is FileRows over the files,
    left open, read a chunk at a time for the checks and the statistics: memory bounded whatever
    the row count (a MATLAB v5 file, which scipy reads whole, is held as read)."""
    with contextlib.ExitStack() as opened_files:
        if os.path.isdir(path):
            files = [os.path.join(path, name) for name, _ in NUS_FOLDER_FILES]
            if not all(os.path.isfile(f) for f in files):
                raise UserError(f'{path}: a folder, but not the NUS-WIDE three-file layout (expected '
                                f"{', '.join(name for name, _ in NUS_FOLDER_FILES)})")
            variables = [(file, (key,)) for file, (_, key) in zip(files, NUS_FOLDER_FILES)]
        else:
            variables = [(path, keys)]
        arrays = []
        for file, file_keys in variables:
            file_arrays, handle = _open(file, file_keys)
            arrays += file_arrays
            if handle is not None:
                opened_files.callback(handle.close)

        raw = isinstance(arrays[0], RawImages)
        n, axes = _sample_axes(arrays)
        if raw and arrays[0].shape[1:] != (3, 224, 224):
            raise UserError(f'{path}: {arrays[0].key} holds images of shape '
                            f'{" x ".join(map(str, arrays[0].shape[1:]))}, expected 3 x 224 x 224')
        checks = list(zip(arrays, axes, (image_dim, text_dim, num_label),
                          ('image_dim', 'text_dim', 'num_label')))
        for array, axis, expected, option in checks[raw:]:  # raw images have no feature width
            width = array.shape[1 - axis]
            if width != expected:
                raise UserError(f'{array.path}: {array.key} has {width} columns, expected '
                                f'{option} = {expected} (pass --{option} {width} if this is right)')
        read = FileRows if lazy else _read
        images = arrays[0] if raw else read(arrays[0], n, axes[0])
        text, labels = (read(a, n, axis) for a, axis in zip(arrays[1:], axes[1:]))

        for name, array, x in (('images', arrays[0], images), ('text', arrays[1], text))[raw:]:
            row = _first_bad_row(x, lambda c: ~np.isfinite(c))
            if row is not None:
                raise UserError(f'{array.path}: {array.key} ({name}) has NaN or inf in row {row}')
        row = _first_bad_row(labels, lambda c: (c != 0) & (c != 1))
        if row is not None:
            values = np.unique(labels[row][(labels[row] != 0) & (labels[row] != 1)])
            raise UserError(f'{arrays[2].path}: {arrays[2].key} (labels) must be 0/1, found '
                            f'{values.tolist()} in row {row}')
        unlabelled = sum(int((chunk.sum(axis=1) == 0).sum()) for chunk in _chunks(labels))
        if unlabelled:
            warn(f'{path}: {unlabelled} of {n} samples have no label: as triplet anchors they get zero '
                 'weight (SPEC §4.1), as queries they count as MAP 0 (SPEC §7)')
        applied = {}
        if standardise_images and not raw:
            mean, std = ((statistics['image_mean'], statistics['image_std']) if statistics
                         else image_statistics(images))
            shift_and_scale(images, mean, std)
            applied.update(image_mean=float(mean), image_std=float(std))
        if centre_text:
            text_mean = (np.asarray(statistics['text_mean'], dtype=np.float64) if statistics
                         else column_means(text))
            if text_mean.shape != (text.shape[1],):
                raise UserError(f'{path}: the run centred {len(text_mean)} text columns, the file '
                                f'has {text.shape[1]}')
            shift_and_scale(text, text_mean)
            applied['text_mean'] = text_mean.tolist()
        if lazy:
            opened_files.pop_all()  # the FileRows read from them from now on
    return Data(images, text, labels, path, applied)
