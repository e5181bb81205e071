"""`python main.py prepare` on generated miniatures of the MIRFlickr-25K and NUS-WIDE downloads and
on manifests: real JPEGs, real weight files, real .mat output read back by the trainer."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import main
from datasets.data_handler import RawImages, load_data
from datasets.images import load_image
from datasets.prepare import load_sidecar
from models.cnn_f import CNNF
from tests.matfiles import write_vgg_f
from tests.test_main import REPO, run_main

WIDTHS = [8, 16, 16, 16, 16, 32, 24]
MIR_N = 30
CONCEPTS = {'animals': lambda n: n % 5 == 0 and n != 25 or n % 4 == 0,
            'sky': lambda n: n % 2 == 0 or n == 7, 'water': lambda n: n % 3 == 0}


def mir_tags(n):
    """sun (15 images), sea (10), dog (6) pass --min_count 3; sunset (2) and rare<n> (1) do not."""
    return ([f'rare{n}'] + ['sun'] * (n % 2 == 0) + ['sea'] * (n % 3 == 0) + ['dog'] * (n % 5 == 0)
            + ['sunset'] * (n in (2, 4)))


def write_jpeg(path, seed, mode='RGB', size=(40, 30), format='JPEG'):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != 'RGB':
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=format)


def make_mir(root):
    images, tags = root / 'mirflickr', root / 'mirflickr' / 'meta' / 'tags'
    annotations = root / 'mirflickr25k_annotations_v080'
    tags.mkdir(parents=True)
    annotations.mkdir()
    for n in range(1, MIR_N + 1):
        mode = 'L' if n % 7 == 0 else 'CMYK' if n == 8 else 'RGB'
        write_jpeg(images / f'im{n}.jpg', n, mode, format='PNG' if n == 6 else 'JPEG')
        (tags / f'tags{n}.txt').write_text(''.join(t + '\n' for t in mir_tags(n)))
    for name, carries in CONCEPTS.items():
        (annotations / f'{name}.txt').write_text(
            ''.join(f'{n}\n' for n in range(1, MIR_N + 1) if carries(n)))
        (annotations / f'{name}_r1.txt').write_text('1\n3\n')  # relevant-only: must be ignored
    (annotations / 'README.txt').write_text('The 24 concepts of MIRFlickr-25K.\n')
    return root


def mir_expected():
    numbers = [n for n in range(1, MIR_N + 1)
               if any(c(n) for c in CONCEPTS.values()) and ({'sun', 'sea', 'dog'} & set(mir_tags(n)))]
    return numbers


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp('prepare')
    make_mir(root / 'mir')
    write_vgg_f(root / 'vgg-f.mat', WIDTHS)
    return root


def prepare_in_process(capsys, **options):
    """main.prepare as the command line runs it: (exit status, stdout, stderr)."""
    status = 0
    try:
        main.prepare(**options)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, pattern, folder=None):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    if folder is not None:  # nothing partial left: no .mat, no temporary file, no sidecar
        assert not [p for p in Path(folder).iterdir() if p.suffix in ('.mat', '.tmp', '.json')]


@pytest.fixture(scope='module')
def mir_file(work):
    out = work / 'out' / 'FLICKR.mat'
    out.parent.mkdir()
    result = run_main('prepare', '--source', 'mir', '--root', work / 'mir', '--out', out,
                      '--min_count', 3, '--pretrain_model_path', work / 'vgg-f.mat',
                      '--batch_size', 8)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_mir_counts_vocabulary_labels_and_row_order(mir_file):
    out, stdout = mir_file
    numbers = mir_expected()
    sidecar = load_sidecar(out)
    assert sidecar['ids'] == [f'im{n}' for n in numbers]
    assert sidecar['vocabulary'] == ['sun', 'sea', 'dog']  # most frequent first
    assert sidecar['labels'] == ['animals', 'sky', 'water']  # no _r1 files, no README
    no_label = sum(not any(c(n) for c in CONCEPTS.values()) for n in range(1, MIR_N + 1))
    assert sidecar['counts'] == {
        'items': MIR_N, 'kept': len(numbers), 'text_dim': 3, 'num_label': 3,
        'dropped': {'no label': no_label,
                    'no tag in the vocabulary (tags of >= 3 images)': MIR_N - no_label - len(numbers)}}
    assert f'kept {len(numbers)} of {MIR_N}' in stdout
    with h5py.File(out, 'r') as f:
        text, labels = f['YAll'][()].T, f['LAll'][()].T
        assert f['images'].shape == (WIDTHS[-1], len(numbers))
    assert text.tolist() == [[t in mir_tags(n) for t in ('sun', 'sea', 'dog')] for n in numbers]
    assert labels.tolist() == [[c(n) for c in CONCEPTS.values()] for n in numbers]
    assert open(out, 'rb').read(19) == b'MATLAB 7.3 MAT-file'
    assert sidecar['features']['kind'] == 'cnn_f_fc7' and len(sidecar['features']['weights_sha256']) == 64
    assert Path(sidecar['features']['weights']).is_absolute()  # search reads it from anywhere


def test_mir_features_are_cnn_f_of_the_decoded_images(mir_file, work):
    out, _ = mir_file
    numbers = mir_expected()
    cnn = CNNF.from_matconvnet(work / 'vgg-f.mat').eval()
    images = np.stack([load_image(work / 'mir' / 'mirflickr' / f'im{n}.jpg') for n in numbers])
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(images).float()).numpy()
    with h5py.File(out, 'r') as f:
        np.testing.assert_allclose(f['images'][()].T, expected, rtol=1e-4, atol=1e-4)
    assert expected.std() > 0


def test_train_and_test_run_on_the_prepared_file(mir_file, tmp_path):
    out, _ = mir_file
    n = len(mir_expected())
    options = ['--flag', 'mir', '--data_path', out, '--text_dim', 3, '--num_label', 3,
               '--db_size', n - 5, '--query_size', 5, '--training_size', n - 5, '--image_dim',
               WIDTHS[-1], '--hidden_dim', 64, '--bit', 16, '--max_epoch', 2, '--batch_size', 8,
               '--device', 'cpu', '--vis_env', 'None', '--checkpoint_dir', tmp_path]
    train = run_main('train', *options)
    assert train.returncode == 0, train.stderr
    test = run_main('test', *options)
    assert test.returncode == 0, test.stderr
    assert '...test MAP: MAP(i->t)' in test.stdout


def test_raw_images_are_read_as_raw_images(work, capsys, tmp_path):
    out = tmp_path / 'raw.mat'
    status, stdout, err = prepare_in_process(capsys, source='mir', root=work / 'mir', out=out,
                                             min_count=3, images='raw')
    assert status == 0, err
    numbers = mir_expected()
    data = load_data(out, ('images', 'YAll', 'LAll'), 4096, 3, 3)
    assert isinstance(data.images, RawImages) and data.images.shape == (len(numbers), 3, 224, 224)
    first = load_image(work / 'mir' / 'mirflickr' / f'im{numbers[0]}.jpg')
    assert torch.equal(data.images[[0]][0], torch.from_numpy(np.array(first)).float())
    assert load_sidecar(out)['features']['kind'] == 'raw'


def test_an_existing_out_is_kept_without_overwrite(mir_file, work, capsys):
    out, _ = mir_file
    before = out.read_bytes()
    status, _, err = prepare_in_process(capsys, source='mir', root=work / 'mir', out=out,
                                        min_count=3, pretrain_model_path=work / 'vgg-f.mat')
    assert_one_line_error(status, err, r'exists \(pass --overwrite True')
    assert out.read_bytes() == before


def write_manifest(folder, kind):
    items = [('a/1.jpg', 'A red car on the road', ['car', 'road']),
             ('a/2.jpg', 'red car', ['car']),
             ('b/3.jpg', 'the road at night', ['road', 'night']),
             ('b/4.jpg', 'night sky', ['night']),
             ('b/5.jpg', '', ['car']),                 # no text: dropped, counted
             ('b/6.jpg', 'a car without labels', []),  # no label: dropped, counted
             ('b/7.jpg', 'road, car; night!', ['road'])]
    for i, (image, _, _) in enumerate(items):
        write_jpeg(folder / image, 100 + i, 'L' if i == 3 else 'RGB')
    if kind == 'csv':
        lines = ['image,text,labels'] + [f'{i},"{t}",{";".join(l)}' for i, t, l in items]
    else:
        lines = [json.dumps({'image': i, 'text': t, 'labels': l}) for i, t, l in items]
    path = folder / f'items.{kind}'
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.mark.parametrize('kind', ['csv', 'jsonl'])
def test_manifest(work, capsys, tmp_path, kind):
    manifest = write_manifest(tmp_path / 'collection', kind)
    out = tmp_path / 'items.mat'
    status, stdout, err = prepare_in_process(capsys, source='manifest', manifest=manifest, out=out,
                                             pretrain_model_path=work / 'vgg-f.mat', min_count=2)
    assert status == 0, err
    sidecar = load_sidecar(out)
    assert sidecar['labels'] == ['car', 'night', 'road']
    # document counts 4, 3, 3, then 2 each; ties alphabetical
    assert sidecar['vocabulary'] == ['car', 'night', 'road', 'a', 'red', 'the']
    assert sidecar['ids'] == ['a/1.jpg', 'a/2.jpg', 'b/3.jpg', 'b/4.jpg', 'b/7.jpg']  # the images as given
    assert sidecar['counts']['dropped'] == {'no text': 1, 'no label': 1}
    with h5py.File(out, 'r') as f:
        assert f['LAll'][()].T.tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 1], [0, 1, 0], [0, 0, 1]]
        assert f['YAll'][()].T[-1].tolist() == [1, 1, 1, 0, 0, 0]


def test_manifest_labels_option(work, capsys, tmp_path):
    manifest = write_manifest(tmp_path / 'collection', 'csv')
    status, _, err = prepare_in_process(capsys, source='manifest', manifest=manifest,
                                        out=tmp_path / 'x.mat', images='raw', labels='road,car')
    assert status == 0, err
    sidecar = load_sidecar(tmp_path / 'x.mat')
    assert sidecar['labels'] == ['road', 'car']
    assert sidecar['counts']['dropped'] == {'no text': 1, 'none of --labels': 2}
    status, _, err = prepare_in_process(capsys, source='manifest', manifest=manifest,
                                        out=tmp_path / 'y.mat', images='raw', labels='car,boat')
    assert_one_line_error(status, err, r"--labels: no item carries 'boat'")
    assert not (tmp_path / 'y.mat').exists()


def test_bad_images_end_the_run_or_are_skipped_and_listed(work, capsys, tmp_path):
    collection = tmp_path / 'collection'
    manifest = write_manifest(collection, 'csv')
    (collection / 'a' / '2.jpg').unlink()                                  # missing
    data = (collection / 'b' / '3.jpg').read_bytes()
    (collection / 'b' / '3.jpg').write_bytes(data[:len(data) // 2])       # truncated
    (collection / 'b' / '4.jpg').write_text('not an image')                # not an image
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    status, _, err = prepare_in_process(capsys, source='manifest', manifest=manifest,
                                        out=out_dir / 'x.mat', pretrain_model_path=work / 'vgg-f.mat')
    assert_one_line_error(status, err, r'a/2\.jpg: no such image file', out_dir)
    status, stdout, err = prepare_in_process(capsys, source='manifest', manifest=manifest,
                                             out=out_dir / 'x.mat', skip_bad_images=True,
                                             pretrain_model_path=work / 'vgg-f.mat')
    assert status == 0, err
    sidecar = load_sidecar(out_dir / 'x.mat')
    assert [Path(s['file']).name for s in sidecar['skipped']] == ['2.jpg', '3.jpg', '4.jpg']
    assert sidecar['counts']['kept'] == 2 and sidecar['counts']['dropped']['unreadable image'] == 3
    assert 'cannot decode' in sidecar['skipped'][1]['reason']
    assert 'not an image' in sidecar['skipped'][2]['reason']
    with h5py.File(out_dir / 'x.mat', 'r') as f:
        assert f['images'].shape == (WIDTHS[-1], 2) and f['LAll'].shape == (3, 2)


def test_bad_inputs_are_one_line(work, capsys, tmp_path):
    weights = work / 'vgg-f.mat'
    mir = dict(source='mir', out=tmp_path / 'x.mat', pretrain_model_path=weights, min_count=3)
    cases = [
        (dict(mir, root=tmp_path / 'none'), r'none: no such folder \(--root'),
        (dict(mir, root=tmp_path), r'mirflickr/meta/tags: no such folder'),
        (dict(mir, root=work / 'mir', pretrain_model_path=tmp_path / 'w.mat'), r'w\.mat: no such file'),
        (dict(mir, root=work / 'mir', out='/proc/x.mat'), r'/proc: cannot write here'),
        (dict(mir, root=work / 'mir', color=1), r'unknown option --color'),
        (dict(source='flickr', out=tmp_path / 'x.mat'), r'--source must be mir, nus or manifest'),
    ]
    tags_only = tmp_path / 'tags_only'
    (tags_only / 'mirflickr' / 'meta' / 'tags').mkdir(parents=True)
    (tmp_path / 'm.csv').write_text('image,caption,labels\na.jpg,x,y\n')
    (tmp_path / 'm.jsonl').write_text('{"image": "a.jpg", "labels": ["y"]}\n')
    cases += [(dict(mir, root=tags_only), r'mirflickr25k_annotations_v080: no such folder'),
              (dict(source='manifest', manifest=tmp_path / 'm.csv', out=tmp_path / 'x.mat',
                    images='raw'), r'm\.csv: no column text'),
              (dict(source='manifest', manifest=tmp_path / 'm.jsonl', out=tmp_path / 'x.mat',
                    images='raw'), r'm\.jsonl:1: no key text')]
    for options, pattern in cases:
        status, _, err = prepare_in_process(capsys, **options)
        assert_one_line_error(status, err, pattern)
        assert not (tmp_path / 'x.mat').exists()


def test_the_command_line_reports_a_bad_input_in_one_line(tmp_path):
    result = run_main('prepare', '--source', 'mir', '--root', tmp_path / 'none', '--out',
                      tmp_path / 'x.mat', '--images', 'raw')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'error: {tmp_path / "none"}: no such folder '
                                                  '(--root: the folder holding mirflickr/ and '
                                                  'mirflickr25k_annotations_v080/)']


def make_nus(root, concepts=23, tags=6, n=24):
    """NUS-WIDE's files: the image list (Windows separators), Concepts81.txt, one ground-truth file
    per concept (one 0/1 a line), AllTags1k.txt (rows of tab-separated 0/1) and TagList1k.txt."""
    rng = np.random.default_rng(1)
    names = [f'{"actor" if i % 2 else "zebra"}\\{i:04d}_{1000 + i}.jpg' for i in range(n)]
    (root / 'ImageList').mkdir(parents=True)
    (root / 'ImageList' / 'Imagelist.txt').write_text(''.join(f'{name}\n' for name in names))
    concept_names = [f'c{j:02d}' for j in range(concepts)]
    (root / 'Concepts81.txt').write_text(''.join(f'{c}\n' for c in concept_names))
    labels = np.zeros((n, concepts), dtype=np.uint8)
    labels[:] = rng.random((n, concepts)) < 0.5
    labels[:, :2] = 0                            # c00 and c01, the least frequent: not among the 21
    labels[3] = labels[10] = 0                   # two images without any concept
    labels[5, :] = 0
    labels[5, 0] = 1                             # one image with only c00
    (root / 'Groundtruth' / 'AllLabels').mkdir(parents=True)
    for j, c in enumerate(concept_names):
        (root / 'Groundtruth' / 'AllLabels' / f'Labels_{c}.txt').write_text(
            ''.join(f'{v}\n' for v in labels[:, j]))
    text = (rng.random((n, tags)) < 0.4).astype(np.uint8)
    text[7] = 0                                  # an image without tags is kept
    (root / 'NUS_WID_Tags').mkdir()
    (root / 'NUS_WID_Tags' / 'AllTags1k.txt').write_text(
        ''.join('\t'.join(map(str, row)) + '\t\n' for row in text))
    (root / 'NUS_WID_Tags' / 'TagList1k.txt').write_text(''.join(f'tag{k}\n' for k in range(tags)))
    for i, name in enumerate(names):
        write_jpeg(root / 'Flickr' / name.replace('\\', '/'), 500 + i, 'L' if i == 2 else 'RGB')
    return names, concept_names, labels, text


def test_nus(tmp_path, capsys):
    names, concept_names, labels, text = make_nus(tmp_path / 'nus')
    out = tmp_path / 'nus.mat'
    status, stdout, err = prepare_in_process(capsys, source='nus', root=tmp_path / 'nus', out=out,
                                             images='raw')
    assert status == 0, err
    chosen = sorted(np.argsort(-labels.sum(0, dtype=int), kind='stable')[:21])
    assert chosen == list(range(2, 23))
    keep = labels[:, chosen].any(1)
    sidecar = load_sidecar(out)
    assert sidecar['labels'] == [concept_names[j] for j in chosen]
    assert sidecar['vocabulary'] == [f'tag{k}' for k in range(6)]
    assert sidecar['ids'] == [f'{i + 1}:{n}'.replace('\\', '/') for i, n in enumerate(names) if keep[i]]
    assert sidecar['counts']['dropped'] == {'none of the 21 concepts': 3}
    assert f'{(text[keep].sum(1) == 0).sum()} of the kept images carry none of the 6 tags' in stdout
    with h5py.File(out, 'r') as f:  # the variables of --flag nus
        np.testing.assert_array_equal(f['text'][()].T, text[keep])
        np.testing.assert_array_equal(f['label'][()].T, labels[keep][:, chosen])
        first = load_image(tmp_path / 'nus' / 'Flickr' / names[0].replace('\\', '/'))
        np.testing.assert_array_equal(f['image'][0], first)


def test_ctrl_c_leaves_nothing_behind(work, tmp_path):
    collection = tmp_path / 'collection'
    count = 4000  # about 12 s of work: the signal lands mid-write even on a loaded machine
    for i in range(count):
        write_jpeg(collection / f'{i}.jpg', i)
    manifest = collection / 'items.jsonl'
    manifest.write_text(''.join(json.dumps({'image': f'{i}.jpg', 'text': 'x', 'labels': ['y']}) + '\n'
                                for i in range(count)))
    out = tmp_path / 'out'
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, 'main.py', 'prepare', '--source', 'manifest', '--manifest', manifest,
         '--out', out / 'x.mat', '--pretrain_model_path', work / 'vgg-f.mat', '--batch_size', '4'],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(f'manifest: {count} items')  # now writing
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == 'interrupted', err
    assert list(out.iterdir()) == []


def test_out_folder_is_created_as_train_creates_its_checkpoint_dir(work, capsys, tmp_path):
    """The README's `--out ./data/FLICKR-25K.mat` on a fresh clone: the folder is made; one that
    cannot be made or written is still refused in one line, before any work."""
    out = tmp_path / 'data' / 'sub' / 'FLICKR.mat'
    status, _, err = prepare_in_process(capsys, source='mir', root=work / 'mir', out=out,
                                        min_count=3, images='raw')
    assert status == 0, err
    assert out.is_file() and load_sidecar(out)['counts']['kept'] == len(mir_expected())
    (tmp_path / 'a-file').write_text('not a folder')
    for bad in (tmp_path / 'a-file' / 'x.mat', Path('/proc/no-such-folder/x.mat')):
        status, _, err = prepare_in_process(capsys, source='mir', root=work / 'mir', out=bad,
                                            min_count=3, images='raw')
        assert_one_line_error(status, err, rf'{re.escape(str(bad.parent))}: cannot write here')


def test_a_nus_file_trains_and_tests_with_flag_nus(tmp_path, work):
    """prepare --source nus writes the variables --flag nus reads (image, text, label), so the
    README's prepare -> train -> test runs on NUS-WIDE as on MIRFlickr."""
    make_nus(tmp_path / 'nus')
    out = tmp_path / 'NUS-WIDE-TC21.mat'
    prepared = run_main('prepare', '--source', 'nus', '--root', tmp_path / 'nus', '--out', out,
                        '--pretrain_model_path', work / 'vgg-f.mat', '--batch_size', 8)
    assert prepared.returncode == 0, prepared.stderr
    options = ['--flag', 'nus', '--data_path', out, '--image_dim', WIDTHS[-1], '--text_dim', 6,
               '--num_label', 21, '--query_size', 4, '--training_size', 16, '--hidden_dim', 64,
               '--bit', 16, '--max_epoch', 1, '--batch_size', 8, '--device', 'cpu', '--vis_env',
               'None', '--checkpoint_dir', tmp_path / 'ck']
    train = run_main('train', *options)
    assert train.returncode == 0, train.stderr
    assert 'training 16, query 4, database 17' in train.stdout  # 21 kept: queries first (nus)
    test = run_main('test', *options)
    assert test.returncode == 0, test.stderr
    assert '...test MAP: MAP(i->t)' in test.stdout
    with h5py.File(out, 'r') as f:
        assert sorted(f.keys()) == ['image', 'label', 'text']
    assert 'train on it with --flag nus' in prepared.stdout


