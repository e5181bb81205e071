"""The losses of SPEC §4 as pure functions of tensors and numbers."""
import torch
import torch.nn.functional as F

GP_WEIGHT = 10  # gradient-penalty weight (SPEC §4.2)


def _cosine_triplets(source, target, labels, margin):
    """d_jk = max(0, 1 − cos(src_j, tgt_k)), S = YYᵀ, P = [S > 0] and t_jpq = d_jp − d_jq + margin."""
    d = (1 - F.normalize(source, dim=1) @ F.normalize(target, dim=1).T).clamp(min=0)
    S = labels @ labels.T
    P = (S > 0).to(source.dtype)
    return S, P, d[:, :, None] - d[:, None, :] + margin


def triplet_loss(source, target, labels, margin, alpha, beta0, gamma):
    """T(src, tgt, Y) of SPEC §4.1: cosine triplets over the batch, label-weighted when α == 10, summed.

    Indices: j anchor (a row of `source`), p positive and q negative (rows of `target`)."""
    n = source.shape[0]
    S, P, t = _cosine_triplets(source, target, labels, margin)
    gains = 2 ** S - 1
    discounts = torch.log2(torch.arange(2, n + 2, dtype=source.dtype, device=source.device))
    Z = (gains.sort(dim=1, descending=True).values / discounts).sum(dim=1, keepdim=True)
    g = gains / torch.where(Z > 0, Z, 1)  # an unlabelled anchor has Z = 0: zero weight, not 0/0
    kappa = beta0 * gamma + 0.1
    m = P[:, :, None] * (1 - P[:, None, :]) * kappa
    if alpha == 10:  # the reference switches the label weights on only for this exact value
        w = (g[:, :, None] - g[:, None, :]) * kappa
        loss = 10 * w * m * t
    else:
        loss = m * t
    return loss.clamp(min=0).sum()


def plain_triplet_loss(source, target, labels, margin):
    """AGAH's triplet loss: Σ_{j,p,q} max(0, P_jp (1 − P_jq) t_jpq), no weights (SPEC-AGAH)."""
    _, P, t = _cosine_triplets(source, target, labels, margin)
    return (P[:, :, None] * (1 - P[:, None, :]) * t).clamp(min=0).sum()


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


def critic_loss(critic, real, fake):
    """WGAN-GP critic of SPEC-AGAH: −mean D(real) + mean D(fake) + gradient penalty; inputs detached."""
    return -critic(real).mean() + critic(fake).mean() + gradient_penalty(critic, real, fake)


def agah_loss(h_i, h_t, class_i, class_t, labels, code_map, adversarial, margin, alpha, beta,
              gamma, eta, mu):
    """AGAH's generator loss and its terms (SPEC-AGAH "Losses"): `class_*` are classifier logits,
    `code_map` is M (K x bit), `adversarial` = −mean D_t(f_i) − mean D_i(f_t)."""
    bit = h_i.shape[1]
    ones = torch.ones_like(h_i)
    triplet = (plain_triplet_loss(h_i, h_t, labels, margin)
               + plain_triplet_loss(h_t, h_i, labels, margin))
    # Σ_j 1 / (1 + exp(cos(|h_j|, 1))) = Σ_j σ(−cos(|h_j|, 1))
    balance = sum(torch.sigmoid(-F.cosine_similarity(h.abs(), ones, dim=1)).sum() for h in (h_i, h_t))
    classification = sum(F.binary_cross_entropy_with_logits(c, labels, reduction='sum')
                         for c in (class_i, class_t))
    target = bit * (2 * labels - 1)
    code_map_loss = sum(((h @ code_map.T - target) ** 2).sum() for h in (h_i, h_t))
    quantisation = sum(((h - torch.sign(h)) ** 2).sum() for h in (h_i, h_t))
    total = (triplet + alpha * balance + beta * classification + gamma * code_map_loss
             + eta * quantisation + mu * adversarial)
    return total, {'triplet': triplet, 'balance': balance, 'classification': classification,
                   'code_map': code_map_loss, 'quantisation': quantisation,
                   'adversarial': adversarial}
