"""dadh command line (Fire): `python main.py train|test|help [--option value ...]`.

train runs the schedule of SPEC §6 top to bottom: shuffle, batches, code update, validation, best
model, and a resumable last.pth after every epoch. Problems the user can fix end as one line and a
non-zero exit (utils.errors.UserError).
"""
import functools
import json as json_lib  # `search` has a --json option
import os
import resource
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import fire
import numpy as np
import torch
from torch import nn

import config
from datasets.data_handler import load_data
from datasets.dataset import Splits
from datasets.demo import ensure_demo
from models.agah import AGAH
from models.cnn_f import CNNF
from models.dadh import DADH
from models.published import model_path
from utils import calc_map_k, p_top_k, pr_curve
from utils import distributed
from utils.checkpoint import atomic_pickle, atomic_save, atomic_write, load_file
from utils.metrics import P_AT_K
from utils.errors import UserError, warn
from utils.interrupt import GracefulStop
from utils.memory import reuse_freed_memory
from utils.progress import bar
from utils.rng import rng_state, seed_everything, set_rng_state
from utils.visualize import Visualizer

METHODS = {'dadh': DADH, 'agah': AGAH}
LAST_FILE = 'last.pth'


def cli(command):
    """Turn a UserError into one line on stderr and exit status 2; Ctrl-C outside the training
    loop into exit status 130 without a traceback."""
    @functools.wraps(command)
    def run(*args, **options):
        try:
            command(*args, **options)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print('\ninterrupted', file=sys.stderr, flush=True)
            sys.exit(130)
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


def configure_device(cfg, device):
    # Set on every device, so that the process-wide flags always say what a run used (cuDNN's
    # default is TF32 on: a test left at it would not compute the codes its train validated).
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.tf32 and device.type != 'cuda':
        warn('--tf32 only acts on CUDA devices')


def run_dir(cfg):
    """<checkpoint_dir>/<dataset>_<bit> for DADH (as published); other models add their name."""
    suffix = '' if cfg.model == 'dadh' else f'_{cfg.model}'
    return Path(cfg.checkpoint_dir) / f'{cfg.dataset}_{cfg.bit}{suffix}'


def model_file(cfg):
    return model_path(METHODS[cfg.model], run_dir(cfg))


def run_options(out):
    """The options the run in `out` was trained with (its config.json), or None for a folder that
    has none (a model of the published code, or of an older version)."""
    path = out / 'config.json'
    return json_lib.loads(path.read_text()) if path.is_file() else None


def read_data(cfg, lazy=False):
    """The data file of `cfg` (the demo's written on first use), read as the method takes it;
    `lazy` leaves its rows on disk until asked for (load_data)."""
    if cfg.flag == 'demo':
        ensure_demo(cfg.data_path)
    return load_data(cfg.data_path, cfg.keys, cfg.image_dim, cfg.text_dim, cfg.num_label,
                     standardise_images=METHODS[cfg.model].STANDARDISE_FEATURES, lazy=lazy)


def load_splits(cfg, device):
    data = read_data(cfg)
    splits = Splits(data, cfg.layout, cfg.query_size, cfg.db_size, cfg.training_size, device,
                    cfg.valid_size if cfg.select_on == 'valid' else None)
    sizes = splits.sizes()
    held_out = (f', held-out {sizes["held_out"]} (rows [{splits.held_out.start}, '
                f'{splits.held_out.stop}), never trained on)' if splits.held_out else '')
    print(f'data: {data.source}: {len(data)} samples; training {sizes["train"]}{held_out}, '
          f'query {sizes["query"]}, database {sizes["database"]}')
    return splits


def make_method(cfg, raw_images, num_train, device):
    """The method of --model for `num_train` training rows; on raw images its image net starts
    with CNN-F (SPEC §2)."""
    method = METHODS[cfg.model]
    cnn = None
    if raw_images:
        cnn = CNNF.from_matconvnet(cfg.pretrain_model_path, method.SUBTRACT_AVERAGE_IMAGE)
        print(f'raw images: CNN-F from {cfg.pretrain_model_path} ({cnn.out_dim}-d fc7)')
    return method(cfg, num_train, device, cnn)