def test_the_sidecar_never_replaces_a_file_without_overwrite(work, capsys, tmp_path):
    """<out>.json is refused like <out> itself without --overwrite; a JSON-lines manifest that
    would be its own sidecar (items.json with --out items.mat) is refused even with it."""
    manifest = write_manifest(tmp_path / 'collection', 'jsonl')
    named_json = manifest.rename(manifest.with_suffix('.json'))
    before = named_json.read_bytes()
    for overwrite in (False, True):
        status, _, err = prepare_in_process(capsys, source='manifest', manifest=named_json,
                                            out=named_json.with_suffix('.mat'), images='raw',
                                            overwrite=overwrite)
        assert_one_line_error(status, err, r'items\.json would replace the manifest')
        assert named_json.read_bytes() == before
        assert not named_json.with_suffix('.mat').exists()
    other = tmp_path / 'x.json'
    other.write_text('{"mine": 1}')
    options = dict(source='manifest', manifest=named_json, out=tmp_path / 'x.mat', images='raw')
    status, _, err = prepare_in_process(capsys, **options)
    assert_one_line_error(status, err, r'x\.json: exists \(pass --overwrite True')
    assert other.read_text() == '{"mine": 1}' and not (tmp_path / 'x.mat').exists()
    status, _, err = prepare_in_process(capsys, **options, overwrite=True)
    assert status == 0, err
    assert load_sidecar(tmp_path / 'x.mat')['source'] == 'manifest'


