"""Configuration as plain values: the defaults of SPEC §8, per-data-set defaults (SPEC §1), strict parsing.

Precedence, lowest first: options shared by every model, the model's own defaults, the data set's
defaults (`--flag`) and the model's split of it, the demo's smaller defaults, then whatever is given
on the command line.
"""
import difflib

from utils.errors import UserError

# name: (default, meaning). Options every model understands.
COMMON = {
    'model': ('dadh', "method to train: 'dadh' (SPEC.md) or 'agah' (SPEC-AGAH.md)"),
    'flag': ('mir', "data set: 'mir' (MIRFlickr-25K), 'nus' (NUS-WIDE) or 'demo' (built-in synthetic)"),
    'dataset': (None, 'data set name used for the checkpoint folder (set by --flag)'),
    'data_path': (None, '.mat file, or folder of the three NUS-WIDE files (set by --flag)'),
    'db_size': (None, "database rows; None = to the end of the file ('nus' layout)"),
    'query_size': (None, "query rows; None = to the end of the file ('mir' layout)"),
    'training_size': (10000, 'training rows (a subset of the database)'),
    'image_dim': (4096, 'image feature width (CNN-F fc7)'),
    'text_dim': (1386, 'text (bag-of-words) width'),
    'num_label': (24, 'number of labels'),
    'bit': (64, 'hash code length'),
    'batch_size': (128, 'training batch size'),
    'lr': (5e-5, 'learning rate'),
    'max_epoch': (300, 'training epochs'),
    'valid': (True, 'validate MAP during training and keep the best model'),
    'valid_freq': (1, 'validate every this many epochs'),
    'select_on': ('query', "model selection: 'query' = best MAP on the test queries (the published "
                           "protocol), 'valid' = on --valid_size held-out rows"),
    'valid_size': (2000, '--select_on valid: database rows after the training rows, never trained on'),
    'alpha': (10.0, 'DADH: triplet weight (10 switches on the label weights, SPEC §4.1); AGAH: balance'),
    'beta': (1.0, 'DADH: quantisation weight beta0 (the run uses beta0 + 0.1, SPEC §4.4); AGAH: classification'),
    'gamma': (1.0, 'DADH: adversarial weight; AGAH: code-map weight'),
    'mu': (1e-5, 'DADH: weight of the network outputs in the code update (SPEC §5); AGAH: adversarial'),
    'margin': (0.4, 'triplet margin'),
    'map_at': ((50, 500), 'test also prints MAP@k for each k here (top-k convention, SPEC §7)'),
    'device': ('cuda:0', "'cuda:N' (falls back to CPU without CUDA) or 'cpu'"),
    'amp': (None, "'bf16' runs the networks in bfloat16 (CPU and GPU); None = float32"),
    'compile': (False, 'torch.compile the networks (worth it on a GPU)'),
    'tf32': (False, 'allow TF32 matrix products on CUDA'),
    'cuda_graph': (False, 'CUDA: replay every full training batch as one recorded CUDA graph'),
    'seed': (0, 'random seed (fixed, so two runs agree)'),
    'checkpoint_dir': ('checkpoints', 'outputs go to <checkpoint_dir>/<dataset>_<bit>/'),
    'overwrite': (False, 'start a new run even if the run folder already holds a model'),
    'resume': (False, 'continue the run in the run folder from its last.pth'),
    'save_freq': (1, 'write last.pth (everything to resume) every this many epochs'),
    'vis_env': ('main', "visdom environment; None or '' turns visdom off"),
    'vis_port': (8097, 'visdom server port'),
    'vis_server': ('http://localhost', 'visdom server address'),
    'pretrain_model_path': ('./data/imagenet-vgg-f.mat', 'CNN-F weights, read only for raw-image data'),
}

# Options a resumed run may change; any other difference from last.pth is refused.
RESUMABLE = {'max_epoch', 'device', 'vis_env', 'vis_port', 'vis_server', 'data_path',
             'checkpoint_dir', 'overwrite', 'resume', 'save_freq', 'map_at'}

# Options that say where a run goes or how it is watched, not what it computes: `report` averages runs
# that differ only in these (and the seed).
BOOKKEEPING = (RESUMABLE - {'max_epoch'}) | {'pretrain_model_path'}
# Options that change the numbers of a forward pass: `test` takes them from the run (config.json).
NUMERICS = ('tf32', 'amp')

# Options of `python main.py prepare` (datasets/prepare.py): name: (default, meaning).
PREPARE = {
    'source': (None, "'mir' (MIRFlickr-25K download), 'nus' (NUS-WIDE download) or 'manifest'"),
    'root': (None, 'mir, nus: the folder holding the unpacked download'),
    'manifest': (None, 'manifest: a CSV (image,text,labels) or JSON-lines file'),
    'out': (None, 'the training file to write (.mat); its sidecar .json goes beside it'),
    'images': ('features', "'features' (CNN-F fc7) or 'raw' (224 x 224 uint8 images)"),
    'pretrain_model_path': (COMMON['pretrain_model_path'][0], 'CNN-F weights (not read with --images raw)'),
    'device': ('cpu', "where CNN-F runs: 'cpu' or 'cuda:N'"),
    'batch_size': (64, 'images per CNN-F batch'),
    'workers': (2, 'image decoding threads'),
    'vocab_size': (None, 'manifest: keep at most this many most frequent words'),
    'min_count': (None, 'keep words of at least this many items (mir: 20, manifest: 1)'),
    'labels': (None, 'manifest: the label names to use, e.g. a,b,c (default: all found, sorted)'),
    'skip_bad_images': (False, 'skip (and list in the sidecar) missing or unreadable images'),
    'overwrite': (False, 'replace an existing --out'),
}