def trained_run(cfg, device):
    """The run folder of the trained model of `cfg` and the options it was trained with (its
    config.json, or {}). `cfg` takes the run's --tf32 and --amp and the device is set up with
    them, so that codes are computed as train validated them."""
    out = run_dir(cfg)
    if not model_file(cfg).is_file():
        raise UserError(f'{model_file(cfg)}: no trained model here (train first, or check '
                        '--checkpoint_dir, --flag and --bit)')
    trained = run_options(out) or {}
    for name in config.NUMERICS:
        if name in trained and trained[name] != getattr(cfg, name):
            print(f'--{name} {trained[name]}, as the run was trained ({out / "config.json"})')
            setattr(cfg, name, trained[name])
    configure_device(cfg, device)
    return out, trained


def retrieval_pairs(method, splits):
    """(query codes, database codes, query labels, database labels) of both directions (SPEC §7):
    image queries against text codes ('i2t') and text queries against image codes ('t2i')."""
    query_image, query_text = method.encode(splits.images[splits.query], splits.text[splits.query])
    db_image, db_text = method.encode(splits.images[splits.database], splits.text[splits.database])
    query_labels, db_labels = splits.labels[splits.query], splits.labels[splits.database]
    return {'i2t': (query_image, db_text, query_labels, db_labels),
            't2i': (query_text, db_image, query_labels, db_labels)}


def evaluate(method, splits):
    """{'query': (MAP image->text, MAP text->image) of the queries over the whole database}, and with
    held-out rows 'valid': theirs over the rest of the database. The held-out rows are database
    rows, so their codes are the database's own (one encoding serves both)."""
    pairs = retrieval_pairs(method, splits)
    maps = {'query': (calc_map_k(*pairs['i2t']), calc_map_k(*pairs['t2i']))}
    if splits.held_out:
        held, rest = splits.held_out_positions()
        db_image, db_text, db_labels = pairs['t2i'][1], pairs['i2t'][1], pairs['i2t'][3]
        maps['valid'] = (calc_map_k(db_image[held], db_text[rest], db_labels[held], db_labels[rest]),
                         calc_map_k(db_text[held], db_image[rest], db_labels[held], db_labels[rest]))
    return maps


def prepare_run_dir(cfg):
    """The run's folder, writable, and holding no model of an earlier run unless --overwrite or
    --resume."""
    out = run_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f'.write-test-{os.getpid()}'  # several ranks may probe at once
        probe.write_bytes(b'ok')
        probe.unlink()
    except OSError as e:
        raise UserError(f'--checkpoint_dir {cfg.checkpoint_dir}: cannot write to {out} '
                        f'({e.strerror})') from None
    if cfg.resume:
        if not (out / LAST_FILE).is_file():
            raise UserError(f'--resume: {out / LAST_FILE} does not exist, so there is no run to '
                            'continue (drop --resume to start one)')
    elif model_file(cfg).exists() and not cfg.overwrite:
        raise UserError(f'{model_file(cfg)} already holds the model of an earlier run: pass '
                        '--resume True to continue it, --overwrite True to replace it as this run '
                        'improves, or another --checkpoint_dir')
    return out


def load_last(out, cfg, device):
    """last.pth, refused when it was made with options that a resumed run must keep."""
    state = load_file(out / LAST_FILE, device, what='checkpoint')
    saved = state.get('config', {}) if isinstance(state, dict) else {}
    # An option newer than the file was at its default in that run.
    defaults = config.parse({'model': cfg.model, 'flag': cfg.flag}).options
    differences = [f'{k} {saved.get(k, defaults[k])!r} (now {v!r})' for k, v in cfg.options.items()
                   if k not in config.RESUMABLE and saved.get(k, defaults[k]) != v]
    if differences:
        raise UserError(f'--resume: {out / LAST_FILE} was made with other options: '
                        f'{", ".join(differences)}')
    return state


def rows_per_epoch(num_train, batch_size):
    """A last batch of one sample cannot pass BatchNorm in train mode (SPEC §6): it is dropped."""
    return num_train - 1 if num_train % batch_size == 1 else num_train


