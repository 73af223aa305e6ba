"""Fused Triton kernels for the 2D splat rasteriser (forward and backward): ``backend="triton"``.

Same semantics as the PyTorch reference :class:`gaussian_mri.render.splat2d._RasterizeSplats`: the
SUM over packed splats (no alpha compositing, no depth order); splat ``n`` adds
``a_n[c] * exp(-q / 2)``, ``q = d^T P_n d``, ``d = p - m_n``, to pixel ``p`` (centres at integers,
``x`` = column, ``y`` = row) of image ``batch_index[n]`` where ``q <= q_max[n]``. Gradients treat
``q_max`` as a constant and the cut ``q <= q_max`` as a hard mask, like the reference.

Design (modelled on the tile-based rasteriser of gsplat: V. Ye et al., "gsplat: An Open-Source
Library for Gaussian Splatting", 2024; written from scratch, no code taken from it):

* Preparation (plain PyTorch, O(N), on the device): per-splat pixel bounding box of the
  ``q <= q_max`` ellipse, half-width ``sqrt(q_max c / det)``, half-height ``sqrt(q_max a / det)``,
  ``det = a c - b^2`` (computed in float64, slightly inflated so float32 rounding of ``q`` at the rim
  never puts an accepted pixel outside it), clipped to the image; inactive splats (``q_max <= 0``,
  ``det <= 0``, non-finite parameters) or splats off the image get an empty box. Splats are sorted
  by ``batch_index`` (``torch.sort``, stable) and each image's ``[start, end)`` range in that order
  comes from ``torch.searchsorted``. Nothing is read back to the host: no ``.item()``, no
  ``.tolist()``, no ``nonzero``; every launch size is a tensor shape (N, n_batch, H, W, C).
* Forward, one program per (image, 16x16 pixel tile): the program loads its image's range from
  device memory and loops over it (dynamic loop bounds) in blocks of ``BLOCK_N`` splats; a block
  whose boxes all miss the tile is skipped after loading just the boxes; otherwise the
  (tile pixels x splats) weights are evaluated and contracted with the amplitudes into a
  (pixels x channels) register accumulator. Each tile owns its pixels: plain stores, no atomics,
  deterministic.
* Backward, one program per splat: the program walks its (clipped) bounding box in 16x16 pixel
  blocks (dynamic loop bounds from its box), reads ``grad_out`` there, and reduces
  ``dL/da_n[c] = sum w g[c]`` and ``dL/dq = -1/2 w sum_c g[c] a_n[c]`` times ``dx, dy, dx^2, dx dy,
  dy^2`` in registers, then writes the gradients of its own splat: no atomics, deterministic.
* ``q`` is evaluated with the reference's operation order, ``(a dx dx + c dy dy) + (2 b dy) dx`` with
  ``dx = x_pixel - m_x``, and the kernels are compiled without FMA contraction
  (``enable_fp_fusion=False``), so that the hard cut decides the same pixels as the torch path.

Known differences from the torch path: float64 inputs fall back to the torch implementation (the
kernels are float32); non-positive-definite conics (``det <= 0``) are skipped here (the reference's
behaviour for them is unspecified); the reference clamps window radii to ``max(height, width)``, so
a huge splat (radius > max(H, W)) whose centre lies outside the image renders as zero there, or
raises an IndexError in ``index_add_`` (centre far below the image), while this module agrees with
the dense oracle :func:`gaussian_mri.render._reference.dense_splats`.

On a CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
imported), which is how they are tested without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rasterize_splats_triton"]

TILE_H = 16
TILE_W = 16
# Test-only hook: scales dL/dq inside the backward kernel (1.0 in normal use). The tests perturb it
# to prove that the gradient comparison detects a wrong backward.
_DLDQ_SCALE = 1.0


@triton.jit
def _splat_fwd_kernel(
    out_ptr, par_ptr, box_ptr, amp_ptr, start_ptr, end_ptr,
    N, H, W, C, n_tiles_x, n_tiles,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr, CP: tl.constexpr,
):
    pid = tl.program_id(0)
    img = pid // n_tiles
    tile = pid % n_tiles
    ty = tile // n_tiles_x
    tx = tile % n_tiles_x
    ty0 = ty * TILE_H
    tx0 = tx * TILE_W
    ty1 = ty0 + TILE_H - 1
    tx1 = tx0 + TILE_W - 1

    pix = tl.arange(0, TILE_H * TILE_W)
    py = ty0 + pix // TILE_W
    px = tx0 + pix % TILE_W
    pyf = py.to(tl.float32)
    pxf = px.to(tl.float32)
    ch = tl.arange(0, CP)
    ch_ok = ch < C

    start = tl.load(start_ptr + img)
    end = tl.load(end_ptr + img)
    acc = tl.zeros([TILE_H * TILE_W, CP], dtype=tl.float32)
    for s0 in range(start, end, BLOCK_N):
        offs = s0 + tl.arange(0, BLOCK_N)
        valid = offs < end
        # Boxes are inclusive pixel ranges (x0, x1, y0, y1), empty when x0 > x1.
        bx0 = tl.load(box_ptr + offs, mask=valid, other=1)
        bx1 = tl.load(box_ptr + N + offs, mask=valid, other=0)
        by0 = tl.load(box_ptr + 2 * N + offs, mask=valid, other=1)
        by1 = tl.load(box_ptr + 3 * N + offs, mask=valid, other=0)
        hit = valid & (bx0 <= bx1) & (by0 <= by1) & (bx0 <= tx1) & (bx1 >= tx0) & (by0 <= ty1) & (by1 >= ty0)
        if tl.max(hit.to(tl.int32), axis=0) > 0:
            mx = tl.load(par_ptr + offs, mask=hit, other=0.0)
            my = tl.load(par_ptr + N + offs, mask=hit, other=0.0)
            ca = tl.load(par_ptr + 2 * N + offs, mask=hit, other=0.0)
            cb = tl.load(par_ptr + 3 * N + offs, mask=hit, other=0.0)
            cc = tl.load(par_ptr + 4 * N + offs, mask=hit, other=0.0)
            qm = tl.load(par_ptr + 5 * N + offs, mask=hit, other=-1.0)
            dx = pxf[:, None] - mx[None, :]
            dy = pyf[:, None] - my[None, :]
            q = (ca[None, :] * dx * dx + cc[None, :] * dy * dy) + (2.0 * cb[None, :] * dy) * dx
            keep = hit[None, :] & (q <= qm[None, :])
            w = tl.where(keep, tl.exp(-0.5 * q), 0.0)  # (pixels, splats)
            amp = tl.load(amp_ptr + offs[:, None] * C + ch[None, :], mask=hit[:, None] & ch_ok[None, :], other=0.0)
            acc += tl.sum(w[:, :, None] * amp[None, :, :], axis=1)

    inside = (py < H) & (px < W)
    base = img.to(tl.int64) * C * H * W
    ptrs = out_ptr + base + ch[None, :].to(tl.int64) * (H * W) + (py * W + px)[:, None]
    tl.store(ptrs, acc, mask=inside[:, None] & ch_ok[None, :])


@triton.jit
def _splat_bwd_kernel(
    gout_ptr, par_ptr, box_ptr, amp_ptr, bidx_ptr, gmean_ptr, gconic_ptr, gamp_ptr,
    N, H, W, C, dldq_scale,
    BY: tl.constexpr, BX: tl.constexpr, CP: tl.constexpr,
):
    n = tl.program_id(0)
    x0 = tl.load(box_ptr + n)
    x1 = tl.load(box_ptr + N + n)
    y0 = tl.load(box_ptr + 2 * N + n)
    y1 = tl.load(box_ptr + 3 * N + n)
    mx = tl.load(par_ptr + n)
    my = tl.load(par_ptr + N + n)
    ca = tl.load(par_ptr + 2 * N + n)
    cb = tl.load(par_ptr + 3 * N + n)
    cc = tl.load(par_ptr + 4 * N + n)
    qm = tl.load(par_ptr + 5 * N + n)
    img = tl.load(bidx_ptr + n)
    ch = tl.arange(0, CP)
    ch_ok = ch < C
    amp = tl.load(amp_ptr + n.to(tl.int64) * C + ch, mask=ch_ok, other=0.0)
    gbase = img.to(tl.int64) * C * H * W + ch.to(tl.int64) * (H * W)  # (CP,)

    pix = tl.arange(0, BY * BX)
    oy = pix // BX
    ox = pix % BX
    acc_a = tl.zeros([BY * BX, CP], dtype=tl.float32)
    acc_x = tl.zeros([BY * BX], dtype=tl.float32)
    acc_y = tl.zeros([BY * BX], dtype=tl.float32)
    acc_xx = tl.zeros([BY * BX], dtype=tl.float32)
    acc_xy = tl.zeros([BY * BX], dtype=tl.float32)
    acc_yy = tl.zeros([BY * BX], dtype=tl.float32)
    # Empty boxes (x0 > x1 or y0 > y1) run no iteration.
    for yb in range(y0, y1 + 1, BY):
        for xb in range(x0, x1 + 1, BX):
            py = yb + oy
            px = xb + ox
            inb = (py <= y1) & (px <= x1)
            dx = px.to(tl.float32) - mx
            dy = py.to(tl.float32) - my
            q = (ca * dx * dx + cc * dy * dy) + (2.0 * cb * dy) * dx
            w = tl.where(inb & (q <= qm), tl.exp(-0.5 * q), 0.0)
            g = tl.load(gout_ptr + gbase[None, :] + (py * W + px)[:, None], mask=inb[:, None] & ch_ok[None, :], other=0.0)
            h = tl.sum(g * amp[None, :], axis=1)  # dL/dw
            s = (-0.5 * h) * w * dldq_scale  # dL/dq
            acc_a += w[:, None] * g
            sdx = s * dx
            sdy = s * dy
            acc_x += sdx
            acc_y += sdy
            acc_xx += sdx * dx
            acc_xy += sdx * dy
            acc_yy += sdy * dy

    s_x = tl.sum(acc_x, axis=0)
    s_y = tl.sum(acc_y, axis=0)
    tl.store(gmean_ptr + 2 * n, -2.0 * (ca * s_x + cb * s_y))
    tl.store(gmean_ptr + 2 * n + 1, -2.0 * (cb * s_x + cc * s_y))
    tl.store(gconic_ptr + 3 * n, tl.sum(acc_xx, axis=0))
    tl.store(gconic_ptr + 3 * n + 1, 2.0 * tl.sum(acc_xy, axis=0))
    tl.store(gconic_ptr + 3 * n + 2, tl.sum(acc_yy, axis=0))
    tl.store(gamp_ptr + n.to(tl.int64) * C + ch, tl.sum(acc_a, axis=0), mask=ch_ok)


def _prepare(means, conics, q_max, height, width):
    """Per-splat parameters (6, N) float32 [mx, my, a, b, c, q_max] and boxes (4, N) int32
    [x0, x1, y0, y1] (inclusive, clipped to the image, empty when x0 > x1). Device-only ops."""
    with torch.no_grad():
        m64 = means.detach().double()
        c64 = conics.detach().double()
        q64 = q_max.detach().double()
        a, b, c = c64.unbind(-1)
        det = a * c - b * b
        active = (
            (q64 > 0) & (det > 0) & (a > 0)
            & torch.isfinite(m64).all(-1) & torch.isfinite(c64).all(-1) & torch.isfinite(q64)
        )
        det_s = torch.where(active, det, torch.ones_like(det))
        # Inflated cut-off: float32 rounding of q near the rim (relative ~1e-7 times the conic's
        # condition) must not accept a pixel outside the box.
        q_eff = torch.where(active, q64, torch.zeros_like(q64)) * 1.01 + 1e-3
        hw = torch.sqrt(q_eff * torch.where(active, c, torch.ones_like(c)) / det_s) + 1e-2
        hh = torch.sqrt(q_eff * torch.where(active, a, torch.ones_like(a)) / det_s) + 1e-2
        mx = torch.where(active, m64[:, 0], torch.zeros_like(det))
        my = torch.where(active, m64[:, 1], torch.zeros_like(det))
        # Clipped to the image; a box off the image comes out empty (x0 > x1 or y0 > y1).
        x0 = torch.ceil((mx - hw).clamp(-1, width)).clamp_min(0)
        x1 = torch.floor((mx + hw).clamp(-1, width)).clamp_max(width - 1)
        y0 = torch.ceil((my - hh).clamp(-1, height)).clamp_min(0)
        y1 = torch.floor((my + hh).clamp(-1, height)).clamp_max(height - 1)
        x1 = torch.where(active, x1, x0 - 1)  # inactive splats: empty box
        box = torch.stack([x0, x1, y0, y1]).to(torch.int32).contiguous()
        par = torch.cat([means.detach().t(), conics.detach().t(), q_max.detach()[None]]).to(torch.float32).contiguous()
    return par, box


def _channel_block(n_chan):
    cp = triton.next_power_of_2(max(int(n_chan), 1))
    return cp, max(2, min(16, 32 // cp))


class _RasterizeSplatsTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, amplitudes, batch_index, q_max, n_batch, height, width):  # type: ignore[override]
        n, n_chan = amplitudes.shape
        ctx.save_for_backward(means, conics, amplitudes, batch_index, q_max)
        ctx.meta = (n_batch, height, width)
        if n == 0:
            return torch.zeros(n_batch, n_chan, height, width, dtype=amplitudes.dtype, device=amplitudes.device)
        par, box = _prepare(means, conics, q_max, height, width)
        bidx, order = torch.sort(batch_index, stable=True)
        images = torch.arange(n_batch, device=batch_index.device, dtype=batch_index.dtype)
        starts = torch.searchsorted(bidx, images).to(torch.int32)
        ends = torch.searchsorted(bidx, images, right=True).to(torch.int32)
        par_s = par[:, order].contiguous()
        box_s = box[:, order].contiguous()
        amp_s = amplitudes.detach()[order].to(torch.float32).contiguous()
        out = torch.empty(n_batch, n_chan, height, width, dtype=torch.float32, device=amplitudes.device)
        cp, block_n = _channel_block(n_chan)
        n_tx = triton.cdiv(width, TILE_W)
        n_tiles = n_tx * triton.cdiv(height, TILE_H)
        _splat_fwd_kernel[(n_batch * n_tiles,)](
            out, par_s, box_s, amp_s, starts, ends,
            n, height, width, n_chan, n_tx, n_tiles,
            TILE_H=TILE_H, TILE_W=TILE_W, BLOCK_N=block_n, CP=cp, num_warps=4, enable_fp_fusion=False,
        )
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, amplitudes, batch_index, q_max = ctx.saved_tensors
        n_batch, height, width = ctx.meta
        n, n_chan = amplitudes.shape
        need_m, need_c, need_a = ctx.needs_input_grad[:3]
        if n == 0 or not (need_m or need_c or need_a):
            return (torch.zeros_like(means) if need_m else None, torch.zeros_like(conics) if need_c else None,
                    torch.zeros_like(amplitudes) if need_a else None, None, None, None, None, None)
        par, box = _prepare(means, conics, q_max, height, width)
        g = grad_out.to(torch.float32).contiguous()
        g_means = torch.empty(n, 2, dtype=torch.float32, device=means.device)
        g_conics = torch.empty(n, 3, dtype=torch.float32, device=means.device)
        g_amps = torch.empty(n, n_chan, dtype=torch.float32, device=means.device)
        cp, _ = _channel_block(n_chan)
        _splat_bwd_kernel[(n,)](
            g, par, box, amplitudes.detach().to(torch.float32).contiguous(), batch_index.contiguous(),
            g_means, g_conics, g_amps,
            n, height, width, n_chan, float(_DLDQ_SCALE),
            BY=TILE_H, BX=TILE_W, CP=cp, num_warps=4, enable_fp_fusion=False,
        )
        return (g_means if need_m else None, g_conics if need_c else None, g_amps if need_a else None,
                None, None, None, None, None)


def rasterize_splats_triton(
    means: torch.Tensor,
    conics: torch.Tensor,
    amplitudes: torch.Tensor,
    batch_index: torch.Tensor,
    q_max: torch.Tensor,
    *,
    n_batch: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Triton backend of :func:`gaussian_mri.render.splat2d.rasterize_splats` (inputs already checked there).

    means (N, 2), conics (N, 3), amplitudes (N, C), batch_index (N,) int64, q_max (N,) (detached);
    returns (n_batch, C, height, width), differentiable w.r.t. means, conics and amplitudes.
    float64 inputs use the PyTorch implementation (the kernels are float32).
    """
    if means.dtype != torch.float32:
        from .splat2d import rasterize_splats

        return rasterize_splats(means, conics, amplitudes, batch_index, n_batch=int(n_batch), height=int(height),
                                width=int(width), q_max=q_max.detach().to(means.dtype), backend="torch", validate=False)
    from .backends import on_device

    with on_device(means.device):
        return _RasterizeSplatsTriton.apply(means, conics, amplitudes, batch_index, q_max.detach().to(torch.float32),
                                            int(n_batch), int(height), int(width))
