import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import index
from tests.matfiles import small_dataset, write_v7, write_vgg_f
from tests.test_main import run_main as main



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


def train_and_encode(tmp, options):
    """Train for 2 epochs with `options`, then encode every row into tmp/codes.h5."""
    trained = main('train', *options, '--max_epoch', 2, '--vis_env', 'None')
    assert trained.returncode == 0, trained.stderr
    done = main('encode', *options, '--out', tmp / 'codes.h5')
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo')
    options = ['--flag', 'demo', '--hidden_dim', 64, '--bit', 16, '--device', 'cpu',
               '--checkpoint_dir', tmp, '--data_path', tmp / 'demo.mat']
    train_and_encode(tmp, options)
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
    assert flat.returncode == 0, flat.stderr
    assert json.loads(flat.stdout.strip().splitlines()[-1]) == hits


def test_round_trip_finds_the_query_own_pair_first(demo_run):
    """Query row 2500 (a query row, never trained on) encoded first, then the database rows 0:2500
    appended: the file holds 2500 and 0..2499, in that order.

    Asserted: searching by --rows 2500:2501 within the image codes (same modality) ranks the query's
    own item first at distance 0 (ties go to database order, and it comes first); searching across
    (image -> text) returns its own pair at the Hamming distance of the two codes in the file. Not
    asserted: that the own pair wins across modalities: on the demo an image and its text share only
    their labels, so every item with those labels is an equally right answer."""
    tmp, options = demo_run
    pair = tmp / 'pair.h5'
    for rows, append in (('2500:2501', False), ('0:2500', True)):
        done = main('encode', *options, '--out', pair, '--rows', rows, '--append', append)
        assert done.returncode == 0, done.stderr
    with h5py.File(pair) as h5, h5py.File(tmp / 'codes.h5') as whole:
        assert (h5['row'][()] == np.r_[2500, np.arange(2500)]).all()
        assert (h5['image'][()] == whole['image'][()][np.r_[2500, np.arange(2500)]]).all()
        image, text = h5['image'][()], h5['text'][()]
    query = ['--database', pair, '--rows', '2500:2501', '--modality', 'image', '--json', True]
    same = main('search', *options, *query, '--topk', 5, '--same_modality', True)
    assert same.returncode == 0, same.stderr
    first = json.loads(same.stdout.strip().splitlines()[-1])[0]
    assert (first['rank'], first['row'], first['distance']) == (1, 2500, 0)
    cross = main('search', *options, *query, '--topk', 2501)
    assert cross.returncode == 0, cross.stderr
    own = next(h for h in json.loads(cross.stdout.strip().splitlines()[-1]) if h['row'] == 2500)
    assert own['distance'] == int(np.unpackbits(image[0] ^ text[0]).sum())


def test_bad_inputs_are_one_line_and_change_nothing(demo_run, mini_run):
    tmp, options = demo_run
    mini, mini_options = mini_run
    foreign = tmp / 'foreign.h5'
    with h5py.File(foreign, 'w') as h5:
        h5['x'] = np.zeros(3)
    truncated = tmp / 'truncated.h5'
    truncated.write_bytes((tmp / 'codes.h5').read_bytes()[:2000])
    codes = tmp / 'codes.h5'
    # A valid codes file of other codes, given the flat index of codes.h5 under its own name.
    other = tmp / 'other.h5'
    other.write_bytes(codes.read_bytes())
    with h5py.File(other, 'a') as h5:
        h5['text'][0] = ~h5['text'][0]
    assert main('index', '--database', codes, '--index', 'flat').returncode == 0
    for suffix in ('text.flat.faiss', 'text.flat.json'):
        Path(f'{other}.{suffix}').write_bytes(Path(f'{codes}.{suffix}').read_bytes())
    corrupt = tmp / 'corrupt.jpg'
    corrupt.write_bytes(b'\xff\xd8\xff\xe0' + bytes(200))
    files = [codes, foreign, truncated, other, *tmp.glob('*.faiss'), *tmp.glob('*.json'),
             *mini.glob('*.h5')]
    before = {p: p.read_bytes() for p in files}
    mini_data = [o if o != tmp / 'demo.mat' else mini / 'mini.mat' for o in options]
    cases = [('must be a positive', 'search', *options, '--database', codes, '--rows', '0:1',
              '--topk', 0),
             ('not a codes file', 'search', *options, '--database', foreign, '--rows', '0:1'),
             ('perhaps truncated', 'search', *options, '--database', truncated, '--rows', '0:1'),
             ('no prepare sidecar', 'search', *options, '--database', codes, '--text', 'dog'),
             ('no such image', 'search', *options, '--database', codes, '--image', tmp / 'missing.jpg'),
             ('not an image', 'search', *options, '--database', codes, '--image', corrupt),
             # the mini model: 32 bits, another model file and data
             ('bit 32', 'search', *options, '--database', mini / 'codes.h5', '--rows', '0:1'),
             ('another model', 'encode', *options, '--out', mini / 'codes.h5', '--rows', '0:1',
              '--append', True),
             ('expected image_dim', 'search', *mini_data, '--database', codes, '--rows', '0:1'),
             ('expected image_dim', 'encode', *mini_data, '--out', tmp / 'never.h5'),
             ('index of another codes file', 'search', *options, '--database', other, '--rows', '0:1',
              '--index', 'flat')]
    for expected, *case in cases:
        done = main(*case)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (case, done.stderr)
        assert expected in done.stderr, (case, done.stderr)
    all_unknown = main('search', *mini_options, '--database', mini / 'codes.h5', '--text', 'zebra')
    assert all_unknown.returncode == 2 and all_unknown.stderr.startswith('error: no word of')
    assert len(all_unknown.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp / 'never.h5').exists()


