"""The built-in synthetic data set of `--flag demo`: MIRFlickr's layout and widths, a few thousand
samples, made deterministically on first use. It only shows the pipeline working; its MAP says
nothing about real data."""
import os

import numpy as np
import scipy.io

from utils.checkpoint import atomic_write

N, IMAGE_DIM, TEXT_DIM, NUM_LABEL, LATENT = 3000, 4096, 1386, 24, 64


def make_demo(n=N, seed=0):
    """Images (N x 4096, non-negative like CNN fc7), 0/1 bag-of-words text and multi-hot labels, all
    driven by the labels through hidden topics plus noise, so both modalities carry the labels."""
    rng = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, NUM_LABEL + 1) ** 0.7
    labels = np.zeros((n, NUM_LABEL), np.uint8)
    for row, count in zip(labels, rng.integers(1, 4, n)):
        row[rng.choice(NUM_LABEL, count, replace=False, p=popularity / popularity.sum())] = 1
    topics = rng.standard_normal((NUM_LABEL, LATENT))
    latent = labels @ topics + 1.5 * rng.standard_normal((n, LATENT))
    images = np.maximum(latent @ rng.standard_normal((LATENT, IMAGE_DIM)) / 8 - 0.5, 0)
    words = (rng.random((NUM_LABEL, TEXT_DIM)) < 0.02) * 4.0
    logits = labels @ words - 4.5 + 0.5 * rng.standard_normal((n, TEXT_DIM))
    text = (rng.random((n, TEXT_DIM)) < 1 / (1 + np.exp(-logits))).astype(np.uint8)
    return images.astype(np.float32), text, labels


def ensure_demo(path, n=N):
    """Write the demo file (n samples) to `path` unless it is already there."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    images, text, labels = make_demo(n)
    atomic_write(path, lambda f: scipy.io.savemat(f, {'images': images, 'YAll': text, 'LAll': labels}))
    print(f'wrote a synthetic data set to {path} ({n} samples)')