def train_epoch(method, splits, order, batch_size, desc, stop=None, world=distributed.SOLO):
    """One pass over the training rows in `order` (SPEC §6), batch by batch; stops early when `stop`
    is requested (on any rank). Returns the batches x terms loss table (on the CPU) and the terms'
    names. Under torchrun each rank reads and runs its share of every batch."""
    num_used = rows_per_epoch(len(order), batch_size)
    step_losses = []
    batches = bar(range(0, num_used, batch_size), desc)
    for first in batches:
        rows = order[first:first + batch_size][:num_used - first]
        data_rows = splits.train_rows[rows]
        mine = data_rows[world.share(len(rows))]
        error = None
        try:
            images, text = splits.images[mine], splits.text[mine]  # raw images: read here
        except UserError as e:
            error = e
        if world.agree(stop, error):  # before the step's collectives: every rank stops here
            break
        losses = method.train_step(rows, images, text, splits.labels[data_rows])
        step_losses.append(torch.stack(list(losses.values())))
        if len(step_losses) % 20 == 1:  # reading a value waits for the device: not every batch
            batches.set_postfix(loss=f"{losses['loss'].item():.4f}")
    if not step_losses:  # stopped before the first batch
        return None, None
    return torch.stack(step_losses).cpu(), list(losses)


def first_non_finite(step_losses, names):
    """(batch, term) of the first non-finite loss of an epoch, or None; `step_losses` is a
    batches x terms tensor."""
    bad = ~torch.isfinite(step_losses)
    if not bad.any():
        return None
    batch = int(bad.any(dim=1).nonzero()[0])
    return batch, names[int(bad[batch].nonzero()[0])]


