"""A run, assembled: its folder, model file and options (config.json), the device, the data read as
the method takes it, the method built (CNN-F on raw images) and loaded, the batches its epochs read,
and its evaluation. main.py, retrieval/ and benchmarks/ all assemble runs here, so nothing imports
main.py.
"""
import json
import os
import socket
from pathlib import Path

import numpy as np
import torch

import config
from datasets.data_handler import RawImages, load_data
from datasets.dataset import Splits
from datasets.demo import ensure_demo
from datasets.split import random_split, ranges_split, read_split
from models.cnn_f import CNNF
from models.published import model_path
from utils import calc_map_k
from utils.checkpoint import atomic_pickle, atomic_write, load_file
from utils.errors import UserError, warn
from utils.progress import bar

LAST_FILE = 'last.pth'
SPLIT_FILE = 'split.json'  # the run's own rows of each part, written with its first files
STATISTICS_FILE = 'statistics.json'  # the data statistics it trained with (load_data), likewise
# How the kept model was chosen, in the printed lines and the report.
SELECTION = {'query': 'the test queries', 'valid': 'the held-out rows', 'last': 'the last epoch'}
RAW_CHUNK = 256  # raw images read and encoded at a time: CNN-F's activations for 4096 take ~10 GB
TENSOR_CHUNK = 4096  # feature rows gathered and encoded at a time


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


def native_bf16():
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512-bf16 or AMX); without them
    torch emulates bf16 products, slower than float32 (on a Zen 3 EPYC a 3-epoch DADH bench did
    not finish in 900 s where float32 takes 103 s an epoch)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return True  # not Linux: say nothing rather than guess
    return bool({'avx512_bf16', 'amx_bf16'} & set(flags))


