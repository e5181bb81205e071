"""runs.py at its edges: the write probe of ranks that share a PID, and rows read from disk handed to
the model's device."""
import sys
import threading

import pytest
import torch

import config
import runs
from datasets.data_handler import RawImages, load_data
from tests.matfiles import raw_image_dataset, write_v73, write_vgg_f
from utils.distributed import World
from utils.errors import UserError

WIDTHS = [8, 16, 16, 16, 16, 32, 24]  # a random VGG-F: 24-d fc7


def test_write_probes_of_ranks_sharing_a_pid_do_not_collide(tmp_path):
    """Two ranks in one process, so with one PID and host, as ranks in separate containers can
    have: each probes the shared run folder 200 times while the other does, thread switches forced
    every microsecond. A probe named by the PID alone is written by both and unlinked twice (the
    second unlink fails: every trial of 10 failed so); named by host, PID and rank, never."""
    cfg = config.parse({'checkpoint_dir': str(tmp_path), 'device': 'cpu'})
    start, errors = threading.Barrier(2), []

    def rank(r):
        world = World(r, 2)
        start.wait()
        for _ in range(200):
            try:
                runs.prepare_run_dir(cfg, world)
            except UserError as e:
                errors.append(str(e))
                return

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ranks = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
        for thread in ranks:
            thread.start()
        for thread in ranks:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert list(runs.run_dir(cfg).iterdir()) == []  # no probe left behind


@pytest.fixture(scope='module')
def raw_run(tmp_path_factory):
    """A raw-image data file (read lazily, as encode and search read it) and the options of a DADH
    on it."""
    tmp = tmp_path_factory.mktemp('raw')
    write_vgg_f(tmp / 'vgg-f.mat', WIDTHS)
    images, text, labels = raw_image_dataset(n=6)
    write_v73(tmp / 'raw.mat', {'images': images.T, 'YAll': text, 'LAll': labels})
    options = {'flag': 'mir', 'data_path': str(tmp / 'raw.mat'), 'text_dim': 40, 'num_label': 6,
               'db_size': 4, 'query_size': 2, 'training_size': 4, 'hidden_dim': 64, 'bit': 16,
               'pretrain_model_path': str(tmp / 'vgg-f.mat'), 'checkpoint_dir': str(tmp),
               'vis_env': None}
    return tmp, options


def test_rows_read_from_disk_reach_the_model_device(raw_run):
    """Item 3 without a GPU: a real DADH (CNN-F on raw images) moved to torch's 'meta' device (its
    autocast refuses to be built there, so it is built on the CPU and its nets moved), fed lazily
    read raw images, feature rows and text through runs.encode, the one path test, encode and search
    hand rows to a model by. A CPU row given to the meta model raises; the codes come out as meta
    tensors, so every row was moved to the model's device."""
    _, options = raw_run
    cfg = config.parse({**options, 'device': 'cpu'})
    data = load_data(cfg.data_path, cfg.keys, cfg.image_dim, cfg.text_dim, cfg.num_label, lazy=True)
    assert isinstance(data.images, RawImages)
    method = runs.make_method(cfg, True, 1, torch.device('cpu'))
    for part in vars(method).values():
        if isinstance(part, torch.nn.Module):
            part.to('meta')
    method.device = torch.device('meta')
    with pytest.raises(RuntimeError, match='meta'):
        method.encode_images(data.images[torch.arange(3)])  # rows left on the CPU
    for modality, x in (('image', data.images), ('text', torch.from_numpy(data.text[0:6]))):
        codes = runs.encode(method, modality, x, torch.arange(1, 6))
        assert codes.device.type == 'meta' and codes.shape == (5, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='item 3 on a GPU: needs a CUDA device '
                    '(covered without one by test_rows_read_from_disk_reach_the_model_device)')
def test_encode_and_search_by_rows_of_raw_images_on_cuda(raw_run):
    """encode and search --rows of a raw-image file with --device cuda:0 run, and give the CPU's
    codes (but for a sign flipped by float32 rounding on another device: 95 % of the bits agree)."""
    import numpy as np
    from retrieval import api
    tmp, options = raw_run
    cfg = config.parse({**options, 'device': 'cpu'})
    runs.run_dir(cfg).mkdir(parents=True, exist_ok=True)
    runs.make_method(cfg, True, 1, torch.device('cpu')).save_best(runs.run_dir(cfg))
    bits = {}
    for device in ('cpu', 'cuda:0'):
        run = api.load_run(**{**options, 'device': device})
        api.write(run, tmp / f'{device}.h5', 'image')
        bits[device] = (np.unpackbits(api.open_codes(tmp / f'{device}.h5').read('image')),
                        run.encode_rows('0:6', 'image').numpy() > 0)
    for on_cpu, on_cuda in zip(bits['cpu'], bits['cuda:0']):
        assert on_cpu.shape == on_cuda.shape and (on_cpu == on_cuda).mean() > 0.95
