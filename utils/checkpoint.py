"""Every file a run writes goes through here: written whole to a temporary file in the same folder,
flushed, fsynced and renamed over the old one, so a crash leaves either the old file or the new.
Also the sha256 that ties a file (weights, a model, codes) to what was made from it."""
import hashlib
import os
import pickle
import tempfile

import torch

from utils.errors import UserError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256(path):
    """The hex sha256 of a file, read 1 MB at a time."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(2 ** 20), b''):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, write):
    """Replace `path` atomically by what `write(file)` writes: to a temporary file in the same
    folder, flushed, fsynced, renamed. A failed write (disk full) keeps the old file."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or '.'
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.',
                                   suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise UserError(f'{path}: could not write ({e.strerror or e}); the previous file, if any, '
                        'is kept') from None


def atomic_save(obj, path):
    """torch.save, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_pickle(obj, path):
    atomic_write(path, lambda f: pickle.dump(obj, f))


def load_file(path, device, what='checkpoint'):
    """torch.load onto `device`, with one clear line when the file is missing or not a torch file."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: no {what} here (train first, or check --checkpoint_dir, --flag '
                        'and --bit)')
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f'{path}: not a readable torch {what} ({type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else ""})') from None


def load_module(module, path, device, what='model', translate=None):
    """Load a state_dict file into `module`, naming the first mismatch if it was made for another
    shape; `translate(state, module, path)` first maps other names to the module's."""
    state = load_file(path, device, what)
    if not isinstance(state, dict):
        raise UserError(f'{path}: holds a {type(state).__name__}, not the state_dict of a {what}')
    if translate:
        state = translate(state, module, path)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f'{path}: this {what} does not fit the configuration (another --bit, '
                        f'--hidden_dim or data width?): {detail}') from None
