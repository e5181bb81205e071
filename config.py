"""Configuration as plain values: the run's options, each method's hyper-parameters gathered from
models/ (its OPTIONS), per-data-set defaults (SPEC §1), strict parsing.

Precedence, lowest first: the run options' defaults, the method's hyper-parameters and its own
defaults of run options (DEFAULTS), the data set's defaults (`--flag`) and the method's own for that
data set (DATA_DEFAULTS: its split), the demo's smaller defaults (DEMO), then whatever is given on
the command line.
"""
import difflib
import inspect
import sys

from models import METHODS
from models.cnn_f import GEOMETRIES
from utils.errors import UserError

# name: (default, meaning). The run's options, which every method understands; each method's own
# hyper-parameters (lr, loss weights, widths, ...) live beside it, in its OPTIONS (models/).
RUN = {
    'model': ('dadh', f"method to train: {', '.join(METHODS)} (models/; `help --model NAME` lists its options)"),
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
    'max_epoch': (300, 'training epochs'),
    'valid': (True, 'validate MAP during training'),
    'valid_freq': (1, 'validate every this many epochs'),
    'select_on': ('query', "the kept model: 'query' = best MAP on the test queries (the published "
                           "protocol of DADH and AGAH), 'valid' = on --valid_size held-out rows, "
                           "'last' = the last epoch's"),
    'valid_size': (2000, '--select_on valid: database rows after the training rows, never trained on'),
    'split': ('published', "the rows of each part: 'published' = the method's own split (a fixed "
                           "layout, or a random permutation drawn from --seed), 'rows' = the data "
                           "set's fixed row ranges, or a split file (python main.py split)"),
    'map_at': ((50, 500), 'test also prints MAP@k for each k here (top-k convention, SPEC §7)'),
    'device': ('cuda:0', "'cuda:N' (falls back to CPU without CUDA) or 'cpu'"),
    'amp': (None, "'bf16' runs the networks in bfloat16 (CPU and GPU); None = float32"),
    'tf32': (False, 'allow TF32 matrix products on CUDA'),
    'seed': (0, 'random seed (fixed, so two runs agree)'),
    'checkpoint_dir': ('checkpoints', 'outputs go to <checkpoint_dir>/<dataset>_<bit>[_<model>]/'),
    'overwrite': (False, 'start a new run even if the run folder already holds a model'),
    'resume': (False, 'continue the run in the run folder from its last.pth'),
    'save_freq': (1, 'write last.pth (everything to resume) every this many epochs'),
    'vis_env': ('main', "visdom environment; None or '' turns visdom off"),
    'vis_port': (8097, 'visdom server port'),
    'vis_server': ('http://localhost', 'visdom server address'),
    'pretrain_model_path': ('./data/imagenet-vgg-f.mat', 'CNN-F weights, read only for raw-image data'),
    'cnn_geometry': (None, "raw images: CNN-F as 'published' (SPEC §2's port) or 'matconvnet' (its "
                           "own); None = the method's"),
}
SELECTIONS = ('query', 'valid', 'last')

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
    'pretrain_model_path': (RUN['pretrain_model_path'][0], 'CNN-F weights (not read with --images raw)'),
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


# Data-set defaults (SPEC §1); a method's DATA_DEFAULTS change them for its own split. `layout` says
# where the queries are: 'query_last' = database rows [0, db_size) then queries; 'query_first' =
# queries [0, query_size), then the database.
DATASETS = {
    'mir': dict(dataset='flickr25k', data_path='./data/FLICKR-25K.mat', db_size=18015,
                query_size=None, text_dim=1386, num_label=24, layout='query_last'),
    'nus': dict(dataset='nus-wide', data_path='./data/NUS-WIDE-TC21.mat', query_size=2100,
                db_size=None, text_dim=1000, num_label=21, layout='query_first'),
    'demo': dict(dataset='demo', data_path='./data/DEMO-FLICKR.mat', db_size=2500, query_size=None,
                 training_size=2000, valid_size=500, text_dim=1386, num_label=24,
                 layout='query_last'),
}
KEYS = {'mir': ('images', 'YAll', 'LAll'), 'nus': ('image', 'text', 'label'),
        'demo': ('images', 'YAll', 'LAll')}


