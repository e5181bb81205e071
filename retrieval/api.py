"""Retrieval from Python: load a trained run, encode arrays, words or image files, write and open
codes files, search. `python main.py encode|search|index` are thin layers over this.

    run = load_run(flag='mir', bit=64, device='cpu')
    write(run, 'codes.h5')
    hits, notes = search(run, 'codes.h5', run.encode_words('dog on a beach'), 'text', k=20)

AGAH divides each batch by one norm over the whole batch (as its reference code does), so an
item's code depends on the batch it is encoded in: a query encoded alone can differ from the same
item's code encoded within a batch by `write`. DADH's codes are per item.
"""
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


class Run:
    """A trained model with its data file: encodes to ±1 code tensors on the CPU."""

    def __init__(self, cfg, device, method, data):
        self.cfg, self.device, self.method, self.data = cfg, device, method, data
        self.sidecar = load_sidecar(cfg.data_path)
        self.model_file = runs.model_file(cfg)
        self.identity = {'model_file': str(self.model_file), 'model_sha256': sha256(self.model_file),
                         'method': cfg.model, 'bit': cfg.bit, 'flag': cfg.flag,
                         'data_path': str(cfg.data_path), 'image_mean': data.image_mean,
                         'image_std': data.image_std}

    def encode_images(self, images):
        return self.method.encode_images(torch.as_tensor(images, dtype=torch.float32).to(self.device)).cpu()

    def encode_text(self, text):
        return self.method.encode_text(torch.as_tensor(text, dtype=torch.float32).to(self.device)).cpu()

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
        CNN-F fc7 features of prepare's pipeline, standardised as the data file was."""
        from models.cnn_f import CNNF
        image = torch.tensor(load_image(path)).float()[None]  # Pillow's array is read-only
        if self.raw_images:
            return self.encode_images(image)
        weights = ((self.sidecar or {}).get('features') or {}).get('weights') or self.cfg.pretrain_model_path
        with torch.inference_mode():
            features = CNNF.from_matconvnet(weights, subtract_mean=True)(image)
        if self.data.image_mean is not None:
            features = (features - self.data.image_mean) / self.data.image_std
        return self.encode_images(features)

    def encode_rows(self, rows, modality):
        """Codes of the rows 'a:b' of the data file in one modality."""
        selected = parse_rows(rows, len(self.data))
        if modality == 'text':
            return self.encode_text(self.data.text[selected.start:selected.stop])
        images = self.data.images[selected.start:selected.stop]
        if self.raw_images:  # read from disk a chunk at a time
            return runs.encode(self.method, 'image', images).cpu()
        return self.encode_images(images)

    @property
    def raw_images(self):
        return isinstance(self.data.images, RawImages)

    def source_ids(self, rows):
        ids = (self.sidecar or {}).get('ids')
        return None if ids is None else [str(ids[r]) for r in rows]

    def label_names(self, row):
        names = (self.sidecar or {}).get('labels')
        present = self.data.labels[row].nonzero()[0].tolist()
        return [names[i] for i in present] if names else present


def load_run(**options):
    """The trained model of these options (as `test` takes them) and its data file, whose rows are
    read as they are encoded."""
    cfg = config.parse(options)
    device = runs.resolve_device(cfg.device)
    _, _, data, method = runs.load_trained(cfg, device, lazy=True)
    return Run(cfg, device, method, data)


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
    """Encode rows of the run's data file into the codes file `out`, chunk by chunk."""
    modalities = ('image', 'text') if modality == 'both' else (modality,)
    if any(m not in ('image', 'text') for m in modalities):
        raise UserError(f'--modality must be image, text or both, got {modality!r}')
    selected = parse_rows(rows, len(run.data))

    def chunks():
        starts = range(selected.start, selected.stop, CHUNK_ROWS)
        for first in bar(starts, f'encode ({CHUNK_ROWS} rows a step)'):
            part = range(first, min(first + CHUNK_ROWS, selected.stop))
            codes = {}
            if 'image' in modalities:
                images = run.data.images[part.start:part.stop]
                codes['image'] = hamming.pack(runs.encode(
                    run.method, 'image', images if run.raw_images else torch.from_numpy(images).to(run.device)))
            if 'text' in modalities:
                codes['text'] = hamming.pack(run.encode_text(run.data.text[part.start:part.stop]))
            yield list(part), codes, run.source_ids(part)

    write_codes(out, run.identity, chunks(), modalities, append)


def search(run, codes_path, query_codes, query_modality, k=20, index='exact', same_modality=False,
           nprobe=16):
    """[(rank, position, row, source id or None, distance)] per query over the codes file, from
    the other modality's codes (or the same one). Returns (results, notes: lines for the user)."""
    codes = CodesFile(codes_path)
    codes.check_model(run.identity)
    target = query_modality if same_modality else {'image': 'text', 'text': 'image'}[query_modality]
    if target not in codes.modalities:
        raise UserError(f'{codes_path}: holds no {target} codes (encode with --modality {target} or both)')
    if k <= 0:
        raise UserError(f'--topk must be positive, got {k}')
    notes = []
    if k > codes.count:
        notes.append(f'--topk {k} is more than the {codes.count} codes: showing all of them')
        k = codes.count
    if run.cfg.model == 'agah':
        notes.append('AGAH normalises over the whole batch: these queries\' codes depend on the '
                     'batch they were encoded in, and can differ from the codes file\'s')
    faiss_index = indexes.load_index(codes_path, target, index) if index != 'exact' else None
    dist, ids = indexes.search(codes.read(target), hamming.pack(query_codes), k, index,
                               faiss_index, nprobe=nprobe)
    rows, source = codes.read('row'), codes.read('source_id')
    return [[(rank + 1, int(i), int(rows[i]), None if source is None else str(source[i]), int(d))
             for rank, (d, i) in enumerate(zip(dq, iq)) if i >= 0] for dq, iq in zip(dist, ids)], notes
