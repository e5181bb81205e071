"""encode reads its data file lazily: the same rows and standardisation as training's eager read,
the same one-line refusals, and memory that does not grow with the row count."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from datasets.data_handler import CHUNK_ROWS, load_data
from tests.matfiles import small_dataset, write_nus_folder, write_v7, write_v73
from tests.test_main import REPO
from utils.errors import UserError

WIDTHS = {'image_dim': 64, 'text_dim': 40, 'num_label': 6}
KEYS = ('images', 'YAll', 'LAll')


def write_layout(folder, layout, images, text, labels):
    arrays = {'images': images, 'YAll': text, 'LAll': labels}
    if layout == 'v7.3 text stored transposed':  # read the other way round (_sample_axes)
        arrays['YAll'] = text.T
    if layout.startswith('nus'):
        write_nus_folder(folder / 'nus', images, text, labels, v73=True)
        return folder / 'nus'
    (write_v7 if layout == 'v7' else write_v73)(folder / 'data.mat', arrays)
    return folder / 'data.mat'


@pytest.mark.parametrize('layout', ['v7.3', 'v7.3 text stored transposed', 'nus v7.3', 'v7'])
def test_lazy_rows_equal_the_eager_arrays(tmp_path, layout):
    images, text, labels = small_dataset(2 * CHUNK_ROWS + 300)  # three statistic chunks
    path = write_layout(tmp_path, layout, images.astype(np.float64), text, labels)
    eager = load_data(path, KEYS, **WIDTHS)
    lazy = load_data(path, KEYS, **WIDTHS, lazy=True)
    assert (lazy.image_mean, lazy.image_std) == (eager.image_mean, eager.image_std)
    assert len(lazy) == len(eager)
    for a, b in [(0, len(eager)), (5, 4100), (CHUNK_ROWS - 1, CHUNK_ROWS + 1), (8000, 10 ** 6)]:
        for name in ('images', 'text', 'labels'):
            rows = getattr(lazy, name)[a:b]
            assert rows.dtype == np.float32 and np.array_equal(rows, getattr(eager, name)[a:b]), name
    assert np.array_equal(lazy.labels[-1], eager.labels[-1])
    unstandardised = load_data(path, KEYS, **WIDTHS, standardise_images=False, lazy=True)
    assert unstandardised.image_mean is None and np.array_equal(unstandardised.images[:9], images[:9])


def test_lazy_refusals_are_the_eager_ones(tmp_path):
    images, text, labels = small_dataset(CHUNK_ROWS + 100)
    images[CHUNK_ROWS + 7, 3] = np.nan
    nan_file, bad_labels = tmp_path / 'nan.mat', tmp_path / 'labels.mat'
    write_v73(nan_file, {'images': images, 'YAll': text, 'LAll': labels})
    images[CHUNK_ROWS + 7, 3], labels[9, 2] = 0, 2
    write_v73(bad_labels, {'images': images, 'YAll': text, 'LAll': labels})
    for path, widths, expected in [(nan_file, WIDTHS, f'NaN or inf in row {CHUNK_ROWS + 7}'),
                                   (bad_labels, WIDTHS, 'must be 0/1, found [2.0] in row 9'),
                                   (bad_labels, {**WIDTHS, 'image_dim': 65}, 'expected image_dim')]:
        messages = []
        for lazy in (False, True):
            with pytest.raises(UserError) as refused:
                load_data(path, KEYS, **widths, lazy=lazy)
            messages.append(str(refused.value))
        assert messages[0] == messages[1] and expected in messages[0], messages


ENCODE = """
import json, resource, sys
from pathlib import Path
import torch
import config, runs
from retrieval import api

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

options = dict(json.loads(sys.argv[1]))
cfg = config.parse(options)
runs.run_dir(cfg).mkdir(parents=True)
runs.make_method(cfg, False, 1, torch.device('cpu')).save_best(runs.run_dir(cfg))  # random weights
before = peak_mb()
run = api.load_run(**options)
api.write(run, Path(options['checkpoint_dir']) / 'codes.h5', 'image')
print(json.dumps({'before_mb': before, 'after_mb': peak_mb(), 'rows': len(run.data)}))
"""


def test_encode_memory_does_not_grow_with_the_rows(tmp_path):
    """A 250000 x 512 float32 image matrix (488 MB) in a v7.3 file: encoding its image codes
    raises the peak resident memory by a small fraction of it (the chunks, not the matrix: about
    66 MB; read whole, 544 MB)."""
    n, width = 250_000, 512
    rng = np.random.default_rng(0)
    labels = np.zeros((n, 4), np.uint8)
    labels[np.arange(n), rng.integers(0, 4, n)] = 1
    path = tmp_path / 'big.mat'
    write_v73(path, {'YAll': rng.integers(0, 2, (n, 8), dtype=np.uint8), 'LAll': labels})
    with h5py.File(path, 'a') as h5:  # MATLAB's layout: width x rows, written a block at a time
        images = h5.create_dataset('images', (width, n), np.float32, chunks=(width, 256))
        images.attrs['MATLAB_class'] = np.bytes_('single')
        for start in range(0, n, 25_000):
            images[:, start:start + 25_000] = rng.standard_normal((width, 25_000), dtype=np.float32)
    options = {'flag': 'mir', 'data_path': str(path), 'image_dim': width, 'text_dim': 8,
               'num_label': 4, 'hidden_dim': 64, 'bit': 16, 'device': 'cpu',
               'checkpoint_dir': str(tmp_path), 'vis_env': None}
    done = subprocess.run([sys.executable, '-c', ENCODE, json.dumps(options)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    matrix_mb = n * width * 4 / 2 ** 20
    assert peak['rows'] == n
    assert peak['after_mb'] - peak['before_mb'] < matrix_mb / 4, (peak, matrix_mb)


def test_search_memory_does_not_grow_with_the_source_ids():
    """One query over 500000 codes with source ids, labels and rows, through api.search (what
    `search` runs), measured by `benchmarks/search.py --api True`: only the hits' ids, rows and
    labels are read, so the search adds the packed codes (3.8 MB) and a few buffers to the peak
    resident memory (about 15 MB); reading every source id added 106 MB."""
    done = subprocess.run([sys.executable, 'benchmarks/search.py', '--api', 'True', '--sizes', '5e5'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith('api search: codes=500000 '), done.stdout
    added_mb = float(line.split('peak_rss_added_mb=')[1])
    assert added_mb < 40, line
