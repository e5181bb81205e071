"""`python main.py report`: a paper's comparison table over every tested run under a folder, beside
every published row of the methods' papers (models' PUBLISHED), and its figures.

A run is a folder with the metrics.json that `test` writes (its MAPs, the options the run was
trained with, the split and data file it was evaluated on). Runs are averaged over seeds when they
differ in nothing else but bookkeeping (config.BOOKKEEPING); another split (another split file, or
another scheme: a method's published split, the fixed rows), another selection rule, another
evaluation (data file, query or database size) or any other option gives another row, and the
split and rule are columns of the table.

Written into the folder: report.md (Markdown), report.csv (one record per cell, published rows
included), report.tex (booktabs), and per data set map_vs_bits_<data set> (MAP against bits), and
per data set and bit pr_<data set>_<bit> (precision-recall) and p_at_k_<data set>_<bit>
(precision@K): PNG, PDF, and a JSON of the lines drawn (x, y, std per line), one line per method
and setting, seeds averaged with a band of ± one sample standard deviation.
"""
import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

import config
from models import METHODS
from utils.checkpoint import atomic_write
from utils.errors import UserError
from utils.plot import pyplot, save_figure

DIRECTIONS = (('i2t', 'I→T'), ('t2i', 'T→I'))
DATASET_NAMES = {'flickr25k': 'MIRFlickr-25K', 'nus-wide': 'NUS-WIDE', 'iapr-tc12': 'IAPR TC-12',
                 'ms-coco': 'MS COCO'}
PUBLISHED_BITS = (16, 32, 64)
# The order papers print methods in: the baselines, then AGAH, then DADH; others after, by name.
ORDER = ('DCMH', 'PRDH', 'CHN', 'SSAH', 'SSWAH', 'AGAH', 'DADH')
# Options shown in their own columns (split, rule) rather than in the setting's name.
COLUMN_OPTIONS = {'select_on', 'valid_size', 'valid', 'split', 'split_sha256'}


def published_rows():
    """{(data set, METHOD, source): {direction: {bit: MAP}}} from every method's PUBLISHED."""
    rows = {}
    for method in METHODS.values():
        for dataset, name, source, *maps in method.PUBLISHED:
            rows[dataset, name, source] = {
                d: {bit: m for bit, m in zip(PUBLISHED_BITS, values) if m is not None}
                for (d, _), values in zip(DIRECTIONS, maps)}
    return rows


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


def split_of(run):
    """What rows a run was split into, as the table's split column says it: 'published' (the
    method's own split; a random one drawn per seed), 'rows' (the fixed row ranges) or the split
    file's name and sha256 (files of the same content share a row)."""
    split = run['options'].get('split', 'published')
    if split in ('published', 'rows'):
        return split
    return f"{Path(split).name} ({(run['options'].get('split_sha256') or '?')[:8]})"


def selection(run):
    if run.get('select_on') == 'valid':
        return f"held-out rows ({run['options'].get('valid_size')})"
    return 'last epoch' if run.get('select_on') in ('last', 'final') else 'test queries'


def setting(run):
    """The options that tell this run's numbers apart from another's of the same data set, method
    and bit length: all but the seed and the bookkeeping; the split as split_of says it; what it
    was evaluated on (the data file's name, the query and database sizes)."""
    options = {k: v for k, v in run['options'].items()
               if k not in config.BOOKKEEPING | {'seed', 'bit', 'dataset', 'flag', 'model', 'split_sha256'}}
    if options.get('select_on', 'query') != 'valid':
        options.pop('valid_size', None)  # read only by --select_on valid
    options['split'] = split_of(run)
    options['rule'] = selection(run)
    evaluated = [Path(run.get('data_path') or run['options'].get('data_path', '')).name]
    evaluated += [f'{run[size]} {name}' for size, name in (('query_size', 'queries'), ('database_size', 'database'))
                  if run.get(size) is not None]  # metrics.json of older runs have no sizes
    options['evaluated on'] = ', '.join(evaluated)
    return options


