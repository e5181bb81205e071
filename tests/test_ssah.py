"""SSAH (SPEC-SSAH.md): every loss and monitor of §4 against a float64 transcription of its formula
and their gradients, TF1's Adam by hand, the text net's pooling and legacy bilinear resize, the
networks of §3, the schedule of §5 step by step on a tiny file, and a raw-image miniature through
main.py. The demo run and everything main.py promises are in the contract suite
(tests/test_methods.py)."""
import json
import re

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from torch import nn

import config
import runs
from models.ssah import (SSAH, TF1Adam, TFLRN, ImgNet, LabNet, TxtNet, adversarial_loss,
                         discriminator, discriminator_loss, hashing_loss, label_monitor,
                         legacy_bilinear, modality_monitor, multi_scale, nll, pair_loss,
                         similarity, sub_phase)
from tests.matfiles import raw_image_dataset, write_mir_file, write_v73, write_vgg_f
from tests.test_main import MAP_LINE, run_main
from utils.distributed import SOLO
from utils.errors import UserError

RTOL = 1e-5
CPU = torch.device('cpu')


# ---- float64 transcriptions of §4 ----

def np_softplus(x):
    return np.log(1 + np.exp(x))


def np_P(Q, x, S):
    theta = 0.5 * Q @ x.T
    return 0.5 * ((S * theta - np_softplus(theta)) ** 2).sum()


def np_ce(z, t):
    s = 1 / (1 + np.exp(-z))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean()


def np_N(X, Y, L, scale):
    theta = 0.5 * X @ Y.T
    return (np_softplus(theta) - scale * (L @ L.T > 0) * theta).sum()


def np_mlp(net, x):
    """A Sequential of Linear and ReLU layers in numpy."""
    for layer in net:
        x = x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy() \
            if isinstance(layer, nn.Linear) else np.maximum(x, 0)
    return x


@pytest.fixture
def inputs():
    """Random inputs of §4's shapes: M = 37 training rows, a batch of n = 9, e = 11, 6 bits, 5
    labels (every row labelled); θ reaches about ±40."""
    g = np.random.default_rng(0)
    M, n, e, bit, C = 37, 9, 11, 6, 5
    L = (g.random((M, C)) < 0.3).astype(np.float64)
    L[np.arange(M), g.integers(0, C, M)] = 1
    b = g.choice(M, n, replace=False)
    x = dict(L=L, b=b, y=L[b], FL=3 * g.standard_normal((M, e)), H=np.tanh(2 * g.standard_normal((M, bit))),
             f=np.maximum(3 * g.standard_normal((n, e)), 0), h=np.tanh(2 * g.standard_normal((n, bit))),
             y_hat=g.random((n, C)), F=g.standard_normal((M, bit)), G=g.standard_normal((M, bit)),
             LL=g.random((M, C)), LI=g.random((M, C)), LT=g.random((M, C)),
             FI=np.maximum(g.standard_normal((M, e)), 0))
    x['S'] = 0.999 * (L @ L[b].T > 0)
    return x


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def test_pair_and_hashing_losses_match_the_formulas(inputs):
    x = inputs
    torch.testing.assert_close(similarity(t(x['L']), t(x['y']), 0.999), t(x['S']), rtol=0, atol=0)
    assert pair_loss(t(x['FL']), t(x['f']), t(x['S'])).item() == pytest.approx(
        np_P(x['FL'], x['f'], x['S']), rel=RTOL)
    alpha, gamma, beta, eta = 0.7, 1.3, 0.4, 2.1
    expected = (alpha * np_P(x['FL'], x['f'], x['S']) + gamma * np_P(x['H'], x['h'], x['S'])
                + beta * 0.5 * ((np.sign(x['h']) - x['h']) ** 2).sum()
                + eta * 0.5 * ((x['y'] - x['y_hat']) ** 2).sum())
    loss = hashing_loss(t(x['FL']), t(x['H']), t(x['S']), t(x['f']), t(x['h']), t(x['y_hat']),
                        t(x['y']), alpha, gamma, beta, eta)
    assert loss.item() == pytest.approx(expected, rel=RTOL)
    # squared-likelihood: P squares the log-likelihood; the NLL is another number.
    theta = 0.5 * x['FL'] @ x['f'].T
    assert np_P(x['FL'], x['f'], x['S']) != pytest.approx(
        (np_softplus(theta) - x['S'] * theta).sum(), rel=0.1)