class Config:
    """Resolved options as attributes, plus the data layout and keys of the chosen --flag."""

    def __init__(self, values, layout):
        self.__dict__.update(values)
        self.layout, self.keys = layout, KEYS[self.flag]

    @property
    def options(self):
        return {k: v for k, v in self.__dict__.items() if k not in ('layout', 'keys')}

    @property
    def method(self):
        """The class of --model (models.METHODS)."""
        return METHODS[self.model]

    def hyper(self):
        """What the method's constructor takes from the options: the keyword-only parameters of
        its __init__ (its OPTIONS and the shared numbers it uses), as plain values."""
        taken = {name for name, p in inspect.signature(self.method).parameters.items()
                 if p.kind == p.KEYWORD_ONLY}
        return {k: v for k, v in self.options.items() if k in taken}

    def __str__(self):
        return '\n'.join(f'  {k}: {v!r}' for k, v in self.options.items())


def known_options(model):
    """name: (default, meaning[, minimum]) of every option of --model `model`."""
    return {**RUN, **METHODS[model].OPTIONS}


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
    model = options.get('model', RUN['model'][0])
    flag = options.get('flag', RUN['flag'][0])
    if model not in METHODS:
        raise UserError(f"--model must be one of {', '.join(METHODS)}, got {model!r}")
    if flag not in DATASETS:
        raise UserError(f"--flag must be one of {', '.join(DATASETS)}, got {flag!r}")
    method = METHODS[model]

    known = known_options(model)
    for name in options:
        if name in known:
            continue
        owners = [m for m, cls in METHODS.items() if name in cls.OPTIONS]
        if owners:
            raise UserError(f"--{name} is an option of --model {' and '.join(owners)}, not of "
                            f'--model {model}')
        raise UserError(_unknown(name, known))

    values = {k: spec[0] for k, spec in known.items()}
    values.update(method.DEFAULTS)
    values.update(DATASETS[flag])
    values.update(method.DATA_DEFAULTS.get(flag, {}))
    if flag == 'demo':
        values.update(method.DEMO)
    layout = values.pop('layout')
    for name, value in options.items():
        values[name] = _check_type(name, value, values[name] if values[name] is not None
                                   else known[name][0])
    if values['amp'] not in (None, 'bf16'):
        raise UserError(f"--amp must be bf16 or None, got {values['amp']!r}")
    if values['select_on'] not in SELECTIONS:
        raise UserError(f"--select_on must be one of {', '.join(SELECTIONS)}, got {values['select_on']!r}")
    if values['select_on'] == 'valid' and not values['valid']:
        raise UserError('--select_on valid chooses among validated epochs: it needs --valid True')
    if values['vis_env'] in ('', 'None'):
        values['vis_env'] = None
    values['cnn_geometry'] = values['cnn_geometry'] or method.CNN_GEOMETRY
    if values['cnn_geometry'] not in GEOMETRIES:
        raise UserError(f"--cnn_geometry must be one of {', '.join(GEOMETRIES)}, got "
                        f"{values['cnn_geometry']!r}")

    for name in ('bit', 'batch_size', 'max_epoch', 'valid_freq', 'save_freq', 'training_size',
                 'valid_size', 'image_dim', 'text_dim', 'num_label'):
        if values[name] <= 0:
            raise UserError(f'--{name} must be positive, got {values[name]}')
    for name, (_, _, *minimum) in method.OPTIONS.items():
        if minimum and values[name] < minimum[0]:
            raise UserError(f'--{name} must be ' + ('positive' if minimum[0] == 1 else
                            f'at least {minimum[0]} ({known[name][1]})') + f', got {values[name]}')
    for name in ('db_size', 'query_size'):
        if values[name] is not None and (not isinstance(values[name], int) or values[name] <= 0):
            raise UserError(f'--{name} must be a positive integer or None, got {values[name]!r}')
    if values['batch_size'] < 2:
        raise UserError('--batch_size must be at least 2 (BatchNorm needs two samples)')
    return Config(values, layout)


