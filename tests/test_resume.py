"""Never lose a run: a finished run resumed stays as it was, resume refuses other options, a second
Ctrl-C exits at once, failed writes keep the old file, an unwritable folder fails first (kill -9
mid-run and resume, signals and a diverging loss for every method: tests/test_methods.py)."""
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


def test_run_killed_after_its_last_epoch_resumes_to_the_same_end(tmp_path, data_path):
    """Killed once its last epoch is saved, a resumed run has nothing left to train and ends as
    the whole run did (killed mid-run: tests/test_methods.py, for every method)."""
    epochs = ['--max_epoch', '4']
    whole = run_main('train', '--data_path', data_path, '--checkpoint_dir', tmp_path / 'whole',
                     *TINY, *SIZES, *epochs)
    assert whole.returncode == 0, whole.stderr

    process = start(data_path, tmp_path / 'killed', *epochs)
    wait_for_line(process, 'epoch 4/4')  # printed once last.pth of that epoch is written
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


def test_second_interrupt_exits_at_once(tmp_path, data_path):
    process = start(data_path, tmp_path, '--max_epoch', '300')
    wait_for_line(process, 'epoch 1/300')
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 130


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