def test_topk_beyond_the_database_is_capped_with_a_note(demo_run):
    tmp, options = demo_run
    done = main('search', *options, '--database', tmp / 'codes.h5', '--rows', '0:1', '--topk', 5000,
                '--json', True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == '--topk 5000 is more than the 3000 codes: showing all of them'
    assert len(json.loads(done.stdout)) == 3000

VOCABULARY = ['dog', 'cat', 'beach', 'sea', 'tree', 'sky', 'car', 'road', 'snow', 'night', 'bird', 'sun']
LABELS = ['animals', 'water', 'plants', 'city']
WIDTHS = [8, 16, 16, 16, 16, 32, 24]  # a random VGG-F of these widths: fc7 gives 24 features


@pytest.fixture(scope='module')
def mini_run(tmp_path_factory):
    """A miniature collection as `prepare` leaves one (data file, sidecar, CNN-F weights), a DADH
    trained on it and its codes."""
    tmp = tmp_path_factory.mktemp('mini')
    weights = tmp / 'imagenet-vgg-f.mat'
    write_vgg_f(weights, WIDTHS)
    features, text, labels = small_dataset(60, WIDTHS[-1], len(VOCABULARY), len(LABELS))
    write_v7(tmp / 'mini.mat', {'images': np.abs(features), 'YAll': text, 'LAll': labels})
    (tmp / 'mini.json').write_text(json.dumps({
        'vocabulary': VOCABULARY, 'labels': LABELS, 'ids': [f'photo{i:03d}' for i in range(60)],
        'features': {'kind': 'cnn_f_fc7', 'weights': str(weights)}}))
    options = ['--flag', 'mir', '--data_path', tmp / 'mini.mat', '--image_dim', WIDTHS[-1],
               '--text_dim', len(VOCABULARY), '--num_label', len(LABELS), '--db_size', 50,
               '--query_size', 10, '--training_size', 50, '--hidden_dim', 64, '--bit', 32,
               '--device', 'cpu', '--checkpoint_dir', tmp, '--pretrain_model_path', weights]
    train_and_encode(tmp, options)
    return tmp, options


def test_words_query_reports_unknown_words_and_lists_sidecar_ids(mini_run):
    tmp, options = mini_run
    done = main('search', *options, '--database', tmp / 'codes.h5', '--text', 'Dog, zebra; sea',
                '--topk', 5, '--json', True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == 'warning: not in the vocabulary, ignored: zebra'
    hits = json.loads(done.stdout)
    assert [h['rank'] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h['id'] == f"photo{h['row']:03d}" for h in hits)
    assert all(set(h['labels']) <= set(LABELS) and h['labels'] for h in hits)
    assert [h['distance'] for h in hits] == sorted(h['distance'] for h in hits)


def test_image_file_query_is_encoded_as_the_api_encodes_it(mini_run):
    """The CLI's code of a JPEG is the code the API gives the CNN-F fc7 features of the same file,
    standardised with the mean and std recorded in the codes file: the query's distances to every
    text code, listed in full by --topk 60, are the distances of that code."""
    from datasets.images import load_image
    from models.cnn_f import CNNF
    from retrieval import api
    from utils import hamming
    tmp, options = mini_run
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp / 'query.jpg')
    done = main('search', *options, '--database', tmp / 'codes.h5', '--image', tmp / 'query.jpg',
                '--topk', 60, '--json', True)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)

    flags = dict(zip(options[::2], options[1::2]))
    run = api.load_run(**{k.lstrip('-'): str(v) if isinstance(v, Path) else v for k, v in flags.items()})
    with h5py.File(tmp / 'codes.h5') as h5:
        mean, std, text_codes = h5.attrs['image_mean'], h5.attrs['image_std'], h5['text'][()]
    with torch.inference_mode():
        features = CNNF.from_matconvnet(tmp / 'imagenet-vgg-f.mat')(
            torch.tensor(load_image(tmp / 'query.jpg')).float()[None])
    code = hamming.pack(run.encode_images((features.numpy() - mean) / std))
    assert len(hits) == 60 and [h['rank'] for h in hits] == list(range(1, 61))
    assert [h['distance'] for h in hits] == [int(np.unpackbits(code[0] ^ text_codes[h['row']]).sum())
                                             for h in hits]