def configure_device(tf32, amp, device):
    """The process-wide numeric flags of a run, on every device, so that they always say what the
    run used (cuDNN's default is TF32 on: a test left at it would not compute the codes its train
    validated); one warning where --tf32 or --amp bf16 cannot do what it promises."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if tf32 and device.type != 'cuda':
        warn('--tf32 only acts on CUDA devices')
    if amp == 'bf16' and device.type == 'cpu' and not native_bf16():
        warn('--amp bf16: this CPU has no native bfloat16 matrix products (no AVX-512-bf16, no '
             'AMX): they are emulated, slower than float32')


def run_dir(cfg):
    """<checkpoint_dir>/<dataset>_<bit> for DADH (as published); other methods add their name."""
    suffix = '' if cfg.model == 'dadh' else f'_{cfg.model}'
    return Path(cfg.checkpoint_dir) / f'{cfg.dataset}_{cfg.bit}{suffix}'


def model_file(cfg):
    return model_path(cfg.method, run_dir(cfg))


def run_options(out):
    """The options the run in `out` was trained with (its config.json), or None for a folder that
    has none (a model of the published code, or of an older version)."""
    path = out / 'config.json'
    return json.loads(path.read_text()) if path.is_file() else None


def read_data(cfg, lazy=False, out=None):
    """The data file of `cfg` (the demo's written on first use), read as the method takes it, with
    the statistics of the run in `out` (statistics.json: the image standardisation and text
    centring it trained with) where it has them, else with the file's own (said in one warning for
    a run folder without them); `lazy` leaves its rows on disk until asked for (load_data)."""
    if cfg.flag == 'demo':
        ensure_demo(cfg.data_path)
    statistics = None
    if out is not None and (out / STATISTICS_FILE).is_file():
        statistics = json.loads((out / STATISTICS_FILE).read_text())
    data = load_data(cfg.data_path, cfg.keys, cfg.image_dim, cfg.text_dim, cfg.num_label,
                     standardise_images=cfg.method.STANDARDISE_FEATURES,
                     centre_text=cfg.method.CENTRE_TEXT, statistics=statistics, lazy=lazy)
    if out is not None and statistics is None and data.statistics:
        warn(f'{out} has no {STATISTICS_FILE} (a run of an older version or of the published '
             f'code): its data statistics are taken from {cfg.data_path}, as they were then')
    return data


def make_split(cfg, n, out=None):
    """The split of a run on a data file of n rows (datasets/split.py): the run folder's own
    (split.json) when `out` has one, else what --split says: 'published', the method's own scheme
    (its SPLIT); 'rows', the data set's fixed row ranges; or a split file. Held-out rows only with
    --select_on valid."""
    valid_size = cfg.valid_size if cfg.select_on == 'valid' else None
    if out is not None and (out / SPLIT_FILE).is_file():
        split = read_split(out / SPLIT_FILE)
    elif cfg.split == 'published' and cfg.method.SPLIT == 'random':
        return random_split(n, cfg.query_size, cfg.db_size, cfg.training_size, valid_size, cfg.seed)
    elif cfg.split in ('published', 'rows'):
        return ranges_split(n, cfg.layout, cfg.query_size, cfg.db_size, cfg.training_size, valid_size)
    else:
        split = read_split(cfg.split)
    if valid_size is None:
        split.held_out = None
    elif split.held_out is None:
        raise UserError(f'{split.source}: no held_out rows, which --select_on valid chooses on')
    return split


def write_split(cfg, out, seed=None, overwrite=False):
    """`python main.py split`: a split file of the data file of `cfg`, with the data set's sizes:
    its fixed row ranges in --flag's layout (DADH's), or with `seed` a random permutation drawn
    from it (the scheme of DCMH's and SSAH's published splits); held-out rows of --valid_size
    included. An existing file is kept unless `overwrite`. Returns the split and its sha256."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f'--out {out}: already exists (pass --overwrite True to replace it)')
    if out.suffix != '.json':
        raise UserError(f'--out {out}: split files are written as .json')
    n = len(read_data(cfg, lazy=True))
    if seed is None:
        split = ranges_split(n, cfg.layout, cfg.query_size, cfg.db_size, cfg.training_size,
                             cfg.valid_size)
    else:
        query_size = cfg.query_size or n - cfg.db_size
        split = random_split(n, query_size, cfg.db_size, cfg.training_size, cfg.valid_size, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    return split, split.save(out)


def run_state(cfg):
    """(state, folder) of the run folder of `cfg`: 'tested' (trained to its end, then tested),
    'trained' (trained to its end), 'partial' (a last.pth to resume) or 'new'."""
    out = run_dir(cfg)
    history = out / 'history.json'
    finished = history.is_file() and json.loads(history.read_text()).get('finished')
    if finished and (out / 'metrics.json').is_file() and (
            (out / 'metrics.json').stat().st_mtime >= history.stat().st_mtime):
        return 'tested', out
    if finished:
        return 'trained', out
    return ('partial' if (out / LAST_FILE).is_file() else 'new'), out


def load_splits(cfg, device, out=None):
    """The data of `cfg` read and split (splits_of), as the run in `out` (if any) read them."""
    return splits_of(cfg, read_data(cfg, out=out), device, out)


def splits_of(cfg, data, device, out=None):
    """The run's split of `data` (make_split) on `device`, said in one line."""
    splits = Splits(data, make_split(cfg, len(data), out), device)
    splits.statistics = data.statistics
    sizes, held = splits.sizes(), splits.split.held_out
    where = (f'rows [{held[0]}, {held[-1] + 1}), ' if sizes['held_out'] and (np.diff(held) == 1).all()
             else '')
    held_out = f', held-out {sizes["held_out"]} ({where}never trained on)' if sizes['held_out'] else ''
    print(f'data: {data.source}: {len(data)} samples; training {sizes["train"]}{held_out}, '
          f'query {sizes["query"]}, database {sizes["database"]}')
    return splits


def make_method(cfg, raw_images, num_train, device):
    """The method of --model for `num_train` training rows, built from its hyper-parameters; on raw
    images its image net starts with CNN-F (in the run's --cnn_geometry)."""
    cnn = None
    if raw_images:
        cnn = CNNF.from_matconvnet(cfg.pretrain_model_path, cfg.method.SUBTRACT_AVERAGE_IMAGE,
                                   cfg.cnn_geometry)
        print(f'raw images: CNN-F ({cfg.cnn_geometry} geometry) from {cfg.pretrain_model_path} '
              f'({cnn.out_dim}-d fc7)')
    return cfg.method(num_train, device, cnn, **cfg.hyper())


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
    configure_device(cfg.tf32, cfg.amp, device)
    return out, trained


def load_trained(cfg, device, lazy=False):
    """(run folder, options it was trained with, its data, its method with the kept model loaded):
    what test, encode and search start from. `lazy` reads the data file's rows as asked for."""
    out, trained = trained_run(cfg, device)
    data = read_data(cfg, lazy=lazy, out=out)
    method = make_method(cfg, isinstance(data.images, RawImages), 1, device)
    method.load_best(out, device)
    return out, trained, data, method


def prepare_run_dir(cfg, world):
    """The run's folder, writable (probed by every rank under torchrun), and holding no model of
    an earlier run unless --overwrite or --resume."""
    out = run_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a name of this host, process and rank: ranks of several containers share a PID
        probe = out / f'.write-test-{socket.gethostname()}-{os.getpid()}-{world.rank}'
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


def write_run_files(out, cfg, splits):
    """What test, encode, search, report and a resumed run read back of a run: its rows
    (split.json), the data statistics it trained with (statistics.json) and its options
    (config.json, with the split's sha256). Written with the run's first epoch, so that a failed
    first epoch changes nothing."""
    atomic_write(out / STATISTICS_FILE, lambda f: f.write(json.dumps(splits.statistics).encode()))
    record = {**cfg.options, 'split_sha256': splits.split.save(out / SPLIT_FILE)}
    atomic_write(out / 'config.json', lambda f: f.write(json.dumps(record, indent=1).encode()))


def write_results(out, history):
    """result.pkl as the published code writes it, [train_times, mapi2t_list, mapt2i_list] with the
    training seconds of each validated epoch (SPEC §9), and history.json with every figure."""
    seconds = dict(zip(history['epoch'], history['seconds']))
    train_times = [seconds[epoch] for epoch in history['valid_epoch']]
    atomic_pickle([train_times, history['mapi2t'], history['mapt2i']], out / 'result.pkl')
    atomic_write(out / 'history.json', lambda f: f.write(json.dumps(history, indent=1).encode()))


class Batches:
    """What a method's train_epoch reads its batches through. batches(rows) gives, for training
    rows `rows` (positions in the training set, the global batch under torchrun), this rank's
    share of their images and text (raw images read from disk here; `images=False` or `text=False`
    skips a modality) and the global batch's labels, all on the training device. Before each
    batch every rank agrees whether a signal asks to stop and whether a read failed on any rank:
    then it returns None (stop) or raises the failing rank's error, on every rank alike."""

    def __init__(self, splits, stop, world):
        self.splits, self.stop, self.world = splits, stop, world
        self.labels = splits.labels[splits.train_rows]  # every training row's, for S and the like
        self.desc = ''  # the epoch's name on progress bars, set by the training loop
        self.noted = set()

    def note(self, message):
        """A warning line for the run, said once (by rank 0 under torchrun)."""
        if message not in self.noted and self.world.is_main:
            warn(message)
        self.noted.add(message)

    def __call__(self, rows, images=True, text=True):
        data_rows = self.splits.train_rows[rows]
        mine = data_rows[self.world.share(len(rows))]
        batch, error = (None, None), None
        try:
            batch = (self.splits.images[mine] if images else None,
                     self.splits.text[mine] if text else None)
        except UserError as e:  # a raw-image file that became unreadable
            error = e
        if self.world.agree(self.stop, error):  # before the step's collectives
            return None
        return (*batch, self.splits.labels[data_rows])


def encode(method, modality, x, rows=None):
    """±1 codes of rows `rows` (an index tensor; None: all) of x in one modality, x a tensor or raw
    images (RawImages, read from disk here), gathered a chunk at a time: TENSOR_CHUNK rows of a
    tensor, RAW_CHUNK raw images, rounded up to whole batches of the method's code_batch (where a
    code depends on its batch, the batches start at the first row)."""
    to_codes = method.encode_images if modality == 'image' else method.encode_text
    rows = torch.arange(len(x)) if rows is None else rows
    size = TENSOR_CHUNK if torch.is_tensor(x) else RAW_CHUNK
    step = method.code_batch or size
    chunk = -(-size // step) * step
    return torch.cat([to_codes(x[rows[s:s + chunk]].to(method.device))
                      for s in bar(range(0, len(rows), chunk), f'{modality} codes')])


def retrieval_pairs(method, splits):
    """(query codes, database codes, query labels, database labels) of both directions (SPEC §7):
    image queries against text codes ('i2t') and text queries against image codes ('t2i')."""
    codes = {(part, modality): encode(method, modality, x, getattr(splits, part))
             for part in ('query', 'database')
             for modality, x in (('image', splits.images), ('text', splits.text))}
    query_labels, db_labels = splits.labels[splits.query], splits.labels[splits.database]
    return {'i2t': (codes['query', 'image'], codes['database', 'text'], query_labels, db_labels),
            't2i': (codes['query', 'text'], codes['database', 'image'], query_labels, db_labels)}


def evaluate(method, splits):
    """{'query': (MAP image->text, MAP text->image) of the queries over the whole database}, and with
    held-out rows 'valid': theirs over the rest of the database. The held-out rows are database
    rows, so their codes are the database's own (one encoding serves both)."""
    pairs = retrieval_pairs(method, splits)
    maps = {'query': (calc_map_k(*pairs['i2t']), calc_map_k(*pairs['t2i']))}
    if splits.held_out is not None:
        held, rest = splits.held_out_positions()
        db_image, db_text, db_labels = pairs['t2i'][1], pairs['i2t'][1], pairs['i2t'][3]
        maps['valid'] = (calc_map_k(db_image[held], db_text[rest], db_labels[held], db_labels[rest]),
                         calc_map_k(db_text[held], db_image[rest], db_labels[held], db_labels[rest]))
    return maps
