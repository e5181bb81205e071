"""Held-out model selection, seeds, the `report` table and figures, models of the published code,
`--valid False`'s final MAP and `test` applying the run's --tf32: real runs through main.py and
run_mir.sh on a small file, real files."""
import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import config
import main
from datasets.split import ranges_split
from models.agah import AGAH, FEATURE_MAP_FILE
from models.cnn_f import CNNF
from models.dadh import DADH
from tests.matfiles import small_dataset, write_v7
from tests.test_main import MAP_LINE, REPO
from utils.errors import UserError

SHAPES = dict(hidden_dim=256, image_dim=64, text_dim=40, num_label=6, db_size=250,
              training_size=150, device='cpu', vis_env=None)
TINY = [*(str(x) for k, v in SHAPES.items() for x in (f'--{k}', v)), '--bit', '16', '--lr', '1e-3',
        '--batch_size', '50']


def run(*args, cwd=REPO):
    result = subprocess.run([str(a) for a in args], cwd=cwd, text=True, capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def main_py(*args):
    return run(sys.executable, 'main.py', *args)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Two runs on files that differ only in the labels of rows [150, 200), the held-out rows of
    --valid_size 50: right labels with --select_on query, labels shifted by one class with
    --select_on valid. The features still follow the true classes, so as training sharpens the
    codes the queries' MAP rises and the mislabelled held-out rows' MAP falls."""
    tmp = tmp_path_factory.mktemp('report')
    images, text, labels = small_dataset(n=300)
    wrong = labels.copy()
    wrong[150:200] = np.roll(wrong[150:200], 1, axis=1)
    out = {}
    for name, rule, these in (('query', 'query', labels), ('valid', 'valid', wrong)):
        write_v7(tmp / f'{name}.mat', {'images': images, 'YAll': text, 'LAll': these})
        base = ['--data_path', tmp / f'{name}.mat', *TINY]
        options = [*base, '--checkpoint_dir', tmp / 'ck' / name, '--max_epoch', 4,
                   '--select_on', rule, '--valid_size', 50]
        train, test = main_py('train', *options), main_py('test', *options)
        folder = tmp / 'ck' / name / 'flickr25k_16'
        out[name] = dict(train=train.stdout, test=test.stdout, dir=folder, options=options, base=base,
                         history=json.loads((folder / 'history.json').read_text()),
                         metrics=json.loads((folder / 'metrics.json').read_text()))
    return tmp, out


def test_held_out_selection_chooses_another_epoch_and_never_trains_on_those_rows(runs):
    _, out = runs
    query, valid = out['query'], out['valid']
    assert 'training 150, held-out 50 (rows [150, 200), never trained on)' in valid['train']
    # The held-out labels are never read by training: the same losses epoch by epoch.
    assert valid['history']['loss'] == query['history']['loss']
    for run, rule in ((query, 'query'), (valid, 'valid')):
        history = run['history']
        on = zip(history['mapi2t'], history['mapt2i']) if rule == 'query' else zip(
            history['valid_mapi2t'], history['valid_mapt2i'])
        best = max(enumerate(on, 1), key=lambda e: sum(e[1]))[0]
        assert history['select_on'] == rule and history['best_epoch'] == best
        assert run['metrics']['select_on'] == rule and run['metrics']['best_epoch'] == best
        # The query MAP of the chosen epoch is the one reported.
        chosen = (history['mapi2t'][best - 1], history['mapt2i'][best - 1])
        assert history['best_query'] == list(chosen)
        assert tuple(map(float, MAP_LINE.search(run['test']).groups())) == pytest.approx(chosen, abs=5e-5)
    assert valid['history']['best_epoch'] != query['history']['best_epoch']
    assert f"epoch {valid['history']['best_epoch']} chosen on the held-out rows" in valid['train']
    assert 'chosen on the held-out rows (--select_on valid)' in valid['test']
    assert 'chosen on the test queries' in query['train']
    assert query['history']['valid_mapi2t'] == []


def test_held_out_rows_must_fit_in_the_database():
    assert ranges_split(300, 'query_last', None, 250, 150, 50).held_out.tolist() == list(range(150, 200))
    assert ranges_split(300, 'query_first', 50, None, 150, 50).held_out.tolist() == list(range(200, 250))
    with pytest.raises(UserError, match=r'--valid_size 101: the held-out rows \[150, 251\)'):
        ranges_split(300, 'query_last', None, 250, 150, 101)


def write_run(root, model, bit, seed, maps, evaluated=None, select_on='query', **options):
    """A tested run folder as `test` leaves it: metrics.json (with `evaluated`, what `test` adds:
    data_path, query_size, database_size) and the precision-recall arrays."""
    folder = root / f'seed{seed}' / f'flickr25k_{bit}{"_agah" if model == "agah" else ""}'
    folder.mkdir(parents=True)
    cfg = config.parse({'model': model, 'flag': 'mir', 'bit': bit, 'seed': seed, **options})
    metrics = {'dataset': 'flickr25k', 'model': model, 'bit': bit, 'select_on': select_on,
               'options': cfg.options, 'i2t': {'map': maps[0]}, 't2i': {'map': maps[1]},
               **(evaluated or {})}
    (folder / 'metrics.json').write_text(json.dumps(metrics))
    for direction in ('i2t', 't2i'):
        np.save(folder / f'pr_{direction}.npy', np.stack([np.linspace(1, 0.5, bit + 1),
                                                          np.linspace(0, 1, bit + 1)]))


def test_report_averages_seeds_and_keeps_other_settings_apart(runs):
    tmp, out = runs
    root = tmp / 'table'
    for seed, maps in zip((1, 2, 3), ((0.70, 0.60), (0.72, 0.61), (0.74, 0.65))):
        write_run(root, 'dadh', 16, seed, maps)
    for seed, maps in zip((1, 2), ((0.80, 0.70), (0.84, 0.71))):
        write_run(root, 'dadh', 32, seed, maps)
        write_run(root / 'agah', 'agah', 16, seed, (maps[0] - 0.1, maps[1] - 0.1))
    write_run(root / 'lr', 'dadh', 16, 1, (0.5, 0.4), lr=1e-4)
    # Real runs: run_mir.sh with two seeds, tiny options, one folder per seed.
    result = run('./run_mir.sh', 16, '--seeds', '1,2', *out['query']['base'],
                 '--checkpoint_dir', root / 'real', '--max_epoch', 2)
    assert [p.name for p in sorted((root / 'real').iterdir())] == ['seed1', 'seed2']
    real = [json.loads((root / 'real' / f'seed{s}' / 'flickr25k_16' / 'metrics.json').read_text())
            for s in (1, 2)]
    assert real[0]['options']['seed'] == 1 and real[1]['options']['seed'] == 2
    assert real[0]['i2t']['map'] != real[1]['i2t']['map']
    assert 'python main.py report' in result.stdout

    report = main_py('report', '--checkpoint_dir', root)
    records = list(csv.DictReader((root / 'report.csv').open()))
    rows = [r for r in records if r['source'] == 'this project']
    cells = {(r['method'], r['setting'], r['bit'], r['direction']): r for r in rows}
    settings = {(r['method'], r['setting']) for r in rows}
    assert len(settings) == 4  # DADH, DADH --lr 1e-4, DADH with the real runs' options, AGAH
    base = next(s for m, s in settings if m == 'dadh' and 'lr=5e-05' in s and 'hidden_dim=8192' in s)
    other_lr = next(s for m, s in settings if m == 'dadh' and 'lr=0.0001' in s)
    tiny_runs = next(s for m, s in settings if m == 'dadh' and 'hidden_dim=256' in s)
    row = cells['dadh', base, '16', 'i2t']
    assert (float(row['mean']), float(row['std']), row['n']) == (pytest.approx(0.72, abs=1e-6), pytest.approx(0.02, abs=1e-6), '3')
    assert row['seeds'] == '1 2 3' and row['published'] == '0.802'
    row = cells['dadh', base, '16', 't2i']
    assert float(row['mean']) == pytest.approx(0.62, abs=1e-6) and float(row['std']) == pytest.approx(np.std([0.6, 0.61, 0.65], ddof=1), abs=1e-6)
    row = cells['dadh', base, '32', 'i2t']
    assert (float(row['mean']), float(row['std']), row['n']) == (pytest.approx(0.82, abs=1e-6), pytest.approx(0.02 * 2 ** 0.5, abs=1e-6), '2')
    row = cells['agah', '', '16', 't2i']
    assert (float(row['mean']), row['n'], row['published']) == (pytest.approx(0.605, abs=1e-6), '2', '0.7887')
    row = cells['dadh', other_lr, '16', 'i2t']
    assert (row['mean'], row['std'], row['n']) == ('0.500000', '', '1')
    row = cells['dadh', tiny_runs, '16', 'i2t']
    assert row['n'] == '2' and float(row['mean']) == pytest.approx(np.mean([r['i2t']['map'] for r in real]), abs=1e-6)
    assert row['model_chosen_on'] == 'test queries' and row['split'] == 'published'
    # every published row of the data set, labelled by its source
    published = {(r['method'], r['source']) for r in records if r['source'] != 'this project'}
    assert {('dadh', 'DADH paper'), ('agah', 'AGAH paper'), ('prdh', 'as printed by DADH/AGAH'),
            ('chn', 'as printed by DADH/AGAH'), ('dcmh', 'as printed by DADH/AGAH'),
            ('ssah', 'as printed by DADH/AGAH')} <= published

    markdown = (root / 'report.md').read_text()
    assert '| DADH | this project | ' in markdown and '0.7200 ± 0.0200 (3)' in markdown
    # the best of each column in bold: DADH paper's, except at 32 bits I→T (0.82 > 0.8072) and
    # T→I (SSAH's VGG-19 row, 0.7970 > 0.7959)
    assert ('| DADH | DADH paper |  | the paper\'s | test queries | **0.8020** | 0.8072 | '
            '**0.8179** | **0.7920** | 0.7959 | **0.8064** |') in markdown
    assert ('| SSAH | SSAH paper, Table 3 (VGG-19) |  | the paper\'s | last epoch | 0.7970 | 0.8090 | '
            '0.8100 | 0.7820 | **0.7970** | 0.7990 |') in markdown
    assert '**0.8200 ± 0.0283 (2)**' in markdown
    assert '0.7200 ± 0.0200 (3)' in report.stdout
    for name in ('map_vs_bits_flickr25k', 'pr_flickr25k_16', 'pr_flickr25k_32', 'p_at_k_flickr25k_16'):
        with Image.open(root / f'{name}.png') as image:
            image.load()
            assert image.format == 'PNG' and image.size[0] > 500
        assert (root / f'{name}.pdf').read_bytes().startswith(b'%PDF')


def test_runs_tested_on_other_rows_are_not_averaged_and_each_rule_has_its_own_legend_entry(tmp_path):
    """Issue 19 item 11: the test-time data file and query and database sizes are part of a run's
    setting (never averaged as seeds), and settings that differ only in their rule are told apart
    in the table's and the figures' labels."""
    full = dict(data_path='FLICKR-25K.mat', query_size=2000, database_size=18015)
    for seed in (1, 2):
        write_run(tmp_path / 'a', 'dadh', 16, seed, (0.70 + seed / 100, 0.60), evaluated=full)
    write_run(tmp_path / 'b', 'dadh', 16, 1, (0.50, 0.40), evaluated={**full, 'query_size': 500})
    write_run(tmp_path / 'c', 'dadh', 16, 1, (0.65, 0.55), evaluated=full, select_on='last')
    assert main_py('report', '--checkpoint_dir', tmp_path).returncode == 0
    rows = [r for r in csv.DictReader((tmp_path / 'report.csv').open())
            if r['source'] == 'this project' and r['direction'] == 'i2t']
    by_mean = {r['mean']: r for r in rows}
    assert set(by_mean) == {'0.715000', '0.500000', '0.650000'} and by_mean['0.715000']['n'] == '2'
    assert 'FLICKR-25K.mat, 500 queries, 18015 database' in by_mean['0.500000']['setting']
    assert by_mean['0.650000']['model_chosen_on'] == 'last epoch'
    figure = json.loads((tmp_path / 'pr_flickr25k_16.json').read_text())
    names = {line['label'] for panel in figure for line in panel['lines']}
    assert len({n for n in names if n.startswith('DADH')}) == 3, names
    assert any('rule last epoch' in n for n in names), names


def test_report_names_the_selection_rule(runs):
    tmp, _ = runs
    report = main_py('report', '--checkpoint_dir', tmp / 'ck')
    assert 'test queries' in report.stdout and 'held-out rows (50)' in report.stdout
    lines = [line for line in report.stdout.splitlines() if line.startswith('| DADH | this project |')]
    assert len(lines) == 2  # never averaged: another --select_on is another row


def published_dadh(state):
    renames = {'image_net.': 'image_module.', 'text_net.': 'text_module.',
               'image_hash.': 'hash_module.image.', 'text_hash.': 'hash_module.text.'}
    return {next(b + k[len(a):] for a, b in renames.items() if k.startswith(a)): v
            for k, v in state.items()}


def test_published_dadh_model_gives_the_same_codes_and_test(runs, tmp_path, capsys):
    _, out = runs
    query = out['query']
    state = torch.load(query['dir'] / 'GEN_module.pth', weights_only=True)
    published = tmp_path / 'ck' / 'flickr25k_16'
    published.mkdir(parents=True)
    torch.save(published_dadh(state), published / 'GEN_module.pth')
    test = main_py('test', *query['base'], '--checkpoint_dir', tmp_path / 'ck')
    assert test.stdout.count('a model of the published DADH code') == 1
    assert MAP_LINE.search(test.stdout).groups() == MAP_LINE.search(query['test']).groups()

    cfg = config.parse(dict(flag='mir', hidden_dim=256, bit=16, image_dim=64, text_dim=40,
                            num_label=6, device='cpu', vis_env=None))
    images, text = torch.randn(20, 64), (torch.rand(20, 40) < 0.2).float()
    codes = []
    for folder in (query['dir'], published):
        method = DADH(10, torch.device('cpu'), **cfg.hyper())
        method.load_best(folder, torch.device('cpu'))
        codes.append([method.encode_images(images), method.encode_text(text)])
    assert all(torch.equal(a, b) for a, b in zip(*codes))
    assert capsys.readouterr().out.count('published DADH code') == 1


def published_agah(state, has_cnn, emb_dim, generator):
    """AGAH.pth as the published code writes it: Conv2d layers, the critics inside."""
    def conv(w, kernel_input=False):  # a Linear's weight as the published Conv2d's
        return w.reshape(w.shape[0], 1, w.shape[1], 1) if kernel_input else w[:, :, None, None]
    out = {}
    for name, value in state.items():
        if name.startswith('image_net.0.features.'):
            out['img_module.' + name[len('image_net.0.features.'):]] = value
            continue
        prefix, rest = name.rsplit('.', 1)
        target = {f'image_net.{int(has_cnn)}': 'img_module.20', 'text_net.0': 'txt_module.0',
                  'text_net.2': 'txt_module.2', 'text_net.4': 'txt_module.4',
                  'image_hash.0': 'hash_module.img.0', 'text_hash.0': 'hash_module.txt.0',
                  'image_classifier': 'classifier.img.0', 'text_classifier': 'classifier.txt.0'}[prefix]
        out[f'{target}.{rest}'] = conv(value, prefix == 'text_net.0') if rest == 'weight' else value
    for critic in ('img_discriminator', 'txt_discriminator'):
        for index, shape in ((0, (emb_dim, 1, emb_dim, 1)), (2, (256, emb_dim, 1, 1)), (4, (1, 256, 1, 1))):
            out[f'{critic}.{index}.weight'] = torch.randn(shape, generator=generator)
            out[f'{critic}.{index}.bias'] = torch.randn(shape[0], generator=generator)
    return out


@pytest.mark.parametrize('has_cnn', [True, False])
def test_published_agah_model_gives_the_same_codes(tmp_path, capsys, has_cnn):
    cpu = torch.device('cpu')
    generator = torch.Generator().manual_seed(0)
    image_dim = 32 if has_cnn else 48
    cfg = config.parse(dict(model='agah', flag='mir', bit=16, emb_dim=24, hidden_dim=64, image_dim=image_dim,
                            text_dim=40, num_label=6, batch_size=8, device='cpu', vis_env=None))
    cnn = lambda: CNNF([8, 16, 16, 16, 16, 32, 32]) if has_cnn else None
    torch.manual_seed(1)
    trained = AGAH(10, cpu, cnn(), **cfg.hyper())
    trained.feature_map.copy_(torch.nn.functional.normalize(trained.feature_map, dim=1))
    own, published = tmp_path / 'own', tmp_path / 'published'
    for folder in (own, published):
        folder.mkdir()
        torch.save(trained.feature_map, folder / FEATURE_MAP_FILE)
    trained.save_best(own)
    torch.save(published_agah(trained.net.state_dict(), has_cnn, 24, generator), published / 'AGAH.pth')
    images = (torch.rand(6, 3, 224, 224, generator=generator) * 255 if has_cnn
              else torch.rand(6, image_dim, generator=generator))
    text = (torch.rand(6, 40, generator=generator) < 0.3).float()
    codes = []
    for folder in (own, published):
        torch.manual_seed(2)  # other weights, replaced by the file's
        method = AGAH(10, cpu, cnn(), **cfg.hyper())
        method.load_best(folder, cpu)
        codes.append([method.encode_images(images), method.encode_text(text)])
    assert all(torch.equal(a, b) for a, b in zip(*codes))
    assert all(torch.equal(a, b) for a, b in zip(codes[0], [trained.encode_images(images), trained.encode_text(text)]))
    notice = [line for line in capsys.readouterr().out.splitlines() if 'published AGAH code' in line]
    assert len(notice) == 1 and 'img_discriminator and txt_discriminator' in notice[0]


def test_valid_false_prints_the_final_map(runs, tmp_path):
    _, out = runs
    options = [*out['query']['base'], '--checkpoint_dir', tmp_path, '--valid', 'False', '--max_epoch', 2]
    train = main_py('train', *options)
    final = re.search(r'^\.\.\.training done: final MAP\(i->t\): (\d\.\d{4}), MAP\(t->i\): (\d\.\d{4});',
                      train.stdout, re.M)
    assert final and not [line for line in train.stdout.splitlines()
                          if line.startswith('epoch') and 'MAP' in line]
    test = main_py('test', *options)
    assert MAP_LINE.search(test.stdout).groups() == final.groups()
    assert json.loads((tmp_path / 'flickr25k_16' / 'metrics.json').read_text())['select_on'] == 'last'


def test_test_applies_the_tf32_setting_of_its_train(runs, tmp_path):
    _, out = runs
    main_py('train', *out['query']['base'], '--checkpoint_dir', tmp_path, '--tf32', 'True',
            '--max_epoch', 1)
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    before = flags()
    try:
        for checkpoint_dir, trained in ((tmp_path, True), (out['query']['dir'].parent, False)):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not trained
            main.test(data_path=str(out['query']['base'][1]), checkpoint_dir=str(checkpoint_dir),
                      bit=16, **SHAPES)  # no --tf32: test takes the run's
            assert flags() == (trained, trained)
            metrics = json.loads((checkpoint_dir / 'flickr25k_16' / 'metrics.json').read_text())
            assert metrics['options']['tf32'] is trained
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
