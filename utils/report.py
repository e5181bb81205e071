"""`python main.py report`: the table of a paper over every tested run under a folder, beside the
published numbers (SPEC §11), as Markdown and CSV, with map_vs_bits.png and one precision-recall
figure per data set and bit length.

A run is a folder with the metrics.json that `test` writes (its MAPs and the options the run was
trained with). Runs are averaged when they differ only in the seed and in options that do not
change what is computed (config.BOOKKEEPING); any other difference gives another row, named by the
options that differ.
"""
import csv
import io
import json
import statistics
from collections import defaultdict

import numpy as np

import config
from utils.checkpoint import atomic_write
from utils.errors import UserError
from utils.plot import pyplot, save_figure

DIRECTIONS = (('i2t', 'I→T'), ('t2i', 'T→I'))
DATASET_NAMES = {'flickr25k': 'MIRFlickr-25K', 'nus-wide': 'NUS-WIDE'}
# SPEC §11: (data set, method) -> direction -> bit -> MAP. Both papers chose on the test queries.
PUBLISHED = {
    ('flickr25k', 'dadh'): {'i2t': {16: 0.8020, 32: 0.8072, 64: 0.8179},
                            't2i': {16: 0.7920, 32: 0.7959, 64: 0.8064}},
    ('flickr25k', 'agah'): {'i2t': {16: 0.7923, 32: 0.7945, 64: 0.8069},
                            't2i': {16: 0.7887, 32: 0.7904, 64: 0.8049}},
    ('nus-wide', 'dadh'): {'i2t': {16: 0.6492, 32: 0.6662, 64: 0.6664},
                           't2i': {16: 0.6501, 32: 0.6679, 64: 0.6808}},
    ('nus-wide', 'agah'): {'i2t': {16: 0.6455, 32: 0.6600, 64: 0.6512},
                           't2i': {16: 0.6313, 32: 0.6422, 64: 0.6336}},
    # SPEC-SSAH §6: the SSAH paper's Table 2 (CNN-F); SSAH keeps its last epoch.
    ('flickr25k', 'ssah'): {'i2t': {16: 0.782, 32: 0.790, 64: 0.800},
                            't2i': {16: 0.791, 32: 0.795, 64: 0.803}},
    ('nus-wide', 'ssah'): {'i2t': {16: 0.642, 32: 0.636, 64: 0.639},
                           't2i': {16: 0.669, 32: 0.662, 64: 0.666}},
}
# Options shown in the "model chosen on" column rather than in the setting's name.
SELECTION_OPTIONS = {'select_on', 'valid_size', 'valid'}


def find_runs(root):
    runs = []
    for path in sorted(root.rglob('metrics.json')):
        try:
            run = json.loads(path.read_text())
            run['map'] = {d: run[d]['map'] for d, _ in DIRECTIONS}
        except (ValueError, KeyError, TypeError):
            raise UserError(f'{path}: not a metrics.json written by `test`') from None
        runs.append({**run, 'dir': path.parent, 'options': run.get('options', {})})
    if not runs:
        raise UserError(f'{root}: no tested run here (`test` writes the metrics.json that report '
                        'reads; check --checkpoint_dir)')
    return runs


def setting(run):
    """The options that tell this run's numbers apart from another's of the same data set, method
    and bit length: all but the seed and the bookkeeping."""
    options = {k: v for k, v in run['options'].items()
               if k not in config.BOOKKEEPING | {'seed', 'bit', 'dataset', 'flag', 'model'}}
    if options.get('select_on', 'query') == 'query':
        options.pop('valid_size', None)  # read only by --select_on valid
    return options


def selection(run):
    if run.get('select_on') == 'valid':
        return f"held-out rows ({run['options'].get('valid_size')})"
    return {'last': 'last epoch'}.get(run.get('select_on'), 'test queries')


def group(runs):
    """{(dataset, model, setting as JSON): {bit: [runs]}}, and each setting's name: the options in
    which it differs from the other settings of its data set and method."""
    groups = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[run['dataset'], run['model'], json.dumps(setting(run), sort_keys=True)][run['bit']].append(run)
    names = {}
    for dataset, model in {key[:2] for key in groups}:
        settings = {key[2]: json.loads(key[2]) for key in groups if key[:2] == (dataset, model)}
        differ = sorted({k for s in settings.values() for k in s if k not in SELECTION_OPTIONS
                         and len({json.dumps(t.get(k)) for t in settings.values()}) > 1})
        for key, options in settings.items():
            names[dataset, model, key] = ', '.join(f'{k}={options.get(k)}' for k in differ)
    return dict(sorted(groups.items())), names


def summary(runs, direction):
    """(mean, sample standard deviation or None for one run, number of runs) of a MAP."""
    values = [run['map'][direction] for run in runs]
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None,
            len(values))


def cell(runs, direction):
    if not runs:
        return '–'
    mean, std, n = summary(runs, direction)
    return f'{mean:.4f} ± {std:.4f} ({n})' if std is not None else f'{mean:.4f} (1)'


