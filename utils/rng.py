"""Seeding, and the random states a resumed run must continue from."""
import random

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator


def rng_state(shuffle):
    """Python, numpy, torch (CPU and every CUDA device) and the shuffling generator's states, in
    types that torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'shuffle': shuffle.get_state()}


def set_rng_state(state, shuffle):
    random.setstate(state['python'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    shuffle.set_state(state['shuffle'])
