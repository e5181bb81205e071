"""End to end through `python main.py`: tiny real runs on v7, v7.3 and NUS-layout files, the
train -> test round trip, the CLI's options and messages."""
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.matfiles import small_dataset, write_nus_folder, write_v7, write_v73

REPO = Path(__file__).resolve().parents[1]
TINY = ['--hidden_dim', '256', '--bit', '16', '--max_epoch', '3', '--device', 'cpu',
        '--vis_env', 'None', '--image_dim', '64', '--text_dim', '40', '--num_label', '6',
        '--lr', '1e-3', '--batch_size', '50']
MAP_LINE = re.compile(r'^\.\.\.test MAP: MAP\(i->t\): (\d\.\d{4}), MAP\(t->i\): (\d\.\d{4})$', re.M)


def run_main(*args, timeout=300):
    return subprocess.run([sys.executable, 'main.py', *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope='module')
def data():
    return small_dataset(n=300)


def chance_map(labels, query, database):
    """MAP of a random ranking: for each query, the fraction of the database relevant to it."""
    relevant = (labels[query].astype(float) @ labels[database].T.astype(float)) > 0
    return relevant.mean()


def train_and_test(tmp_path, data_path, *options):
    train = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path / 'ck', *TINY,
                     *options)
    assert train.returncode == 0, train.stderr
    test = run_main('test', '--data_path', data_path, '--checkpoint_dir', tmp_path / 'ck', *TINY,
                    *options)
    assert test.returncode == 0, test.stderr
    found = MAP_LINE.search(test.stdout)
    assert found, test.stdout
    return train, tuple(map(float, found.groups()))


@pytest.fixture(scope='module')
def mir_run(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp('mir')
    images, text, labels = data
    path = tmp_path / 'mir.mat'
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    train, maps = train_and_test(tmp_path, path, '--db_size', 250, '--training_size', 200)
    return tmp_path, train, maps


def test_mir_v7_run_saves_model_and_results_and_beats_chance(mir_run, data):
    tmp_path, train, (mapi2t, mapt2i) = mir_run
    run = tmp_path / 'ck' / 'flickr25k_16'
    assert (run / 'GEN_module.pth').stat().st_size > 0
    train_times, mapi2t_list, mapt2i_list = pickle.loads((run / 'result.pkl').read_bytes())
    assert len(train_times) == len(mapi2t_list) == len(mapt2i_list) == 3
    assert 'training 200, query 50, database 250' in train.stdout
    chance = chance_map(data[2], slice(250, 300), slice(0, 250))
    assert min(mapi2t, mapt2i) > chance + 0.15, (mapi2t, mapt2i, chance)
    # test reloads the best validated model and reproduces its MAP (SPEC §6, §9).
    best = max(zip(mapi2t_list, mapt2i_list), key=sum)
    assert (mapi2t, mapt2i) == pytest.approx(best, abs=5e-5)


def test_v73_file_gives_the_same_run_as_v7(mir_run, tmp_path, data):
    images, text, labels = data
    path = tmp_path / 'mir73.mat'
    write_v73(path, {'images': images, 'YAll': text, 'LAll': labels})
    _, maps = train_and_test(tmp_path, path, '--db_size', 250, '--training_size', 200)
    assert maps == mir_run[2]
    v7 = pickle.loads((mir_run[0] / 'ck' / 'flickr25k_16' / 'result.pkl').read_bytes())
    v73 = pickle.loads((tmp_path / 'ck' / 'flickr25k_16' / 'result.pkl').read_bytes())
    assert v7[1:] == v73[1:]


def test_nus_layout_file_and_folder(tmp_path, data):
    images, text, labels = data
    path = tmp_path / 'nus.mat'
    write_v7(path, {'image': images, 'text': text, 'label': labels})
    nus = ['--flag', 'nus', '--query_size', 50, '--training_size', 200]
    train, (mapi2t, mapt2i) = train_and_test(tmp_path, path, *nus)
    assert 'training 200, query 50, database 250' in train.stdout
    assert (tmp_path / 'ck' / 'nus-wide_16' / 'GEN_module.pth').exists()
    chance = chance_map(labels, slice(0, 50), slice(50, 300))
    assert min(mapi2t, mapt2i) > chance + 0.15
    folder = tmp_path / 'nus-folder'
    write_nus_folder(folder, images, text, labels, v73=True)
    test = run_main('test', '--data_path', folder, '--checkpoint_dir', tmp_path / 'ck', *TINY, *nus)
    assert MAP_LINE.search(test.stdout).groups() == (f'{mapi2t:.4f}', f'{mapt2i:.4f}')


def test_two_runs_with_the_same_seed_agree(mir_run, tmp_path, data):
    images, text, labels = data
    path = tmp_path / 'mir.mat'
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    _, maps = train_and_test(tmp_path, path, '--db_size', 250, '--training_size', 200)
    assert maps == mir_run[2]


def test_train_refuses_to_replace_an_earlier_model(mir_run):
    tmp_path = mir_run[0]
    model = tmp_path / 'ck' / 'flickr25k_16' / 'GEN_module.pth'
    before = model.read_bytes()
    result = run_main('train', '--data_path', tmp_path / 'mir.mat', '--checkpoint_dir',
                      tmp_path / 'ck', *TINY, '--db_size', 250, '--training_size', 200)
    assert result.returncode != 0
    assert 'already holds the model' in result.stderr and '--overwrite True' in result.stderr
    assert 'Traceback' not in result.stderr
    assert model.read_bytes() == before


def test_last_batch_of_one_sample_is_dropped_with_one_warning(tmp_path, data):
    images, text, labels = data
    path = tmp_path / 'mir.mat'
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    result = run_main('train', '--data_path', path, '--checkpoint_dir', tmp_path / 'ck', *TINY,
                      '--db_size', 250, '--training_size', 33, '--batch_size', 16, '--max_epoch', 2)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count('the last batch of every epoch would hold 1 sample') == 1


def test_help_lists_every_option_with_its_default():
    result = run_main('help')
    assert result.returncode == 0
    for option, default in (('batch_size', '128'), ('lr', '5e-05'), ('valid_freq', '1'),
                            ('lamb', '1.0'), ('alpha', '10.0'), ('gamma', '1.0'), ('beta', '1.0'),
                            ('mu', '1e-05'), ('margin', '0.4'), ('max_epoch', '300'),
                            ('vis_env', "'main'"), ('device', "'cuda:0'"), ('dropout', 'False'),
                            ('hidden_dim', '8192'), ('seed', '0'),
                            ('checkpoint_dir', "'checkpoints'"), ('bit', '64')):
        assert re.search(rf'--{option}\s+{re.escape(default)}\s+\S', result.stdout), option
    # AGAH's own options, and its defaults of the shared ones (SPEC-AGAH "Defaults").
    for option, default in (('emb_dim', '512'), ('eta', '1.0'), ('lambd', '0.8'),
                            ('data_enhance', 'False')):
        assert re.search(rf'--{option}\s+{re.escape(default)}\s+\S', result.stdout), option
    for option, default in (('lr', '0.0001'), ('alpha', '1.0'), ('beta', '0.0'), ('gamma', '0.001'),
                            ('mu', '1.0'), ('margin', '0.3')):
        assert re.search(rf'--{option}\s+{re.escape(default)}\s+\S', result.stdout), option
    assert "its own defaults of the options above: {'valid_freq': 20}" in result.stdout


def test_help_of_one_method_lists_its_own_options_only():
    result = run_main('help', '--model', 'agah')
    assert result.returncode == 0
    assert 'options of --model agah:' in result.stdout and 'options of --model dadh' not in result.stdout
    for option, default in (('emb_dim', '512'), ('lambd', '0.8'), ('lr', '0.0001'), ('gamma', '0.001')):
        assert re.search(rf'--{option}\s+{re.escape(default)}\s+\S', result.stdout), option
    assert '--dropout' not in result.stdout and '--lamb ' not in result.stdout
    assert re.search(r'--hidden_dim\s+8192\s+width of the text net', result.stdout)  # AGAH's own meaning
    assert '--select_on' in result.stdout  # the run's options come too


def test_nothing_imports_main_and_models_import_neither_datasets_nor_config():
    """The one way down (runs.py assembles a run; a method takes tensors and numbers)."""
    import ast
    for path in REPO.rglob('*.py'):
        parts = path.relative_to(REPO).parts
        if parts[0] in ('.venv', 'tests'):
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split('.')[0])
        assert 'main' not in imported, path
        if parts[0] == 'models':
            assert not imported & {'datasets', 'config', 'runs', 'retrieval'}, path


