"""Raw collections to a training file: `python main.py prepare` (MIRFlickr-25K, NUS-WIDE, manifests).

Each source is read into a Collection (image files, bag-of-words text, multi-hot labels, the source
id of every row, and how many items were dropped for which reason); one writer then turns it into
the file `train` reads: MATLAB v7.3 with CNN-F fc7 features (or with `--images raw` the 224 x 224
images), text and labels under the names of the source's --flag (FLAGS): `images`, `YAll`, `LAll`
for mir and manifests (`--flag mir`), `image`, `text`, `label` for nus (`--flag nus`).

Beside the data file goes a sidecar, `<data file without suffix>.json`, with the vocabulary, the
label names, the source id of every row and how the image features were made: text and image
queries at search time read it.
"""
import csv
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import config
from datasets.images import IMAGE_SIZE, BadImage, load_images
from datasets.text import bag_of_words, build_vocabulary, count_documents, tokenize
from utils.checkpoint import atomic_write, sha256
from utils.errors import UserError
from utils.progress import bar

# What a complete MIRFlickr-25K download gives under DCMH's protocol: pairs, words, labels.
MIR_IMAGES, MIR_EXPECTED = 25000, (20015, 1386, 24)
MIR_MIN_COUNT = 20
NUS_CONCEPTS, NUS_EXPECTED = 21, 195834
FLAGS = {'mir': 'mir', 'nus': 'nus', 'manifest': 'mir'}  # the --flag that trains on each source
RESIZE = ('Pillow, converted to RGB (grey, CMYK, palette and alpha too), whole image resized to '
          '224 x 224 with the bicubic filter (antialiased when shrinking, aspect ratio not kept, no '
          'crop) as MATLAB imresize(im, [224 224]), rounded to uint8')
MATLAB_HEADER = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: %s HDF5 schema 1.00 .'


@dataclass
class Collection:
    """What a source yields, row by row in output order, before the images are read."""
    source: str
    paths: list        # image file of each row
    text: np.ndarray   # N x V 0/1 uint8
    labels: np.ndarray # N x K 0/1 uint8
    ids: list          # source id of each row (image number, image-list line, manifest image)
    vocabulary: list
    label_names: list
    total: int         # items in the source before any was dropped
    dropped: dict = field(default_factory=dict)  # reason: count
    notes: list = field(default_factory=list)    # lines printed with the summary


def sidecar_path(data_path):
    """The sidecar of a data file: FLICKR-25K.mat -> FLICKR-25K.json beside it."""
    return Path(data_path).with_suffix('.json')