@cli
def train(**options):
    """Under torchrun every rank runs this with the same options (utils/distributed.py): rank 0
    alone writes files, plots and prints; every other step is taken identically everywhere."""
    cfg = config.parse(options)
    world = distributed.start()
    print(f'configuration:\n{cfg}')
    with world.one_outcome():  # a bad input on one rank ends every rank with its line
        device = resolve_device(world.device_name(cfg.device))
        configure_device(cfg, device)
        out = prepare_run_dir(cfg)
        last = load_last(out, cfg, device) if cfg.resume else None
        seed_everything(cfg.seed)  # the same seed on every rank: the same random draws
        splits = load_splits(cfg, device)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        if cfg.model == 'agah' and cfg.data_enhance:
            splits.append_mixed_training(shuffle)
            print(f'data_enhance: {splits.sizes()["train"]} training samples with the mixed ones')
        num_train = splits.sizes()['train']
        method = make_method(cfg, splits.raw_images, num_train, device)
    if world.size > 1:
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        method.distribute(world, device)
        print(f'torchrun: {world.size} processes, {cfg.batch_size} rows per global batch')
    # mapi2t/mapt2i: the queries' MAPs; valid_*: the held-out rows' (--select_on valid). 'best' is
    # the best pair on the rows that select, 'best_query' the queries' MAPs of that epoch.
    history = {'epoch': [], 'loss': [], 'lr': [], 'seconds': [], 'valid_epoch': [], 'mapi2t': [],
               'mapt2i': [], 'valid_mapi2t': [], 'valid_mapt2i': [], 'select_on': cfg.select_on,
               'best': None, 'best_epoch': None, 'best_query': None}
    start_epoch = saved_epoch = 0
    if last:
        method.load_state_dict(last['method'])
        set_rng_state(last['rng'], shuffle)
        history.update(last['history'])
        if history['best'] and not history['best_epoch']:  # a last.pth older than best_epoch
            pairs = list(zip(history['mapi2t'], history['mapt2i']))
            history.update(best_epoch=history['valid_epoch'][pairs.index(tuple(history['best']))],
                           best_query=history['best'])
        start_epoch = last['epoch']
        saved_epoch = start_epoch
        print(f'resuming {out / LAST_FILE}: {start_epoch} epochs done')
    vis = Visualizer(cfg.vis_env if world.is_main else None, cfg.vis_server, cfg.vis_port,
                     out / 'visdom.log')
    train_labels = splits.labels[splits.train_rows]

    if rows_per_epoch(num_train, cfg.batch_size) < num_train and world.is_main:
        warn(f'the last batch of every epoch would hold 1 sample; it is dropped '
             f'(training_size {num_train}, batch_size {cfg.batch_size})')

    with GracefulStop() as stop:
        for epoch in range(start_epoch, cfg.max_epoch):
            start = time.time()
            order = torch.randperm(num_train, generator=shuffle).to(device)
            step_losses, names = train_epoch(method, splits, order, cfg.batch_size,
                                             f'epoch {epoch + 1}/{cfg.max_epoch}', stop, world)
            if signum := world.agree(stop):
                stop_training(signum, out, epoch, saved_epoch)
            bad = first_non_finite(step_losses, names)  # the same losses on every rank
            if bad:
                raise UserError(f'the {bad[1]} loss became NaN or inf in epoch {epoch + 1}, batch '
                                f'{bad[0] + 1}; stopped, {out} keeps the last good epoch (try a '
                                'smaller --lr)')
            method.end_epoch(epoch, train_labels)
            seconds = time.time() - start
            loss = step_losses[:, names.index('loss')].mean().item()
            summary = f'epoch {epoch + 1}/{cfg.max_epoch}: loss {loss:.4f}, {seconds:.1f} s'
            for key, value in (('epoch', epoch + 1), ('loss', loss), ('lr', method.lr),
                               ('seconds', seconds)):
                history[key].append(value)
            vis.plot('loss', epoch + 1, loss)
            vis.plot('lr', epoch + 1, method.lr, log_y=True)

            if cfg.valid and (epoch + 1) % cfg.valid_freq == 0:
                # Every rank validates (on the whole sets, as rank 0 alone would take as long), so
                # every rank keeps the same history and best.
                maps = evaluate(method, splits)
                if signum := world.agree(stop):
                    stop_training(signum, out, epoch, saved_epoch)
                mapi2t, mapt2i = maps['query']
                for key, value in (('valid_epoch', epoch + 1), ('mapi2t', mapi2t), ('mapt2i', mapt2i)):
                    history[key].append(value)
                summary += f', MAP(i->t) {mapi2t:.4f}, MAP(t->i) {mapt2i:.4f}'
                vis.plot('mapi2t', epoch + 1, mapi2t)
                vis.plot('mapt2i', epoch + 1, mapt2i)
                if 'valid' in maps:
                    history['valid_mapi2t'].append(maps['valid'][0])
                    history['valid_mapt2i'].append(maps['valid'][1])
                    summary += f', held-out MAP {maps["valid"][0]:.4f} / {maps["valid"][1]:.4f}'
                if method.is_better(*maps[cfg.select_on], history['best']):
                    history.update(best=maps[cfg.select_on], best_epoch=epoch + 1,
                                   best_query=maps['query'])
                    if world.is_main:
                        method.save_best(out)
                    # The published protocol's line as it was; the held-out rule names itself.
                    summary += (' (best: saved)' if cfg.select_on == 'query'
                                else f' (best on {SELECTION[cfg.select_on]}: saved)')
            if world.is_main:
                if not cfg.valid and epoch + 1 == cfg.max_epoch:
                    method.save_best(out)
                if epoch == start_epoch:  # with this run's first files: a failed first epoch changes nothing
                    # What test (--tf32, --amp) and report (the options that tell runs apart) read back.
                    atomic_write(out / 'config.json',
                                 lambda f: f.write(json_lib.dumps(cfg.options, indent=1).encode()))
                write_results(out, history)
            if (epoch + 1) % cfg.save_freq == 0 or epoch + 1 == cfg.max_epoch:
                if world.is_main:
                    atomic_save({'config': cfg.options, 'epoch': epoch + 1,
                                 'method': method.state_dict(), 'history': history,
                                 'rng': rng_state(shuffle)}, out / LAST_FILE)
                saved_epoch = epoch + 1
            print(summary, flush=True)

    if not cfg.valid:  # as the published code: evaluate the final model once, at the end
        history['final'] = evaluate(method, splits)['query']
        if world.is_main:
            write_results(out, history)
        print(f"...training done: final MAP(i->t): {history['final'][0]:.4f}, "
              f"MAP(t->i): {history['final'][1]:.4f}; model in {model_file(cfg)}")
    elif history['best']:
        mapi2t, mapt2i = history['best_query']
        print(f"...training done: best MAP(i->t): {mapi2t:.4f}, MAP(t->i): {mapt2i:.4f}, epoch "
              f"{history['best_epoch']} chosen on {SELECTION[cfg.select_on]}; model in {model_file(cfg)}")