def group(runs):
    """{(dataset, model, setting as JSON): {bit: [runs]}}, and each setting's name: the options in
    which it differs from the other settings of its data set and method (split and rule have
    columns of their own)."""
    groups = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[run['dataset'], run['model'], json.dumps(setting(run), sort_keys=True)][run['bit']].append(run)
    names = {}
    for dataset, model in {key[:2] for key in groups}:
        settings = {key[2]: json.loads(key[2]) for key in groups if key[:2] == (dataset, model)}
        differ = sorted({k for s in settings.values() for k in s if k not in COLUMN_OPTIONS | {'rule'}
                         and len({json.dumps(t.get(k)) for t in settings.values()}) > 1})
        for key, options in settings.items():
            names[dataset, model, key] = ', '.join(f'{k}={options.get(k)}' for k in differ)
    return dict(sorted(groups.items())), names


def summary(runs, direction):
    """(mean, sample standard deviation or None for one run, number of runs) of a MAP."""
    values = [run['map'][direction] for run in runs]
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None,
            len(values))


def method_order(name):
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def label(model, key, names, dataset):
    """A line's name in figures and a row's in tables: the method, and what sets its setting
    apart from the method's others (options, split, rule) when it has others."""
    options = json.loads(key)
    others = [json.loads(k) for d, m, k in names if (d, m) == (dataset, model) and k != key]
    parts = [names[dataset, model, key]] if names[dataset, model, key] else []
    for column in ('split', 'rule'):
        if any(o[column] != options[column] for o in others):
            parts.append(f'{column} {options[column]}')
    return model.upper() + (f" ({'; '.join(parts)})" if parts else '')


def table_rows(groups, names):
    """Per data set: the header's bits and the rows, each {method, source, split, rule, cells:
    {(direction, bit): (mean, std, n)}}: every published row of the data set, each method's runs
    under its published rows."""
    published = published_rows()
    datasets = sorted({key[0] for key in groups})
    out = {}
    for dataset in datasets:
        printed = any(d == dataset for d, _, _ in published)  # a data set with published rows
        bits = sorted({bit for key, by_bit in groups.items() if key[0] == dataset for bit in by_bit}
                      | (set(PUBLISHED_BITS) if printed else set()))
        methods = ({name for d, name, _ in published if d == dataset}
                   | {model.upper() for d, model, _ in groups if d == dataset})
        rows = []
        for method in sorted(methods, key=method_order):
            own_first = sorted(published.items(), key=lambda item: not item[0][2].startswith(f'{method} paper'))
            for (d, name, source), maps in own_first:
                if (d, name) == (dataset, method):
                    rows.append(dict(method=method, source=source, split='the paper\'s',
                                     rule=published_rule(name, source),
                                     setting='', cells={(direction, bit): (maps[direction][bit], None, None)
                                                        for direction, _ in DIRECTIONS
                                                        for bit in maps[direction]}))
            for (d, model, key), by_bit in groups.items():
                if (d, model.upper()) != (dataset, method):
                    continue
                options = json.loads(key)
                rows.append(dict(method=method, source='this project', split=options['split'],
                                 rule=options['rule'], setting=names[d, model, key],
                                 label=label(model, key, names, d), runs=by_bit,
                                 cells={(direction, bit): summary(runs, direction)
                                        for direction, _ in DIRECTIONS for bit, runs in by_bit.items()}))
        out[dataset] = bits, rows
    return out


def best_cells(rows, bits):
    """{(direction, bit): the best mean of that column} (bold in every table)."""
    best = {}
    for direction, _ in DIRECTIONS:
        for bit in bits:
            values = [row['cells'][direction, bit][0] for row in rows if (direction, bit) in row['cells']]
            if values:
                best[direction, bit] = max(values)
    return best