def load_sidecar(data_path):
    """The sidecar of `data_path` as a dict, or None when the file has none (not made by prepare)."""
    path = sidecar_path(data_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable prepare sidecar ({e})') from None


def keys_of(source):
    """The variable names of the images, text and labels `train --flag FLAGS[source]` reads."""
    return dict(zip(('images', 'text', 'labels'), config.KEYS[FLAGS[source]]))


def _folder(path, what):
    if not path.is_dir():
        raise UserError(f'{path}: no such folder ({what})')
    return path


def _file(path, what):
    if not path.is_file():
        raise UserError(f'{path}: no such file ({what})')
    return path


def _keep(n, reasons):
    """Rows to keep, and the count of each reason for the others (first reason that applies)."""
    keep = np.ones(n, dtype=bool)
    dropped = {}
    for reason, bad in reasons:
        hit = keep & bad
        if hit.any():
            dropped[reason] = int(hit.sum())
        keep &= ~bad
    return keep, dropped


# ---- MIRFlickr-25K ---------------------------------------------------------------------------

def read_mir(root, min_count=MIR_MIN_COUNT):
    """The MIRFlickr-25K download under `root` (mirflickr.zip and mirflickr25k_annotations_v080.zip
    unpacked) by DCMH's protocol: tags kept when at least `min_count` images carry them, the 24
    concept labels, pairs without a kept tag or without a label removed; rows by image number."""
    root = _folder(Path(root), '--root: the folder holding mirflickr/ and mirflickr25k_annotations_v080/')
    tags_dir = _folder(root / 'mirflickr' / 'meta' / 'tags', 'the tags of mirflickr.zip')
    annotations = _folder(root / 'mirflickr25k_annotations_v080', 'mirflickr25k_annotations_v080.zip')
    numbers = sorted(int(m.group(1)) for p in tags_dir.iterdir()
                     if (m := re.fullmatch(r'tags(\d+)\.txt', p.name)))
    if not numbers:
        raise UserError(f'{tags_dir}: no tags<N>.txt files')
    row = {n: i for i, n in enumerate(numbers)}
    tokens = [tokenize((tags_dir / f'tags{n}.txt').read_text(encoding='utf-8', errors='replace'))
              for n in numbers]
    # The 24 concepts: one file per concept, not the "_r1" (relevant) files nor the README.
    concept_files = sorted(p for p in annotations.glob('*.txt')
                           if not p.stem.endswith('_r1') and p.stem.lower() != 'readme')
    if not concept_files:
        raise UserError(f'{annotations}: no concept files (<concept>.txt)')
    labels = np.zeros((len(numbers), len(concept_files)), dtype=np.uint8)
    for j, path in enumerate(concept_files):
        for line_no, line in enumerate(path.read_text().split(), 1):
            if not line.isdigit():
                raise UserError(f'{path}:{line_no}: expected an image number, got {line!r}')
            if int(line) not in row:
                raise UserError(f'{path}:{line_no}: image {line} has no {tags_dir}/tags{line}.txt')
            labels[row[int(line)], j] = 1
    vocabulary = build_vocabulary(count_documents(tokens), min_count=min_count)
    text = bag_of_words(tokens, vocabulary)
    ids = [f'im{n}' for n in numbers]
    keep, dropped = _keep(len(ids), [('no label', labels.sum(1) == 0),
                                              (f'no tag in the vocabulary (tags of >= {min_count} '
                                               'images)', text.sum(1) == 0)])
    collection = Collection('mir', [root / 'mirflickr' / f'{i}.jpg' for i in ids], text, labels,
                            ids, vocabulary, [p.stem for p in concept_files], len(numbers), dropped)
    return _subset(collection, keep)


def _subset(c, keep):
    c.paths = [p for p, k in zip(c.paths, keep) if k]
    c.ids = [i for i, k in zip(c.ids, keep) if k]
    c.text, c.labels = c.text[keep], c.labels[keep]
    if not len(c.ids):
        raise UserError(f'{c.source}: no item is left after dropping {_reasons(c.dropped)}')
    return c


def _mir_check(c, min_count, kept):
    """One line when a complete download does not give DCMH's counts."""
    got = (kept, len(c.vocabulary), len(c.label_names))
    if c.total == MIR_IMAGES and min_count == MIR_MIN_COUNT and got != MIR_EXPECTED:
        return (f'note: a complete download gives {MIR_EXPECTED[0]} pairs, {MIR_EXPECTED[1]} words, '
                f'{MIR_EXPECTED[2]} labels under this protocol; this one gave {got[0]}, {got[1]}, '
                f'{got[2]}')
    return None


# ---- NUS-WIDE --------------------------------------------------------------------------------

def _binary_rows(path, width, count):
    """A text file of `count` rows of `width` 0/1 values (any separators) as a uint8 matrix,
    read in blocks of lines."""
    out = np.empty((count, width), dtype=np.uint8)
    done = 0
    with open(path, 'rb') as f:
        while True:
            lines = f.readlines(1 << 24)
            if not lines:
                break
            raw = np.frombuffer(b''.join(lines), dtype=np.uint8)
            digits = raw[(raw == ord('0')) | (raw == ord('1'))] - ord('0')
            if len(digits) != len(lines) * width or done + len(lines) > count:
                raise UserError(f'{path}: expected {count} lines of {width} 0/1 values')
            out[done:done + len(lines)] = digits.reshape(len(lines), width)
            done += len(lines)
    if done != count:
        raise UserError(f'{path}: {done} lines, but the image list has {count}')
    return out


def read_nus(root):
    """NUS-WIDE under `root` as DCMH/AGAH/DADH use it (NUS-WIDE-TC21): the 21 most frequent of the
    81 concepts, the 1000-tag bag of words, the images with at least one of the 21; rows in
    image-list order."""
    root = _folder(Path(root), '--root: the NUS-WIDE folder')
    image_list = _file(root / 'ImageList' / 'Imagelist.txt', 'ImageList.zip')
    concepts_file = _file(root / 'Concepts81.txt', 'ConceptsList.zip')
    tags_file = _file(root / 'NUS_WID_Tags' / 'AllTags1k.txt', 'NUS_WID_Tags.zip')
    tag_list = _file(root / 'NUS_WID_Tags' / 'TagList1k.txt', 'NUS_WID_Tags.zip')
    labels_dir = _folder(root / 'Groundtruth' / 'AllLabels', 'Groundtruth.zip')
    images = _folder(root / 'Flickr', 'the images: Flickr/<concept folder>/<file>.jpg')
    names = [line.strip().replace('\\', '/') for line in image_list.read_text().splitlines()
             if line.strip()]
    concepts = [line.strip() for line in concepts_file.read_text().splitlines() if line.strip()]
    vocabulary = [line.strip() for line in tag_list.read_text().splitlines() if line.strip()]
    all_labels = np.concatenate(
        [_binary_rows(_file(labels_dir / f'Labels_{c}.txt', f'the ground truth of {c}'), 1, len(names))
         for c in concepts], axis=1)
    counts = all_labels.sum(0, dtype=np.int64)
    # The most frequent concepts (ties: Concepts81 order), as columns in Concepts81 order.
    chosen = sorted(sorted(range(len(concepts)), key=lambda j: -counts[j])[:NUS_CONCEPTS])
    labels = np.ascontiguousarray(all_labels[:, chosen])
    text = _binary_rows(tags_file, len(vocabulary), len(names))
    ids = [str(i + 1) for i in range(len(names))]  # line number in Imagelist.txt
    keep, dropped = _keep(len(ids), [(f'none of the {len(chosen)} concepts',
                                               labels.sum(1) == 0)])
    no_tag = int((text[keep].sum(1) == 0).sum())
    collection = Collection('nus', [images / n for n in names], text, labels,
                            [f'{i}:{n}' for i, n in zip(ids, names)], vocabulary,
                            [concepts[j] for j in chosen], len(names), dropped,
                            [f'{no_tag} of the kept images carry none of the {len(vocabulary)} '
                             'tags (kept: the concept rule alone decides)'])
    return _subset(collection, keep)


# ---- manifests -------------------------------------------------------------------------------

def _manifest_items(path):
    """(line number, image, text, label list) of every item of a CSV or JSON-lines manifest. A
    UTF-8 byte-order mark (as Excel saves a CSV) is skipped; a JSON null text or label list is an
    item without text or labels."""
    required = ('image', 'text', 'labels')
    if path.suffix.lower() == '.csv':
        with open(path, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            missing = [k for k in required if k not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f'{path}: no column {", ".join(missing)} (the header must be '
                                'image,text,labels)')
            return [(reader.line_num, row['image'] or '', row['text'] or '',
                     [s.strip() for s in (row['labels'] or '').split(';') if s.strip()])
                    for row in reader]
    if path.suffix.lower() in ('.jsonl', '.json'):
        items = []
        for line_no, line in enumerate(path.read_text(encoding='utf-8-sig').splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise UserError(f'{path}:{line_no}: not JSON ({e})') from None
            missing = [k for k in required if not isinstance(item, dict) or k not in item]
            if missing:
                raise UserError(f'{path}:{line_no}: no key {", ".join(missing)}')
            if not isinstance(item['image'], str):
                raise UserError(f'{path}:{line_no}: image must be a file name, got {item["image"]!r}')
            labels = item['labels'] if item['labels'] is not None else []
            if not isinstance(labels, list):
                raise UserError(f'{path}:{line_no}: labels must be a list of names')
            text = item['text'] if item['text'] is not None else ''
            items.append((line_no, item['image'], str(text),
                          [str(s).strip() for s in labels if s is not None and str(s).strip()]))
        return items
    raise UserError(f'{path}: a manifest is a .csv or .jsonl file')


def read_manifest(manifest, vocab_size=None, min_count=1, labels=None):
    """Any collection, one item per row. Items without text or without a label are dropped and
    counted, as are those left without a word of the vocabulary."""
    path = _file(Path(manifest), '--manifest')
    items = _manifest_items(path)
    if not items:
        raise UserError(f'{path}: no items')
    tokens = [tokenize(text) for _, _, text, _ in items]
    found = sorted({name for *_, names in items for name in names})
    label_names = found if labels is None else labels
    absent = [name for name in label_names if name not in found]
    if absent:
        raise UserError(f'--labels: no item carries {", ".join(map(repr, absent))} '
                        f'(found {", ".join(found) or "none"})')
    column = {name: j for j, name in enumerate(label_names)}
    label_matrix = np.zeros((len(items), len(label_names)), dtype=np.uint8)
    for i, (*_, names) in enumerate(items):
        label_matrix[i, [column[n] for n in names if n in column]] = 1
    vocabulary = build_vocabulary(count_documents(tokens), vocab_size, min_count)
    text = bag_of_words(tokens, vocabulary)
    no_text = np.array([not t for t in tokens])
    keep, dropped = _keep(len(items), [
        ('no text', no_text), ('no label' if labels is None else 'none of --labels',
                               label_matrix.sum(1) == 0),
        ('no word in the vocabulary', text.sum(1) == 0)])
    collection = Collection('manifest', [path.parent / image for _, image, _, _ in items], text,
                            label_matrix, [image for _, image, _, _ in items], vocabulary,
                            list(label_names), len(items), dropped)
    return _subset(collection, keep)


# ---- the writer ------------------------------------------------------------------------------

def _reasons(dropped):
    return ', '.join(f'{n} ({reason})' for reason, n in dropped.items()) or 'none'


def check_out(out, overwrite, manifest=None):
    """Refuse an existing --out or sidecar (without --overwrite; a sidecar that is the manifest
    itself always) or a folder that cannot be written, before any work is done; the folder is
    created if need be, as train creates its --checkpoint_dir."""
    out = Path(out)
    if out.suffix != '.mat':
        raise UserError(f'--out {out}: the training file must end in .mat')
    sidecar = sidecar_path(out)
    if manifest is not None and sidecar.resolve() == Path(manifest).resolve():
        raise UserError(f'--out {out}: its sidecar {sidecar} would replace the manifest (name the '
                        'training file otherwise)')
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise UserError(f'{path}: exists (pass --overwrite True to replace it)')
    folder = out.parent
    try:  # a real write: permissions alone miss read-only file systems (and root ignores them)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f'{folder}: cannot write here (--out): {e.strerror or e}') from None
    return out


def _batches(collection, batch_size, workers, skip_bad_images, skipped, kept):
    """Decoded images in batches, in row order, the next batch decoding while the consumer works on
    this one; bad ones skipped (and recorded in `skipped`) or raised. `kept` gets the rows."""
    batch = []
    for row, (path, image) in enumerate(load_images(collection.paths, workers, 2 * batch_size,
                                                    'yield' if skip_bad_images else 'raise')):
        if isinstance(image, BadImage):
            skipped.append({'file': str(path), 'id': collection.ids[row], 'reason': str(image)})
            continue
        kept.append(row)
        batch.append(image)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def features_made(cnn, weights):
    """The sidecar's account of how the `images` variable was made."""
    if cnn is None:
        return {'kind': 'raw', 'weights': None, 'weights_sha256': None, 'resize': RESIZE,
                'average_image': 'not subtracted (train subtracts it)'}
    return {'kind': 'cnn_f_fc7', 'weights': os.path.abspath(weights),
            'weights_sha256': sha256(weights), 'resize': RESIZE, 'average_image': "subtracted (the weight file's averageImage)"}


def write(collection, out, cnn=None, features=None, device='cpu', batch_size=64, workers=2,
          skip_bad_images=False):
    """Write `collection` to `out` (MATLAB v7.3): CNN-F fc7 features of its images, or the raw
    images when `cnn` is None, and its sidecar holding `features` (features_made). The images are
    decoded in `workers` threads while CNN-F runs on the batch before. Returns (sidecar, seconds)."""
    import h5py
    import torch
    images = 'raw' if cnn is None else 'features'
    keys = keys_of(collection.source)
    n = len(collection.ids)
    skipped, kept = [], []
    start = time.perf_counter()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f'.{out.name}.', suffix='.tmp')
        os.close(fd)
        with h5py.File(tmp, 'w', userblock_size=512) as f:
            if images == 'features':
                dim = cnn.out_dim
                dataset = f.create_dataset(keys['images'], (dim, n), dtype='float32',
                                           maxshape=(dim, n), chunks=(dim, min(n, batch_size)))
                matlab_class = 'single'
            else:
                shape = (3, IMAGE_SIZE, IMAGE_SIZE)
                dataset = f.create_dataset(keys['images'], (n, *shape), dtype='uint8',
                                           maxshape=(n, *shape), chunks=(1, *shape))
                matlab_class = 'uint8'
            dataset.attrs['MATLAB_class'] = np.bytes_(matlab_class)
            done = 0
            progress = bar(None, 'prepare', total=n)
            for batch in _batches(collection, batch_size, workers, skip_bad_images, skipped, kept):
                if images == 'features':
                    with torch.inference_mode():
                        x = torch.from_numpy(batch).to(device).float()
                        dataset[:, done:done + len(batch)] = cnn(x).cpu().numpy().T
                else:
                    dataset[done:done + len(batch)] = batch
                done += len(batch)
                progress.update(len(kept) + len(skipped) - progress.n)
                progress.set_postfix_str(f'{done / (time.perf_counter() - start):.1f} images/s')
            progress.close()
            if not kept:
                raise UserError(f'{collection.source}: every image was unreadable; nothing to write')
            if done < n:  # skipped images: shrink to the rows written
                dataset.resize(done, axis=1 if images == 'features' else 0)
            for key, value in ((keys['text'], collection.text[kept]),
                               (keys['labels'], collection.labels[kept])):
                f.create_dataset(key, data=value.T).attrs['MATLAB_class'] = np.bytes_('uint8')
        with open(tmp, 'r+b') as f:
            stamp = time.strftime('%a %b %d %H:%M:%S %Y').encode()
            f.write((MATLAB_HEADER % stamp).ljust(116, b' ') + b'\x00' * 8 + b'\x00\x02' + b'IM')
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        dropped = dict(collection.dropped)
        if skipped:
            dropped['unreadable image'] = len(skipped)
        sidecar = {
            'source': collection.source,
            'vocabulary': collection.vocabulary,
            'labels': collection.label_names,
            'ids': [collection.ids[i] for i in kept],
            'features': features,
            'keys': keys,
            'skipped': skipped,
            'counts': {'items': collection.total, 'kept': len(kept), 'dropped': dropped,
                       'text_dim': len(collection.vocabulary), 'num_label': len(collection.label_names)},
        }
        atomic_write(sidecar_path(out), lambda f: f.write(json.dumps(sidecar, indent=1).encode()))
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f'{out}: could not write ({e.strerror or e})') from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return sidecar, time.perf_counter() - start


def prepare(source, out, root=None, manifest=None, images='features',
            pretrain_model_path='./data/imagenet-vgg-f.mat', device='cpu', batch_size=64, workers=2,
            vocab_size=None, min_count=None, labels=None, skip_bad_images=False, overwrite=False):
    """The `prepare` command: read the source, write the training file and its sidecar, print the
    counts."""
    from models.cnn_f import CNNF
    if source not in ('mir', 'nus', 'manifest'):
        raise UserError(f"--source must be mir, nus or manifest, got {source!r}")
    if images not in ('features', 'raw'):
        raise UserError(f"--images must be features or raw, got {images!r}")
    for name, value in (('batch_size', batch_size), ('workers', workers), ('vocab_size', vocab_size),
                        ('min_count', min_count)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f'--{name} must be a positive integer, got {value!r}')
    if source == 'nus' and (vocab_size or min_count):
        raise UserError('--vocab_size and --min_count do not apply to --source nus (its 1000 tags '
                        'are fixed)')
    if source != 'manifest' and labels is not None:
        raise UserError('--labels applies to --source manifest only')
    if source == 'manifest' and manifest is None:
        raise UserError('--source manifest needs --manifest FILE.csv|FILE.jsonl')
    if source != 'manifest' and root is None:
        raise UserError(f'--source {source} needs --root (the folder of the unpacked download)')
    if out is None:
        raise UserError('prepare needs --out FILE.mat (the training file to write)')
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(',') if s.strip()]
    elif labels is not None:
        labels = [str(s) for s in labels]
    out = check_out(out, overwrite, manifest if source == 'manifest' else None)
    cnn = None
    if images == 'features':
        cnn = CNNF.from_matconvnet(pretrain_model_path, subtract_mean=True).eval().to(device)

    if source == 'mir':
        min_count = MIR_MIN_COUNT if min_count is None else min_count
        collection = read_mir(root, min_count)
    elif source == 'nus':
        collection = read_nus(root)
    else:
        collection = read_manifest(manifest, vocab_size, min_count or 1, labels)
    print(f'{collection.source}: {collection.total} items, {len(collection.ids)} to keep; '
          f'{len(collection.vocabulary)} words, {len(collection.label_names)} labels; '
          f'dropped: {_reasons(collection.dropped)}', flush=True)
    sidecar, seconds = write(collection, out, cnn, features_made(cnn, pretrain_model_path), device,
                             batch_size, workers, skip_bad_images)
    counts = sidecar['counts']
    print(f'kept {counts["kept"]} of {counts["items"]}; dropped: {_reasons(counts["dropped"])}')
    for item in sidecar['skipped']:
        print(f'skipped {item["reason"]}', file=sys.stderr)
    notes = list(collection.notes)
    if source == 'mir':
        notes.append(_mir_check(collection, min_count, counts['kept']))
    elif collection.total == 269648 and counts['kept'] != NUS_EXPECTED:
        notes.append(f'note: the full NUS-WIDE gives {NUS_EXPECTED} pairs under this protocol; '
                     f'this one gave {counts["kept"]}')
    for note in filter(None, notes):
        print(note)
    what = f'{cnn.out_dim}-d CNN-F fc7 features' if cnn else 'raw 224 x 224 images'
    print(f'wrote {out} ({counts["kept"]} rows: {what}, text {counts["text_dim"]}, labels '
          f'{counts["num_label"]}) in {seconds:.0f} s, {counts["kept"] / max(seconds, 1e-9):.1f} '
          f'images/s; sidecar {sidecar_path(out)}; train on it with --flag {FLAGS[source]}')
    return sidecar