# How the kept model was chosen, in the printed lines and the report.
SELECTION = {'query': 'the test queries', 'valid': 'the held-out rows'}


def write_results(out, history):
    """result.pkl as the published code writes it, [train_times, mapi2t_list, mapt2i_list] with the
    training seconds of each validated epoch (SPEC §9), and history.json with every figure."""
    seconds = dict(zip(history['epoch'], history['seconds']))
    train_times = [seconds[epoch] for epoch in history['valid_epoch']]
    atomic_pickle([train_times, history['mapi2t'], history['mapt2i']], out / 'result.pkl')
    atomic_write(out / 'history.json', lambda f: f.write(json_lib.dumps(history, indent=1).encode()))


def stop_training(signum, out, epoch, saved_epoch):
    """Leave on SIGINT/SIGTERM, keeping the last.pth of a completed epoch, and say how to resume."""
    if not saved_epoch:
        print(f'stopped during epoch {epoch + 1}; no epoch was saved yet, so start again without '
              '--resume', file=sys.stderr, flush=True)
    else:
        given = any(arg.split('=')[0] == '--resume' for arg in sys.argv)
        command = shlex.join([sys.executable, *sys.argv] + ([] if given
                                                           else ['--resume', 'True']))
        print(f'stopped during epoch {epoch + 1}; {out / LAST_FILE} keeps epoch {saved_epoch}. '
              f'Resume (from epoch {saved_epoch + 1}) with:\n  {command}', file=sys.stderr, flush=True)
    sys.exit(128 + signum)


@cli
def test(**options):
    cfg = config.parse(options)
    device = resolve_device(cfg.device)
    out, trained = trained_run(cfg, device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg, device)
    method = make_method(cfg, splits.raw_images, splits.sizes()['train'], device)
    method.load_best(out, device)

    figures = {}
    for direction, pair in retrieval_pairs(method, splits).items():
        precision, recall = pr_curve(*pair)
        p_at_k = p_top_k(*pair)
        figures[direction] = {'map': calc_map_k(*pair),
                              **{f'map@{k}': calc_map_k(*pair, k=k) for k in cfg.map_at},
                              **{f'p@{k}': float(p) for k, p in zip(P_AT_K, p_at_k)}}
        atomic_write(out / f'pr_{direction}.npy', lambda f: np.save(f, np.stack([precision, recall])))
        atomic_write(out / f'p_at_k_{direction}.npy', lambda f: np.save(f, np.stack([P_AT_K, p_at_k])))
    history = json_lib.loads((out / 'history.json').read_text()) if (out / 'history.json').is_file() else {}
    # The rule that chose the model: 'query', 'valid', or 'final' (the last epoch, --valid False).
    selection = trained.get('select_on', 'query') if trained.get('valid', True) else 'final'
    report = {'dataset': cfg.dataset, 'model': cfg.model, 'bit': cfg.bit,
              'checkpoint': str(model_file(cfg)), 'date': datetime.now().isoformat(timespec='seconds'),
              'query_size': splits.sizes()['query'], 'database_size': splits.sizes()['database'],
              'select_on': selection, 'best_epoch': history.get('best_epoch'),
              'options': trained or cfg.options, **figures}
    atomic_write(out / 'metrics.json', lambda f: f.write(json_lib.dumps(report, indent=2).encode()))

    print(f'{"":10}{"i->t":>9}{"t->i":>9}')
    for name in figures['i2t']:
        print(f'{name.upper():10}{figures["i2t"][name]:9.4f}{figures["t2i"][name]:9.4f}')
    print(f'metrics, precision-recall and precision@K arrays written to {out}')
    if selection != 'final' and history.get('best_epoch'):
        print(f"model: epoch {history['best_epoch']}, chosen on {SELECTION[selection]} "
              f"(--select_on {selection})")
    print(f"...test MAP: MAP(i->t): {figures['i2t']['map']:.4f}, MAP(t->i): {figures['t2i']['map']:.4f}")