def _unknown(name, known, where=''):
    """The line for an unknown option, with the known ones it is closest to."""
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ''
    return f'unknown option --{name}{where}{hint}'


def parse_prepare(options):
    """The options of `prepare` with their defaults; unknown or ill-typed options are UserErrors."""
    for name in options:
        if name not in PREPARE:
            raise UserError(_unknown(name, PREPARE, ' of prepare'))
    values = {k: d for k, (d, _) in PREPARE.items()}
    values.update({k: _check_type(k, v, PREPARE[k][0]) for k, v in options.items()})
    return values


# Options that only one model reads.
MODELS = {
    'dadh': {
        'lamb': (1.0, 'ridge weight lambda of the code update (SPEC §5)'),
        'hidden_dim': (8192, 'width of the first hidden layer of both MLPs (SPEC §2)'),
        'dropout': (False, 'Dropout(0.5) after every ReLU of both MLPs'),
    },
    'agah': {
        'emb_dim': (512, 'width e of the features both nets end in (SPEC-AGAH)'),
        'eta': (1.0, 'quantisation weight'),
        'lambd': (0.8, 'attention mix: f^ = lambd f + (1 - lambd) attended label features'),
        'data_enhance': (False, 'add n/2 mixed training samples 0.5 a + 0.5 b'),
        'delta': (None, 'in the published configuration but read by nothing; accepted and unused'),
    },
}

# Shared options whose defaults differ for a model (SPEC-AGAH "Defaults").
MODEL_DEFAULTS = {
    'dadh': {},
    'agah': dict(lr=1e-4, valid_freq=20, alpha=1.0, beta=0.0, gamma=0.001, mu=1.0, margin=0.3),
}

# Data-set defaults (SPEC §1). `layout` says where the queries are: 'query_last' = database rows
# [0, db_size) then queries; 'query_first' = queries [0, query_size), then the database.
DATASETS = {
    'mir': dict(dataset='flickr25k', data_path='./data/FLICKR-25K.mat', db_size=18015,
                query_size=None, text_dim=1386, num_label=24),
    'nus': dict(dataset='nus-wide', data_path='./data/NUS-WIDE-TC21.mat', query_size=2100,
                db_size=None, text_dim=1000, num_label=21),
    'demo': dict(dataset='demo', data_path='./data/DEMO-FLICKR.mat', db_size=2500, query_size=None,
                 training_size=2000, valid_size=500, text_dim=1386, num_label=24),
}
LAYOUTS = {'mir': 'query_last', 'nus': 'query_first', 'demo': 'query_last'}
# AGAH's published code splits MIRFlickr with the queries first (SPEC-AGAH "Data and split").
MODEL_SPLITS = {('agah', 'mir'): (dict(query_size=2000, db_size=18015), 'query_first')}
KEYS = {'mir': ('images', 'YAll', 'LAll'), 'nus': ('image', 'text', 'label'),
        'demo': ('images', 'YAll', 'LAll')}

# The demo's smaller model, so that `train --flag demo` trains in about 20 s on 2 cores.
DEMO = {
    'dadh': dict(hidden_dim=1024, bit=32, max_epoch=20, lr=1e-4),
    'agah': dict(bit=32, max_epoch=20, valid_freq=5),
}


class Config:
    """Resolved options as attributes, plus the data layout and keys of the chosen --flag."""

    def __init__(self, values):
        self.__dict__.update(values)
        self.layout = MODEL_SPLITS.get((self.model, self.flag), (None, LAYOUTS[self.flag]))[1]
        self.keys = KEYS[self.flag]

    @property
    def options(self):
        return {k: v for k, v in self.__dict__.items() if k not in ('layout', 'keys')}

    def __str__(self):
        return '\n'.join(f'  {k}: {v!r}' for k, v in self.options.items())


def _check_type(name, value, default):
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return value.lower() == 'true'
        if not isinstance(value, bool):
            raise UserError(f'--{name} must be True or False, got {value!r}')
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f'--{name} must be an integer, got {value!r}')
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f'--{name} must be a number, got {value!r}')
        value = float(value)
    elif isinstance(default, tuple):
        value = value if isinstance(value, (list, tuple)) else (value,)
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                for v in value):
            raise UserError(f'--{name} must be positive integers, e.g. [50,500], got {value!r}')
        value = tuple(value)
    elif isinstance(default, str) and not isinstance(value, str):
        value = str(value)
    return value


