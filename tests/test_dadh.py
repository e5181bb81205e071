"""The fast training step of models/dadh.py against a plain, step-by-step implementation of SPEC §4,
and the per-epoch updates of SPEC §5 and §6."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import autograd

from models.dadh import DADH

SMALL = dict(image_dim=32, text_dim=24, hidden_dim=64, bit=8, lr=1e-3, alpha=10, beta=1, gamma=1,
             margin=0.4, lamb=1, mu=1e-5, batch_size=16, dropout=False)


def config(**overrides):
    return SimpleNamespace(**{**SMALL, **overrides})


def dadh(cfg, num_train):
    return DADH(num_train, torch.device('cpu'), **vars(cfg))


def plain_step(gen, dis, opts, images, text, labels, codes, cfg):
    """SPEC §4 as the published code spells it: a real second text pass, separate backward calls
    for the real, fake and penalty terms, log(sigmoid(x)), default (for-loop) Adam."""
    f_i = gen.image_net(images)
    h_i = gen.image_hash(f_i)
    f_t = gen.text_net(text)
    h_t = gen.text_hash(f_t)
    h_t_again = gen.text_hash(gen.text_net(text).detach())
    dis_total = 0
    for net, opt, real, fake in ((dis.feature_dis, opts['feature'], f_i, f_t),
                                 (dis.hash_dis, opts['hash'], h_i, h_t)):
        opt.zero_grad()
        real, fake = real.detach(), fake.detach()
        d_real = -cfg.gamma * torch.log(torch.sigmoid(net(real))).mean()
        d_real.backward()
        d_fake = -cfg.gamma * torch.log(1 - torch.sigmoid(net(fake))).mean()
        d_fake.backward()
        u = torch.rand(real.shape)
        x = (u * real + (1 - u) * fake).requires_grad_()
        grad = autograd.grad(net(x), x, grad_outputs=torch.ones(len(x)), create_graph=True)[0]
        penalty = ((grad.norm(2, dim=1) - 1) ** 2).mean() * 10
        penalty.backward()
        opt.step()
        dis_total = dis_total + (d_real + d_fake + penalty).item()

    def triplet(src, tgt):
        n = len(src)
        cos = (src @ tgt.T) / (src.norm(dim=1)[:, None] * tgt.norm(dim=1)[None, :])
        d = torch.relu(1 - cos)
        S = labels @ labels.T
        total = 0
        kappa = cfg.beta * cfg.gamma + 0.1
        for j in range(n):
            ideal = sorted(S[j].tolist(), reverse=True)
            Z = sum((2 ** s - 1) / torch.log2(torch.tensor(r + 1.0)) for r, s in enumerate(ideal, 1))
            g = (2 ** S[j] - 1) / Z
            pos, neg = S[j] > 0, S[j] == 0
            t = d[j][:, None] - d[j][None, :] + cfg.margin
            w = (g[:, None] - g[None, :]) * kappa
            m = (pos[:, None] & neg[None, :]).float() * kappa
            total = total + torch.relu(10 * w * m * t).sum()
        return total

    tri = triplet(h_i, h_t) + triplet(h_t, h_i)
    quant = ((codes - h_i) ** 2).sum() + ((codes - h_t) ** 2).sum()
    adv = (-torch.log(torch.sigmoid(dis.feature_dis(f_t))).mean()
           - torch.log(torch.sigmoid(dis.hash_dis(h_t_again))).mean())
    total = cfg.alpha * tri + (cfg.beta + 0.1) * quant + cfg.gamma * adv
    opts['gen'].zero_grad()
    total.backward()
    opts['gen'].step()
    return {'triplet': tri.item(), 'quantisation': quant.item(), 'adversarial': adv.item(),
            'discriminator': dis_total, 'loss': total.item()}


def assert_close(a, b, what):
    scale = max(a.abs().max().item(), 1e-3)
    assert (a - b).abs().max().item() <= 1e-5 * scale, what


def pre_bn_names(gen):
    """A Linear bias followed by BatchNorm has gradient 0 in exact arithmetic, so Adam moves it by
    ±lr on rounding noise whatever the implementation; the running mean follows it."""
    names = set()
    for net_name in ('image_net', 'text_net'):
        net = getattr(gen, net_name)
        for i, layer in enumerate(net):
            if isinstance(layer, torch.nn.BatchNorm1d):
                names |= {f'{net_name}.{i - 1}.bias', f'{net_name}.{i}.running_mean'}
    return names


@pytest.mark.parametrize('dropout', [False, True])
def test_fast_step_equals_plain_step_for_several_steps(dropout):
    cfg = config(dropout=dropout)
    torch.manual_seed(0)
    fast = dadh(cfg, 40)
    gen, dis = copy.deepcopy(fast.gen), copy.deepcopy(fast.dis)
    opts = {'gen': torch.optim.Adam(gen.parameters(), lr=cfg.lr, weight_decay=5e-4),
            'feature': torch.optim.Adam(dis.feature_dis.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                        weight_decay=1e-4),
            'hash': torch.optim.Adam(dis.hash_dis.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                     weight_decay=1e-4)}
    data = torch.Generator().manual_seed(1)
    images, text = torch.randn(40, 32, generator=data), (torch.rand(40, 24, generator=data) < 0.3).float()
    labels = (torch.rand(40, 5, generator=data) < 0.3).float()
    labels[torch.arange(40), torch.randint(0, 5, (40,), generator=data)] = 1
    for step in range(4):
        rows = torch.randperm(40, generator=data)[:16]
        torch.manual_seed(100 + step)
        got = fast.train_step(rows, images[rows], text[rows], labels[rows])
        torch.manual_seed(100 + step)
        want = plain_step(gen, dis, opts, images[rows], text[rows], labels[rows], fast.B[rows], cfg)
        for name, value in want.items():
            assert got[name].item() == pytest.approx(value, rel=1e-5), (step, name)
        for (name, a), b in zip(fast.gen.state_dict().items(), gen.state_dict().values()):
            if name in pre_bn_names(gen):
                assert (a - b).abs().max().item() <= 2 * cfg.lr * (step + 1), name
            else:
                assert_close(a.float(), b.float(), f'step {step}: generator {name}')
        for (name, a), b in zip(fast.dis.state_dict().items(), dis.state_dict().values()):
            assert_close(a, b, f'step {step}: discriminator {name}')


def test_running_statistics_are_updated_twice_per_batch_for_the_text_net():
    cfg = config()
    torch.manual_seed(0)
    method = dadh(cfg, 16)
    rows = torch.arange(16)
    method.train_step(rows, torch.randn(16, 32), torch.rand(16, 24), torch.ones(16, 5))
    text_bn = [m for m in method.gen.text_net if isinstance(m, torch.nn.BatchNorm1d)]
    image_bn = [m for m in method.gen.image_net if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(m.num_batches_tracked.item() == 2 for m in text_bn)
    assert all(m.num_batches_tracked.item() == 1 for m in image_bn)


def test_outputs_are_stored_and_codes_updated_after_the_epoch():
    cfg = config()
    torch.manual_seed(0)
    method = dadh(cfg, 32)
    labels = torch.eye(4).repeat(8, 1)
    assert (method.H_i == 0).all() and set(method.B.unique().tolist()) <= {-1.0, 1.0}
    for rows in (torch.arange(16), torch.arange(16, 32)):
        method.train_step(rows, torch.randn(16, 32), torch.rand(16, 24), labels[rows])
    assert (method.H_i != 0).all() and (method.H_t != 0).all()
    before = method.B.clone()
    method.end_epoch(0, labels)
    assert not torch.equal(before, method.B)
    assert set(method.B.unique().tolist()) <= {-1.0, 1.0}


def test_learning_rate_decays_after_epochs_0_100_and_200_only():
    method = dadh(config(lr=1e-4), 8)
    labels = torch.eye(4).repeat(2, 1)
    seen = []
    for epoch in range(201):
        method.end_epoch(epoch, labels)
        seen.append(method.lr)
    assert seen[0] == pytest.approx(0.8e-4) and seen[99] == pytest.approx(0.8e-4)
    assert seen[100] == pytest.approx(0.64e-4) and seen[200] == pytest.approx(0.512e-4)
    assert method.feature_dis_opt.param_groups[0]['lr'] == 1e-4