def cell_text(row, column, best, bold):
    if column not in row['cells']:
        return '–'
    mean, std, n = row['cells'][column]
    text = f'{mean:.4f}' if n is None else (f'{mean:.4f} ± {std:.4f} ({n})' if std is not None
                                            else f'{mean:.4f} (1)')
    return bold(text) if mean == best.get(column) else text


HEADER = ['method', 'source', 'setting', 'split', 'model chosen on']


def markdown(tables):
    blocks = []
    for dataset, (bits, rows) in tables.items():
        best = best_cells(rows, bits)
        header = HEADER + [f'{arrow} {bit}' for _, arrow in DIRECTIONS for bit in bits]
        lines = [header, ['---'] * len(header)]
        lines += [[row['method'], row['source'], row['setting'], row['split'], row['rule']]
                  + [cell_text(row, (d, bit), best, lambda t: f'**{t}**')
                     for d, _ in DIRECTIONS for bit in bits] for row in rows]
        blocks.append(f'### {DATASET_NAMES.get(dataset, dataset)}\n\n'
                      + '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines))
    return '\n\n'.join(blocks)


def latex_escape(text):
    for a, b in (('\\', r'\textbackslash{}'), ('&', r'\&'), ('%', r'\%'), ('#', r'\#'),
                 ('_', r'\_'), ('±', r'$\pm$'), ('–', '--'), ('→', r'$\to$')):
        text = text.replace(a, b)
    return text


def latex(tables):
    """One booktabs table per data set."""
    blocks = []
    for dataset, (bits, rows) in tables.items():
        best = best_cells(rows, bits)
        n = len(bits)
        lines = [r'\begin{table}[t]', r'\centering', r'\small',
                 rf'\caption{{MAP on {latex_escape(DATASET_NAMES.get(dataset, dataset))}: mean $\pm$ '
                 r'sample standard deviation over seeds (number of runs).}',
                 r'\begin{tabular}{lllll' + 'r' * (2 * n) + '}', r'\toprule',
                 ' & '.join([''] * len(HEADER)) + ' & '
                 + ' & '.join(rf'\multicolumn{{{n}}}{{c}}{{{latex_escape(arrow)}}}' for _, arrow in DIRECTIONS)
                 + r' \\',
                 ''.join(rf'\cmidrule(lr){{{len(HEADER) + 1 + i * n}-{len(HEADER) + (i + 1) * n}}}'
                         for i in range(2)),
                 ' & '.join(HEADER + [str(bit) for _ in DIRECTIONS for bit in bits]) + r' \\',
                 r'\midrule']
        for row in rows:
            cells = [latex_escape(row[k]) for k in ('method', 'source', 'setting', 'split', 'rule')]
            cells += [latex_escape(cell_text(row, (d, bit), best, lambda t: f'\x00{t}\x01'))
                      .replace('\x00', r'\textbf{').replace('\x01', '}')
                      for d, _ in DIRECTIONS for bit in bits]
            lines.append(' & '.join(cells) + r' \\')
        lines += [r'\bottomrule', r'\end{tabular}', r'\end{table}']
        blocks.append('\n'.join(lines))
    return '% needs \\usepackage{booktabs}\n' + '\n\n'.join(blocks) + '\n'


def records(tables):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['dataset', 'method', 'source', 'setting', 'split', 'model_chosen_on', 'bit',
                     'direction', 'mean', 'std', 'n', 'published', 'seeds'])
    for dataset, (bits, rows) in tables.items():
        own = {}  # a method's first published row: its own paper's
        for row in rows:
            if row['source'] != 'this project':
                own.setdefault(row['method'], row['cells'])
        for row in rows:
            for (direction, bit), (mean, std, n) in sorted(row['cells'].items()):
                paper = own.get(row['method'], {}).get((direction, bit))
                seeds = (' '.join(str(r['options'].get('seed', '')) for r in row['runs'][bit])
                         if 'runs' in row else '')
                writer.writerow([dataset, row['method'].lower(), row['source'], row['setting'],
                                 row['split'], row['rule'], bit, direction, f'{mean:.6f}',
                                 '' if std is None else f'{std:.6f}', n or '',
                                 '' if paper is None else paper[0], seeds])
    return text.getvalue()


