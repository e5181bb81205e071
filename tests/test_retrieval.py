import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from retrieval import index

ROOT = Path(__file__).resolve().parents[1]


def test_faiss_flat_equals_exact_on_tied_codes():
    rng = np.random.default_rng(0)
    database = rng.integers(0, 256, (20000, 8), dtype=np.uint8)
    database[:, 1:] = 0  # 256 distinct codes: long ties that FAISS orders its own way
    queries = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    exact, flat = index.search(database, queries, 50), index.search(database, queries, 50, 'flat')
    assert (exact[0] == flat[0]).all() and (exact[1] == flat[1]).all()


@pytest.mark.parametrize('kind', ['ivf', 'hnsw'])
def test_approximate_indexes_recall_a_clustered_set(kind):
    rng = np.random.default_rng(1)
    centres = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    noise = np.packbits(rng.random((20000, 64)) < 0.05, axis=1)
    database = centres[rng.integers(0, 50, 20000)] ^ noise
    queries = database[:40] ^ np.packbits(rng.random((40, 64)) < 0.05, axis=1)
    exact = index.search(database, queries, 20)
    found = index.search(database, queries, 20, kind, nlist=64, nprobe=8)
    assert index.recall(exact[0], found[0], found[1]) >= 0.9


def main(*args):
    return subprocess.run([sys.executable, 'main.py', *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo')
    options = ['--flag', 'demo', '--hidden_dim', 64, '--bit', 16, '--device', 'cpu',
               '--checkpoint_dir', tmp, '--data_path', tmp / 'demo.mat']
    assert main('train', *options, '--max_epoch', 2, '--vis_env', 'None').returncode == 0
    done = main('encode', *options, '--out', tmp / 'codes.h5')
    assert done.returncode == 0, done.stderr
    return tmp, options


def test_search_by_rows_ranks_by_distance(demo_run):
    tmp, options = demo_run
    done = main('search', *options, '--database', tmp / 'codes.h5', '--rows', '2500:2501',
                '--modality', 'image', '--topk', 10, '--json', True)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout.strip().splitlines()[-1])
    assert [h['rank'] for h in hits] == list(range(1, 11))
    keys = [(h['distance'], h['row']) for h in hits]
    assert keys == sorted(keys)
    flat = main('search', *options, '--database', tmp / 'codes.h5', '--rows', '2500:2501',
                '--modality', 'image', '--topk', 10, '--json', True, '--index', 'flat')
    assert json.loads(flat.stdout.strip().splitlines()[-1]) == hits


def test_appending_adds_rows(demo_run):
    tmp, options = demo_run
    assert main('encode', *options, '--out', tmp / 'part.h5', '--rows', '0:10').returncode == 0
    assert main('encode', *options, '--out', tmp / 'part.h5', '--rows', '10:25',
                '--append', True).returncode == 0
    with h5py.File(tmp / 'part.h5') as h5, h5py.File(tmp / 'codes.h5') as whole:
        assert (h5['row'][()] == np.arange(25)).all()
        assert (h5['image'][()] == whole['image'][:25]).all()


def test_bad_inputs_are_one_line_and_change_nothing(demo_run):
    tmp, options = demo_run
    foreign = tmp / 'foreign.h5'
    with h5py.File(foreign, 'w') as h5:
        h5['x'] = np.zeros(3)
    truncated = tmp / 'truncated.h5'
    truncated.write_bytes((tmp / 'codes.h5').read_bytes()[:2000])
    codes = tmp / 'codes.h5'
    before = {p: p.read_bytes() for p in (codes, foreign, truncated)}
    other_bit = [o if o != 16 else 32 for o in options]
    cases = [('search', *options, '--database', codes, '--rows', '0:1', '--topk', 0),
             ('search', *options, '--database', foreign, '--rows', '0:1'),
             ('search', *options, '--database', truncated, '--rows', '0:1'),
             ('search', *options, '--database', codes, '--text', 'dog'),
             ('search', *options, '--database', codes, '--image', tmp / 'missing.jpg')]
    for case in cases:
        done = main(*case)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (case, done.stderr)
    assert {p: p.read_bytes() for p in before} == before