def test_adversarial_and_discriminator_losses_match_the_formulas(inputs):
    x = inputs
    torch.manual_seed(0)
    nets = [discriminator(11).double() for _ in range(4)]
    assert adversarial_loss(nets[0], t(x['FI'])).item() == pytest.approx(
        np_ce(np_mlp(nets[0], x['FI']), 1), rel=RTOL)
    f_I, f_T, f_L = x['FI'][:9], x['f'], np.maximum(x['FL'][:9], 0)
    expected = 0.25 * (np_ce(np_mlp(nets[0], f_I), 0) + np_ce(np_mlp(nets[1], f_T), 0)
                       + np_ce(np_mlp(nets[2], f_L), 1) + np_ce(np_mlp(nets[3], f_L), 1))
    assert discriminator_loss(*nets, t(f_I), t(f_T), t(f_L)).item() == pytest.approx(expected, rel=RTOL)


def test_monitors_match_the_formulas(inputs):
    x = inputs
    L, scale = x['L'], 0.999
    alpha, beta, gamma, eta = 0.7, 0.4, 1.3, 2.1
    # The M x M matrix in chunks of 8 rows (37 = 4 x 8 + 5) or whole, N(X, X) by its upper
    # triangle: the same sums.
    H = t(x['H'])
    for rows in (8, 1024):
        assert nll(t(x['F']), H, t(L), scale, rows).item() == pytest.approx(
            np_N(x['F'], x['H'], L, scale), rel=RTOL)
        assert nll(H, H, t(L), scale, rows).item() == pytest.approx(
            np_N(x['H'], x['H'], L, scale), rel=RTOL)
    lab = (alpha * ((x['LL'] - L) ** 2).sum() + gamma * np_N(x['H'], x['H'], L, scale)
           + beta * np_N(x['FL'], x['FL'], L, scale))
    assert label_monitor(t(x['LL']), t(x['H']), t(x['FL']), t(L), alpha, beta, gamma,
                         scale).item() == pytest.approx(lab, rel=RTOL)
    F_, G, H = x['F'], x['G'], x['H']
    img = (alpha * np_N(F_, H, L, scale) + beta * (((np.sign(F_) - F_) ** 2).sum()
                                                  + ((np.sign(F_) - H) ** 2).sum())
           + gamma * ((H - F_) ** 2).sum() + eta * ((x['LI'] - L) ** 2).sum())
    txt = (alpha * np_N(H, G, L, scale) + beta * (((np.sign(G) - H) ** 2).sum()
                                                 + ((np.sign(G) - G) ** 2).sum())
           + gamma * ((H - G) ** 2).sum() + eta * ((x['LT'] - L) ** 2).sum())
    assert modality_monitor(t(F_), t(H), t(x['LI']), t(L), alpha, beta, gamma, eta,
                            scale).item() == pytest.approx(img, rel=RTOL)
    assert modality_monitor(t(G), t(H), t(x['LT']), t(L), alpha, beta, gamma, eta,
                            scale).item() == pytest.approx(txt, rel=RTOL)