def mean_curves(runs, name, direction):
    """(x, mean y, std y or None) over the runs' saved arrays `name`_`direction`.npy: PR as
    (precision, recall) rows, drawn recall -> precision; P@K as (K, precision)."""
    files = [run['dir'] / f'{name}_{direction}.npy' for run in runs]
    if not files or not all(f.is_file() for f in files):
        return None
    arrays = np.stack([np.load(f) for f in files])
    x, y = (arrays[:, 1], arrays[:, 0]) if name == 'pr' else (arrays[:, 0], arrays[:, 1])
    return x.mean(0), y.mean(0), y.std(0, ddof=1) if len(files) > 1 else None


def colour(method):
    """One colour per method, in every figure: its runs and its published rows alike (None: the
    next of matplotlib's cycle)."""
    if method is None:
        return None
    names = sorted({name for m in METHODS.values() for _, name, *_ in m.PUBLISHED}
                   | {m.upper() for m in METHODS}, key=method_order)
    return f'C{names.index(method) % 10}' if method in names else 'k'


def draw(panels, path, xlabel, ylabel, bits=None, legend='below'):
    """A figure of panels two a row (I→T, T→I) at a paper's text width, each (title, [(label,
    method, x, y, std or None, line style)]), one colour per method, a band of ± std, the legend
    below the panels, out of the curves' way; `bits` puts the x axis on a log scale with those
    ticks. `legend='each'`: a legend in each panel and a symmetric-log y axis (the loss terms of
    a method, which span orders of magnitude). Written as PNG, PDF and JSON (the lines drawn).
    Returns the paths written."""
    plt = pyplot()
    rows = -(-len(panels) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(7, 2.8 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    record = []
    for ax, (title, lines) in zip(axes, panels):
        for name, method, x, y, std, style in lines:
            ax.plot(x, y, style, color=colour(method), label=name, markersize=3, linewidth=1.2)
            if std is not None:
                ax.fill_between(x, y - std, y + std, color=colour(method), alpha=0.2, linewidth=0)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if legend == 'each':
            ax.set_yscale('symlog')
            ax.legend(fontsize='x-small', ncol=2)
        if bits:
            ax.set_xscale('log', base=2)
            ax.set_xticks(bits, [str(b) for b in bits])
            ax.minorticks_off()
        record.append({'title': title, 'lines': [
            {'label': name, 'method': method,'x': np.asarray(x).tolist(),
             'y': np.asarray(y).tolist(), 'std': None if std is None else np.asarray(std).tolist()}
            for name, method, x, y, std, _ in lines]})
    entries = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    if legend == 'below':
        fig.legend(list(entries.values()), list(entries), loc='upper center',
                   bbox_to_anchor=(0.5, 0), fontsize='small', ncol=min(3, max(1, len(entries))),
                   frameon=False)
    written = save_figure(fig, path, formats=('png', 'pdf'))
    atomic_write(path.with_suffix('.json'), lambda f: f.write(json.dumps(record).encode()))
    return written + [path.with_suffix('.json')]


def published_rule(method, source):
    """How a published row's model was chosen, where the spec says: DADH's and AGAH's code on
    the test queries (SPEC §11), DCMH's and SSAH's its last epoch (SPEC-DCMH §6, SPEC-SSAH §6)."""
    if not source.startswith(f'{method} paper'):
        return 'as published'
    return 'test queries' if method in ('DADH', 'AGAH') else 'last epoch'


def figures(root, groups, names):
    written = []
    published = published_rows()
    for dataset in sorted({key[0] for key in groups}):
        mine = {key: by_bit for key, by_bit in groups.items() if key[0] == dataset}
        panels = []
        for direction, arrow in DIRECTIONS:
            lines = []
            for (d, model, key), by_bit in mine.items():
                bits = sorted(by_bit)
                stats = [summary(by_bit[bit], direction) for bit in bits]
                std = np.array([s[1] or 0 for s in stats]) if any(s[1] for s in stats) else None
                lines.append((label(model, key, names, d), model.upper(), bits,
                              np.array([s[0] for s in stats]), std, 'o-'))
            sources = defaultdict(int)  # a method's published rows: dashed, then dotted
            for (d, name, source), maps in published.items():
                if d == dataset and maps[direction]:
                    bits = sorted(maps[direction])
                    style = ('x--', 'x:', 'x-.')[sources[name] % 3]
                    sources[name] += 1
                    lines.append((f'{name} ({source})', name, bits,
                                  np.array([maps[direction][b] for b in bits]), None, style))
            panels.append((f'{DATASET_NAMES.get(dataset, dataset)}, {arrow}', lines))
        every_bit = sorted({b for _, _, x, *_ in panels[0][1] + panels[1][1] for b in x})
        written += draw(panels, root / f'map_vs_bits_{dataset}', 'bits', 'MAP', every_bit)
        for bit in sorted({bit for by_bit in mine.values() for bit in by_bit}):
            for name, xlabel, ylabel in (('pr', 'recall', 'precision'), ('p_at_k', 'K', 'precision@K')):
                panels = []
                for direction, arrow in DIRECTIONS:
                    lines = []
                    for (d, model, key), by_bit in mine.items():
                        curve = mean_curves(by_bit.get(bit, []), name, direction)
                        if curve:
                            lines.append((label(model, key, names, d), model.upper(), *curve, '.-'))
                    panels.append((f'{DATASET_NAMES.get(dataset, dataset)}, {bit} bits, {arrow}', lines))
                written += draw(panels, root / f'{name}_{dataset}_{bit}', xlabel, ylabel)
            written += loss_figure(root / f'losses_{dataset}_{bit}', dataset, bit, mine, names)
    return written


def loss_figure(path, dataset, bit, groups, names):
    """The training losses per epoch (history.json's `losses`, seeds averaged with a band of ± one
    std), a panel per method and setting, a line per term: what each method minimised."""
    panels = []
    for (d, model, key), by_bit in groups.items():
        histories = [json.loads((run['dir'] / 'history.json').read_text())
                     for run in by_bit.get(bit, []) if (run['dir'] / 'history.json').is_file()]
        histories = [h['losses'] for h in histories if h.get('losses')]
        if not histories:
            continue
        lines = []
        for term in histories[0]:
            curves = [h[term] for h in histories if term in h]
            epochs = min(map(len, curves))
            values = np.array([c[:epochs] for c in curves])
            std = values.std(0, ddof=1) if len(values) > 1 else None
            lines.append((term, None, np.arange(1, epochs + 1), values.mean(0), std, '.-'))
        panels.append((f'{label(model, key, names, d)}, {bit} bits', lines))
    if not panels:
        return []
    return draw(panels, path, 'epoch', 'loss (mean over its steps)', legend='each')


def write_report(root):
    """Write report.md, report.csv, report.tex and the figures into `root`; return the Markdown
    and the paths written."""
    groups, names = group(find_runs(root))
    tables = table_rows(groups, names)
    note = ('MAP over the whole database: this project\'s runs as mean ± sample standard deviation '
            'over seeds (number of runs), under the published rows of each method (source); the best '
            'of each column in bold. "split": the rows each part holds; "model chosen on": the rule '
            'that picked the kept epoch (--select_on).')
    text = f'{note}\n\n{markdown(tables)}'
    written = [root / 'report.md', root / 'report.csv', root / 'report.tex']
    atomic_write(written[0], lambda f: f.write(f'{text}\n'.encode()))
    atomic_write(written[1], lambda f: f.write(records(tables).encode()))
    atomic_write(written[2], lambda f: f.write(latex(tables).encode()))
    written += figures(root, groups, names)
    return text, written
