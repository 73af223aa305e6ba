"""Windowed 2D Gaussian splat rasteriser: the SUM of splats on a batch of pixel grids.

A splat ``n`` adds ``a_n * exp(-q / 2)`` with ``q = d^T P_n d``, ``d = p - m_n`` to every pixel ``p``
of image ``b_n`` whose ``q <= k^2`` (its k-sigma ellipse), where ``P_n`` is the inverse covariance
("conic" ``(a, b, c)`` = ``[[a, b], [b, c]]``). There is no alpha compositing or depth order.

Positions are in pixel units: ``x`` along columns, ``y`` along rows, pixel centres at integers.

Splats are packed: one flat list with a ``batch_index`` saying which image each one falls on, so
slices with different visible Gaussians (SVR) and frames with per-frame offsets (cine) use the same
kernel. Work is grouped by window radius and chunked so that memory stays bounded by
``chunk_pairs`` (splat-pixel pairs held at once), forward AND backward: the autograd function
keeps the window weights of at most ``cache_pairs`` pairs (a training step of the SVR fit fits in
it; the backward then does not recompute them) and recomputes the others in the backward pass.

The dense all-pairs evaluation in :mod:`gaussian_mri.render._reference` is the test oracle.
"""

from __future__ import annotations


import torch

from .._checks import require_last_dim, require_tensor
from . import native
from .backends import resolve_kernel_backend

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
    frac: torch.Tensor, conics: torch.Tensor, base: torch.Tensor, radius: int, canvas_width: int, q_max: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Pixel windows of a chunk of splats sharing one window radius, on the padded canvas.

    ``frac`` (n, 2) is the splat centre minus its nearest pixel, ``base`` (n,) the canvas index of
    that pixel. The window is separable: ``dx`` varies along columns only, ``dy`` along rows only,
    so only the cross term of ``q`` and what follows cost a full (n, P, P) evaluation.

    Returns flat canvas indices (n, P*P), dx (n, 1, P), dy (n, P, 1), and the weights
    ``w = exp(-q/2)`` (zero where ``q > q_max``, outside the splat's ellipse), shape (n, P, P).
    """
    dev, dt = frac.device, frac.dtype
    r = torch.arange(-radius, radius + 1, device=dev)
    off = (r[:, None] * canvas_width + r[None, :]).reshape(1, -1)
    rf = r.to(dt)
    dx = (rf[None, :] - frac[:, :1])[:, None, :]  # (n, 1, P)
    dy = (rf[None, :] - frac[:, 1:])[:, :, None]  # (n, P, 1)
    a, b, c = conics[:, 0, None, None], conics[:, 1, None, None], conics[:, 2, None, None]
    q = (a * dx * dx + c * dy * dy) + (2.0 * b * dy) * dx
    w = torch.exp(-0.5 * q).masked_fill_(q > q_max[:, None, None], 0.0)
    flat = base[:, None] + off
    return flat, dx, dy, w


def _plan(
    means: torch.Tensor, conics: torch.Tensor, height: int, width: int, q_max: torch.Tensor, chunk_pairs: int
) -> tuple[list[tuple[int, torch.Tensor]], int]:
    """Group splats into (radius, indices) chunks; splats whose window misses the image are culled.

    Returns the plan and the canvas padding (pixels added on each side of every image).
    """
    with torch.no_grad():
        cov = conic_to_cov(conics)
        sx = torch.sqrt(cov[:, 0].clamp_min(0))
        sy = torch.sqrt(cov[:, 2].clamp_min(0))
        k = torch.sqrt(q_max.clamp_min(0))
        rx = torch.ceil(k * sx)
        ry = torch.ceil(k * sy)
        limit = max(height, width)
        radius = torch.maximum(rx, ry).clamp(1, limit)
        # Cull: window entirely outside the grid, or non-finite parameters.
        x, y = means[:, 0], means[:, 1]
        inside = (x + rx >= -0.5) & (x - rx <= width - 0.5) & (y + ry >= -0.5) & (y - ry <= height - 0.5)
        ok = inside & (q_max > 0) & torch.isfinite(radius) & torch.isfinite(x) & torch.isfinite(y)
        idx_all = torch.nonzero(ok).squeeze(1)
        if idx_all.numel() == 0:
            return [], 0
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
    # A kept centre lies within r (+1) of the grid and its window reaches r further: pad 2 r + 2.
    pad = 2 * int(values.max()) + 2
    return plan, pad


def _centre(means: torch.Tensor, batch_index: torch.Tensor, pad: int, hp: int, wp: int):
    """Window centre (on the padded canvas) and offset of each splat centre from it.

    The window centre is the splat centre's nearest pixel, clamped into the image: per axis it is then
    no farther from any image pixel than the splat centre, so a window of the splat's radius (at most
    the image size) still holds every image pixel of its ellipse, also for a large splat centred far
    outside the image. The offset ``frac`` is then not limited to half a pixel.
    """
    c = torch.floor(means + 0.5)
    c = torch.stack([c[:, 0].clamp(0, wp - 2 * pad - 1), c[:, 1].clamp(0, hp - 2 * pad - 1)], -1)
    frac = means - c
    cl = c.long() + pad
    base = (batch_index * hp + cl[:, 1]) * wp + cl[:, 0]
    return frac, base


class _RasterizeSplats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, amplitudes, batch_index, q_max, n_batch, height, width, chunk_pairs, cache_pairs):  # type: ignore[override]
        n_chan = amplitudes.shape[1]
        plan, pad = _plan(means, conics, height, width, q_max, chunk_pairs)
        hp, wp = height + 2 * pad, width + 2 * pad
        canvas = torch.zeros(n_batch * hp * wp, n_chan, dtype=amplitudes.dtype, device=amplitudes.device)
        with torch.no_grad():
            frac, base = _centre(means, batch_index, pad, hp, wp)
        # The window weights and canvas indices of the first `cache_pairs` splat-pixel pairs are kept for
        # the backward pass (12 bytes a pair), which then skips recomputing them; the rest is recomputed.
        keep = any(ctx.needs_input_grad[:3])
        budget = cache_pairs if keep else 0
        cache = []
        for r, idx in plan:
            flat, _, _, w = _windows(frac[idx], conics[idx], base[idx], r, wp, q_max[idx])
            amp = amplitudes[idx]
            if n_chan == 1:
                vals = (w * amp[:, :, None]).reshape(-1, 1)
            else:
                vals = (w.reshape(len(idx), -1, 1) * amp[:, None, :]).reshape(-1, n_chan)
            flat = flat.reshape(-1)
            canvas.index_add_(0, flat, vals)
            if budget >= flat.numel():
                cache.append((flat, w))
                budget -= flat.numel()
            else:
                cache.append(None)
                budget = 0
        ctx.save_for_backward(means, conics, amplitudes, batch_index, q_max)
        ctx.plan = plan
        ctx.cache = cache if keep else [None] * len(plan)
        ctx.meta = (n_batch, height, width, pad)
        out = canvas.reshape(n_batch, hp, wp, n_chan)[:, pad : pad + height, pad : pad + width]
        return out.permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, amplitudes, batch_index, q_max = ctx.saved_tensors
        n_batch, height, width, pad = ctx.meta
        n_chan = amplitudes.shape[1]
        hp, wp = height + 2 * pad, width + 2 * pad
        g_canvas = torch.zeros(n_batch, hp, wp, n_chan, dtype=grad_out.dtype, device=grad_out.device)
        g_canvas[:, pad : pad + height, pad : pad + width] = grad_out.permute(0, 2, 3, 1)
        g_canvas = g_canvas.reshape(-1, n_chan)
        need_m, need_c, need_a = ctx.needs_input_grad[:3]
        g_means = torch.zeros_like(means) if need_m else None
        g_conics = torch.zeros_like(conics) if need_c else None
        g_amps = torch.zeros_like(amplitudes) if need_a else None
        frac, base = _centre(means, batch_index, pad, hp, wp)
        for (r, idx), cached in zip(ctx.plan, ctx.cache):
            if cached is None:
                flat, dx, dy, w = _windows(frac[idx], conics[idx], base[idx], r, wp, q_max[idx])
                flat = flat.reshape(-1)
            else:
                flat, w = cached
                rf = torch.arange(-r, r + 1, device=frac.device).to(frac.dtype)
                fr = frac[idx]
                dx = (rf[None, :] - fr[:, :1])[:, None, :]
                dy = (rf[None, :] - fr[:, 1:])[:, :, None]
            n, side = len(idx), 2 * r + 1
            g = g_canvas[flat].reshape(n, side * side, n_chan)
            amp = amplitudes[idx]
            if need_a:
                g_amps[idx] = torch.bmm(w.reshape(n, 1, -1), g)[:, 0]
            if need_m or need_c:
                h = torch.bmm(g, amp[:, :, None]).reshape(n, side, side)  # dL/dw
                s = (-0.5 * h) * w  # dL/dq, (n, P, P)
                sx = s.sum(1)  # (n, P) over rows
                sy = s.sum(2)  # (n, P) over columns
                dxv, dyv = dx[:, 0, :], dy[:, :, 0]
                s_x = (sx * dxv).sum(1)
                s_y = (sy * dyv).sum(1)
                s_xy = (torch.bmm(s, dx.transpose(1, 2))[:, :, 0] * dyv).sum(1)
                if need_c:
                    g_conics[idx] = torch.stack([(sx * dxv * dxv).sum(1), 2.0 * s_xy, (sy * dyv * dyv).sum(1)], -1)
                if need_m:
                    a, b, c = conics[idx, 0], conics[idx, 1], conics[idx, 2]
                    g_means[idx] = torch.stack([-2.0 * (a * s_x + b * s_y), -2.0 * (b * s_x + c * s_y)], -1)
        return g_means, g_conics, g_amps, None, None, None, None, None, None, None


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
    q_max: torch.Tensor | None = None,
    chunk_pairs: int = 1 << 21,
    backend: str = "auto",
    validate: bool = True,
    cache_pairs: int = 1 << 24,
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
    q_max : (N,) tensor, optional
        Per-splat cut-off replacing ``k_sigma^2`` (the slice projector passes
        ``k^2 - m_w^2 / S_ww`` so that a 3D Gaussian is evaluated inside its 3D k-sigma ellipsoid).
    chunk_pairs : int
        Upper bound on the splat-pixel pairs evaluated at once (memory bound, forward and backward).
    backend : str
        ``"auto"`` (Triton kernels on CUDA when available, compiled C kernels on the CPU when they
        build), ``"torch"`` (this module, the reference), ``"triton"`` or ``"native"``
        (:mod:`gaussian_mri.render.backends`).
    cache_pairs : int
        With a gradient to compute, the window weights and canvas indices of up to this many splat-pixel
        pairs are kept from the forward pass for the backward (12 bytes a pair; default 2^24 pairs,
        200 MB), which then does not recompute them; pairs beyond it are recomputed. 0: recompute all
        (memory bounded by ``chunk_pairs`` alone). The result is the same either way.
    validate : bool
        Check that ``batch_index`` lies in ``[0, n_batch)``. The check reads the index range back to
        the host (a device synchronisation on a GPU); callers that build ``batch_index`` themselves
        (the slice projector, :func:`rasterize_gaussians_2d`) pass ``False``.

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
    if validate and n and (int(batch_index.min()) < 0 or int(batch_index.max()) >= n_batch):
        raise ValueError(f"batch_index must lie in [0, {n_batch}), got range [{int(batch_index.min())}, {int(batch_index.max())}]")
    if not k_sigma > 0:
        raise ValueError(f"k_sigma must be > 0, got {k_sigma}")
    if q_max is None:
        q_max = torch.full((n,), float(k_sigma) ** 2, dtype=means.dtype, device=means.device)
    elif q_max.shape != (n,):
        raise ValueError(f"q_max must have shape (N,) = ({n},), got {tuple(q_max.shape)}")
    resolved = resolve_kernel_backend(backend, means.device)
    if resolved == "native" and amplitudes.shape[1] <= native.MAX_CHANNELS:  # (more channels: PyTorch)
        return native.rasterize_splats_native(means, conics, amplitudes, batch_index, q_max.detach().to(means.dtype),
                                       n_batch=int(n_batch), height=int(height), width=int(width))
    if resolved == "triton" and means.dtype == torch.float32:
        from .triton_splat2d import rasterize_splats_triton

        return rasterize_splats_triton(means, conics, amplitudes, batch_index, q_max.detach().to(means.dtype),
                                       n_batch=int(n_batch), height=int(height), width=int(width))
    # Window weights are kept for a backward pass only when one will follow (a Function's
    # ctx.needs_input_grad says True under torch.no_grad too: renders for statistics and output kept them).
    wants_grad = torch.is_grad_enabled() and (means.requires_grad or conics.requires_grad or amplitudes.requires_grad)
    return _RasterizeSplats.apply(
        means, conics, amplitudes, batch_index, q_max.detach().to(means.dtype), int(n_batch), int(height), int(width), int(chunk_pairs),
        int(cache_pairs) if wants_grad else 0,
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
    backend: str = "auto",
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
        backend=backend,
        validate=False,  # built here: arange(n_b), always in range
    )
    if is_complex:
        out = torch.complex(out[:, 0], out[:, 1])
    return out if batched else out[0]