def test_gradients_reach_only_what_the_spec_says(inputs):
    x = inputs
    FL, H, S, y = t(x['FL'], True), t(x['H'], True), t(x['S'], True), t(x['y'], True)
    f, h, y_hat = t(x['f'], True), t(x['h'], True), t(x['y_hat'], True)
    hashing_loss(FL, H, S, f, h, y_hat, y, 0.7, 1.3, 0.4, 2.1).backward()
    assert FL.grad is None and H.grad is None and S.grad is None and y.grad is None  # constants
    # dP/dx = ½ (r ⊙ (S − σ(θ)))ᵀ Q with r = S ⊙ θ − log(1 + e^θ); sign h constant.
    def pair_grad(Q, v):
        theta = 0.5 * Q @ v.T
        return 0.5 * ((x['S'] * theta - np_softplus(theta)) * (x['S'] - 1 / (1 + np.exp(-theta)))).T @ Q
    np.testing.assert_allclose(f.grad.numpy(), 0.7 * pair_grad(x['FL'], x['f']), rtol=RTOL)
    np.testing.assert_allclose(h.grad.numpy(), 1.3 * pair_grad(x['H'], x['h'])
                               + 0.4 * (x['h'] - np.sign(x['h'])), rtol=RTOL)
    np.testing.assert_allclose(y_hat.grad.numpy(), 2.1 * (x['y_hat'] - x['y']), rtol=RTOL)

    torch.manual_seed(0)
    nets = [discriminator(11).double() for _ in range(4)]
    features = t(x['FI'], True)
    adversarial_loss(nets[0], features).backward()
    assert features.grad is None and all(p.grad is not None for p in nets[0].parameters())
    nets = [discriminator(11).double() for _ in range(4)]
    f_I, f_T, f_L = (t(v, True) for v in (x['FI'][:9], x['f'], np.maximum(x['FL'][:9], 0)))
    discriminator_loss(*nets, f_I, f_T, f_L).backward()
    assert f_I.grad is None and f_T.grad is None and f_L.grad is None
    assert all(p.grad is not None for net in nets for p in net.parameters())


def test_tf1_adam_one_step_by_hand_with_the_shared_counter():
    """Two parameters stepped in turn: the second's first step is the counter's second (t = 2).
    Gradients of 1e-7 make ε (1e-8) count: outside the bias correction, as TF puts it."""
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    adam = TF1Adam([a, b])
    ga, gb, lr = np.array([1e-7, -3e-7]), np.array([2e-7]), 1e-3

    def by_hand(g, step):
        m, v = 0.1 * g, 0.001 * g * g
        return -lr * np.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step) * m / (np.sqrt(v) + 1e-8)

    (a * torch.tensor(ga, dtype=torch.float32)).sum().backward()
    adam.step(lr)
    np.testing.assert_allclose(a.detach().numpy(), by_hand(ga, 1), rtol=RTOL)
    assert a.grad is None and b.grad is None and b.item() == 0  # b had no gradient: not stepped
    (b * torch.tensor(gb, dtype=torch.float32)).sum().backward()
    adam.step(lr)
    np.testing.assert_allclose(b.detach().numpy(), by_hand(gb, 2), rtol=RTOL)
    m, v = 0.1 * gb, 0.001 * gb * gb  # ε inside the bias correction (PyTorch's Adam) differs:
    torch_style = -lr / (1 - 0.9 ** 2) * m / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    assert abs(torch_style / by_hand(gb, 2) - 1) > 0.5
    torch.testing.assert_close(adam.m[0], torch.tensor(0.1 * ga, dtype=torch.float32))  # untouched
    assert adam.t.item() == 2


def test_legacy_bilinear_and_the_text_pooling_by_hand():
    # D = 7, w = 3: two windows, x_6 dropped: p = (1/3, 1); a = 2: q = (2/3, 2). Resized to 7 with
    # s = i·(2/7): s < 1 for i ≤ 3 (r = q_0 + (q_1 − q_0) s), then i0 = i1 = 1 (r = q_1).
    x = torch.tensor([[1., 0., 0., 1., 1., 1., 1.]])
    q0, q1 = 2 / 3, 2.0
    r = [q0 + (q1 - q0) * i * 2 / 7 for i in range(4)] + [q1] * 3
    torch.testing.assert_close(legacy_bilinear(torch.tensor([[q0, q1]]), 7), torch.tensor([r]))
    channels = multi_scale(x, torch.tensor([2.0]), windows=(3,))
    torch.testing.assert_close(channels, torch.tensor([[v for pair in zip(x[0].tolist(), r) for v in pair]]))
    # torch's interpolate (half-pixel centres) gives another resize.
    assert not torch.allclose(F.interpolate(torch.tensor([[[q0, q1]]]), 7, mode='linear')[0],
                              torch.tensor([r]))
    # dead-scale-branch: a negative a_w gives zeros and no gradient.
    scales = torch.tensor([-2.0], requires_grad=True)
    out = multi_scale(x, scales, windows=(3,))
    out.sum().backward()
    assert (out[0, 1::2] == 0).all() and scales.grad.item() == 0