BENCH_FILE = './data/BENCH-FLICKR.mat'


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype):
    """GFLOP/s of a large square matrix product on `device` in `dtype`: the peak to compare with."""
    n, reps = (8192, 20) if device.type == 'cuda' else (4096, 3)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


@cli
def bench(epochs=3, **options):
    """Seconds per training epoch and per validation at the real sizes (MIRFlickr's by default, on a
    synthetic MIRFlickr-shaped file unless --data_path is given), achieved GFLOP/s, peak memory."""
    cfg = config.parse({'data_path': BENCH_FILE, 'vis_env': None, **options})
    if cfg.model != 'dadh':
        raise UserError('bench times --model dadh (its FLOP count is DADH\'s)')
    print(f'configuration:\n{cfg}')
    device = resolve_device(cfg.device)
    configure_device(cfg, device)
    if cfg.data_path == BENCH_FILE:
        ensure_demo(BENCH_FILE, n=20015)
    seed_everything(cfg.seed)
    splits = load_splits(cfg, device)
    if splits.raw_images:
        raise UserError(f'{cfg.data_path}: bench times feature files; this one holds raw images')
    num_train = splits.sizes()['train']
    method = make_method(cfg, splits.raw_images, num_train, device)
    # FLOPs of the generator's matrix products (the discriminators and losses add a few percent):
    # 2 per weight and sample forward, 4 backward, minus the input gradients of the first layers.
    weights = {name: sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Linear))
               for name, net in (('image', nn.ModuleList([method.gen.image_net, method.gen.image_hash])),
                                 ('text', nn.ModuleList([method.gen.text_net, method.gen.text_hash])))}
    first_layers = method.gen.image_net[0].weight.numel() + method.gen.text_net[0].weight.numel()
    num_used = rows_per_epoch(num_train, cfg.batch_size)
    epoch_flops = (6 * (weights['image'] + weights['text']) - 2 * first_layers) * num_used
    sizes = splits.sizes()
    valid_flops = 2 * (weights['image'] + weights['text']) * (sizes['query'] + sizes['database'])

    shuffle = torch.Generator().manual_seed(cfg.seed)
    seconds = []
    for epoch in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        train_epoch(method, splits, torch.randperm(num_train, generator=shuffle).to(device),
                    cfg.batch_size, f'epoch {epoch + 1}/{epochs}')
        method.end_epoch(epoch, splits.labels[splits.train_rows])
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        print(f'epoch {epoch + 1}: {seconds[-1]:.2f} s', flush=True)
    start = time.perf_counter()
    mapi2t, mapt2i = evaluate(method, splits)['query']
    valid_s = time.perf_counter() - start
    print(f'validation: {valid_s:.2f} s, MAP(i->t) {mapi2t:.4f}, MAP(t->i) {mapt2i:.4f} after '
          f'{epochs} epochs')

    epoch_s = statistics.median(seconds[1:] or seconds)
    gflops = epoch_flops / epoch_s / 1e9
    peak = matmul_peak(device, torch.bfloat16 if cfg.amp == 'bf16' else torch.float32)
    print(f'matmul peak {peak:.0f} GFLOP/s; epoch {epoch_flops / 1e12:.2f} TFLOP, validation '
          f'{valid_flops / 1e12:.2f} TFLOP ({valid_flops / valid_s / 1e9:.0f} GFLOP/s); '
          f'300 epochs with validation every epoch: {300 * (epoch_s + valid_s) / 60:.1f} min')
    print('targets (MIRFlickr-shaped, hidden 8192, bit 64): 2-core CPU fp32 epoch <= 45 s, '
          'validation <= 20 s; --amp bf16 epoch <= 12 s, validation <= 4 s; H100 300 epochs <= 3 min')
    line = (f'bench: epoch_s={epoch_s:.2f} valid_s={valid_s:.2f} samples_per_s={num_used / epoch_s:.0f} '
            f'gflops={gflops:.0f} peak_frac={gflops / peak:.2f} '
            f'peak_rss_gb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f}')
    if device.type == 'cuda':
        line += f' cuda_peak_gb={torch.cuda.max_memory_allocated(device) / 1e9:.2f}'
    print(line)


