"""The contract suite: every method of models.METHODS through what main.py promises, on the demo
data. Train and test beat the label baseline (a random ranking's MAP) and test reproduces the kept
epoch; kill -9 and resume is bit-identical; SIGINT and SIGTERM keep the last good epoch; a loss
that diverges stops with its line and changes no file; encode and search; a report row; torchrun
gives the one-process run, or the method refuses it in one line.

A new method is registered in models/__init__.py and gets one line in TINY below (options that
make its demo run take seconds, options that make its loss diverge, and the largest learning rate
its parameters take); its own test file holds only its spec's formulas and schedule.
"""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import scipy.io
import torch

import config
from models import METHODS
from retrieval import api
from tests.test_distributed import OPTIONS as DISTRIBUTED, TORCHRUN, assert_same_run
from tests.test_main import MAP_LINE, REPO, run_main
from tests.visdom_server import free_port
from utils import hamming

# method: (options of a run of seconds on the demo, options that make its loss diverge, the
# largest learning rate of a parameter with those options: torchrun's bound on rounding's effect)
TINY = {
    'dadh': (['--hidden_dim', 64, '--bit', 16, '--lr', 1e-3], ['--lr', 1e30], 1e-3),
    'agah': (['--emb_dim', 32, '--hidden_dim', 64, '--bit', 16, '--valid_freq', 1, '--lr', 1e-3], ['--lr', 1e30], 1e-2),
    'dcmh': (['--bit', 16, '--batch_size', 32, '--lr', 0.1, '--lr_end', 0.1, '--eta', 0.1], ['--lr', 1e30], 0.1),
    'ssah': (['--hidden_dim', 64, '--semantic_embed', 128, '--k_img', 3, '--k_txt', 3], ['--s_img', -30], 1e-2),
}
EPOCHS = 2
EPOCH_LINE = re.compile(r'^epoch (\d+)/\d+: loss ([-\d.e+na]+)', re.M)


def options(method, root, *more):
    return ['--model', method, '--flag', 'demo', '--device', 'cpu', '--vis_env', 'None',
            '--max_epoch', EPOCHS, '--data_path', root / 'demo.mat', *TINY[method][0], *more]


def taken(method, words):
    """The --name value pairs of `words` that --model `method` takes (test_distributed's options
    carry the --lr of the methods that have one)."""
    known = config.known_options(method)
    return [w for name, value in zip(words[::2], words[1::2]) if name[2:] in known for w in (name, value)]


def run_folder(checkpoint_dir):
    folder, = [p for p in checkpoint_dir.iterdir() if p.is_dir()]
    return folder


def tensors(x, prefix=''):
    """Every tensor inside a (nested) state, by its path."""
    if torch.is_tensor(x):
        yield prefix, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from tensors(v, f'{prefix}/{k}')
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from tensors(v, f'{prefix}/{i}')


