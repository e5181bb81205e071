"""DCMH (SPEC-DCMH.md): the objective, its hand gradient and the code update against hand-computed
values of §4's formulas, autograd and finite differences; the schedule of §5 step by step on a real
file through the real batch reader; SGD's step by hand; the splits of §2; end-to-end runs on raw
images and on a NUS-WIDE folder through run_mir.sh and run_nus.sh (the demo is the contract
suite's, tests/test_methods.py)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import config
import runs
from models.cnn_f import CNNF
from models.dcmh import DCMH, batch_gradient, epoch_lr, objective, similarity, update_codes
from tests.matfiles import raw_image_dataset, small_dataset, write_mir_file, write_nus_folder, write_v73, write_vgg_f
from tests.test_main import MAP_LINE, REPO, chance_map, run_main
from utils.distributed import SOLO

CPU = torch.device('cpu')


def hand_case(gamma=0.7):
    """F, G (5 x 3, float64) with a row where F = G = 0 (row 1), a row where F = −G (row 2), an
    unlabelled row (row 3); S by loops over the labels; B = sign(γ(F + G)) by loops."""
    g = torch.Generator().manual_seed(0)
    F = torch.randn(5, 3, generator=g, dtype=torch.float64)
    G = torch.randn(5, 3, generator=g, dtype=torch.float64)
    F[1] = G[1] = 0
    F[2] = -G[2]
    labels = [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]
    S = torch.tensor([[float(any(a and b for a, b in zip(li, lj))) for lj in labels] for li in labels],
                     dtype=torch.float64)
    sign = lambda x: (x > 0) - (x < 0)
    B = torch.tensor([[float(sign(gamma * (f + h))) for f, h in zip(fr, gr)]
                      for fr, gr in zip(F.tolist(), G.tolist())], dtype=torch.float64)
    return S, F, G, B, torch.tensor(labels, dtype=torch.float64)


def hand_objective(S, F, G, B, gamma, eta):
    S, F, G, B = (x.tolist() for x in (S, F, G, B))
    n, c = len(F), len(F[0])
    total = 0.0
    for i in range(n):
        for j in range(n):
            theta = 0.5 * sum(F[i][k] * G[j][k] for k in range(c))
            total += math.log(1 + math.exp(theta)) - S[i][j] * theta
    total += gamma * sum((F[i][k] - B[i][k]) ** 2 + (G[i][k] - B[i][k]) ** 2
                         for i in range(n) for k in range(c))
    total += eta * sum(sum(F[i][k] for i in range(n)) ** 2 + sum(G[i][k] for i in range(n)) ** 2
                       for k in range(c))
    return total


def hand_gradient(S, own, other, B, index, gamma, eta):
    """g_ik = Σ_j ½(σ(½ own_i·other_j) − S_ij) other_jk + 2γ(own_ik − B_ik) + 2η Σ_l own_lk."""
    S, own, other, B = (x.tolist() for x in (S, own, other, B))
    n, c = len(own), len(own[0])
    rows = []
    for i in index:
        sigma = [1 / (1 + math.exp(-0.5 * sum(own[i][k] * other[j][k] for k in range(c))))
                 for j in range(n)]
        rows.append([sum(0.5 * (sigma[j] - S[i][j]) * other[j][k] for j in range(n))
                     + 2 * gamma * (own[i][k] - B[i][k]) + 2 * eta * sum(own[l][k] for l in range(n))
                     for k in range(c)])
    return torch.tensor(rows, dtype=torch.float64)


def test_codes_similarity_and_objective_by_hand():
    gamma, eta = 0.7, 1.3
    S, F, G, B, labels = hand_case(gamma)
    assert torch.equal(update_codes(F, G, gamma), B)
    assert (B[1] == 0).all() and (B[2] == 0).all()  # sign-zero: F + G = 0 gives 0, not ±1
    assert torch.equal(update_codes(F, G, 0.01), update_codes(F, G, 5.0))  # gamma-in-sign
    assert torch.equal(similarity(labels, labels), S.bool())
    assert S[3, 3] == 0 and S[0, 0] == 1  # self-pairs: an unlabelled row has S_ii = 0
    expected = hand_objective(S, F, G, B, gamma, eta)
    assert objective(S, F, G, B, gamma, eta).item() == pytest.approx(expected, rel=1e-6)
    assert objective(S.bool(), F, G, B, gamma, eta).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('role', ['image', 'text'])
def test_batch_gradient_by_hand_autograd_and_finite_differences(role):
    gamma, eta = 0.7, 1.3
    S, F, G, B, _ = hand_case(gamma)
    own, other = (F, G) if role == 'image' else (G, F)
    index = torch.tensor([3, 1, 2])  # the unlabelled row, F = G = 0, F = −G
    g = batch_gradient(S, own, other, B, index, gamma, eta)
    torch.testing.assert_close(g, hand_gradient(S, own, other, B, index.tolist(), gamma, eta),
                               rtol=1e-6, atol=1e-9)

    def J(x):  # the objective as a function of own, the other matrices constant
        return objective(S, x, other, B, gamma, eta) if role == 'image' else objective(S, other, x, B, gamma, eta)
    x = own.clone().requires_grad_()
    grad, = torch.autograd.grad(J(x), x)
    torch.testing.assert_close(g, grad[index], rtol=1e-6, atol=1e-9)
    h = 1e-6
    numeric = torch.empty_like(g)
    for r, i in enumerate(index.tolist()):
        for k in range(own.shape[1]):
            up, down = own.clone(), own.clone()
            up[i, k] += h
            down[i, k] -= h
            numeric[r, k] = (J(up) - J(down)) / (2 * h)
    torch.testing.assert_close(g, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_functions_take_any_float_dtype(dtype):
    gamma, eta = 0.7, 1.3
    S, F, G, B, _ = hand_case(gamma)
    low = [x.to(dtype) for x in (S, F, G, B)]
    index = torch.tensor([0, 4])
    g = batch_gradient(*low, index, gamma, eta)
    assert g.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(g.double(), batch_gradient(S, F, G, B, index, gamma, eta),
                               rtol=tolerance, atol=tolerance)
    assert objective(*low, gamma, eta).item() == pytest.approx(objective(S, F, G, B, gamma, eta).item(),
                                                               rel=tolerance)
    assert update_codes(low[1], low[2], gamma).dtype == dtype


def test_learning_rate_is_matlab_logspace():
    E = 7
    for e in range(1, E + 1):
        assert epoch_lr(10 ** -1.5, 1e-3, e - 1, E) == pytest.approx(10 ** (-1.5 - 1.5 * (e - 1) / (E - 1)),
                                                                     rel=1e-12)
    assert epoch_lr(10 ** -1.5, 1e-3, 0, 1) == 1e-3  # logspace(-1.5, -3, 1) is 10^-3
    assert epoch_lr(10 ** -1.5, 1e-3, 9, E) == pytest.approx(1e-3)  # after the last epoch


@pytest.fixture(scope='module')
def feature_file(tmp_path_factory):
    return write_mir_file(tmp_path_factory.mktemp('dcmh') / 'mir.mat', n=60)


def tiny_run(path, training_size, batch_size, max_epoch, seed=0):
    """The method, the real batch reader and the run's generator of a DCMH run on `path`."""
    cfg = config.parse({'model': 'dcmh', 'data_path': str(path), 'image_dim': 64, 'text_dim': 40,
                        'num_label': 6, 'query_size': 10, 'db_size': 50, 'training_size': training_size,
                        'batch_size': batch_size, 'bit': 8, 'max_epoch': max_epoch, 'device': 'cpu',
                        'seed': seed})
    torch.manual_seed(seed)
    splits = runs.load_splits(cfg, CPU)
    method = runs.make_method(cfg, False, training_size, CPU)
    return method, runs.Batches(splits, None, SOLO), torch.Generator().manual_seed(seed), splits


