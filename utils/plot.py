"""PNG figures of a run for papers: MAP per validated epoch with the loss, precision-recall curves and
precision@K curves, from the files that `train` and `test` write into the run folder."""
import json
from pathlib import Path

import numpy as np

from utils.checkpoint import atomic_write
from utils.errors import UserError

DIRECTIONS = (('i2t', 'image → text'), ('t2i', 'text → image'))


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend), or one line saying how to get it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('figures need matplotlib: pip install matplotlib') from None
    return plt


def plot_run(run_dir, model, dataset, bit):
    """Write map.png (from history.json), and pr.png and p_at_k.png (from the arrays `test` saves)
    when they are there; return the paths written."""
    plt = pyplot()
    run_dir = Path(run_dir)
    if not (run_dir / 'history.json').is_file():
        raise UserError(f'{run_dir / "history.json"}: no training history here (train first, or '
                        'check --checkpoint_dir, --flag and --bit)')
    history = json.loads((run_dir / 'history.json').read_text())
    title = f'{model.upper()}, {dataset}, {bit} bits'
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (('mapi2t', 'MAP image → text'), ('mapt2i', 'MAP text → image')):
        ax.plot(history['valid_epoch'], history[key], marker='.', label=label)
    ax.set_xlabel('epoch')
    ax.set_ylabel('MAP')
    loss_ax = ax.twinx()
    loss_ax.plot(history['epoch'], history['loss'], color='grey', alpha=0.6, label='loss')
    loss_ax.set_ylabel('training loss')
    lines = ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc='lower right')
    ax.set_title(f'MAP per validated epoch: {title}')
    written += save_figure(fig, run_dir / 'map.png')

    if all((run_dir / f'pr_{d}.npy').is_file() for d, _ in DIRECTIONS):
        fig, ax = plt.subplots(figsize=(5, 4))
        for direction, label in DIRECTIONS:
            precision, recall = np.load(run_dir / f'pr_{direction}.npy')
            ax.plot(recall, precision, marker='.', label=label)
        ax.set(xlabel='recall', ylabel='precision',
               title=f'Precision-recall (Hamming radius 0..{bit}): {title}')
        ax.legend()
        written += save_figure(fig, run_dir / 'pr.png')

    if all((run_dir / f'p_at_k_{d}.npy').is_file() for d, _ in DIRECTIONS):
        fig, ax = plt.subplots(figsize=(5, 4))
        for direction, label in DIRECTIONS:
            top, precision = np.load(run_dir / f'p_at_k_{direction}.npy')
            ax.plot(top, precision, marker='.', label=label)
        ax.set(xlabel='K (top retrieved)', ylabel='precision@K', title=f'Precision@K: {title}')
        ax.legend()
        written += save_figure(fig, run_dir / 'p_at_k.png')
    return written


def save_figure(fig, path, formats=('png',)):
    """Write `fig` as `path` with each format's suffix (PNG at 120 dpi, PDF as vectors); returns
    the paths written."""
    plt = pyplot()
    fig.tight_layout()
    written = []
    for format in formats:
        target = Path(path).with_suffix(f'.{format}')
        atomic_write(target, lambda f: fig.savefig(f, format=format, dpi=120, bbox_inches='tight'))
        written.append(target)
    plt.close(fig)
    return written