def test_networks_as_section_3():
    torch.manual_seed(0)
    lrn = TFLRN()
    x = torch.randn(3, 9, dtype=torch.float64) * 30
    expected = torch.stack([x[:, k] / (2 + 1e-4 * (x[:, max(k - 2, 0):k + 3] ** 2).sum(1)) ** 0.75
                            for k in range(9)], 1)
    torch.testing.assert_close(lrn(x), expected)
    # small-normal-init: weights and biases N(0, 0.01²).
    txt = TxtNet(60, 256, 64, 8, 5)
    for name, p in txt.named_parameters():
        if p.numel() > 1000:
            assert p.std().item() == pytest.approx(0.01, rel=0.05), name
    bias = txt.feature[0].bias
    assert bias.std().item() == pytest.approx(0.01, rel=0.2)
    text = (torch.rand(4, 60) < 0.3).float()
    f, h, y_hat = txt(text)
    assert f.shape == (4, 64) and h.shape == (4, 8) and y_hat.shape == (4, 5)
    # txt-heads-on-lrn: the text heads read LRN(f_T); the label net's read f_L itself.
    torch.testing.assert_close(h, torch.tanh(txt.heads.hash(lrn(f))))
    lab = LabNet(5, 32, 16, 8)
    f_L, h_L, y_L = lab(text[:, :5])
    torch.testing.assert_close(h_L, torch.tanh(lab.heads.hash(f_L)))
    torch.testing.assert_close(y_L, torch.sigmoid(lab.heads.label(f_L)))
    # Text of fewer than 50 words (test files only): the longer windows are left out.
    assert TxtNet(40, 16, 8, 8, 5).windows == (5, 10, 15, 30)
    assert TxtNet(40, 16, 8, 8, 5).feature[0].in_features == 5 * 40
    # On features, the image net takes them as relu7's output: x <- max(x, 0).
    img = ImgNet(20, 16, 8, 5)
    features = torch.randn(4, 20)
    torch.testing.assert_close(img(features)[1], img(features.clamp(min=0))[1])


def test_sub_phase_stops_on_the_monitor():
    def run(values, passes, every, stop_from):
        queue, appended, trained = list(values), [], []
        ran = sub_phase(passes, lambda: trained.append(1), lambda: queue.pop(0), appended, every, stop_from)
        assert ran == len(trained)
        return ran, appended
    # Label rule (a monitor after every pass, from pass j = 2 no decrease ends the sub-phase).
    assert run([9, 8, 8.5, 7], 10, 1, 2) == (3, [9, 8, 8.5])
    assert run([9, 8, 8, 7], 10, 1, 2) == (3, [9, 8, 8])  # equal is no decrease
    assert run(list(range(10, 0, -1)), 10, 1, 2) == (10, list(range(10, 0, -1)))
    # Image and text rule: a monitor after even passes; pass 3 compares passes 2 and 0.
    assert run([5, 6], 15, 2, 3) == (4, [5, 6])
    assert run([5, 4, 4.5], 15, 2, 3) == (5, [5, 4, 4.5])
    assert run([5, 4, 3], 5, 2, 3) == (5, [5, 4, 3])


