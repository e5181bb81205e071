"""dadh command line (Fire): `python main.py train|test|help [--option value ...]`.

train runs the schedule of SPEC §6 top to bottom: shuffle, batches, code update, validation, best
model. Problems the user can fix end as one line and a non-zero exit (utils.errors.UserError).
"""
import functools
import random
import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch

import config
from datasets.data_handler import load_data
from datasets.dataset import Splits
from datasets.demo import ensure_demo
from models.dadh import DADH, GEN_FILE
from utils import calc_map_k
from utils.checkpoint import atomic_pickle
from utils.errors import UserError, warn
from utils.progress import bar
from utils.visualize import Visualizer

METHODS = {'dadh': DADH}


def cli(command):
    """Turn a UserError into one line on stderr and exit status 2."""
    @functools.wraps(command)
    def run(**options):
        try:
            command(**options)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr, flush=True)
            sys.exit(2)
    return run


def resolve_device(name):
    if name == 'cpu':
        return torch.device('cpu')
    if not isinstance(name, str) or not name.startswith('cuda'):
        raise UserError(f"--device must be 'cpu' or 'cuda[:N]', got {name!r}")
    if not torch.cuda.is_available():
        print(f'CUDA is not available on this machine: running on the CPU instead of {name}')
        return torch.device('cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be 'cpu' or 'cuda[:N]', got {name!r}") from None
    if (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f'--device {name}: this machine has {torch.cuda.device_count()} CUDA '
                        f'device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}')
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator


def run_dir(cfg):
    return Path(cfg.checkpoint_dir) / f'{cfg.dataset}_{cfg.bit}'


def load_splits(cfg, device):
    if cfg.flag == 'demo':
        ensure_demo(cfg.data_path)
    data = load_data(cfg.data_path, cfg.keys, cfg.image_dim, cfg.text_dim, cfg.num_label)
    splits = Splits(data, cfg.layout, cfg.query_size, cfg.db_size, cfg.training_size, device)
    sizes = splits.sizes()
    print(f'data: {data.source}: {len(data)} samples; training {sizes["train"]}, '
          f'query {sizes["query"]}, database {sizes["database"]}')
    return splits


def evaluate(method, splits):
    """MAP image->text and text->image of the query set against the database (SPEC §7)."""
    query_image, query_text = method.encode(splits.images[splits.query], splits.text[splits.query])
    db_image, db_text = method.encode(splits.images[splits.database], splits.text[splits.database])
    query_labels, db_labels = splits.labels[splits.query], splits.labels[splits.database]
    return (calc_map_k(query_image, db_text, query_labels, db_labels),
            calc_map_k(query_text, db_image, query_labels, db_labels))


def prepare_run_dir(cfg):
    """The run's folder, writable, and holding no model of an earlier run unless --overwrite."""
    out = run_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / '.write-test'
        probe.write_bytes(b'ok')
        probe.unlink()
    except OSError as e:
        raise UserError(f'--checkpoint_dir {cfg.checkpoint_dir}: cannot write to {out} ({e.strerror})') from None
    if (out / GEN_FILE).exists() and not cfg.overwrite:
        raise UserError(f'{out / GEN_FILE} already holds the model of an earlier run: pass '
                        '--overwrite True to replace it as this run improves, or another '
                        '--checkpoint_dir')
    return out


@cli
def train(**options):
    cfg = config.parse(options)
    print(f'configuration:\n{cfg}')
    device = resolve_device(cfg.device)
    out = prepare_run_dir(cfg)
    seed_everything(cfg.seed)
    splits = load_splits(cfg, device)
    num_train = splits.sizes()['train']
    method = METHODS[cfg.model](cfg, num_train, device)
    vis = Visualizer(cfg.vis_env, cfg.vis_server, cfg.vis_port, out / 'visdom.log')
    shuffle = torch.Generator().manual_seed(cfg.seed)
    train_labels = splits.labels[splits.train]

    # A last batch of one sample cannot pass BatchNorm in train mode (SPEC §6): drop it.
    num_used = num_train - 1 if num_train % cfg.batch_size == 1 else num_train
    if num_used < num_train:
        warn(f'the last batch of every epoch would hold 1 sample; it is dropped '
             f'(training_size {num_train}, batch_size {cfg.batch_size})')

    best, train_times, mapi2t_list, mapt2i_list = None, [], [], []
    for epoch in range(cfg.max_epoch):
        start = time.time()
        order = torch.randperm(num_train, generator=shuffle).to(device)
        loss_sum = torch.zeros((), device=device)
        batches = bar(range(0, num_used, cfg.batch_size), f'epoch {epoch + 1}/{cfg.max_epoch}')
        for step, first in enumerate(batches):
            rows = order[first:first + cfg.batch_size][:num_used - first]
            data_rows = rows + splits.train.start
            losses = method.train_step(rows, splits.images[data_rows], splits.text[data_rows],
                                       splits.labels[data_rows])
            loss_sum += losses['loss']
            if step % 20 == 0:  # reading a value waits for the device: not every batch
                batches.set_postfix(loss=f"{losses['loss'].item():.4f}")
        method.end_epoch(epoch, train_labels)
        seconds = time.time() - start
        loss = loss_sum.item() / len(batches)
        summary = f'epoch {epoch + 1}/{cfg.max_epoch}: loss {loss:.4f}, {seconds:.1f} s'
        vis.plot('loss', epoch + 1, loss)
        vis.plot('lr', epoch + 1, method.lr)

        if cfg.valid and (epoch + 1) % cfg.valid_freq == 0:
            mapi2t, mapt2i = evaluate(method, splits)
            train_times.append(seconds)
            mapi2t_list.append(mapi2t)
            mapt2i_list.append(mapt2i)
            summary += f', MAP(i->t) {mapi2t:.4f}, MAP(t->i) {mapt2i:.4f}'
            vis.plot('mapi2t', epoch + 1, mapi2t)
            vis.plot('mapt2i', epoch + 1, mapt2i)
            if method.is_better(mapi2t, mapt2i, best):
                best = (mapi2t, mapt2i)
                method.save_best(out)
                summary += ' (best: saved)'
            atomic_pickle([train_times, mapi2t_list, mapt2i_list], out / 'result.pkl')
        print(summary, flush=True)

    if not cfg.valid:
        method.save_best(out)
        atomic_pickle([train_times, mapi2t_list, mapt2i_list], out / 'result.pkl')
    if best:
        print(f'...training done: best MAP(i->t): {best[0]:.4f}, MAP(t->i): {best[1]:.4f}; '
              f'model in {out / GEN_FILE}')


@cli
def test(**options):
    cfg = config.parse(options)
    device = resolve_device(cfg.device)
    out = run_dir(cfg)
    if not (out / GEN_FILE).is_file():
        raise UserError(f'{out / GEN_FILE}: no trained model here (train first, or check '
                        '--checkpoint_dir, --flag and --bit)')
    seed_everything(cfg.seed)
    splits = load_splits(cfg, device)
    method = METHODS[cfg.model](cfg, splits.sizes()['train'], device)
    method.load_best(out, device)
    mapi2t, mapt2i = evaluate(method, splits)
    print(f'...test MAP: MAP(i->t): {mapi2t:.4f}, MAP(t->i): {mapt2i:.4f}')


def help():
    print(config.usage())


if __name__ == '__main__':
    fire.Fire({'train': train, 'test': test, 'help': help})
