"""Per-epoch closed-form updates: DADH's shared codes B (SPEC §5), AGAH's code map M and label
feature map F (SPEC-AGAH "Per-epoch updates")."""
import torch


def update_codes(L, B, H_i, H_t, lamb, mu):
    """W = (LᵀL + λI)⁻¹ LᵀB, then B <- sign(LW + ½μ(H_i + H_t)). L: M x K labels, B/H: M x c."""
    eye = torch.eye(L.shape[1], dtype=L.dtype, device=L.device)
    W = torch.linalg.solve(L.T @ L + lamb * eye, L.T @ B)
    return torch.sign(L @ W + 0.5 * mu * (H_i + H_t))


def update_code_map(M, H_i, H_t, L):
    """AGAH's code map M (K x bit), bit by bit and in place: bit k sees the bits before it already
    updated. U = sign(H_i), V = sign(H_t), S = 2I − 1, Q = 2·bit·(Lᵀ(U + V) + SM);
    M[:, k] <- sign(Q[:, k] − 2(M₋ₖU₋ₖᵀU[:, k] + M₋ₖV₋ₖᵀV[:, k] + M₋ₖM₋ₖᵀM[:, k]))."""
    K, bit = M.shape
    U, V = torch.sign(H_i), torch.sign(H_t)
    S = 2 * torch.eye(K, dtype=M.dtype, device=M.device) - 1
    Q = 2 * bit * (L.T @ (U + V) + S @ M)  # once, from the M before this update
    for k in range(bit):
        rest = [j for j in range(bit) if j != k]
        M_, U_, V_ = M[:, rest], U[:, rest], V[:, rest]
        M[:, k] = torch.sign(Q[:, k] - 2 * (M_ @ (U_.T @ U[:, k]) + M_ @ (V_.T @ V[:, k])
                                            + M_ @ (M_.T @ M[:, k])))
    return M


def update_feature_map(F_i, F_t, L, feature_map):
    """AGAH's label feature map: F = ½(LᵀF_i / colsum(L) + LᵀF_t / colsum(L)), rows scaled to unit
    L2 norm. A label no training sample carries keeps its row (the reference would divide by 0)."""
    count = L.sum(dim=0)[:, None]
    mean = 0.5 * (L.T @ F_i + L.T @ F_t) / count.clamp(min=1e-12)
    new = mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.where(count > 0, new, feature_map)
