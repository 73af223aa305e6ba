"""Slow, obviously correct dense references (all splats x all pixels). Test oracles only."""

from __future__ import annotations

import torch


def dense_splats(
    means: torch.Tensor,
    conics: torch.Tensor,
    amplitudes: torch.Tensor,
    batch_index: torch.Tensor,
    *,
    n_batch: int,
    height: int,
    width: int,
    k_sigma: float | None = None,
) -> torch.Tensor:
    """Every splat on every pixel of its image; (n_batch, C, H, W). Optional k-sigma cut-off."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype, device=means.device),
        torch.arange(width, dtype=means.dtype, device=means.device),
        indexing="ij",
    )
    dx = xs[None] - means[:, 0, None, None]  # (N, H, W)
    dy = ys[None] - means[:, 1, None, None]
    a, b, c = (conics[:, i, None, None] for i in range(3))
    q = a * dx * dx + 2 * b * dx * dy + c * dy * dy
    w = torch.exp(-0.5 * q)
    if k_sigma is not None:
        w = w * (q <= k_sigma * k_sigma)
    out = torch.zeros(n_batch, amplitudes.shape[1], height, width, dtype=amplitudes.dtype, device=amplitudes.device)
    contrib = w[:, None] * amplitudes[:, :, None, None]
    out.index_add_(0, batch_index, contrib)
    return out


def dense_gaussians_3d_on_points(
    means: torch.Tensor, covs: torch.Tensor, amplitudes: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """Sum of 3D Gaussians ``c exp(-1/2 (x-m)^T S^-1 (x-m))`` at points; points (..., 3) -> (...)."""
    prec = torch.linalg.inv(covs)  # (G, 3, 3)
    d = points.reshape(-1, 1, 3) - means[None]  # (P, G, 3)
    q = torch.einsum("pgi,gij,pgj->pg", d, prec, d)
    return (torch.exp(-0.5 * q) * amplitudes[None]).sum(-1).reshape(points.shape[:-1])