def test_the_rate_lists_end_the_run():
    cfg = config.parse({'model': 'ssah', 'text_dim': 60, 'num_label': 5, 'image_dim': 8,
                        'hidden_dim': 8, 'semantic_embed': 8})
    method = SSAH(4, CPU, **cfg.hyper())
    assert method.epoch_limit[0] == 189 and 'image' in method.epoch_limit[1]  # run-ends-189
    # lr = 10^-(s + 0.5·(epoch + k)) as float32; past epoch ~82 the image rate is 0.
    method.epoch = 5
    assert method.rate('text', 2) == pytest.approx(10 ** -(3.5 + 0.5 * 7), rel=1e-6)
    assert method.rate('label', 1) == pytest.approx(10 ** -(2.0 + 0.5 * 6), rel=1e-6)
    method.epoch = 83
    assert method.rate('image', 0) == 0 and method.rate('text', 0) > 0
    shorter = SSAH(4, CPU, **{**cfg.hyper(), 'max_iter': 8})
    assert shorter.epoch_limit[0] == 5  # np.arange(4.5, 8, 0.5): 7 rates, 3 sub-phases
    with pytest.raises(UserError, match=r'--max_iter 5 leaves the image phase no rate'):
        SSAH(4, CPU, **{**cfg.hyper(), 'max_iter': 5})
    with pytest.raises(UserError, match=r'none with training_size 4 and batch_size 128'):
        method.train_epoch(None, None)  # a pass would be floor(4 / 128) = 0 steps


class ReadingBatches(runs.Batches):
    """The run's own batch reader, noting what each step asked it to read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads = []

    def __call__(self, rows, images=True, text=True):
        self.reads.append((images, text))
        return super().__call__(rows, images, text)


NETS = {'label': 'nets.label', 'image': 'nets.image', 'text': 'nets.text'}
MODULES = ('nets.label', 'nets.image', 'nets.text', 'discriminators.image', 'discriminators.text',
           'discriminators.label_image', 'discriminators.label_text')


def record_steps(method):
    """Wrap both Adams' minimize to note, for every step: which Adam, its rate, the modules whose
    parameters it changed, and the globals (and their rows) the step wrote before it."""
    steps, seen = [], {name: g.clone() for name, g in method.globals.items()}
    modules = {name: method.nets[name.split('.')[1]] if name.startswith('nets')
               else method.discriminators[name.split('.')[1]] for name in MODULES}

    def wrap(adam, which):
        minimize = adam.minimize

        def recorded(loss, lr):
            written = {name: (g != seen[name]).any(1).nonzero().flatten().tolist()
                       for name, g in method.globals.items() if (g != seen[name]).any()}
            before = {name: [p.clone() for p in m.parameters()] for name, m in modules.items()}
            minimize(loss, lr)
            changed = {name for name, m in modules.items()
                       if any(not torch.equal(a, b) for a, b in zip(before[name], m.parameters()))}
            steps.append(dict(adam=which, lr=lr, changed=changed, written=written))
            seen.update({name: g.clone() for name, g in method.globals.items()})
        adam.minimize = recorded
    wrap(method.hashing_adam, 'hashing')
    wrap(method.dis_adam, 'discriminator')
    return steps


def runs_of(values):
    """[(value, how many in a row)] of a list."""
    out = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [tuple(r) for r in out]


def passes_by_rule(values, maximum, every, stop_from):
    """How many passes §5's rule runs when its monitor gives `values` in turn (consumed)."""
    appended = []
    for j in range(maximum):
        if j % every == 0:
            appended.append(values.pop(0))
        if j >= stop_from and appended[-1] >= appended[-2]:
            return j + 1
    return maximum


