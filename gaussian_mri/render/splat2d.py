"""Windowed 2D Gaussian splat rasteriser: the SUM of splats on a batch of pixel grids.

A splat ``n`` adds ``a_n * exp(-q / 2)`` with ``q = d^T P_n d``, ``d = p - m_n`` to every pixel ``p``
of image ``b_n`` whose ``q <= k^2`` (its k-sigma ellipse), where ``P_n`` is the inverse covariance
("conic" ``(a, b, c)`` = ``[[a, b], [b, c]]``). There is no alpha compositing or depth order.

Positions are in pixel units: ``x`` along columns, ``y`` along rows, pixel centres at integers.

Splats are packed: one flat list with a ``batch_index`` saying which image each one falls on, so
slices with different visible Gaussians (SVR) and frames with per-frame offsets (cine) use the same
kernel. Work is grouped by window radius and chunked so that memory stays bounded by
``chunk_pairs`` (splat-pixel pairs held at once), forward AND backward: the autograd function
saves only its inputs and recomputes the windows in the backward pass.

The dense all-pairs evaluation in :mod:`gaussian_mri.render._reference` is the test oracle.
"""

from __future__ import annotations

import math

import torch

from .._checks import require_last_dim, require_tensor

__all__ = ["rasterize_splats", "rasterize_gaussians_2d", "cholesky_to_conic", "conic_to_cov", "sr_grid"]

# Window radii are rounded up to one of these so that few distinct window shapes are evaluated.
_RADIUS_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def conic_to_cov(conics: torch.Tensor) -> torch.Tensor:
    """``(a, b, c)`` of ``P`` -> ``(Sxx, Sxy, Syy)`` of ``Sigma = P^-1``; (..., 3) -> (..., 3)."""
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    return torch.stack([c / det, -b / det, a / det], -1)


def cholesky_to_conic(chol: torch.Tensor) -> torch.Tensor:
    """Conic of ``Sigma = L L^T`` with ``L = [[l11, 0], [l21, l22]]``; (..., 3) -> (..., 3).

    ``Sigma = [[l11^2, l11 l21], [l11 l21, l21^2 + l22^2]]``, ``det = (l11 l22)^2``.
    """
    l11, l21, l22 = chol.unbind(-1)
    det = (l11 * l22) ** 2
    return torch.stack([(l21 * l21 + l22 * l22) / det, -l11 * l21 / det, l11 * l11 / det], -1)


def _radius_bucket(radius: torch.Tensor, limit: int) -> torch.Tensor:
    steps = torch.tensor([r for r in _RADIUS_STEPS if r < limit] + [limit], device=radius.device)
    idx = torch.searchsorted(steps.to(radius.dtype), radius).clamp_max(len(steps) - 1)
    return steps[idx]


def _windows(
    means: torch.Tensor,
    conics: torch.Tensor,
    batch_index: torch.Tensor,
    radius: int,
    height: int,
    width: int,
    k_sigma: float,
) -> tuple[torch.Tensor, ...]:
    """Pixel windows of a chunk of splats sharing one window radius.

    Returns flat pixel indices (n, P) into a (B*H*W) image, offsets dx, dy (n, P) and weights
    w = exp(-q/2) masked to zero outside the image and the k-sigma ellipse (n, P).
    """
    dev, dt = means.device, means.dtype
    r = torch.arange(-radius, radius + 1, device=dev)
    oy, ox = torch.meshgrid(r, r, indexing="ij")
    ox = ox.reshape(1, -1)
    oy = oy.reshape(1, -1)
    cx = torch.floor(means[:, :1] + 0.5).long()
    cy = torch.floor(means[:, 1:] + 0.5).long()
    px = cx + ox
    py = cy + oy
    dx = px.to(dt) - means[:, :1]
    dy = py.to(dt) - means[:, 1:]
    a, b, c = conics[:, 0:1], conics[:, 1:2], conics[:, 2:3]
    q = a * dx * dx + 2.0 * b * dx * dy + c * dy * dy
    valid = (px >= 0) & (px < width) & (py >= 0) & (py < height) & (q <= k_sigma * k_sigma)
    w = torch.exp(-0.5 * q) * valid
    flat = (batch_index[:, None] * height + py.clamp(0, height - 1)) * width + px.clamp(0, width - 1)
    return flat, dx, dy, w


