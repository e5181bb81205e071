"""The comparison table (one split and one rule for every method, a resumable sweep, the table as
Markdown, CSV and LaTeX, the figures): real runs through main.py and train_test.sh on a 300-row
file, real files."""
import csv
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

import config
import runs
from tests.matfiles import write_mir_file
from tests.test_main import REPO, run_main

# Options every method takes on the 300-row file, and each method's own (a sweep gives a method
# only its own: train_test.sh drops another method's).
SMALL = ['--image_dim', 64, '--text_dim', 40, '--num_label', 6, '--query_size', 50, '--db_size', 250,
         '--training_size', 150, '--valid_size', 50, '--bit', 16, '--device', 'cpu', '--vis_env',
         'None', '--batch_size', 50, '--valid_freq', 1, '--lr', 1e-3]
OWN = ['--hidden_dim', 64, '--emb_dim', 32]


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('compare')
    write_mir_file(tmp / 'small.mat')
    return tmp


def train_and_test(checkpoint_dir, method, *options):
    for command in ('train', 'test'):
        done = run_main(command, '--model', method, *SMALL, *options, '--checkpoint_dir', checkpoint_dir,
                        *(OWN[:2] if method == 'dadh' else OWN), '--max_epoch', 2)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope='module')
def compared(small):
    """A split file written by `split` (a seeded permutation); DADH and AGAH trained and tested on
    it and on their published splits; the report of the four runs. Returns (its folder, the
    split file's contents, `split`'s output)."""
    done = run_main('split', '--flag', 'mir', '--data_path', small / 'small.mat', *SMALL[:14],
                    '--seed', 7, '--out', small / 'split.json')
    assert done.returncode == 0, done.stderr
    root = small / 'table'
    for method in ('dadh', 'agah'):
        train_and_test(root / 'file', method, '--data_path', small / 'small.mat', '--split', small / 'split.json')
        train_and_test(root / 'own', method, '--data_path', small / 'small.mat')
    report = run_main('report', '--checkpoint_dir', root)
    assert report.returncode == 0, report.stderr
    return root, json.loads((small / 'split.json').read_text()), done.stdout


def test_split_file_is_the_rows_of_every_method_and_their_runs_share_a_table(small, compared):
    """Read by DADH and AGAH, the split file gives each run exactly its training rows in its order
    and its query and database rows; in the report both methods' runs on the file name it as
    their split, in one table, apart from the same methods' runs on their published splits."""
    root, written, printed = compared
    assert "{'query': 50, 'training': 150, 'database': 250, 'held_out': 50} of 300 rows" in printed
    assert written['rows'] == 300 and sorted(written['query'] + written['database']) == list(range(300))
    assert written['training'] == written['database'][:150] != list(range(150))
    for method in ('dadh', 'agah'):
        folder = runs.run_dir(config.parse({'model': method, 'bit': 16, 'checkpoint_dir': str(root / 'file')}))
        saved = json.loads((folder / 'split.json').read_text())
        assert {k: saved[k] for k in ('query', 'training', 'database')} == {
            k: written[k] for k in ('query', 'training', 'database')}
        recorded = json.loads((folder / 'config.json').read_text())
        assert recorded['split'] == str(small / 'split.json') and len(recorded['split_sha256']) == 64
        # the rows the training loop and the evaluation read (runs.Batches, runs.retrieval_pairs)
        cfg = config.parse({'model': method, 'data_path': str(small / 'small.mat'), 'split': str(small / 'split.json'),
                            **{k.lstrip('-'): v for k, v in zip(SMALL[:14:2], SMALL[1:14:2])}})
        splits = runs.load_splits(cfg, 'cpu')
        assert splits.train_rows.tolist() == written['training']
        assert splits.query.tolist() == written['query'] and splits.database.tolist() == written['database']

    rows = [r for r in csv.DictReader((root / 'report.csv').open()) if r['source'] == 'this project']
    splits = {(r['method'], r['split']) for r in rows}
    on_file = f"split.json ({recorded['split_sha256'][:8]})"
    assert splits == {('dadh', on_file), ('agah', on_file), ('dadh', 'published'), ('agah', 'published')}
    table = (root / 'report.md').read_text()
    assert len([line for line in table.splitlines() if on_file in line]) == 2  # one table, two rows


@pytest.mark.parametrize('change, message', [
    (lambda s: s['query'].__setitem__(0, 300), r'query row 300 is outside the data file \(rows 0 to 299\)'),
    (lambda s: s['training'].__setitem__(0, s['query'][0]), r'1 rows are both query and training rows'),
    (lambda s: s.__setitem__('rows', 20015), r'made for a data file of 20015 rows, this one has 300'),
    (lambda s: s.pop('database'), r'a split file needs query, training and database row lists'),
])
def test_bad_split_file_is_one_line_and_writes_nothing(small, compared, tmp_path, change, message):
    split = json.loads(json.dumps(compared[1]))  # a copy of the good file's contents
    change(split)
    (tmp_path / 'bad.json').write_text(json.dumps(split))
    done = run_main('train', '--data_path', small / 'small.mat', *SMALL, *OWN[:2], '--split',
                    tmp_path / 'bad.json', '--checkpoint_dir', tmp_path / 'ck')
    assert done.returncode == 2
    assert re.fullmatch(rf'error: .*bad\.json: {message}.*\n', done.stderr.splitlines(keepends=True)[-1])
    assert not list((tmp_path / 'ck').rglob('*.pth'))


