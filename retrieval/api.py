"""Retrieval from Python: load a trained run, encode arrays, words or image files, write and open
codes files, search. `python main.py encode|search|index` are thin layers over this.

    run = load_run(flag='mir', bit=64, device='cpu')
    write(run, 'codes.h5')
    hits, notes = search(run, 'codes.h5', run.encode_words('dog on a beach'), 'text', k=20)

AGAH divides each batch by one norm over the whole batch (as its reference code does), so an
item's code depends on the batch it is encoded in: `write` encodes in whole batches from the first
row it encodes, as `test` does from the first row of each split, so `--rows` of exactly a split's
rows give the codes `test` scored; a query encoded alone can differ. DADH's codes are per item.
"""
import functools
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

import config
import runs
from datasets.data_handler import RawImages
from datasets.images import load_image
from datasets.prepare import load_sidecar
from datasets.text import bag_of_words, outside, tokenize
from retrieval import index as indexes
from retrieval.codes_file import CodesFile, write_codes
from utils import hamming
from utils.checkpoint import sha256
from utils.errors import UserError, warn
from utils.progress import bar

CHUNK_ROWS = 4096
open_codes = CodesFile
# One search result: its rank, its position in the codes file, its row in the data file it came
# from, that file, its source id (None without a sidecar), the Hamming distance and its labels
# (names where the data file had a sidecar, else column numbers).
Hit = namedtuple('Hit', 'rank position row data_file source_id distance labels')


class Run:
    """A trained model with its data file: encodes to ±1 code tensors on the CPU, handing every
    row to the model's device. `weights`: the --pretrain_model_path given, if any."""

    def __init__(self, cfg, device, method, data, weights=None):
        self.cfg, self.device, self.method, self.data, self.weights = cfg, device, method, data, weights
        self.model_file = runs.model_file(cfg)
        self.identity = {'model_file': str(self.model_file), 'model_sha256': sha256(self.model_file),
                         'method': cfg.model, 'bit': cfg.bit, 'flag': cfg.flag,
                         'image_mean': data.image_mean, 'image_std': data.image_std}

    @functools.cached_property
    def sidecar(self):
        """The data file's prepare sidecar (or None), read when a query or `write` needs it."""
        return load_sidecar(self.cfg.data_path)

    def encode_images(self, images):
        """Codes of image rows (an array, a tensor or raw images read from disk)."""
        images = images if isinstance(images, RawImages) else torch.as_tensor(images, dtype=torch.float32)
        return runs.encode(self.method, 'image', images).cpu()

    def encode_text(self, text):
        return runs.encode(self.method, 'text', torch.as_tensor(text, dtype=torch.float32)).cpu()

    def encode_words(self, text):
        """Codes of a text query (1 x bit) through the vocabulary of the data file's sidecar; words
        outside it are reported and ignored."""
        vocabulary = (self.sidecar or {}).get('vocabulary')
        if not vocabulary:
            raise UserError(f'{self.cfg.data_path}: no prepare sidecar with a vocabulary, so words '
                            'cannot be encoded (query by --rows instead)')
        tokens = tokenize(text)
        unknown = outside(tokens, vocabulary)
        if len(unknown) == len(set(tokens)):
            raise UserError(f'no word of {text!r} is in the vocabulary of {self.cfg.data_path}')
        if unknown:
            warn(f'not in the vocabulary, ignored: {", ".join(unknown)}')
        return self.encode_text(bag_of_words([tokens], vocabulary))

    def encode_image_file(self, path):
        """Codes of an image file (1 x bit): raw-image models take the pixels; feature models the
        CNN-F fc7 features of prepare's pipeline (in float32 on the CPU, as prepare computes them),
        standardised as the model's training features were."""
        from models.cnn_f import CNNF
        image = torch.tensor(load_image(path)).float()[None]  # Pillow's array is read-only
        if self.raw_images:
            return self.encode_images(image)
        with torch.inference_mode():
            features = CNNF.from_matconvnet(self.feature_weights(), subtract_mean=True)(image)
        if self.data.image_mean is not None:
            features = (features - self.data.image_mean) / self.data.image_std
        return self.encode_images(features)

    def feature_weights(self):
        """The CNN-F weight file of image queries on features: --pretrain_model_path where given,
        else the one the sidecar names where this machine has it, else the default path; refused
        when it is not the file (by sha256) that the data file's features were made with."""
        made = (self.sidecar or {}).get('features') or {}
        named = made.get('weights')
        path = self.weights or (named if named and Path(named).is_file() else self.cfg.pretrain_model_path)
        expected = made.get('weights_sha256')
        if expected and Path(path).is_file() and sha256(path) != expected:
            raise UserError(f'{path}: not the CNN-F weights the features of {self.cfg.data_path} were '
                            f'made with (sha256 {expected[:12]}..., {named}); pass that file as '
                            '--pretrain_model_path')
        return path

    def encode_rows(self, rows, modality):
        """Codes of the rows 'a:b' of the data file in one modality."""
        selected = parse_rows(rows, len(self.data))
        if modality == 'text':
            return self.encode_text(self.data.text[selected.start:selected.stop])
        return self.encode_images(self.data.images[selected.start:selected.stop])

    @property
    def raw_images(self):
        return isinstance(self.data.images, RawImages)

    def source(self):
        """What a codes file records of the data file its rows come from."""
        return {'data_file': str(Path(self.cfg.data_path).resolve()), 'num_label': self.cfg.num_label,
                'label_names': (self.sidecar or {}).get('labels')}

    def source_ids(self, rows):
        ids = (self.sidecar or {}).get('ids')
        return None if ids is None else [str(ids[r]) for r in rows]


