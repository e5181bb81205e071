"""The losses of SPEC §4 against hand-computed values and a loop-by-loop oracle."""
import math

import pytest
import torch
from torch import nn

from models.codes import update_codes
from models.losses import discriminator_loss, generator_loss, gradient_penalty, triplet_loss

SQRT2 = math.sqrt(2)

# Three samples: 0 and 1 share label 0, sample 2 has label 1 alone. With these vectors the cosine
# distances d_jk = 1 - cos are [[0, 1, 1 - 1/√2], [0, 1, 1 - 1/√2], [1, 0, 1 - 1/√2]].
SOURCE = torch.tensor([[1., 0.], [1., 0.], [0., 1.]], dtype=torch.float64)
TARGET = torch.tensor([[1., 0.], [0., 1.], [1., 1.]], dtype=torch.float64)
LABELS = torch.tensor([[1., 0.], [1., 0.], [0., 1.]], dtype=torch.float64)


def test_triplet_loss_by_hand_unweighted():
    # α != 10: ℓ = κ·t over the triplets (0,{0,1},2), (1,{0,1},2), (2,2,{0,1}) with margin 0.4:
    # t = 1/√2 − 0.6 and 1/√2 + 0.4 for anchors 0 and 1; 0.4 − (1 − 1/√2) − 1 < 0 and
    # 1.4 − 1/√2 for anchor 2. κ = β₀γ + 0.1 = 1.1.
    expected = 1.1 * (2 * (SQRT2 - 0.2) + 1.4 - 1 / SQRT2)
    loss = triplet_loss(SOURCE, TARGET, LABELS, margin=0.4, alpha=1, beta0=1, gamma=1)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_triplet_loss_by_hand_weighted():
    # α == 10: ℓ = 10·κ²·g_jp·t (negatives have gain 0). Anchors 0 and 1 see the sorted shared-label
    # row [1, 1, 0]: Z = 1/log2(2) + 1/log2(3), g = 1/Z for both positives; anchor 2: Z = 1, g = 1.
    g01 = 1 / (1 + 1 / math.log2(3))
    expected = 10 * 1.1 ** 2 * (g01 * 2 * (SQRT2 - 0.2) + 1.0 * (1.4 - 1 / SQRT2))
    loss = triplet_loss(SOURCE, TARGET, LABELS, margin=0.4, alpha=10, beta0=1, gamma=1)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_kappa_uses_beta0_and_gamma():
    base = triplet_loss(SOURCE, TARGET, LABELS, margin=0.4, alpha=1, beta0=1, gamma=1).item()
    other = triplet_loss(SOURCE, TARGET, LABELS, margin=0.4, alpha=1, beta0=2, gamma=0.5).item()
    assert other == pytest.approx(base / 1.1 * (2 * 0.5 + 0.1), rel=1e-12)


def triplet_oracle(src, tgt, Y, margin, alpha, beta0, gamma):
    """SPEC §4.1 written out loop by loop, in plain Python floats."""
    n = len(src)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    d = [[max(0.0, 1 - cos(src[j], tgt[k])) for k in range(n)] for j in range(n)]
    S = [[sum(a * b for a, b in zip(Y[j], Y[k])) for k in range(n)] for j in range(n)]
    kappa = beta0 * gamma + 0.1
    total = 0.0
    for j in range(n):
        Z = sum((2 ** s - 1) / math.log2(r + 1) for r, s in enumerate(sorted(S[j], reverse=True), 1))
        g = [(2 ** s - 1) / Z if Z > 0 else 0.0 for s in S[j]]
        for p in range(n):
            for q in range(n):
                m = (S[j][p] > 0) * (1 - (S[j][q] > 0)) * kappa
                t = d[j][p] - d[j][q] + margin
                w = (g[p] - g[q]) * kappa
                total += max(0.0, 10 * w * m * t if alpha == 10 else m * t)
    return total


