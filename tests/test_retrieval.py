import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import config
import runs
from datasets.data_handler import load_data
from retrieval import index
from tests.matfiles import small_dataset, write_v7, write_v73, write_vgg_f
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
    with ThreadPoolExecutor(2) as pool:  # independent commands, two at a time: 2 cores
        finished = list(pool.map(lambda case: main(*case[1:]), cases))
    for (expected, *case), done in zip(cases, finished):
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


def with_data(options, path):
    """The command-line options with --data_path `path` instead."""
    at = options.index('--data_path')
    return [*options[:at + 1], path, *options[at + 2:]]


def test_ivf_index_of_fewer_codes_than_lists_and_search_needs_a_saved_index(mini_run):
    """index --index ivf on 10 codes (4·√10 = 12 lists by default) builds one of at most 10
    lists; --nlist above the count is one line; search --index ivf|hnsw without a saved index says
    how to build one instead of building it at every query."""
    tmp, options = mini_run
    few = tmp / 'few.h5'
    assert main('encode', *options, '--out', few, '--rows', '0:10').returncode == 0
    query = ['--database', few, '--rows', '0:1', '--modality', 'image', '--topk', 10, '--json', True]
    cases = [('--nlist must be an integer from 1 to the 10 codes', 'index', '--database', few,
              '--index', 'ivf', '--nlist', 11),
             (f'no saved hnsw index of its text codes (build it once with python main.py index '
              f'--database {few} --index hnsw)', 'search', *options, *query, '--index', 'hnsw')]
    for expected, *case in cases:
        done = main(*case)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr
    assert not list(tmp.glob('few.h5.*'))
    built = main('index', '--database', few, '--index', 'ivf')
    assert built.returncode == 0 and 'WARNING' not in built.stderr, built.stderr
    assert index.load_index(few, 'text', 'ivf').nlist == 10
    exact = main('search', *options, *query)
    approximate = main('search', *options, *query, '--index', 'ivf', '--nprobe', 10)  # every list
    assert exact.returncode == 0 and approximate.returncode == 0, approximate.stderr
    assert ([h['distance'] for h in json.loads(approximate.stdout)]
            == [h['distance'] for h in json.loads(exact.stdout)])


def write_mini_like(folder, n, seed, label_names=LABELS):
    """A data file of the mini run's widths with other items, and its sidecar (ids other<i>)."""
    folder.mkdir()
    features, text, labels = small_dataset(n, WIDTHS[-1], len(VOCABULARY), len(LABELS), seed=seed)
    write_v7(folder / 'other.mat', {'images': np.abs(features), 'YAll': text, 'LAll': labels})
    (folder / 'other.json').write_text(json.dumps({
        'vocabulary': VOCABULARY, 'labels': label_names, 'ids': [f'other{i}' for i in range(n)]}))
    return folder / 'other.mat', labels


def test_rows_appended_from_another_data_file_keep_their_file_and_labels(mini_run):
    """The 60 items of mini.mat, then the 80 of another file appended: searched with --data_path
    mini.mat, every hit names the data file its row came from, with that file's id and labels (rows
    60..79 exist only in the other file); a file of other label names is refused."""
    tmp, options = mini_run
    other, other_labels = write_mini_like(tmp / 'other', 80, seed=5)
    _, _, mini_labels = small_dataset(60, WIDTHS[-1], len(VOCABULARY), len(LABELS))
    both = tmp / 'both.h5'
    for data, append in ((tmp / 'mini.mat', False), (other, True)):
        done = main('encode', *with_data(options, data), '--out', both, '--append', append)
        assert done.returncode == 0, done.stderr
    done = main('search', *options, '--database', both, '--rows', '0:1', '--topk', 140, '--json', True)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    files = {str((tmp / 'mini.mat').resolve()): ('photo{:03d}', mini_labels),
             str(other.resolve()): ('other{}', other_labels)}
    assert len(hits) == 140 and {h['data_file'] for h in hits} == set(files)
    assert max(h['row'] for h in hits) == 79
    for hit in hits:
        name, labels = files[hit['data_file']]
        assert hit['id'] == name.format(hit['row'])
        assert hit['labels'] == [LABELS[j] for j in np.flatnonzero(labels[hit['row']])]
    renamed, _ = write_mini_like(tmp / 'renamed', 20, seed=6, label_names=['a', 'b', 'c', 'd'])
    before = both.read_bytes()
    refused = main('encode', *with_data(options, renamed), '--out', both, '--append', True)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert 'one codes file holds items of one label set' in refused.stderr
    assert both.read_bytes() == before


