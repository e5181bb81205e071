"""The losses of SPEC §4 as pure functions of tensors and numbers."""
import torch
import torch.nn.functional as F

GP_WEIGHT = 10  # gradient-penalty weight (SPEC §4.2)


def triplet_loss(source, target, labels, margin, alpha, beta0, gamma):
    """T(src, tgt, Y) of SPEC §4.1: cosine triplets over the batch, label-weighted when α == 10, summed.

    Indices: j anchor (a row of `source`), p positive and q negative (rows of `target`)."""
    n = source.shape[0]
    d = (1 - F.normalize(source, dim=1) @ F.normalize(target, dim=1).T).clamp(min=0)
    S = labels @ labels.T
    P = (S > 0).to(source.dtype)
    gains = 2 ** S - 1
    discounts = torch.log2(torch.arange(2, n + 2, dtype=source.dtype, device=source.device))
    Z = (gains.sort(dim=1, descending=True).values / discounts).sum(dim=1, keepdim=True)
    g = gains / torch.where(Z > 0, Z, 1)  # an unlabelled anchor has Z = 0: zero weight, not 0/0
    kappa = beta0 * gamma + 0.1
    m = P[:, :, None] * (1 - P[:, None, :]) * kappa
    t = d[:, :, None] - d[:, None, :] + margin
    if alpha == 10:  # the reference switches the label weights on only for this exact value
        w = (g[:, :, None] - g[:, None, :]) * kappa
        loss = 10 * w * m * t
    else:
        loss = m * t
    return loss.clamp(min=0).sum()


def gradient_penalty(dis, real, fake):
    """10 · mean_j (‖∇ D(x_j)‖ − 1)² at x = u ⊙ real + (1 − u) ⊙ fake, u uniform per element."""
    u = torch.rand_like(real)
    x = (u * real + (1 - u) * fake).requires_grad_()
    grad, = torch.autograd.grad(dis(x).sum(), x, create_graph=True)
    return GP_WEIGHT * ((grad.norm(dim=1) - 1) ** 2).mean()


def discriminator_loss(dis, real, fake, gamma):
    """L_D of SPEC §4.2 for logits `dis`; `real` (image side) and `fake` (text side) are detached."""
    return (-gamma * F.logsigmoid(dis(real)).mean() - gamma * F.logsigmoid(-dis(fake)).mean()
            + gradient_penalty(dis, real, fake))


def generator_loss(h_i, h_t, labels, codes, feature_logits, hash_logits, margin, alpha, beta, gamma):
    """E of SPEC §4.4 and its terms.

    `codes` are this batch's rows of B; `feature_logits` = D_f(f_t), `hash_logits` = D_h(h̃_t);
    `beta` is the user's β₀."""
    triplet = (triplet_loss(h_i, h_t, labels, margin, alpha, beta, gamma)
               + triplet_loss(h_t, h_i, labels, margin, alpha, beta, gamma))
    quantisation = ((codes - h_i) ** 2).sum() + ((codes - h_t) ** 2).sum()
    adversarial = -F.logsigmoid(feature_logits).mean() - F.logsigmoid(hash_logits).mean()
    # The reference adds 0.1 to beta once, at the start; the triplet weights keep β₀ (SPEC §4.4).
    total = alpha * triplet + (beta + 0.1) * quantisation + gamma * adversarial
    return total, {'triplet': triplet, 'quantisation': quantisation, 'adversarial': adversarial}