def test_bf16_on_a_cpu_without_native_bf16_is_one_warning(capsys):
    import runs
    import torch
    flags = next(line for line in open('/proc/cpuinfo') if line.startswith('flags')).split()
    runs.configure_device(False, 'bf16', torch.device('cpu'))
    warned = capsys.readouterr().err
    native = bool({'avx512_bf16', 'amx_bf16'} & set(flags))
    assert warned.count('emulated, slower than float32') == (0 if native else 1)
    runs.configure_device(False, None, torch.device('cpu'))
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('args, message', [
    (['--bitt', '16'], r'unknown option --bitt; did you mean --bit'),
    (['--bit', '0'], r'--bit must be positive, got 0'),
    (['--flag', 'coco'], r"--flag must be one of mir, nus, demo, got 'coco'"),
    (['--device', 'tpu'], r"--device must be 'cpu' or 'cuda\[:N\]', got 'tpu'"),
    (['--data_path', 'no/such/file.mat', '--device', 'cpu'], r'no/such/file.mat: no such file'),
    (['--emb_dim', '512'], r'--emb_dim is an option of --model agah, not of --model dadh'),
    (['--model', 'agah', '--lamb', '2'], r'--lamb is an option of --model dadh, not of --model agah'),
    (['--hidden_dim', '8'], r'--hidden_dim must be at least 16 \(width of the first hidden layer'),
    (['--model', 'agah', '--emb_dim', '0'], r'--emb_dim must be positive, got 0'),
    (['--select_on', 'best'], r'--select_on must be one of query, valid, last'),
    (['--model', 'dsah'], r"--model must be one of dadh, agah, dcmh, ssah, got 'dsah'"),
])
def test_bad_options_end_in_one_line(tmp_path, args, message):
    result = run_main('train', '--checkpoint_dir', tmp_path, '--vis_env', 'None', *args)
    assert result.returncode == 2
    assert re.fullmatch(rf'error: .*{message}.*\n', result.stderr.splitlines(keepends=True)[-1])
    assert 'Traceback' not in result.stderr


def test_test_without_a_model_says_so(tmp_path):
    result = run_main('test', '--checkpoint_dir', tmp_path, '--device', 'cpu')
    assert result.returncode == 2
    assert 'GEN_module.pth: no trained model here' in result.stderr


def test_cuda_device_falls_back_to_cpu_with_one_line(tmp_path, data):
    pytest.importorskip('torch')
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    images, text, labels = data
    path = tmp_path / 'mir.mat'
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    tiny = [a if a != 'cpu' else 'cuda:0' for a in TINY] + ['--max_epoch', '1']
    result = run_main('train', '--data_path', path, '--checkpoint_dir', tmp_path, *tiny,
                      '--db_size', 250, '--training_size', 200)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('CUDA is not available on this machine: running on the CPU') == 1