def test_the_schedule_step_by_step(tmp_path):
    """Two epochs on 64 training rows in batches of 16 (4 steps a pass): the phases in order, each
    step's Adam, rate, changed modules, the globals it wrote and the inputs it read; pass counts
    as the monitors dictate (one sub-phase stopping early, others running their maximum); one
    step counter for the three nets."""
    write_mir_file(tmp_path / 'tiny.mat', n=100, image_dim=32, text_dim=60, num_label=5)
    cfg = config.parse({'model': 'ssah', 'data_path': str(tmp_path / 'tiny.mat'), 'device': 'cpu',
                        'image_dim': 32, 'text_dim': 60, 'num_label': 5, 'query_size': 20,
                        'db_size': 80, 'training_size': 64, 'batch_size': 16, 'bit': 8,
                        'semantic_embed': 16, 'hidden_dim': 32, 'k_lab': 6, 'k_img': 6, 'k_txt': 4})
    torch.manual_seed(0)
    splits = runs.load_splits(cfg, CPU)
    method = runs.make_method(cfg, False, 64, CPU)
    batches = ReadingBatches(splits, None, SOLO)
    generator = torch.Generator().manual_seed(0)
    steps = record_steps(method)
    s = {'label': 2.0, 'discriminator': 3.0, 'image': 4.5, 'text': 3.5}
    maximum = {'label': (6, 3), 'discriminator': (1, 1), 'image': (6, 3, 2), 'text': (4, 2, 1)}
    rule = {'label': (1, 2), 'image': (2, 3), 'text': (2, 3)}
    reads = {'label': (False, False), 'discriminator': (True, True), 'image': (True, False),
             'text': (False, True)}
    changes = {'label': {'nets.label'}, 'image': {'nets.image', 'discriminators.image'},
               'text': {'nets.text', 'discriminators.text'},
               'discriminator': {m for m in MODULES if m.startswith('discriminators')}}
    writes = {'label': {'FL', 'H', 'LL'}, 'image': {'FI', 'F', 'LI'}, 'text': {'FT', 'G', 'LT'},
              'discriminator': set()}
    early, full, counted = [], [], {'hashing': 0, 'discriminator': 0}
    for epoch in range(2):
        del steps[:], batches.reads[:]
        losses = method.train_epoch(batches, generator)
        method.end_epoch(epoch, batches.labels)
        # Every step a phase's, in the order label, discriminator, image, text; each sub-phase k
        # at lr = 10^-(s + 0.5·(epoch + k)) in float32.
        phase_of = lambda step: (next(p for p, m in changes.items() if step['changed'] == m))
        order = runs_of([phase_of(step) for step in steps])
        assert [p for p, _ in order] == ['label', 'discriminator', 'image', 'text']
        assert len(steps) == len(batches.reads) == sum(len(losses[p]) for p, _ in order)
        at = 0
        for phase, count in order:
            mine = steps[at:at + count]
            assert all(batches.reads[i] == reads[phase] for i in range(at, at + count))
            at += count
            assert {step['adam'] for step in mine} == {'discriminator' if phase == 'discriminator'
                                                       else 'hashing'}
            sub_phases = runs_of([step['lr'] for step in mine])
            assert [lr for lr, _ in sub_phases] == pytest.approx(
                [float(np.float32(10 ** -(s[phase] + 0.5 * (epoch + k)))) for k in range(len(sub_phases))],
                rel=1e-6)
            assert all(set(step['written']) == writes[phase] for step in mine)
            if phase == 'discriminator':
                assert [n for _, n in sub_phases] == [4, 4]
                continue
            for step in mine:  # the 16 rows of a fresh random batch, in the net's own globals
                assert len({r for rows in step['written'].values() for r in rows}) == 16
            values = losses[f'{phase}_monitor'].tolist()
            for k, (_, n) in enumerate(sub_phases):
                ran = passes_by_rule(values, maximum[phase][k], *rule[phase])
                assert n == 4 * ran, (phase, k)
                (early if ran < maximum[phase][k] else full).append((phase, k, ran))
            assert not values  # every monitor value accounted for
        assert torch.unique(torch.tensor([r for step in steps for rows in step['written'].values()
                                          for r in rows])).numel() > 16  # rows vary from step to step
        for step in steps:
            counted[step['adam']] += 1
    # A sub-phase that a monitor ended early, and one that could have stopped but ran them all.
    assert early and any(ran > rule[phase][1] for phase, _, ran in full), (early, full)
    # shared-adam-step: one step counter for every label, image and text step, another for the
    # discriminators'.
    assert method.hashing_adam.t.item() == counted['hashing']
    assert method.dis_adam.t.item() == counted['discriminator']