def assert_same_state(a, b):
    a, b = dict(tensors(a)), dict(tensors(b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def label_baseline(root, folder):
    """The MAP of a random ranking on the run's own split: per query, the share of the database
    relevant to it."""
    labels = scipy.io.loadmat(root / 'demo.mat')['LAll'].astype(float)
    split = json.loads((folder / 'split.json').read_text())
    return ((labels[split['query']] @ labels[split['database']].T) > 0).mean()


def test_every_method_has_its_tiny_options():
    assert set(TINY) == set(METHODS), 'add the new method to TINY'


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return tmp_path_factory.mktemp('methods')


@pytest.fixture(scope='module')
def trained(root):
    """One trained and tested demo run per method, computed when first asked for."""
    runs = {}

    def get(method):
        if method not in runs:
            checkpoint_dir = root / method
            train = run_main('train', *options(method, root), '--checkpoint_dir', checkpoint_dir)
            assert train.returncode == 0, train.stderr
            test = run_main('test', *options(method, root), '--checkpoint_dir', checkpoint_dir)
            assert test.returncode == 0, test.stderr
            runs[method] = checkpoint_dir, run_folder(checkpoint_dir), train, test
        return runs[method]
    return get


@pytest.mark.parametrize('method', METHODS)
def test_demo_run_beats_the_label_baseline_and_test_gives_the_kept_epoch(trained, root, method):
    _, folder, train, test = trained(method)
    mapi2t, mapt2i = map(float, MAP_LINE.search(test.stdout).groups())
    baseline = label_baseline(root, folder)
    assert min(mapi2t, mapt2i) > baseline + 0.05, (mapi2t, mapt2i, baseline)
    history = json.loads((folder / 'history.json').read_text())
    kept = history['final'] if 'final' in history else history['best_query']
    assert (mapi2t, mapt2i) == pytest.approx(kept, abs=5e-5)
    assert [e for e, _ in EPOCH_LINE.findall(train.stdout)] == [str(e + 1) for e in range(EPOCHS)]
    assert len(history['loss']) == EPOCHS and history['losses']['loss'] == history['loss']
    metrics = json.loads((folder / 'metrics.json').read_text())
    assert metrics['model'] == method and metrics['i2t']['map'] == pytest.approx(mapi2t, abs=5e-5)


@pytest.mark.parametrize('method', METHODS)
def test_killed_and_resumed_run_is_bit_identical(trained, root, tmp_path, method):
    _, whole, _, _ = trained(method)
    process = subprocess.Popen([sys.executable, 'main.py', 'train', *map(str, options(method, root)),
                                '--checkpoint_dir', str(tmp_path)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stdout:  # printed once last.pth of epoch 1 is written
        if line.startswith('epoch 1/'):
            break
    process.kill()
    process.wait()
    assert torch.load(run_folder(tmp_path) / 'last.pth', weights_only=True)['epoch'] == 1
    resumed = run_main('train', *options(method, root), '--checkpoint_dir', tmp_path, '--resume', 'True')
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming' in resumed.stdout
    folder = run_folder(tmp_path)
    for name in [p.name for p in whole.glob('*.pth')]:
        a, b = (torch.load(f / name, weights_only=True) for f in (whole, folder))
        assert_same_state(a['method'] if name == 'last.pth' else a,
                          b['method'] if name == 'last.pth' else b)
    histories = [json.loads((f / 'history.json').read_text()) for f in (whole, folder)]
    for history in histories:
        del history['seconds']
    assert histories[0] == histories[1]


@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=['SIGINT', 'SIGTERM'])
@pytest.mark.parametrize('method', METHODS)
def test_signal_keeps_the_last_good_epoch(root, tmp_path, method, signum, status):
    process = subprocess.Popen([sys.executable, 'main.py', 'train',
                                *map(str, options(method, root, '--max_epoch', 300)),
                                '--checkpoint_dir', str(tmp_path)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stdout:
        if line.startswith('epoch 1/'):
            break
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    done = torch.load(run_folder(tmp_path) / 'last.pth', weights_only=True)['epoch']
    assert done >= 1 and f'stopped during epoch {done + 1}' in stderr
    assert f'Resume (from epoch {done + 1}) with:' in stderr and 'Traceback' not in stderr
    assert not list(run_folder(tmp_path).glob('.*.tmp'))


@pytest.mark.parametrize('method', METHODS)
def test_diverging_loss_stops_with_its_line_and_keeps_the_good_run(trained, root, tmp_path, method):
    _, whole, _, _ = trained(method)
    folder = tmp_path / whole.name
    folder.mkdir()
    for path in whole.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad = run_main('train', *options(method, root), '--checkpoint_dir', tmp_path, '--overwrite', 'True',
                   *TINY[method][1])
    assert bad.returncode == 2, bad.stderr
    assert re.fullmatch(r'error: the \w+ loss became NaN or inf in epoch \d+, batch \d+; .*\n',
                        bad.stderr.splitlines(keepends=True)[-1]), bad.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize('method', METHODS)
def test_encode_and_search(trained, root, method):
    """Every row encoded; rows 2560:2688 as queries get the codes the codes file holds for them
    (whole encoding batches from row 0, as in the file, so a method whose codes depend on their
    batch gives the same codes too); searched within their own modality, each finds hits at
    distance 0 first (itself among them: ties go by database order), ranked by distance."""
    checkpoint_dir, folder, _, _ = trained(method)
    codes = checkpoint_dir / 'codes.h5'
    encoded = run_main('encode', *options(method, root), '--checkpoint_dir', checkpoint_dir,
                       '--out', codes)
    assert encoded.returncode == 0, encoded.stderr
    assert 'codes of 3000 rows' in encoded.stdout
    for modality in ('image', 'text'):
        found = run_main('search', *options(method, root), '--checkpoint_dir', checkpoint_dir,
                         '--database', codes, '--rows', '2560:2688', '--modality', modality,
                         '--topk', 10, '--json', True, '--same_modality', True)
        assert found.returncode == 0, found.stderr
        results = json.loads(found.stdout.strip().splitlines()[-1])
        assert len(results) == 128
        for row, hits in zip(range(2560, 2688), results):
            assert [h['rank'] for h in hits] == list(range(1, 11))
            assert hits[0]['distance'] == 0, (modality, row)
            assert [h['distance'] for h in hits] == sorted(h['distance'] for h in hits)
    given = options(method, root)
    run = api.load_run(**{name.lstrip('-'): str(value) if isinstance(value, Path) else value
                          for name, value in zip(given[::2], given[1::2])},
                       checkpoint_dir=str(checkpoint_dir))
    with h5py.File(codes) as h5:
        for modality in ('image', 'text'):
            queries = hamming.pack(run.encode_rows('2560:2688', modality))
            assert (queries == h5[modality][2560:2688]).all(), modality


@pytest.mark.parametrize('method', METHODS)
def test_report_has_a_row_of_the_run(trained, method):
    checkpoint_dir, _, _, test = trained(method)
    report = run_main('report', '--checkpoint_dir', checkpoint_dir)
    assert report.returncode == 0, report.stderr
    mapi2t, mapt2i = MAP_LINE.search(test.stdout).groups()
    row = next(line for line in report.stdout.splitlines() if f'| {method.upper()} |' in line)
    assert f'{mapi2t} (1)' in row and f'{mapt2i} (1)' in row
    # the demo has no published rows: the columns are the run's bits alone
    assert '| I→T 16 | T→I 16 |' in report.stdout and 'I→T 32' not in report.stdout


@pytest.mark.parametrize('method', METHODS)
def test_torchrun_gives_the_one_process_run_or_refuses_in_one_line(data_path, tmp_path, method):
    """2 processes (gloo) against 1 on tests/test_distributed.py's 300-row file (99 training rows
    in batches of 25: shares of 13 and 12 rows, a last batch of 24), 2 epochs validated after each
    (the end of a validated run is where a rank once aborted in gloo's teardown): the steps,
    buffers and MAPs are compared."""
    runs = {}
    for processes in (1, 2):
        launcher = [*TORCHRUN, '--nproc_per_node', 2, '--master_addr', '127.0.0.1', '--master_port',
                    free_port()] if processes == 2 else [sys.executable]
        done = subprocess.run([*map(str, launcher), 'main.py', 'train', '--model', method,
                               '--data_path', str(data_path), *map(str, taken(method, DISTRIBUTED)),
                               *map(str, TINY[method][0]), '--valid_freq', '1', '--max_epoch', '2',
                               '--checkpoint_dir', str(tmp_path / str(processes))],
                              cwd=REPO, text=True, capture_output=True, timeout=300)
        runs[processes] = done
    assert runs[1].returncode == 0, runs[1].stderr
    two = runs[2]
    errors = [line for line in two.stderr.splitlines() if line.startswith('error:')]
    if errors:  # the method's refusal: one line, the same on each rank
        assert two.returncode != 0 and len(set(errors)) == 1, two.stderr
        assert f'--model {method} does not run under torchrun' in errors[0]
        return
    assert two.returncode == 0, two.stderr
    assert 'torchrun: 2 processes' in two.stdout
    last = [torch.load(run_folder(tmp_path / str(n)) / 'last.pth', weights_only=True) for n in (1, 2)]
    assert_same_run(*last, TINY[method][2], steps=8)
    for key in ('mapi2t', 'mapt2i'):
        assert last[0]['history'][key] == pytest.approx(last[1]['history'][key], abs=2e-3)
