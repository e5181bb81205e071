"""Raw collections to a training file: `python main.py prepare` (MIRFlickr-25K, NUS-WIDE, manifests).

Beside the data file goes a sidecar, `<data file without suffix>.json`, with the vocabulary, the
label names, the source id of every row and how the image features were made: text and image
queries at search time read it.
"""
import json
from pathlib import Path

from utils.errors import UserError


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