def test_raw_image_miniature_trains_cnn_f_and_stops_where_the_rates_end(tmp_path):
    """main.py train and test on 300 raw 224 x 224 images (v7.3) with a small CNN-F: CNN-F
    (MatConvNet geometry, average image subtracted) is fine-tuned, the codes beat a random
    ranking, and --max_iter 5 leaves rates for 2 of the 3 epochs asked (run-ends-189, shrunk).
    With 80 training rows, or 10 label passes, SSAH's codes stayed near chance in some seeds."""
    images, text, labels = raw_image_dataset(n=300, text_dim=60)
    write_v73(tmp_path / 'raw.mat', {'images': images.T, 'YAll': text, 'LAll': labels})
    write_vgg_f(tmp_path / 'vgg-f.mat', [8, 16, 16, 16, 16, 32, 24])
    options = ['--model', 'ssah', '--device', 'cpu', '--vis_env', 'None', '--data_path',
               tmp_path / 'raw.mat', '--pretrain_model_path', tmp_path / 'vgg-f.mat',
               '--checkpoint_dir', tmp_path / 'ck', '--query_size', 50, '--db_size', 250,
               '--training_size', 200, '--batch_size', 16, '--text_dim', 60, '--num_label', 6,
               '--hidden_dim', 64, '--semantic_embed', 128, '--k_lab', 30, '--k_img', 3,
               '--k_txt', 3, '--s_img', 3, '--s_txt', 3, '--max_epoch', 3, '--max_iter', 5]
    train = run_main('train', *options)
    assert train.returncode == 0, train.stderr
    assert 'CNN-F (matconvnet geometry)' in train.stdout
    assert re.search(r'^--model ssah ends after epoch 2 of --max_epoch 3: .*no image rate', train.stdout, re.M)
    assert re.findall(r'^epoch (\d)/2:', train.stdout, re.M) == ['1', '2']
    test = run_main('test', *options)
    assert test.returncode == 0, test.stderr
    folder = tmp_path / 'ck' / 'flickr25k_16_ssah'
    split = json.loads((folder / 'split.json').read_text())
    baseline = ((labels[split['query']] @ labels[split['database']].T) > 0).mean()
    mapi2t, mapt2i = map(float, MAP_LINE.search(test.stdout).groups())
    assert min(mapi2t, mapt2i) > baseline + 0.05, (mapi2t, mapt2i, baseline)
    model = torch.load(folder / 'SSAH_module.pth', weights_only=True)
    pretrained = scipy.io.loadmat(tmp_path / 'vgg-f.mat')['layers'][0][0][0][0]['weights'][0][0]
    conv1 = model['image.cnn.features.0.weight']
    assert conv1.shape == (8, 3, 11, 11)
    assert not torch.allclose(conv1, torch.from_numpy(pretrained.transpose()))  # fine-tuned
    assert model['image.cnn.average_image'].shape == (3, 224, 224)
    # report: the run, kept at its last epoch, beside the SSAH paper's Table 2 (SPEC-SSAH §6).
    report = run_main('report', '--checkpoint_dir', tmp_path / 'ck')
    assert report.returncode == 0, report.stderr
    lines = [line.replace('**', '') for line in report.stdout.splitlines() if line.startswith('| SSAH |')]
    assert "| SSAH | SSAH paper, Table 2 (CNN-F) |  | the paper's | last epoch | 0.7820 | 0.7900 | " \
           '0.8000 | 0.7910 | 0.7950 | 0.8030 |' == lines[0]
    assert '| SSAH | as printed by DADH/AGAH |' in lines[2]
    assert f'| SSAH | this project |  | published | last epoch | {mapi2t:.4f} (1) | – | – | ' \
           f'{mapt2i:.4f} (1) | – | – |' == lines[-1], report.stdout