def test_codes_are_computed_with_the_training_file_statistics(mini_run):
    """A data file of mini.mat's 60 rows and 20 more of far larger features (so other image
    statistics): its first 60 codes are mini.mat's, the codes file records the run's mean and std
    (statistics.json), and a --rows query of it ranks as the same row of mini.mat does. A run
    folder of an older version (no statistics.json) takes the data file's own, and says so."""
    tmp, options = mini_run
    features, text, labels = small_dataset(60, WIDTHS[-1], len(VOCABULARY), len(LABELS))
    extra = small_dataset(20, WIDTHS[-1], len(VOCABULARY), len(LABELS), seed=7)
    larger = tmp / 'larger.mat'
    write_v7(larger, {'images': np.r_[np.abs(features), 10 * np.abs(extra[0]) + 5],
                      'YAll': np.r_[text, extra[1]], 'LAll': np.r_[labels, extra[2]]})
    done = main('encode', *with_data(options, larger), '--out', tmp / 'larger.h5')
    assert done.returncode == 0, done.stderr
    statistics = json.loads((tmp / 'flickr25k_32' / 'statistics.json').read_text())
    with h5py.File(tmp / 'larger.h5') as h5, h5py.File(tmp / 'codes.h5') as trained:
        assert (h5.attrs['image_mean'], h5.attrs['image_std']) == (statistics['image_mean'],
                                                                   statistics['image_std'])
        assert np.array_equal(h5['image'][:60], trained['image'][()])
    query = ['--database', tmp / 'codes.h5', '--rows', '7:8', '--topk', 60, '--json', True]
    same = [main('search', *with_data(options, data), *query) for data in (tmp / 'mini.mat', larger)]
    assert same[0].returncode == 0 and same[0].stdout == same[1].stdout, same[1].stderr

    old = tmp / 'old'
    shutil.copytree(tmp / 'flickr25k_32', old / 'flickr25k_32', ignore=shutil.ignore_patterns('statistics.json'))
    at = options.index('--checkpoint_dir')
    old_options = [*with_data(options, larger)[:at + 1], old, *options[at + 2:]]
    done = main('encode', *old_options, '--out', tmp / 'old.h5')
    assert done.returncode == 0, done.stderr
    assert f'{old / "flickr25k_32"} has no statistics.json' in done.stderr
    own = load_data(larger, ('images', 'YAll', 'LAll'), WIDTHS[-1], len(VOCABULARY), len(LABELS),
                    standardise_images=True)
    with h5py.File(tmp / 'old.h5') as h5:
        assert (h5.attrs['image_mean'], h5.attrs['image_std']) == (own.image_mean, own.image_std)