def settings(model, flag):
    """The options of a method's published runs on data set `flag` that are not defaults, as
    command-line words."""
    return ' '.join(f'--{k} {v}' for k, v in METHODS[model].SETTINGS.get(flag, {}).items())


def run_words(model, flag, words):
    """The command-line words of one run of a sweep (train_test.sh): `model`'s published settings
    on `flag`, then `words` without the options that belong to other methods only (a sweep's
    `--hidden_dim 64` is DADH's; said once on stderr); unknown options stay, for train to refuse."""
    own = known_options(model)
    others = {name for m, cls in METHODS.items() if m != model for name in cls.OPTIONS} - set(own)
    kept, dropped, i = settings(model, flag).split(), [], 0
    while i < len(words):
        word = words[i]
        takes_value = word.startswith('--') and '=' not in word and i + 1 < len(words) and \
            not words[i + 1].startswith('--')
        option = words[i:i + 1 + takes_value]
        if word.startswith('--') and word[2:].split('=')[0] in others:
            dropped.append(word[2:].split('=')[0])
        else:
            kept += option
        i += len(option)
    if dropped:
        print(f"sweep: --model {model} takes no {', '.join('--' + d for d in dropped)}: not passed to it",
              file=sys.stderr)
    return kept


def _option_lines(options):
    return [f'  --{k:<20} {spec[0]!r:<28} {spec[1]}' for k, spec in options.items()]


def usage(model=None):
    """The text of `python main.py help` (every method's options, or only those of `model`)."""
    if model is not None and model not in METHODS:
        raise UserError(f"--model must be one of {', '.join(METHODS)}, got {model!r}")
    lines = [
        'usage: python main.py COMMAND [--option value ...]',
        '',
        'commands:',
        '  train   train a model, validate MAP, keep the model --select_on chooses',
        '  test    load the kept model, print its MAP, MAP@k and precision@K, save them',
        '  plot    PNG figures of a run: MAP curves, precision-recall, precision@K',
        '  visdom  serve the visdom page on 127.0.0.1, no internet needed (--port, --env_path,',
        '          --static_dir: the folder of its web assets, by default visdom\'s own)',
        '  report  the table of every tested run under --checkpoint_dir (mean ± std over seeds),',
        '          beside the published numbers, as Markdown and CSV, with MAP and PR figures',
        '  prepare raw MIRFlickr-25K / NUS-WIDE downloads or a manifest -> training file and',
        '          sidecar, with CNN-F features (options below)',
        '  encode  codes of a data file into an HDF5 codes file (--data_path, --out, --modality',
        '          image|text|both, --rows a:b, --append True; model options as test)',
        '  search  top --topk of a codes file (--database) for --text "words", --image FILE or',
        '          --rows a:b of --data_path (--modality); --index exact|flat|ivf|hnsw, --json True',
        '  index   build a FAISS index (--index flat|ivf|hnsw, --nlist) beside a codes file',
        '  help    this text (--model NAME: only that method\'s options)',
        '(timing: python benchmarks/train.py --model NAME, see the README\'s "Speed")',
        '',
        'options of every method (default, meaning):',
    ]
    lines += _option_lines(RUN)
    for name, method in METHODS.items():
        if model not in (None, name):
            continue
        lines += ['', f'options of --model {name}:'] + _option_lines(method.OPTIONS)
        if method.DEFAULTS:
            lines += [f'  and its own defaults of the options above: {method.DEFAULTS}']
        lines += [f'  --flag {flag}: {values}' for flag, values in method.DATA_DEFAULTS.items()]
        if method.DEMO:
            lines += [f'  --flag demo: {method.DEMO}']
        lines += [f'  published setting on --flag {flag}: {settings(name, flag)}'
                  for flag in method.SETTINGS]
    lines += ['', 'data-set defaults set by --flag:']
    lines += [f'  {f:<6} {v}' for f, v in DATASETS.items()]
    if model is None:
        lines += ['', 'options of prepare (default, meaning):'] + _option_lines(PREPARE)
    lines += ['', 'example: python main.py train --flag mir --bit 64 --device cpu']
    return '\n'.join(lines)