def snapshot(method):
    return {'image_net': [p.detach().clone() for p in method.net.image_net.parameters()],
            'text_net': [p.detach().clone() for p in method.net.text_net.parameters()],
            'F': method.F.clone(), 'G': method.G.clone(), 'B': method.B.clone(),
            'lr': [float(opt.param_groups[0]['lr']) for opt in (method.image_opt, method.text_opt)]}


class Recorder:
    """The run's real batch reader, noting before each step its rows, the modality it reads and a
    snapshot of the method (what the step starts from)."""

    def __init__(self, batches, method):
        self.batches, self.method, self.steps = batches, method, []
        self.labels, self.desc, self.note = batches.labels, batches.desc, batches.note

    def __call__(self, rows, images=True, text=True):
        self.steps.append({'rows': rows.clone(), 'images': images, 'text': text,
                           'state': snapshot(self.method)})
        return self.batches(rows, images=images, text=text)


def changed(a, b):
    return any(not torch.equal(x, y) for x, y in zip(a, b))


def test_schedule_step_by_step(feature_file):
    N, bs, E = 40, 16, 3
    method, batches, generator, _ = tiny_run(feature_file, N, bs, E)
    steps = 3  # ⌈40 / 16⌉ per net
    replay = torch.Generator().manual_seed(0)
    for epoch in range(E):
        start = snapshot(method)
        recorder = Recorder(batches, method)
        losses = method.train_epoch(recorder, generator)
        end = snapshot(method)
        assert [(s['images'], s['text']) for s in recorder.steps] == [(False, True)] * steps + [(True, False)] * steps
        # B-at-start: sign(F + G) of the epoch's start, the same for every step, 0 in epoch 1
        B = update_codes(start['F'], start['G'], 1.0)
        assert all(torch.equal(s['state']['B'], B) for s in recorder.steps) and torch.equal(end['B'], B)
        if epoch == 0:
            assert (B == 0).all()
            assert all((s['state']['F'] == 0).all() for s in recorder.steps[:steps])  # text-first
        # each step draws min(bs, N) distinct rows, afresh: the first bs of a new permutation
        expected_rows = [torch.randperm(N, generator=replay)[:bs] for _ in range(2 * steps)]
        for s, rows in zip(recorder.steps, expected_rows):
            assert torch.equal(s['rows'], rows) and len(set(rows.tolist())) == bs
        text_rows = [s['rows'].tolist() for s in recorder.steps[:steps]]
        assert len(set().union(*text_rows)) < steps * bs  # with-replacement: rows repeat in a pass
        # which net trains when, and which buffer its step writes (the rows of that step)
        states = [s['state'] for s in recorder.steps] + [end]
        for k, s in enumerate(recorder.steps):
            before, after = states[k], states[k + 1]
            trained, frozen, written, kept = (('text_net', 'image_net', 'G', 'F') if k < steps
                                              else ('image_net', 'text_net', 'F', 'G'))
            assert changed(before[trained], after[trained]) and not changed(before[frozen], after[frozen])
            assert torch.equal(before[kept], after[kept])
            others = torch.ones(N, dtype=torch.bool)
            others[s['rows']] = False
            assert torch.equal(before[written][others], after[written][others])
            assert (before[written][s['rows']] != after[written][s['rows']]).any()
        # lr_e throughout the epoch, both nets
        lr = 10 ** (-1.5 - 1.5 * epoch / (E - 1))
        assert all(both == pytest.approx([lr, lr], rel=1e-12) for both in (s['state']['lr'] for s in recorder.steps))
        assert method.lr == pytest.approx(lr, rel=1e-12)
        # the loss is J(F, G, B) at the end of the passes, with the B of the epoch's start
        assert losses['loss'].shape == (1,)
        assert losses['loss'].item() == pytest.approx(
            objective(method.S, end['F'], end['G'], B, 1.0, 1.0).item(), rel=1e-12)
        assert len(losses['text_gradient_norm']) == len(losses['image_gradient_norm']) == steps
        method.end_epoch(epoch, batches.labels)