def _plan(
    means: torch.Tensor, conics: torch.Tensor, height: int, width: int, k_sigma: float, chunk_pairs: int
) -> list[tuple[int, torch.Tensor]]:
    """Group splats into (radius, indices) chunks; splats whose window misses the image are culled."""
    with torch.no_grad():
        cov = conic_to_cov(conics)
        sx = torch.sqrt(cov[:, 0].clamp_min(0))
        sy = torch.sqrt(cov[:, 2].clamp_min(0))
        rx = torch.ceil(k_sigma * sx)
        ry = torch.ceil(k_sigma * sy)
        limit = max(height, width)
        radius = torch.maximum(rx, ry).clamp(1, limit)
        # Cull: window entirely outside the grid, or non-finite parameters.
        x, y = means[:, 0], means[:, 1]
        inside = (x + rx >= -0.5) & (x - rx <= width - 0.5) & (y + ry >= -0.5) & (y - ry <= height - 0.5)
        ok = inside & torch.isfinite(radius) & torch.isfinite(x) & torch.isfinite(y)
        idx_all = torch.nonzero(ok).squeeze(1)
        if idx_all.numel() == 0:
            return []
        bucket = _radius_bucket(radius[idx_all], limit)
        order = torch.argsort(bucket)
        idx_all, bucket = idx_all[order], bucket[order]
        values, counts = torch.unique_consecutive(bucket, return_counts=True)
    plan = []
    start = 0
    for r, n in zip(values.tolist(), counts.tolist()):
        per_chunk = max(1, chunk_pairs // (2 * r + 1) ** 2)
        for s in range(start, start + n, per_chunk):
            plan.append((int(r), idx_all[s : min(start + n, s + per_chunk)]))
        start += n
    return plan


class _RasterizeSplats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, amplitudes, batch_index, n_batch, height, width, k_sigma, chunk_pairs):  # type: ignore[override]
        n_chan = amplitudes.shape[1]
        out = torch.zeros(n_batch * height * width, n_chan, dtype=amplitudes.dtype, device=amplitudes.device)
        plan = _plan(means, conics, height, width, k_sigma, chunk_pairs)
        for r, idx in plan:
            flat, _, _, w = _windows(means[idx], conics[idx], batch_index[idx], r, height, width, k_sigma)
            vals = w[:, :, None] * amplitudes[idx][:, None, :]
            out.index_add_(0, flat.reshape(-1), vals.reshape(-1, n_chan))
        ctx.save_for_backward(means, conics, amplitudes, batch_index)
        ctx.plan = plan
        ctx.meta = (n_batch, height, width, k_sigma)
        return out.reshape(n_batch, height, width, n_chan).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, amplitudes, batch_index = ctx.saved_tensors
        n_batch, height, width, k_sigma = ctx.meta
        n_chan = amplitudes.shape[1]
        g_img = grad_out.permute(0, 2, 3, 1).reshape(-1, n_chan)
        need_m, need_c, need_a = ctx.needs_input_grad[:3]
        g_means = torch.zeros_like(means) if need_m else None
        g_conics = torch.zeros_like(conics) if need_c else None
        g_amps = torch.zeros_like(amplitudes) if need_a else None
        for r, idx in ctx.plan:
            flat, dx, dy, w = _windows(means[idx], conics[idx], batch_index[idx], r, height, width, k_sigma)
            g = g_img[flat]  # (n, P, C)
            amp = amplitudes[idx]
            if need_a:
                g_amps[idx] = (g * w[:, :, None]).sum(1)
            if need_m or need_c:
                h = (g * amp[:, None, :]).sum(-1)  # dL/dw
                s = -0.5 * h * w  # dL/dq
                if need_c:
                    g_conics[idx] = torch.stack([(s * dx * dx).sum(1), (2.0 * s * dx * dy).sum(1), (s * dy * dy).sum(1)], -1)
                if need_m:
                    a, b, c = conics[idx, 0:1], conics[idx, 1:2], conics[idx, 2:3]
                    g_means[idx] = torch.stack(
                        [(-2.0 * s * (a * dx + b * dy)).sum(1), (-2.0 * s * (b * dx + c * dy)).sum(1)], -1
                    )
        return g_means, g_conics, g_amps, None, None, None, None, None, None