@pytest.mark.parametrize('alpha', [10, 1, 9.99])
def test_triplet_loss_matches_oracle_with_ties_and_unlabelled_anchor(alpha):
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    tgt = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    # Shared-label counts with ties (rows sort with equal entries) and one sample with no label.
    Y = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]],
                     dtype=torch.float64)
    expected = triplet_oracle(src.tolist(), tgt.tolist(), Y.tolist(), 0.4, alpha, 1, 1)
    loss = triplet_loss(src, tgt, Y, margin=0.4, alpha=alpha, beta0=1, gamma=1)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_unlabelled_anchor_gives_finite_loss_and_gradient():
    src = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    Y = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 0.]], dtype=torch.float64)
    loss = triplet_loss(src, src.detach().flip(0), Y, margin=0.4, alpha=10, beta0=1, gamma=1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(src.grad).all()


def test_discriminator_loss_by_hand_with_linear_critic():
    # A linear critic has gradient w everywhere: the penalty is 10·(‖w‖ − 1)² whatever u is.
    critic = nn.Sequential(nn.Linear(2, 1), nn.Flatten(0)).double()
    with torch.no_grad():
        critic[0].weight.copy_(torch.tensor([[3., 4.]]))
        critic[0].bias.fill_(-1.)
    real = torch.tensor([[1., 0.], [0., 1.]], dtype=torch.float64)
    fake = torch.tensor([[0., 0.], [1., 1.]], dtype=torch.float64)
    logsig = lambda x: -math.log1p(math.exp(-x))
    gamma = 0.5
    expected = (-gamma * (logsig(2) + logsig(3)) / 2 - gamma * (logsig(1) + logsig(-6)) / 2
                + 10 * (5 - 1) ** 2)
    assert discriminator_loss(critic, real, fake, gamma).item() == pytest.approx(expected, rel=1e-12)


def test_gradient_penalty_draws_u_per_element():
    # D(x) = ½‖x‖² has gradient x, so the penalty reveals the interpolation weights u (n x dim).
    critic = lambda x: 0.5 * (x ** 2).sum(dim=1)
    real = torch.randn(6, 4, dtype=torch.float64)
    fake = torch.randn(6, 4, dtype=torch.float64)
    torch.manual_seed(11)
    penalty = gradient_penalty(critic, real, fake).item()
    torch.manual_seed(11)
    u = torch.rand(6, 4, dtype=torch.float64)
    x = u * real + (1 - u) * fake
    assert penalty == pytest.approx(10 * ((x.norm(dim=1) - 1) ** 2).mean().item(), rel=1e-12)


def test_discriminator_loss_stays_finite_when_logits_saturate():
    critic = nn.Sequential(nn.Linear(2, 1), nn.Flatten(0))
    with torch.no_grad():
        critic[0].weight.fill_(500.)
        critic[0].bias.zero_()
    real, fake = -torch.ones(3, 2), torch.ones(3, 2)  # log σ(−1000) and log(1 − σ(1000))
    loss = discriminator_loss(critic, real, fake, gamma=1)
    assert torch.isfinite(loss) and loss.item() > 1000


def test_generator_loss_composition():
    h_i = torch.tensor([[0.5, -0.5], [0.2, 0.1], [-0.3, 0.9]], dtype=torch.float64)
    h_t = torch.tensor([[0.4, -0.6], [-0.2, 0.3], [0.1, 0.8]], dtype=torch.float64)
    codes = torch.tensor([[1., -1.], [1., 1.], [-1., 1.]], dtype=torch.float64)
    feature_logits = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    hash_logits = torch.tensor([-0.7, 0.1, 0.5], dtype=torch.float64)
    alpha, beta, gamma, margin = 10, 2.0, 0.5, 0.4
    total, terms = generator_loss(h_i, h_t, LABELS, codes, feature_logits, hash_logits,
                                  margin, alpha, beta, gamma)
    quantisation = sum((b - x) ** 2 for rows in (h_i, h_t) for b, x in
                       zip(codes.flatten().tolist(), rows.flatten().tolist()))
    softplus = lambda x: math.log1p(math.exp(-x))  # −log σ(x)
    adversarial = (sum(map(softplus, feature_logits.tolist())) / 3
                   + sum(map(softplus, hash_logits.tolist())) / 3)
    triplet = (triplet_oracle(h_i.tolist(), h_t.tolist(), LABELS.tolist(), margin, alpha, beta, gamma)
               + triplet_oracle(h_t.tolist(), h_i.tolist(), LABELS.tolist(), margin, alpha, beta, gamma))
    assert terms['quantisation'].item() == pytest.approx(quantisation, rel=1e-12)
    assert terms['adversarial'].item() == pytest.approx(adversarial, rel=1e-12)
    assert terms['triplet'].item() == pytest.approx(triplet, rel=1e-10)
    # β₀ + 0.1 on the quantisation term (SPEC §4.4).
    expected = alpha * triplet + (beta + 0.1) * quantisation + gamma * adversarial
    assert total.item() == pytest.approx(expected, rel=1e-10)


def test_update_codes_matches_closed_form():
    gen = torch.Generator().manual_seed(0)
    L = (torch.rand(50, 6, generator=gen) < 0.3).double()
    B = torch.sign(torch.randn(50, 8, generator=gen, dtype=torch.float64))
    H_i = torch.tanh(torch.randn(50, 8, generator=gen, dtype=torch.float64))
    H_t = torch.tanh(torch.randn(50, 8, generator=gen, dtype=torch.float64))
    lamb, mu = 0.7, 3.0
    W = torch.inverse(L.T @ L + lamb * torch.eye(6, dtype=torch.float64)) @ L.T @ B
    expected = torch.sign(L @ W + 0.5 * mu * (H_i + H_t))
    new_B = update_codes(L, B, H_i, H_t, lamb, mu)
    assert torch.equal(new_B, expected)
    assert set(new_B.unique().tolist()) <= {-1.0, 1.0}
