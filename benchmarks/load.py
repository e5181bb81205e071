"""Peak resident memory of loading a NUS-WIDE-sized MATLAB v7.3 file (195834 x 4096 float32 images,
1000-d text, 21 labels): the float32 image matrix alone is 3.2 GB; the published code peaks near
10 GB on a file like this. Writes the file once (3.4 GB, in chunks) unless --path names one.

    python benchmarks/load.py [--path FILE] [--rows 195834]
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_file(path, rows, image_dim=4096, text_dim=1000, num_label=21, block=8192):
    """MATLAB's v7.3 layout: a 512-byte header, then each N x d matrix stored as d x N."""
    import h5py
    from tests.matfiles import write_v73
    rng = np.random.default_rng(0)
    write_v73(path, {})  # the header and an empty HDF5 file
    with h5py.File(path, 'a') as f:
        specs = (('image', image_dim, np.float32, 'single'), ('text', text_dim, np.uint8, 'uint8'),
                 ('label', num_label, np.uint8, 'uint8'))
        sets = {key: f.create_dataset(key, (d, rows), dtype=dtype, chunks=(d, min(block, rows)))
                for key, d, dtype, _ in specs}
        for key, _, _, cls in specs:
            sets[key].attrs['MATLAB_class'] = np.bytes_(cls)
        for start in range(0, rows, block):
            n = min(block, rows - start)
            sets['image'][:, start:start + n] = rng.standard_normal((image_dim, n), dtype=np.float32)
            sets['text'][:, start:start + n] = rng.random((text_dim, n)) < 0.01
            labels = rng.random((num_label, n)) < 0.1
            labels[rng.integers(0, num_label, n), np.arange(n)] = True
            sets['label'][:, start:start + n] = labels


def measure(path):
    from datasets.data_handler import load_data
    start = time.perf_counter()
    data = load_data(path, ('image', 'text', 'label'), 4096, 1000, 21)
    seconds = time.perf_counter() - start
    print(f'load: rows={len(data)} seconds={seconds:.1f} images_gb={data.images.nbytes / 1e9:.2f} '
          f'peak_rss_gb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} (target < 5)')


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--path', default=str(REPO / 'data' / 'BENCH-NUS-v73.mat'))
    parser.add_argument('--rows', type=int, default=195834)
    parser.add_argument('--measure', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.path)
        sys.exit()
    if not os.path.exists(args.path):
        os.makedirs(os.path.dirname(args.path), exist_ok=True)
        print(f'writing {args.path} ({args.rows} rows)', flush=True)
        write_file(args.path, args.rows)
    # A fresh process, so that the peak belongs to the load alone.
    subprocess.run([sys.executable, __file__, '--path', args.path, '--measure'], check=True)
