"""The bad-input matrix: every case ends with one line naming the problem, a non-zero exit, no
traceback, and the checkpoint folder byte-identical before and after."""
import re
import shutil

import h5py
import numpy as np
import pytest

from tests.matfiles import small_dataset, write_v7, write_v73
from tests.test_main import TINY, run_main

SIZES = ['--db_size', '250', '--training_size', '200']


@pytest.fixture(scope='module')
def good_run(tmp_path_factory):
    """A finished tiny run (its checkpoint folder is what must stay untouched) and its data."""
    root = tmp_path_factory.mktemp('good')
    images, text, labels = small_dataset(n=300)
    path = root / 'mir.mat'
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    result = run_main('train', '--data_path', path, '--checkpoint_dir', root / 'ck', *TINY, *SIZES,
                      '--max_epoch', '1')
    assert result.returncode == 0, result.stderr
    return root, (images, text, labels)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def write_case(case, folder, images, text, labels):
    path = folder / f'{case}.mat'
    mir = {'images': images, 'YAll': text, 'LAll': labels}
    if case == 'truncated v7':
        write_v7(path, mir)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif case == 'truncated v7.3':
        write_v73(path, mir)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif case == 'hdf5 without header':
        with h5py.File(path, 'w') as f:
            for key, value in mir.items():
                f[key] = value.T
    elif case == 'keys of the other data set':
        write_v7(path, {'image': images, 'text': text, 'label': labels})
    elif case == 'one image row fewer':
        write_v7(path, {**mir, 'images': images[:-1]})
    elif case == 'text of the wrong width':
        write_v7(path, {**mir, 'YAll': text[:, :-3]})
    elif case in ('label value 2', 'label value -1'):
        bad = labels.astype(np.int8)
        bad[7, 2] = 2 if case == 'label value 2' else -1
        write_v7(path, {**mir, 'LAll': bad})
    elif case == 'NaN in one feature':
        bad = images.copy()
        bad[11, 5] = np.nan
        write_v7(path, {**mir, 'images': bad})
    elif case == 'zero-byte file':
        path.write_bytes(b'')
    elif case == 'directory':
        path = folder / 'a-folder'
        path.mkdir()
    return path


DATA_CASES = {
    'truncated v7': r'truncated',
    'truncated v7.3': r'truncated',
    'hdf5 without header': r'HDF5 file without the MATLAB v7.3 header',
    'keys of the other data set': r"no variable 'images', 'YAll', 'LAll' \(expected images, YAll, LAll; the file has: image, label, text\)",
    'one image row fewer': r'row counts of images, text and labels differ \(images 299 x 64, YAll 300 x 40, LAll 300 x 6\)',
    'text of the wrong width': r'YAll has 37 columns, expected text_dim = 40',
    'label value 2': r'LAll \(labels\) must be 0/1, found \[2.0\] in row 7',
    'label value -1': r'LAll \(labels\) must be 0/1, found \[-1.0\] in row 7',
    'NaN in one feature': r'images \(images\) has NaN or inf in row 11',
    'zero-byte file': r'the file is empty \(0 bytes\)',
    'directory': r'a folder, but not the NUS-WIDE three-file layout',
}


@pytest.mark.parametrize('case', DATA_CASES)
@pytest.mark.parametrize('command', ['train', 'test'])
def test_bad_data_file(good_run, tmp_path, case, command):
    root, arrays = good_run
    path = write_case(case, tmp_path, *arrays)
    before = snapshot(root / 'ck')
    result = run_main(command, '--data_path', path, '--checkpoint_dir', root / 'ck', *TINY, *SIZES,
                      '--overwrite', 'True')
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f'error: {path}') and re.search(DATA_CASES[case], last), last
    assert snapshot(root / 'ck') == before


def test_checkpoint_of_another_bit_length(good_run, tmp_path):
    root, _ = good_run
    shutil.copytree(root / 'ck' / 'flickr25k_16', tmp_path / 'flickr25k_32')
    before = snapshot(tmp_path)
    result = run_main('test', '--data_path', root / 'mir.mat', '--checkpoint_dir', tmp_path, *TINY,
                      *SIZES, '--bit', '32')
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'GEN_module.pth: this model does not fit the configuration' in result.stderr
    assert 'image_hash.0.weight' in result.stderr
    assert snapshot(tmp_path) == before


def test_checkpoint_that_is_not_a_torch_file(good_run, tmp_path):
    root, _ = good_run
    (tmp_path / 'flickr25k_16').mkdir()
    (tmp_path / 'flickr25k_16' / 'GEN_module.pth').write_text('not a model')
    before = snapshot(tmp_path)
    result = run_main('test', '--data_path', root / 'mir.mat', '--checkpoint_dir', tmp_path, *TINY,
                      *SIZES)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'GEN_module.pth: not a readable torch model' in result.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize('sizes, message', [
    (['--db_size', '290', '--query_size', '20', '--training_size', '200'], r'the query split needs rows \[290, 310\) but the data has 300 rows'),
    (['--db_size', '250', '--training_size', '400'], r'the training split needs rows \[0, 400\)'),
])
def test_split_larger_than_the_data(good_run, sizes, message):
    root, _ = good_run
    result = run_main('train', '--data_path', root / 'mir.mat', '--checkpoint_dir', root / 'other',
                      *TINY, *sizes)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert re.search(message, result.stderr)


def test_unlabelled_samples_warn_and_the_run_goes_on(tmp_path):
    images, text, labels = small_dataset(n=300)
    labels[[3, 4, 5]] = 0
    path = tmp_path / 'mir.mat'
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    result = run_main('train', '--data_path', path, '--checkpoint_dir', tmp_path / 'ck', *TINY,
                      *SIZES, '--max_epoch', '1')
    assert result.returncode == 0, result.stderr
    assert result.stderr.count('3 of 300 samples have no label') == 1