def test_manifest_with_a_byte_order_mark_or_null_text(work, capsys, tmp_path):
    """A CSV saved by Excel (UTF-8 with a byte-order mark) reads as without one; a JSON-lines
    "text": null is an item without text (dropped and counted), not the word "none"."""
    manifest = write_manifest(tmp_path / 'collection', 'csv')
    with_bom = manifest.with_name('excel.csv')
    with_bom.write_bytes(b'\xef\xbb\xbf' + manifest.read_bytes())
    sidecars = []
    for path, out in ((manifest, 'plain.mat'), (with_bom, 'excel.mat')):
        status, _, err = prepare_in_process(capsys, source='manifest', manifest=path,
                                            out=tmp_path / out, images='raw')
        assert status == 0, err
        sidecars.append(load_sidecar(tmp_path / out))
    assert sidecars[0] == sidecars[1]
    items = [{'image': 'a/1.jpg', 'text': 'red car', 'labels': ['car']},
             {'image': 'a/2.jpg', 'text': None, 'labels': ['car']},
             {'image': 'b/3.jpg', 'text': 'the road', 'labels': ['road']}]
    nulls = tmp_path / 'collection' / 'nulls.jsonl'
    nulls.write_text(''.join(json.dumps(item) + '\n' for item in items))
    status, _, err = prepare_in_process(capsys, source='manifest', manifest=nulls,
                                        out=tmp_path / 'nulls.mat', images='raw')
    assert status == 0, err
    sidecar = load_sidecar(tmp_path / 'nulls.mat')
    assert sidecar['ids'] == ['a/1.jpg', 'b/3.jpg'] and sidecar['counts']['dropped'] == {'no text': 1}
    assert 'none' not in sidecar['vocabulary']