def parse(options):
    """Resolve command-line options into a Config; unknown or ill-typed options are UserErrors."""
    model = options.get('model', COMMON['model'][0])
    flag = options.get('flag', COMMON['flag'][0])
    if model not in MODELS:
        raise UserError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    if flag not in DATASETS:
        raise UserError(f"--flag must be one of {', '.join(DATASETS)}, got {flag!r}")

    known = {**COMMON, **MODELS[model]}
    for name in options:
        if name in known:
            continue
        owner = [m for m, opts in MODELS.items() if name in opts]
        if owner:
            raise UserError(f'--{name} is an option of --model {owner[0]}, not of --model {model}')
        raise UserError(_unknown(name, known))

    values = {k: d for k, (d, _) in known.items()}
    values.update(MODEL_DEFAULTS[model])
    values.update(DATASETS[flag])
    values.update(MODEL_SPLITS.get((model, flag), ({},))[0])
    if flag == 'demo':
        values.update(DEMO[model])
    for name, value in options.items():
        values[name] = _check_type(name, value, values[name] if values[name] is not None
                                   else known[name][0])
    if values['amp'] not in (None, 'bf16'):
        raise UserError(f"--amp must be bf16 or None, got {values['amp']!r}")
    if values['select_on'] not in ('query', 'valid'):
        raise UserError(f"--select_on must be query or valid, got {values['select_on']!r}")
    if values['select_on'] == 'valid' and not values['valid']:
        raise UserError('--select_on valid chooses among validated epochs: it needs --valid True')
    if values['vis_env'] in ('', 'None'):
        values['vis_env'] = None

    for name in ('bit', 'batch_size', 'max_epoch', 'valid_freq', 'save_freq', 'training_size',
                 'valid_size', 'image_dim',
                 'text_dim', 'num_label') + {'dadh': ('hidden_dim',), 'agah': ('emb_dim',)}[model]:
        if values[name] <= 0:
            raise UserError(f'--{name} must be positive, got {values[name]}')
    for name in ('db_size', 'query_size'):
        if values[name] is not None and (not isinstance(values[name], int) or values[name] <= 0):
            raise UserError(f'--{name} must be a positive integer or None, got {values[name]!r}')
    if values['batch_size'] < 2:
        raise UserError('--batch_size must be at least 2 (BatchNorm needs two samples)')
    if model == 'dadh' and values['hidden_dim'] < 16:
        raise UserError(f"--hidden_dim must be at least 16 (the feature discriminator's last "
                        f"hidden layer is hidden_dim/16), got {values['hidden_dim']}")
    return Config(values)


def usage():
    """The text of `python main.py help`."""
    lines = [
        'usage: python main.py COMMAND [--option value ...]',
        '',
        'commands:',
        '  train   train a model, validate MAP, keep the best one',
        '  test    load the best model, print its MAP, MAP@k and precision@K, save them',
        '  plot    PNG figures of a run: MAP curves, precision-recall, precision@K',
        '  visdom  serve the visdom page on 127.0.0.1, no internet needed (--port, --env_path,',
        '          --static_dir: the folder of its web assets, by default visdom\'s own)',
        '  bench   time training epochs and a validation (--epochs N, any train option)',
        '  report  the table of every tested run under --checkpoint_dir (mean ± std over seeds),',
        '          beside the published numbers, as Markdown and CSV, with MAP and PR figures',
        '  prepare raw MIRFlickr-25K / NUS-WIDE downloads or a manifest -> training file and',
        '          sidecar, with CNN-F features (options below)',
        '  encode  codes of a data file into an HDF5 codes file (--data_path, --out, --modality',
        '          image|text|both, --rows a:b, --append True; model options as test)',
        '  search  top --topk of a codes file (--database) for --text "words", --image FILE or',
        '          --rows a:b of --data_path (--modality); --index exact|flat|ivf|hnsw, --json True',
        '  index   build a FAISS index (--index flat|ivf|hnsw, --nlist) beside a codes file',
        '  help    this text',
        '',
        'options shared by every model (default, meaning):',
    ]
    lines += [f'  --{k:<20} {d!r:<28} {h}' for k, (d, h) in COMMON.items()]
    for model, opts in MODELS.items():
        lines += ['', f'options of --model {model}:']
        lines += [f'  --{k:<20} {d!r:<28} {h}' for k, (d, h) in opts.items()]
        if MODEL_DEFAULTS[model]:
            lines += [f'  and its own defaults of shared options: {MODEL_DEFAULTS[model]}']
        lines += [f'  {flag} split: {split}, {layout}' for (m, flag), (split, layout)
                  in MODEL_SPLITS.items() if m == model]
    lines += ['', 'data-set defaults set by --flag:']
    lines += [f'  {f:<6} {v}' for f, v in DATASETS.items()]
    lines += ['', 'smaller model defaults of --flag demo:']
    lines += [f'  --model {m:<6} {v}' for m, v in DEMO.items()]
    lines += ['', 'options of prepare (default, meaning):']
    lines += [f'  --{k:<20} {d!r:<28} {h}' for k, (d, h) in PREPARE.items()]
    lines += ['', 'example: python main.py train --flag mir --bit 64 --device cpu']
    return '\n'.join(lines)