def tables(groups, names):
    """The Markdown table (published rows after each data set and method) and the CSV text."""
    bits = sorted({bit for by_bit in groups.values() for bit in by_bit})
    header = (['data set', 'method', 'setting', 'model chosen on']
              + [f'{label} {bit}' for _, label in DIRECTIONS for bit in bits])
    rows, records = [], []
    for (dataset, model, key), by_bit in groups.items():
        first = next(iter(by_bit.values()))[0]
        name = DATASET_NAMES.get(dataset, dataset)
        rows.append([name, model.upper(), names[dataset, model, key], selection(first)]
                    + [cell(by_bit.get(bit, []), d) for d, _ in DIRECTIONS for bit in bits])
        published = PUBLISHED.get((dataset, model), {})
        for bit, runs in sorted(by_bit.items()):
            for direction, _ in DIRECTIONS:
                mean, std, n = summary(runs, direction)
                records.append([dataset, model, names[dataset, model, key], selection(first), bit,
                                direction, f'{mean:.6f}', '' if std is None else f'{std:.6f}', n,
                                published.get(direction, {}).get(bit, ''),
                                ' '.join(str(r['options'].get('seed', '')) for r in runs)])
    for dataset, model in sorted({key[:2] for key in groups} & set(PUBLISHED)):
        published = PUBLISHED[dataset, model]
        at = lambda d, bit: f'{published[d][bit]:.4f}' if bit in published[d] else '–'
        rows.append([DATASET_NAMES[dataset], f'{model.upper()} (published)', '', 'test queries']
                     + [at(d, bit) for d, _ in DIRECTIONS for bit in bits])
    markdown = '\n'.join(['| ' + ' | '.join(map(str, row)) + ' |'
                          for row in [header, ['---'] * len(header)] + rows])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['dataset', 'method', 'setting', 'model_chosen_on', 'bit', 'direction', 'mean',
                     'std', 'n', 'published', 'seeds'])
    writer.writerows(records)
    return markdown, text.getvalue()


def label(dataset, model, key, names):
    name = names[dataset, model, key]
    return model.upper() + (f' ({name})' if name else '')


def map_vs_bits(groups, names, path):
    """MAP against code length, one panel per data set and direction: mean and standard deviation
    over seeds, the published numbers dashed."""
    plt = pyplot()
    datasets = sorted({key[0] for key in groups})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.6 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for ax, (direction, arrow) in zip(row, DIRECTIONS):
            for (d, model, key), by_bit in groups.items():
                if d != dataset:
                    continue
                bits = sorted(by_bit)
                stats = [summary(by_bit[bit], direction) for bit in bits]
                ax.errorbar(bits, [s[0] for s in stats], yerr=[s[1] or 0 for s in stats],
                            marker='o', capsize=3, label=label(d, model, key, names))
            for (d, model), published in PUBLISHED.items():
                if d == dataset and any(key[:2] == (d, model) for key in groups):
                    bits = sorted(published[direction])
                    ax.plot(bits, [published[direction][b] for b in bits], '--x',
                            label=f'{model.upper()} (published)')
            ax.set(xlabel='bits', ylabel='MAP', xscale='log', xticks=sorted(
                {b for k, by_bit in groups.items() if k[0] == dataset for b in by_bit}),
                title=f'{DATASET_NAMES.get(dataset, dataset)}, {arrow}')
            ax.xaxis.set_major_formatter('{x:.0f}')
            ax.minorticks_off()
    legend_below(fig, axes.flat)
    return save_figure(fig, path)


def pr_figure(groups, names, dataset, bit, path):
    """Precision-recall over Hamming radius 0..bit of every method at one data set and bit length,
    the mean over seeds at each radius."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (direction, arrow) in zip(axes, DIRECTIONS):
        for (d, model, key), by_bit in groups.items():
            files = [run['dir'] / f'pr_{direction}.npy' for run in by_bit.get(bit, []) if d == dataset]
            if files and all(f.is_file() for f in files):
                precision, recall = np.mean([np.load(f) for f in files], axis=0)
                ax.plot(recall, precision, marker='.', label=f'{label(d, model, key, names)}, '
                                                             f'{len(files)} run(s)')
        ax.set(xlabel='recall', ylabel='precision',
               title=f'{DATASET_NAMES.get(dataset, dataset)}, {bit} bits, {arrow}')
    legend_below(fig, axes)
    return save_figure(fig, path)


def legend_below(fig, axes):
    """One legend for the figure, under its panels, so long setting names never cover a curve."""
    entries = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    fig.legend(list(entries.values()), list(entries), loc='upper center', bbox_to_anchor=(0.5, 0),
               fontsize='small', ncol=1 if max(map(len, entries), default=0) > 40 else 2)


def write_report(root):
    """Write report.md, report.csv, map_vs_bits.png and pr_<dataset>_<bit>.png into `root`;
    return the Markdown table and the paths written."""
    groups, names = group(find_runs(root))
    markdown, text = tables(groups, names)
    note = ('MAP over the whole database: mean ± sample standard deviation over seeds (number of '
            'runs); "model chosen on" is the rule that picked each run\'s epoch (--select_on).')
    written = [root / 'report.md', root / 'report.csv']
    atomic_write(written[0], lambda f: f.write(f'{note}\n\n{markdown}\n'.encode()))
    atomic_write(written[1], lambda f: f.write(text.encode()))
    written.append(map_vs_bits(groups, names, root / 'map_vs_bits.png'))
    for dataset, bit in sorted({(key[0], bit) for key, by_bit in groups.items() for bit in by_bit}):
        written.append(pr_figure(groups, names, dataset, bit, root / f'pr_{dataset}_{bit}.png'))
    return f'{note}\n\n{markdown}', written
