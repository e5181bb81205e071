"""Never lose a run: kill -9 and resume bit-identically, Ctrl-C / SIGTERM stop cleanly, a diverging
loss stops with its name, failed writes keep the old file."""
import errno
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.test_main import REPO, TINY, run_main
from utils.checkpoint import atomic_write
from utils.errors import UserError

SIZES = ['--db_size', '250', '--training_size', '200']


def start(data_path, checkpoint_dir, *options):
    return subprocess.Popen([sys.executable, 'main.py', 'train', '--data_path', str(data_path),
                             '--checkpoint_dir', str(checkpoint_dir), *TINY, *SIZES, *options],
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(process, prefix, timeout=120):
    deadline = time.time() + timeout
    for line in process.stdout:
        if line.startswith(prefix):
            return line
        assert time.time() < deadline, f'no line starting with {prefix!r}'
    raise AssertionError(f'the run ended before printing {prefix!r}: {process.stderr.read()}')


def run_state(folder):
    model = torch.load(folder / 'GEN_module.pth', weights_only=True)
    last = torch.load(folder / 'last.pth', weights_only=True)
    return model, last, pickle.loads((folder / 'result.pkl').read_bytes())


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('kill_after', [1, 3])
def test_killed_and_resumed_run_ends_bit_identical(tmp_path, data_path, kill_after):
    epochs = ['--max_epoch', '4']
    whole = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path / 'whole',
                     *TINY, *SIZES, *epochs)
    assert whole.returncode == 0, whole.stderr

    process = start(data_path, tmp_path / 'killed', *epochs)
    wait_for_line(process, f'epoch {kill_after}/4')  # printed once last.pth of that epoch is written
    process.kill()
    process.wait()
    resumed = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path / 'killed',
                       *TINY, *SIZES, *epochs, '--resume', 'True')
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming' in resumed.stdout

    (model_a, last_a, result_a), (model_b, last_b, result_b) = (
        run_state(tmp_path / name / 'flickr25k_16') for name in ('whole', 'killed'))
    assert_same_tensors(model_a, model_b)
    for part in ('gen', 'dis'):
        assert_same_tensors(last_a['method'][part], last_b['method'][part])
    assert torch.equal(last_a['method']['B'], last_b['method']['B'])
    timing = {'seconds'}
    assert ({k: v for k, v in last_a['history'].items() if k not in timing}
            == {k: v for k, v in last_b['history'].items() if k not in timing})
    assert last_b['epoch'] == 4
    assert result_a[1:] == result_b[1:]


def test_resume_refuses_other_options_and_a_missing_run(tmp_path, data_path):
    first = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path, *TINY,
                     *SIZES, '--max_epoch', '1')
    assert first.returncode == 0, first.stderr
    other = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path, *TINY,
                     '--db_size', '250', '--training_size', '150', '--margin', '0.3',
                     '--resume', 'True')
    assert other.returncode == 2
    assert 'training_size 200 (now 150)' in other.stderr and 'margin 0.4 (now 0.3)' in other.stderr
    missing = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path / 'none',
                       *TINY, *SIZES, '--resume', 'True')
    assert missing.returncode == 2 and 'last.pth does not exist' in missing.stderr


@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_after_the_batch_keeping_the_last_complete_epoch(tmp_path, data_path, signum,
                                                                      status):
    process = start(data_path, tmp_path, '--max_epoch', '300')
    wait_for_line(process, 'epoch 2/300')
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    last = torch.load(tmp_path / 'flickr25k_16' / 'last.pth', weights_only=True)
    done = last['epoch']
    assert done >= 2 and f'stopped during epoch {done + 1}' in stderr
    assert f'Resume (from epoch {done + 1}) with:' in stderr and '--resume True' in stderr
    assert 'Traceback' not in stderr
    assert not list((tmp_path / 'flickr25k_16').glob('.*.tmp'))


def test_second_interrupt_exits_at_once(tmp_path, data_path):
    process = start(data_path, tmp_path, '--max_epoch', '300')
    wait_for_line(process, 'epoch 1/300')
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 130


def test_diverging_loss_stops_with_its_name_and_keeps_the_good_run(tmp_path, data_path):
    good = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path, *TINY, *SIZES,
                    '--max_epoch', '1')
    assert good.returncode == 0, good.stderr
    folder = tmp_path / 'flickr25k_16'
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path, *TINY, *SIZES,
                   '--overwrite', 'True', '--lr', '1e30', '--max_epoch', '2')
    assert bad.returncode == 2
    assert 'Traceback' not in bad.stderr
    assert bad.stderr.splitlines()[-1].startswith('error: the ')
    assert 'loss became NaN or inf in epoch' in bad.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / 'GEN_module.pth'
    path.write_bytes(b'the good model')

    def full_disk(f):
        f.write(b'half of a new mo')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(UserError, match='No space left on device.*previous file'):
        atomic_write(path, full_disk)
    assert path.read_bytes() == b'the good model'
    assert [p.name for p in tmp_path.iterdir()] == ['GEN_module.pth']


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path, data_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    result = run_main('train', '--data_path', data_path, '--checkpoint_dir', blocker / 'ck', *TINY,
                      *SIZES)
    assert result.returncode == 2
    assert 'cannot write to' in result.stderr and 'data:' not in result.stdout