def test_image_query_takes_the_given_weights_and_checks_their_sha256(mini_run):
    """A data file whose sidecar names its CNN-F weights by a path of another machine: an image
    query goes through --pretrain_model_path (the same file, by sha256) and ranks as with the
    original sidecar; weights of another sha256 are refused in one line."""
    from utils.checkpoint import sha256
    tmp, options = mini_run
    weights = tmp / 'imagenet-vgg-f.mat'
    moved = tmp / 'moved'
    moved.mkdir()
    shutil.copyfile(tmp / 'mini.mat', moved / 'mini.mat')
    sidecar = json.loads((tmp / 'mini.json').read_text())
    sidecar['features'] = {'kind': 'cnn_f_fc7', 'weights': '/elsewhere/imagenet-vgg-f.mat',
                           'weights_sha256': sha256(weights)}
    (moved / 'mini.json').write_text(json.dumps(sidecar))
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp / 'photo.jpg')
    query = ['--database', tmp / 'codes.h5', '--image', tmp / 'photo.jpg', '--topk', 60, '--json', True]
    original = main('search', *options, *query)
    given = main('search', *with_data(options, moved / 'mini.mat'), *query)
    assert given.returncode == 0 and original.returncode == 0, given.stderr
    assert json.loads(given.stdout) == json.loads(original.stdout)
    write_vgg_f(tmp / 'other-vgg-f.mat', WIDTHS, seed=1)
    at = options.index('--pretrain_model_path')
    other = [*with_data(options, moved / 'mini.mat')[:at + 1], tmp / 'other-vgg-f.mat', *options[at + 2:]]
    refused = main('search', *other, *query)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert (f'error: {tmp / "other-vgg-f.mat"}: not the CNN-F weights the features of '
            f'{moved / "mini.mat"} were made with') in refused.stderr


@pytest.fixture(scope='module')
def agah_run(tmp_path_factory):
    """An AGAH (random weights: its codes depend on their batch all the same) on a v7.3 file of
    4500 rows, batch 100, which does not divide encode's 4096-row chunks: queries [0, 300),
    database [300, 4500) (AGAH's MIRFlickr layout, queries first)."""
    tmp = tmp_path_factory.mktemp('agah')
    images, text, labels = small_dataset(4500, 16, 8, 4)
    write_v73(tmp / 'agah.mat', {'images': images, 'YAll': text, 'LAll': labels})
    options = {'model': 'agah', 'flag': 'mir', 'data_path': str(tmp / 'agah.mat'), 'image_dim': 16,
               'text_dim': 8, 'num_label': 4, 'query_size': 300, 'db_size': 4200,
               'training_size': 200, 'batch_size': 100, 'emb_dim': 32, 'bit': 16, 'device': 'cpu',
               'checkpoint_dir': str(tmp), 'vis_env': None}
    cfg = config.parse(options)
    runs.run_dir(cfg).mkdir(parents=True)
    runs.make_method(cfg, False, 1, torch.device('cpu')).save_best(runs.run_dir(cfg))
    return tmp, options


def test_agah_codes_file_of_a_split_equals_the_codes_test_scored(agah_run):
    """encode --rows 300:4500 (the database's rows) gives the database codes test scores: encode
    batches from the first row it encodes, in chunks of whole batches, as test from the first row
    of each split."""
    from retrieval import api
    from utils import hamming
    tmp, options = agah_run
    run = api.load_run(**options)
    api.write(run, tmp / 'database.h5', 'image', rows='300:4500')
    splits = runs.load_splits(config.parse(options), torch.device('cpu'))
    assert splits.database.tolist() == list(range(300, 4500))
    scored = runs.encode(run.method, 'image', splits.images, splits.database)
    assert np.array_equal(api.open_codes(tmp / 'database.h5').read('image'), hamming.pack(scored))


def test_search_json_stdout_is_json_alone(agah_run):
    """search --json True | jq: with the CUDA fallback notice (on a machine without CUDA), AGAH's
    notes and the data, stdout parses as one JSON value; the notes are on stderr."""
    tmp, options = agah_run
    words = [str(w) for k, v in {**options, 'device': 'cuda:0'}.items() if v is not None
             for w in (f'--{k}', v)]
    assert main('encode', *words, '--out', tmp / 'images.h5', '--rows', '0:500', '--modality',
                'image').returncode == 0
    done = main('search', *words, '--database', tmp / 'images.h5', '--rows', '0:2', '--modality',
                'image', '--same_modality', True, '--topk', 3, '--json', True)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert [[h['rank'] for h in query] for query in hits] == [[1, 2, 3]] * 2
    assert 'CNN-F is taken as already applied' in done.stderr
    assert 'AGAH computes a code from its whole batch' in done.stderr
    if not torch.cuda.is_available():
        assert 'CUDA is not available on this machine' in done.stderr