def test_prepare_computes_features_in_float32(work, capsys, tmp_path):
    """prepare sets the device flags as a run does (TF32 off: cuDNN's default is on), so its CNN-F
    features are float32 like the features of image queries at search time."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        status, _, err = prepare_in_process(capsys, source='mir', root=work / 'mir',
                                            out=tmp_path / 'x.mat', min_count=3,
                                            pretrain_model_path=work / 'vgg-f.mat')
        assert status == 0, err
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = True  # torch's default, for the tests after this one
        torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.skipif(not torch.cuda.is_available(), reason='item 16 on a GPU: needs a CUDA device '
                    '(covered without one by test_prepare_computes_features_in_float32)')
def test_cuda_features_are_the_cpu_float32_features(mir_file, work, tmp_path, capsys):
    """prepare --device cuda:0 gives the CPU's float32 features (TF32 would be off by ~1e-3)."""
    out, _ = mir_file
    status, _, err = prepare_in_process(capsys, source='mir', root=work / 'mir',
                                        out=tmp_path / 'cuda.mat', min_count=3, device='cuda:0',
                                        pretrain_model_path=work / 'vgg-f.mat', batch_size=8)
    assert status == 0, err
    with h5py.File(out, 'r') as cpu, h5py.File(tmp_path / 'cuda.mat', 'r') as cuda:
        np.testing.assert_allclose(cuda['images'][()], cpu['images'][()], rtol=1e-5, atol=1e-5)