def load_run(**options):
    """The trained model of these options (as `test` takes them) and its data file, whose rows are
    read as they are encoded."""
    cfg = config.parse(options)
    device = runs.resolve_device(cfg.device)
    _, _, data, method = runs.load_trained(cfg, device, lazy=True)
    return Run(cfg, device, method, data, options.get('pretrain_model_path'))


def encode_query(run, text=None, image=None, rows=None, modality='image'):
    """(codes, modality) of one kind of query: words, an image file, or rows 'a:b' of the run's
    data file in `modality`."""
    if sum(x is not None for x in (text, image, rows)) != 1:
        raise UserError('give one query: --text "words", --image FILE or --rows a:b (with --data_path)')
    if text is not None:
        return run.encode_words(str(text)), 'text'
    if image is not None:
        return run.encode_image_file(image), 'image'
    if modality not in ('image', 'text'):
        raise UserError(f'--modality of a --rows query must be image or text, got {modality!r}')
    return run.encode_rows(rows, modality), modality


def parse_rows(rows, count):
    """'a:b' (either side may be empty) as a range within [0, count)."""
    try:
        start, stop = (int(x) if x else None for x in str(rows).split(':'))
    except ValueError:
        raise UserError(f"--rows must be a:b, e.g. 0:1000, got {rows!r}") from None
    selected = range(count)[slice(start, stop)]
    if not len(selected):
        raise UserError(f'--rows {rows} selects no row of the {count} rows')
    return selected


def write(run, out, modality='both', rows=':', append=False):
    """Encode rows of the run's data file into the codes file `out`, chunk by chunk: CHUNK_ROWS rows
    rounded up to whole batches of the method's code_batch, so that where a code depends on its
    batch (AGAH) the batches start at the first row encoded, as test's start at a split's first."""
    modalities = ('image', 'text') if modality == 'both' else (modality,)
    if any(m not in ('image', 'text') for m in modalities):
        raise UserError(f'--modality must be image, text or both, got {modality!r}')
    selected = parse_rows(rows, len(run.data))
    step = run.method.code_batch or 1
    chunk = -(-CHUNK_ROWS // step) * step

    def chunks():
        for first in bar(range(selected.start, selected.stop, chunk), f'encode ({chunk} rows a step)'):
            part = range(first, min(first + chunk, selected.stop))
            codes = {}
            if 'image' in modalities:
                codes['image'] = hamming.pack(run.encode_images(run.data.images[part.start:part.stop]))
            if 'text' in modalities:
                codes['text'] = hamming.pack(run.encode_text(run.data.text[part.start:part.stop]))
            labels = np.packbits(run.data.labels[part.start:part.stop] > 0.5, axis=1)
            yield list(part), codes, run.source_ids(part), labels

    write_codes(out, run.identity, run.source(), chunks(), modalities, append)


def search(run, codes_path, query_codes, query_modality, k=20, index='exact', same_modality=False,
           nprobe=16):
    """[Hit] per query over the codes file, from the other modality's codes (or the same one), and
    the lines to tell the user. Only the hits' rows, ids and labels are read besides the codes;
    an approximate index (ivf, hnsw) is the one `index` saved beside the codes file."""
    codes = CodesFile(codes_path)
    codes.check_model(run.identity)
    target = query_modality if same_modality else {'image': 'text', 'text': 'image'}[query_modality]
    if target not in codes.modalities:
        raise UserError(f'{codes_path}: holds no {target} codes (encode with --modality {target} or both)')
    if k <= 0:
        raise UserError(f'--topk must be positive, got {k}')
    if index not in indexes.INDEXES:
        raise UserError(f'--index must be one of {", ".join(indexes.INDEXES)}, got {index!r}')
    faiss_index = indexes.load_index(codes_path, target, index) if index != 'exact' else None
    if faiss_index is None and index in ('ivf', 'hnsw'):  # built at every query, it would cost more
        raise UserError(f'{codes_path}: no saved {index} index of its {target} codes (build it once '
                        f'with python main.py index --database {codes_path} --index {index})')
    notes = []
    if k > codes.count:
        notes.append(f'--topk {k} is more than the {codes.count} codes: showing all of them')
        k = codes.count
    if run.method.code_batch:  # AGAH's whole-batch norm
        notes.append(f'{run.cfg.model.upper()} computes a code from its whole batch: these queries\' '
                     'codes depend on the batch they were encoded in, and can differ from the codes '
                     'file\'s')
    dist, ids = indexes.search(codes.read(target), hamming.pack(query_codes), k, index,
                               faiss_index, nprobe=nprobe)
    found = ids >= 0  # an approximate index marks a missing hit -1
    positions = ids[found]
    rows, files = codes.read_at('row', positions), codes.read_at('data_file', positions)
    sources = codes.read_at('source_id', positions) or [None] * len(positions)
    names = codes.label_names
    listed = [Hit(int(rank), int(p), int(row), codes.data_files[f], source, int(d),
                  [names[j] if names else j for j in np.flatnonzero(labels).tolist()])
              for rank, p, row, f, source, d, labels in zip(
                  np.cumsum(found, axis=1)[found], positions, rows, files, sources, dist[found],
                  codes.labels_at(positions))]
    ends = np.cumsum(found.sum(axis=1)).tolist()
    return [listed[a:b] for a, b in zip([0, *ends], ends)], notes