def rasterize_splats(
    means: torch.Tensor,
    conics: torch.Tensor,
    amplitudes: torch.Tensor,
    batch_index: torch.Tensor,
    *,
    n_batch: int,
    height: int,
    width: int,
    k_sigma: float = 3.5,
    chunk_pairs: int = 1 << 21,
) -> torch.Tensor:
    """Sum of packed 2D splats on ``n_batch`` grids of ``height x width`` pixels.

    Parameters
    ----------
    means : (N, 2) float tensor, pixels
        Splat centres ``(x, y)`` (x along columns, y along rows).
    conics : (N, 3) float tensor, pixels^-2
        Inverse covariances ``(a, b, c)`` = ``[[a, b], [b, c]]``, positive-definite.
    amplitudes : (N, C) float tensor
        Peak values per channel (use 2 channels for complex amplitudes).
    batch_index : (N,) int64 tensor
        Image each splat falls on, in ``[0, n_batch)``.
    k_sigma : float
        Each splat is evaluated inside its ``k_sigma`` ellipse only (``q <= k_sigma^2``).
    chunk_pairs : int
        Upper bound on the splat-pixel pairs evaluated at once (memory bound, forward and backward).

    Returns
    -------
    (n_batch, C, height, width) tensor. Differentiable w.r.t. means, conics and amplitudes.
    """
    for name, t in (("means", means), ("conics", conics), ("amplitudes", amplitudes), ("batch_index", batch_index)):
        require_tensor(name, t)
    require_last_dim("means", means, 2)
    require_last_dim("conics", conics, 3)
    n = means.shape[0]
    if means.dim() != 2 or conics.shape != (n, 3) or amplitudes.dim() != 2 or amplitudes.shape[0] != n or batch_index.shape != (n,):
        raise ValueError(
            "packed splats must be means (N, 2), conics (N, 3), amplitudes (N, C), batch_index (N,); got "
            f"{tuple(means.shape)}, {tuple(conics.shape)}, {tuple(amplitudes.shape)}, {tuple(batch_index.shape)}"
        )
    if batch_index.dtype != torch.int64:
        raise TypeError(f"batch_index must be int64, got {batch_index.dtype}")
    if not (means.dtype == conics.dtype == amplitudes.dtype) or means.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"means, conics, amplitudes must share one float dtype, got {means.dtype}, {conics.dtype}, {amplitudes.dtype}"
        )
    if n_batch < 1 or height < 1 or width < 1:
        raise ValueError(f"n_batch, height, width must be >= 1, got {n_batch}, {height}, {width}")
    if n and (int(batch_index.min()) < 0 or int(batch_index.max()) >= n_batch):
        raise ValueError(f"batch_index must lie in [0, {n_batch}), got range [{int(batch_index.min())}, {int(batch_index.max())}]")
    if not k_sigma > 0:
        raise ValueError(f"k_sigma must be > 0, got {k_sigma}")
    return _RasterizeSplats.apply(
        means, conics, amplitudes, batch_index, int(n_batch), int(height), int(width), float(k_sigma), int(chunk_pairs)
    )


def sr_grid(height: int, width: int, factor: float) -> tuple[int, int, float, float]:
    """Super-resolution grid: ``(H', W', scale, offset)`` so that fine pixel centres subdivide coarse pixels.

    A coarse pixel-unit position ``p`` maps to fine pixel units ``p * scale + offset`` with
    ``scale = factor`` and ``offset = (factor - 1) / 2``: fine pixels of a coarse pixel average
    to that pixel's footprint.
    """
    if not factor > 0:
        raise ValueError(f"super-resolution factor must be > 0, got {factor}")
    return int(round(height * factor)), int(round(width * factor)), float(factor), (factor - 1.0) / 2.0


def rasterize_gaussians_2d(
    means: torch.Tensor,
    chol: torch.Tensor,
    amplitudes: torch.Tensor,
    *,
    height: int,
    width: int,
    factor: float = 1.0,
    k_sigma: float = 3.5,
    chunk_pairs: int = 1 << 21,
) -> torch.Tensor:
    """Render M Gaussians on B frames (cine): per-frame or shared means, Cholesky factors, amplitudes.

    Parameters
    ----------
    means : (M, 2) or (B, M, 2), pixels of the 1x grid
    chol : (M, 3) or (B, M, 3)
        Cholesky factors ``(l11, l21, l22)`` of the covariance in 1x pixels, ``Sigma = L L^T``.
    amplitudes : (M,) / (B, M) complex, or (M, C) / (B, M, C) real
    height, width : int
        The 1x grid; the output grid is ``factor`` times finer (see :func:`sr_grid`).

    Returns
    -------
    (B, H', W') complex for complex amplitudes, else (B, C, H', W').
    """
    is_complex = amplitudes.is_complex()
    amps = torch.view_as_real(amplitudes) if is_complex else amplitudes
    batched = means.dim() == 3 or chol.dim() == 3 or amps.dim() == 3
    if means.dim() == 2:
        means = means[None]
    if chol.dim() == 2:
        chol = chol[None]
    if amps.dim() == 2:
        amps = amps[None]
    n_b = max(means.shape[0], chol.shape[0], amps.shape[0])
    m = means.shape[1]
    means = means.expand(n_b, m, 2)
    chol = chol.expand(n_b, m, 3)
    amps = amps.expand(n_b, m, amps.shape[-1])
    h2, w2, scale, offset = sr_grid(height, width, factor)
    conics = cholesky_to_conic(chol) / (scale * scale)
    out = rasterize_splats(
        (means * scale + offset).reshape(-1, 2),
        conics.reshape(-1, 3),
        amps.reshape(n_b * m, -1),
        torch.arange(n_b, device=means.device).repeat_interleave(m),
        n_batch=n_b,
        height=h2,
        width=w2,
        k_sigma=k_sigma,
        chunk_pairs=chunk_pairs,
    )
    if is_complex:
        out = torch.complex(out[:, 0], out[:, 1])
    return out if batched else out[0]