@cli
def plot(**options):
    """PNG figures of a run (MAP curves with the loss, precision-recall, precision@K)."""
    from utils.plot import plot_run
    cfg = config.parse(options)
    for path in plot_run(run_dir(cfg), cfg.model, cfg.dataset, cfg.bit):
        print(f'wrote {path}')


@cli
def report(checkpoint_dir='checkpoints', **unknown):
    """The paper's table over every tested run under --checkpoint_dir, and its figures."""
    from utils.report import write_report
    if unknown:
        raise UserError(f'report takes only --checkpoint_dir, got --{next(iter(unknown))}')
    table, written = write_report(Path(checkpoint_dir))
    print(table)
    for path in written:
        print(f'wrote {path}')


@cli
def visdom(port=8097, hostname='127.0.0.1', env_path=None, static_dir=None):
    """A visdom server that needs no internet: its page's assets come from `make visdom-assets`."""
    from utils.visualize import start_server
    start_server(port, hostname, env_path, static_dir)


@cli
def prepare(**options):
    """Raw images, tags and labels (MIRFlickr-25K, NUS-WIDE, a manifest) -> training file + sidecar."""
    from datasets.prepare import prepare as run_prepare
    values = config.parse_prepare(options)
    values['device'] = str(resolve_device(values['device']))
    run_prepare(**values)


@cli
def encode(out, modality='both', rows=':', append=False, **options):
    """Codes of the rows of a data file (--data_path) in an HDF5 codes file (--out)."""
    from retrieval import api
    run = api.load_run(**options)
    api.write(run, out, modality, rows, append)
    codes = api.open_codes(out)
    print(f'wrote {"+".join(codes.modalities)} codes of {codes.count} rows to {out}')


@cli
def search(database, text=None, image=None, rows=None, modality='image', topk=20, index='exact',
           json=False, same_modality=False, nprobe=16, **options):
    """The top --topk items of --database for a query: --text words, an --image file, or --rows
    of --data_path (of --modality)."""
    from retrieval import api
    if not isinstance(topk, int) or topk <= 0:
        raise UserError(f'--topk must be a positive integer, got {topk!r}')
    api.open_codes(database)  # a bad codes file is refused before the model loads
    run = api.load_run(**options)
    queries, modality = api.encode_query(run, text, image, rows, modality)
    results, notes = api.search(run, database, queries, modality, topk, index, same_modality, nprobe)
    for note in notes:
        print(note, file=sys.stderr)
    records = [[{'rank': rank, 'id': source if source is not None else row, 'row': row,
                 'distance': distance, 'labels': run.label_names(row)}
                for rank, _, row, source, distance in hits] for hits in results]
    if json:
        print(json_lib.dumps(records if len(records) > 1 else records[0]))
        return
    for q, hits in enumerate(records):
        if len(records) > 1:
            print(f'query {q + 1}:')
        for hit in hits:
            print(f"{hit['rank']:>5}  {hit['id']!s:<20} {hit['distance']:>4}  "
                  f"{' '.join(map(str, hit['labels']))}")


@cli
def index(database, index='ivf', nlist=None):
    """Build a FAISS binary index (flat, ivf, hnsw) beside a codes file, for search --index."""
    from retrieval.index import build_index
    for path in build_index(database, index, nlist):
        print(f'wrote {path}')


def help():
    print(config.usage())


if __name__ == '__main__':
    reuse_freed_memory()
    fire.Fire({'train': train, 'test': test, 'plot': plot, 'visdom': visdom, 'bench': bench,
               'report': report, 'prepare': prepare, 'encode': encode, 'search': search,
               'index': index, 'help': help})