def sweep(checkpoint_dir, small, **popen):
    command = ['./train_test.sh', '--models', 'dadh,agah', '--seeds', '1', '--data_path',
               small / 'small.mat', *SMALL, *OWN, '--max_epoch', 2, '--checkpoint_dir', checkpoint_dir]
    return subprocess.Popen([str(c) for c in command], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def test_sweep_stopped_by_sigterm_skips_the_done_run_resumes_the_other_and_gives_the_same_table(small, tmp_path):
    whole = sweep(tmp_path / 'whole', small)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    assert 'sweep done (dadh,agah; seeds 1)' in out

    stopped = sweep(tmp_path / 'stopped', small, start_new_session=True)
    seen_agah = False
    for line in stopped.stdout:  # the second run's first epoch, then a scheduler's SIGTERM
        seen_agah = seen_agah or line.startswith("  model: 'agah'")
        if seen_agah and line.startswith('epoch 1/2'):
            os.killpg(stopped.pid, signal.SIGTERM)
            break
    stopped.communicate(timeout=120)
    while True:  # the group's last process (the training run) leaves after its batch
        try:
            os.killpg(stopped.pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            break
    assert stopped.returncode != 0
    again = sweep(tmp_path / 'stopped', small)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert re.search(r'sweep: \S+/seed1/flickr25k_16 is trained and tested: skipped', out)
    assert re.search(r'sweep: \S+/seed1/flickr25k_16_agah is half-done: resuming it', out)
    assert 'resuming' in out and 'epochs done' in out

    tables = []
    for root in ('whole', 'stopped'):
        assert run_main('report', '--checkpoint_dir', tmp_path / root).returncode == 0
        tables.append((tmp_path / root / 'report.csv').read_text())
    assert tables[0] == tables[1] and tables[0].count('this project') == 4  # 2 methods x 2 directions


def latex_rows(text):
    """The body rows of each tabular of a booktabs file, as lists of cells."""
    tables = []
    for body in re.findall(r'\\midrule\n(.*?)\n\\bottomrule', text, re.S):
        tables.append([[cell.strip() for cell in line.rstrip('\\').split(' & ')]
                       for line in body.splitlines()])
    return tables


def test_latex_table_parses_back_with_its_bold_cells_and_figures_hold_one_line_per_method(compared):
    root = compared[0]
    text = (root / 'report.tex').read_text()
    assert text.count(r'\begin{tabular}{lllllrrrrrr}') == 1 and r'\toprule' in text
    body, = latex_rows(text)
    assert all(len(row) == 11 for row in body)
    markdown = [line for line in (root / 'report.md').read_text().splitlines()
                if line.startswith('| ') and not line.startswith(('| method', '| ---'))]
    assert len(markdown) == len(body)
    for row, line in zip(body, markdown):
        cells = [c.strip() for c in line.strip('|').split(' | ')]
        assert row[0] == cells[0]
        for tex, md in zip(row[5:], cells[5:]):
            assert tex.startswith(r'\textbf{') == md.startswith('**')
            assert re.sub(r'\\textbf\{(.*)\}', r'\1', tex).replace(r'$\pm$', '±').replace('--', '–') \
                == md.strip('*')
    best = [max(float(row[c].split()[0].replace(r'\textbf{', '').strip('}')) for row in body
                if row[c] != '--') for c in range(5, 11)]
    for c, value in zip(range(5, 11), best):
        bold = [row[c] for row in body if row[c].startswith(r'\textbf')]
        assert bold and all(float(b[len(r'\textbf{'):].split()[0].strip('}')) == value for b in bold)

    for name, methods in (('pr_flickr25k_16', 2), ('p_at_k_flickr25k_16', 2)):
        with Image.open(root / f'{name}.png') as image:
            image.load()
            assert image.format == 'PNG' and image.size[0] > 700
        assert (root / f'{name}.pdf').read_bytes().startswith(b'%PDF')
        panels = json.loads((root / f'{name}.json').read_text())
        assert [p['title'].split(', ')[-1] for p in panels] == ['I→T', 'T→I']
        for panel in panels:  # one line per method and split: 2 methods x (file, published)
            assert len(panel['lines']) == 2 * methods
            assert len({line['label'] for line in panel['lines']}) == 2 * methods
            assert {line['method'] for line in panel['lines']} == {'DADH', 'AGAH'}
    panels = json.loads((root / 'map_vs_bits_flickr25k.json').read_text())
    mine = [line for line in panels[0]['lines'] if '(' not in line['label'] or 'split' in line['label']]
    assert len(mine) == 4 and all(line['x'] == [16] for line in mine)
    assert any(line['label'] == 'DCMH (as printed by DADH/AGAH)' for line in panels[0]['lines'])
    assert np.isfinite([y for line in panels[1]['lines'] for y in line['y']]).all()