@pytest.mark.parametrize('N', [40, 10])
def test_one_image_step_is_sgd_with_weight_decay_by_hand(feature_file, N, capsys):
    """fc8 alone (DCMH-I): out = x Wᵀ + b, so ∂/∂W = (g/(n·N))ᵀ x and ∂/∂b = Σ_rows g/(n·N); then
    W ← W − lr(∂W + 5e-4 W). N = 10 < batch_size: every step uses all 10 rows, said once."""
    method, batches, generator, splits = tiny_run(feature_file, N, 16, 5)
    method.train_epoch(batches, generator)  # F, G, B, S away from their zeros
    method.end_epoch(0, batches.labels)
    n = min(16, N)
    rows = torch.randperm(N, generator=torch.Generator().manual_seed(5))[:n]
    x = splits.images[splits.train_rows[rows]].double()
    fc8 = method.net.image_net[0]
    W, b = fc8.weight.detach().double().clone(), fc8.bias.detach().double().clone()
    F = method.F.double().clone()
    F[rows] = x @ W.T + b  # written first
    g = batch_gradient(method.S, F, method.G.double(), method.B.double(), rows, 1.0, 1.0)
    lr = method.lr
    method.step(method.image_pass, method.image_opt, method.F, method.G, 'image', rows,
                x.float(), None, batches.labels[rows])
    scaled = g / (n * N)
    torch.testing.assert_close(fc8.weight.detach().double(), W - lr * (scaled.T @ x + 5e-4 * W),
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(fc8.bias.detach().double(), b - lr * (scaled.sum(0) + 5e-4 * b),
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(method.F[rows].double(), F[rows], rtol=1e-5, atol=1e-6)
    method.train_epoch(batches, generator)
    said = capsys.readouterr().err.count('every step uses all 10 rows')
    assert said == (1 if N < 16 else 0)


def test_init_is_normal_with_std_one_hundredth():
    method = DCMH(30, CPU, image_dim=4096, text_dim=1386, bit=64, batch_size=128, max_epoch=500,
                  lr=10 ** -1.5, lr_end=1e-3, gamma=1.0, eta=1.0)
    first, _, second = method.net.text_net
    for p in (*method.net.image_net.parameters(), first.weight, first.bias, second.weight, second.bias):
        n = p.numel()  # four standard errors of the sample mean and standard deviation
        assert abs(p.mean().item()) < 4 * 0.01 / n ** 0.5
        assert p.std().item() == pytest.approx(0.01, rel=4 / (2 * n) ** 0.5)
    assert first.out_features == 8192 and not any(isinstance(m, (torch.nn.Tanh, torch.nn.BatchNorm1d))
                                                  for m in method.net.modules())
    assert method.lr == pytest.approx(10 ** -1.5)
    assert all(opt.defaults['momentum'] == 0 and opt.defaults['weight_decay'] == 5e-4
               for opt in (method.image_opt, method.text_opt))


def test_splits_of_section_2():
    cfg = config.parse({'model': 'dcmh', 'flag': 'mir', 'seed': 3})
    split = runs.make_split(cfg, 20015)
    p = np.random.default_rng(3).permutation(20015)
    assert np.array_equal(split.query, p[:2000]) and np.array_equal(split.database, p[2000:])
    assert np.array_equal(split.training, p[2000:12000])  # training ⊂ database
    cfg = config.parse({'model': 'dcmh', 'flag': 'mir', 'split': 'rows'})
    split = runs.make_split(cfg, 20015)  # the TF demo's (AGAH's) fixed rows
    assert (split.query.tolist(), split.training.tolist(), split.database.tolist()) == (
        list(range(2000)), list(range(2000, 12000)), list(range(2000, 20015)))
    cfg = config.parse({'model': 'dcmh', 'flag': 'nus'})
    split = runs.make_split(cfg, 20000)
    assert (len(split.query), len(split.training), len(split.database)) == (2100, 10500, 17900)
    assert (cfg.max_epoch, cfg.valid, cfg.select_on, cfg.batch_size, cfg.bit) == (500, False, 'last', 128, 64)


def run_script(script, *args):
    done = subprocess.run([f'./{script}', *map(str, args)], cwd=REPO, text=True, capture_output=True,
                          timeout=300, env={**os.environ, 'PYTHON': sys.executable})
    assert done.returncode == 0, done.stderr
    return done.stdout


TINY = ['--model', 'dcmh', '--device', 'cpu', '--vis_env', 'None', '--text_dim', 40, '--num_label', 6,
        '--max_epoch', 2, '--lr', 0.1, '--lr_end', 0.1, '--eta', 0.1]


def test_raw_images_fine_tune_matconvnet_cnn_f_through_run_mir(tmp_path):
    """48 raw 224 x 224 images in a v7.3 file, a random CNN-F at small widths: every CNN-F layer
    is fine-tuned, fc8 follows it, and the run beats the label baseline."""
    images, text, labels = raw_image_dataset(n=48)
    write_v73(tmp_path / 'raw.mat', {'images': images.T, 'YAll': text, 'LAll': labels})
    write_vgg_f(tmp_path / 'vgg-f.mat', [8, 16, 16, 16, 16, 32, 24])
    before = CNNF.from_matconvnet(tmp_path / 'vgg-f.mat', True, 'matconvnet').state_dict()
    out = run_script('run_mir.sh', 16, *TINY, '--data_path', tmp_path / 'raw.mat', '--pretrain_model_path',
                     tmp_path / 'vgg-f.mat', '--query_size', 12, '--db_size', 36, '--training_size', 24,
                     '--batch_size', 8, '--checkpoint_dir', tmp_path / 'ck')
    assert 'CNN-F (matconvnet geometry)' in out and 'DCMH-I' not in out
    model = torch.load(tmp_path / 'ck' / 'flickr25k_16_dcmh' / 'DCMH_module.pth', weights_only=True)
    assert model['image_net.1.weight'].shape == (16, 24)  # fc8 after relu7
    for name, value in before.items():
        if name != 'average_image':
            assert not torch.equal(model[f'image_net.0.{name}'], value), name  # fine-tuned
    assert torch.equal(model['image_net.0.average_image'], before['average_image'])
    split = runs.read_split(tmp_path / 'ck' / 'flickr25k_16_dcmh' / 'split.json')
    mapi2t, mapt2i = map(float, MAP_LINE.search(out).groups())
    assert min(mapi2t, mapt2i) > chance_map(labels, split.query, split.database) + 0.05


def test_nus_folder_runs_dcmh_i_through_run_nus_and_reports_beside_the_papers(tmp_path):
    images, text, labels = small_dataset(n=300)
    write_nus_folder(tmp_path / 'nus', images, text, labels)
    out = run_script('run_nus.sh', 16, *TINY, '--data_path', tmp_path / 'nus', '--image_dim', 64, '--query_size', 50,
                     '--training_size', 200, '--batch_size', 32, '--checkpoint_dir', tmp_path / 'ck')
    assert 'DCMH-I (SPEC-DCMH §2)' in out and 'training 200, query 50, database 250' in out
    split = runs.read_split(tmp_path / 'ck' / 'nus-wide_16_dcmh' / 'split.json')
    mapi2t, mapt2i = MAP_LINE.search(out).groups()
    assert min(float(mapi2t), float(mapt2i)) > chance_map(labels, split.query, split.database) + 0.05
    report = run_main('report', '--checkpoint_dir', tmp_path / 'ck')
    assert report.returncode == 0, report.stderr
    lines = [line.replace('**', '') for line in report.stdout.splitlines() if line.startswith('| DCMH |')]
    assert lines == [  # under the paper's rows, its own first; the run's split and rule
        "| DCMH | DCMH paper |  | the paper's | last epoch | 0.5903 | 0.6031 | 0.6093 | 0.6389 | 0.6511 | 0.6571 |",
        "| DCMH | as printed by DADH/AGAH |  | the paper's | as published | 0.5657 | 0.6007 | 0.6001 | – | – | – |",
        f'| DCMH | this project |  | published | last epoch | {mapi2t} (1) | – | – | {mapt2i} (1) | – | – |']
