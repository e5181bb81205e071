"""The closed-form update of the shared binary codes B, once per epoch (SPEC §5)."""
import torch


def update_codes(L, B, H_i, H_t, lamb, mu):
    """W = (LᵀL + λI)⁻¹ LᵀB, then B <- sign(LW + ½μ(H_i + H_t)). L: M x K labels, B/H: M x c."""
    eye = torch.eye(L.shape[1], dtype=L.dtype, device=L.device)
    W = torch.linalg.solve(L.T @ L + lamb * eye, L.T @ B)
    return torch.sign(L @ W + 0.5 * mu * (H_i + H_t))
