"""Fused Triton kernels for :func:`gaussian_mri.render.slices.project_to_slices` (``backend="triton"``).

Design
------
* Forward: one kernel, one program per block of ``BLOCK`` candidate pairs ``(g, s)``. Each lane gathers
  the mean, covariance (all 9 entries, used as given) and amplitudes of Gaussian ``g`` and the
  rotation, origin, spacing and PSF of slice ``s``, then computes, exactly as the PyTorch reference::

      m = R^T (mu - o),   S = R^T Sigma R + diag(psf),   t = m_w / S_ww
      mean = m_uv - S_uv,w t,   C = S_uv - S_uv,w S_w,uv / S_ww,   det S = S_ww det C
      weight = exp(-m_w^2 / (2 S_ww)),   peak = sqrt(max(det Sigma / det S, 0)) * weight
      means_px = mean / spacing,   conic = D C^-1 D (D = diag spacing),   q_max = k^2 - m_w^2 / S_ww

  and writes the packed splat (means, conics, amplitudes * peak, weight, q_max). Nothing is saved but
  the inputs: the backward recomputes these few flops.
* Backward: one kernel over the same pairs. It recomputes the forward quantities and evaluates the
  closed-form vector-Jacobian products (chain rule through the conic inverse and ``1/det C``, the
  Schur complement and its divisions by ``S_ww``, ``det S``, ``det Sigma`` via its cofactor matrix,
  the ``sqrt`` and ``exp``; ``S = R^T Sigma R`` gives ``dSigma = R G R^T`` and
  ``dR = Sigma R G^T + Sigma^T R G`` with ``G`` the gradient on the six entries of ``S`` that the
  reference reads). Per-pair results are scattered with ``tl.atomic_add`` into Gaussian-indexed
  (means, covs, amps) and slice-indexed (rotation, origin, spacing, psf_var) float32 buffers. Only the
  buffers whose input needs a gradient are written (compile-time flags), so the common case of fixed
  slice poses does no slice-indexed atomics.
* Precision: inputs and outputs are float32. The 3x3 algebra (``S``, ``det Sigma``, Schur complement,
  conic inverse and all of the backward chain) runs in float64 registers (``ACC64=True``), because
  ``det Sigma`` and the Schur complement cancel catastrophically in float32 for needle-like or very
  large Gaussians (relative errors of 1e-4 and worse, in the float32 PyTorch reference too); with it
  the kernel agrees with the float64 evaluation of the reference to float32 round-off. Only ``+ - * /``
  run in float64; ``exp`` and ``sqrt`` run in float32 on float64-accurate arguments. ``ACC64=False``
  (module constant ``ACCUMULATE_FLOAT64``) keeps everything in float32 for GPUs with slow float64.
* No host synchronisation: the launch grid depends only on tensor shapes. ``N = 0`` launches nothing.
* Tensors that are not all float32 (e.g. float64) fall back to the PyTorch reference.
* ``q_max`` is not differentiable (detached, as in the reference). Where ``det Sigma / det S <= 0``
  (not positive-definite input) the peak is 0 and its gradient is taken as 0 (the reference yields
  ``inf``/``nan`` exactly at 0 from ``sqrt``'s derivative). Double backward is not supported.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["project_to_slices_triton", "ACCUMULATE_FLOAT64"]

ACCUMULATE_FLOAT64 = True
_BLOCK_FWD = 128
_BLOCK_BWD = 64


@triton.jit
def _acc(x, ACC64: tl.constexpr):
    if ACC64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _ld(ptr, mask, other, ACC64: tl.constexpr):
    return _acc(tl.load(ptr, mask=mask, other=other), ACC64)


@triton.jit
def _gather(means_ptr, covs_ptr, rot_ptr, origin_ptr, spacing_ptr, psf_ptr, g, s, mask, ACC64: tl.constexpr):
    """Inputs of one block of pairs. Masked lanes get Sigma = I, R = I, psf = 1: finite arithmetic."""
    mx = _ld(means_ptr + g * 3 + 0, mask, 0.0, ACC64)
    my = _ld(means_ptr + g * 3 + 1, mask, 0.0, ACC64)
    mz = _ld(means_ptr + g * 3 + 2, mask, 0.0, ACC64)
    c00 = _ld(covs_ptr + g * 9 + 0, mask, 1.0, ACC64)
    c01 = _ld(covs_ptr + g * 9 + 1, mask, 0.0, ACC64)
    c02 = _ld(covs_ptr + g * 9 + 2, mask, 0.0, ACC64)
    c10 = _ld(covs_ptr + g * 9 + 3, mask, 0.0, ACC64)
    c11 = _ld(covs_ptr + g * 9 + 4, mask, 1.0, ACC64)
    c12 = _ld(covs_ptr + g * 9 + 5, mask, 0.0, ACC64)
    c20 = _ld(covs_ptr + g * 9 + 6, mask, 0.0, ACC64)
    c21 = _ld(covs_ptr + g * 9 + 7, mask, 0.0, ACC64)
    c22 = _ld(covs_ptr + g * 9 + 8, mask, 1.0, ACC64)
    # rotation[s, i, a]: world axis i (row), slice axis a (column u, v, w)
    r00 = _ld(rot_ptr + s * 9 + 0, mask, 1.0, ACC64)
    r01 = _ld(rot_ptr + s * 9 + 1, mask, 0.0, ACC64)
    r02 = _ld(rot_ptr + s * 9 + 2, mask, 0.0, ACC64)
    r10 = _ld(rot_ptr + s * 9 + 3, mask, 0.0, ACC64)
    r11 = _ld(rot_ptr + s * 9 + 4, mask, 1.0, ACC64)
    r12 = _ld(rot_ptr + s * 9 + 5, mask, 0.0, ACC64)
    r20 = _ld(rot_ptr + s * 9 + 6, mask, 0.0, ACC64)
    r21 = _ld(rot_ptr + s * 9 + 7, mask, 0.0, ACC64)
    r22 = _ld(rot_ptr + s * 9 + 8, mask, 1.0, ACC64)
    ox = _ld(origin_ptr + s * 3 + 0, mask, 0.0, ACC64)
    oy = _ld(origin_ptr + s * 3 + 1, mask, 0.0, ACC64)
    oz = _ld(origin_ptr + s * 3 + 2, mask, 0.0, ACC64)
    du = _ld(spacing_ptr + s * 2 + 0, mask, 1.0, ACC64)
    dv = _ld(spacing_ptr + s * 2 + 1, mask, 1.0, ACC64)
    p0 = _ld(psf_ptr + s * 3 + 0, mask, 1.0, ACC64)
    p1 = _ld(psf_ptr + s * 3 + 1, mask, 1.0, ACC64)
    p2 = _ld(psf_ptr + s * 3 + 2, mask, 1.0, ACC64)
    return (mx, my, mz, c00, c01, c02, c10, c11, c12, c20, c21, c22,
            r00, r01, r02, r10, r11, r12, r20, r21, r22, ox, oy, oz, du, dv, p0, p1, p2)


@triton.jit
def _det3_cof(c00, c01, c02, c10, c11, c12, c20, c21, c22):
    """det and cofactor matrix (d det / d c_ij) of a general 3x3 matrix."""
    k00 = c11 * c22 - c12 * c21
    k01 = c12 * c20 - c10 * c22
    k02 = c10 * c21 - c11 * c20
    k10 = c02 * c21 - c01 * c22
    k11 = c00 * c22 - c02 * c20
    k12 = c01 * c20 - c00 * c21
    k20 = c01 * c12 - c02 * c11
    k21 = c02 * c10 - c00 * c12
    k22 = c00 * c11 - c01 * c10
    det = c00 * k00 + c01 * k01 + c02 * k02
    return det, k00, k01, k02, k10, k11, k12, k20, k21, k22


@triton.jit
def _add3(ptr, row, mask, a0, a1, a2):
    """``ptr[row, 0:3] += (a0, a1, a2)`` (float32 atomics; rows of a (n, 3) tensor)."""
    tl.atomic_add(ptr + row * 3 + 0, a0.to(tl.float32), mask=mask)
    tl.atomic_add(ptr + row * 3 + 1, a1.to(tl.float32), mask=mask)
    tl.atomic_add(ptr + row * 3 + 2, a2.to(tl.float32), mask=mask)


@triton.jit
def _add3x3(ptr, row, mask, a00, a01, a02, a10, a11, a12, a20, a21, a22):
    """``ptr[row] += [[a00, a01, a02], ...]`` (float32 atomics; rows of a (n, 3, 3) tensor)."""
    _add3(ptr, row * 3 + 0, mask, a00, a01, a02)
    _add3(ptr, row * 3 + 1, mask, a10, a11, a12)
    _add3(ptr, row * 3 + 2, mask, a20, a21, a22)


@triton.jit
def _pair_forward(mx, my, mz, c00, c01, c02, c10, c11, c12, c20, c21, c22,
                  r00, r01, r02, r10, r11, r12, r20, r21, r22, ox, oy, oz, p0, p1, p2):
    """The projection of one (Gaussian, slice) pair, shared by the forward kernel and the backward
    kernel's recomputation: slice-frame mean, S = R^T Sigma R + diag(psf) (through T = Sigma R), the
    conditional 2D Gaussian, det Sigma with its cofactors, the peak factor."""
    ex = mx - ox
    ey = my - oy
    ez = mz - oz
    m0 = r00 * ex + r10 * ey + r20 * ez
    m1 = r01 * ex + r11 * ey + r21 * ez
    m2 = r02 * ex + r12 * ey + r22 * ez
    t00 = c00 * r00 + c01 * r10 + c02 * r20
    t10 = c10 * r00 + c11 * r10 + c12 * r20
    t20 = c20 * r00 + c21 * r10 + c22 * r20
    t01 = c00 * r01 + c01 * r11 + c02 * r21
    t11 = c10 * r01 + c11 * r11 + c12 * r21
    t21 = c20 * r01 + c21 * r11 + c22 * r21
    t02 = c00 * r02 + c01 * r12 + c02 * r22
    t12 = c10 * r02 + c11 * r12 + c12 * r22
    t22 = c20 * r02 + c21 * r12 + c22 * r22
    s00 = r00 * t00 + r10 * t10 + r20 * t20 + p0
    s01 = r00 * t01 + r10 * t11 + r20 * t21
    s11 = r01 * t01 + r11 * t11 + r21 * t21 + p1
    sa = r00 * t02 + r10 * t12 + r20 * t22
    sb = r01 * t02 + r11 * t12 + r21 * t22
    sww = r02 * t02 + r12 * t12 + r22 * t22 + p2
    tt = m2 / sww
    mean_u = m0 - sa * tt
    mean_v = m1 - sb * tt
    cxx = s00 - sa * sa / sww
    cxy = s01 - sa * sb / sww
    cyy = s11 - sb * sb / sww
    det2 = cxx * cyy - cxy * cxy
    det_sig, k00, k01, k02, k10, k11, k12, k20, k21, k22 = _det3_cof(
        c00, c01, c02, c10, c11, c12, c20, c21, c22)
    det_s = sww * det2
    ratio = det_sig / det_s
    expo = -0.5 * m2 * m2 / sww
    weight = tl.exp(expo.to(tl.float32))
    sq = tl.sqrt(tl.maximum(ratio, 0.0).to(tl.float32))
    peak = sq * weight
    inv_det = 1.0 / det2
    return (ex, ey, ez, m0, m1, m2, t00, t10, t20, t01, t11, t21, t02, t12, t22, s00, s01, s11, sa, sb, sww,
            tt, mean_u, mean_v, cxx, cxy, cyy, det2, det_sig, k00, k01, k02, k10, k11, k12, k20, k21, k22,
            det_s, ratio, expo, weight, sq, peak, inv_det)


@triton.jit
def _project_fwd_kernel(
    means_ptr, covs_ptr, amps_ptr, rot_ptr, origin_ptr, spacing_ptr, psf_ptr, gidx_ptr, sidx_ptr,
    out_mean_ptr, out_conic_ptr, out_amp_ptr, out_weight_ptr, out_qmax_ptr,
    N, C, k2,
    BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    g = tl.load(gidx_ptr + n, mask=mask, other=0).to(tl.int64)
    s = tl.load(sidx_ptr + n, mask=mask, other=0).to(tl.int64)
    (mx, my, mz, c00, c01, c02, c10, c11, c12, c20, c21, c22,
     r00, r01, r02, r10, r11, r12, r20, r21, r22, ox, oy, oz, du, dv, p0, p1, p2) = _gather(
        means_ptr, covs_ptr, rot_ptr, origin_ptr, spacing_ptr, psf_ptr, g, s, mask, ACC64)

    (ex, ey, ez, m0, m1, m2, t00, t10, t20, t01, t11, t21, t02, t12, t22, s00, s01, s11, sa, sb, sww,
     tt, mean_u, mean_v, cxx, cxy, cyy, det2, det_sig, k00, k01, k02, k10, k11, k12, k20, k21, k22,
     det_s, ratio, expo, weight, sq, peak, inv_det) = _pair_forward(
        mx, my, mz, c00, c01, c02, c10, c11, c12, c20, c21, c22,
        r00, r01, r02, r10, r11, r12, r20, r21, r22, ox, oy, oz, p0, p1, p2)

    tl.store(out_mean_ptr + n * 2 + 0, (mean_u / du).to(tl.float32), mask=mask)
    tl.store(out_mean_ptr + n * 2 + 1, (mean_v / dv).to(tl.float32), mask=mask)
    tl.store(out_conic_ptr + n * 3 + 0, (cyy * inv_det * du * du).to(tl.float32), mask=mask)
    tl.store(out_conic_ptr + n * 3 + 1, (-cxy * inv_det * du * dv).to(tl.float32), mask=mask)
    tl.store(out_conic_ptr + n * 3 + 2, (cxx * inv_det * dv * dv).to(tl.float32), mask=mask)
    tl.store(out_weight_ptr + n, weight, mask=mask)
    tl.store(out_qmax_ptr + n, (k2 - m2 * m2 / sww).to(tl.float32), mask=mask)

    ch = tl.arange(0, BLOCK_C)
    m2d = mask[:, None] & (ch[None, :] < C)
    a = tl.load(amps_ptr + g[:, None] * C + ch[None, :], mask=m2d, other=0.0).to(tl.float32)
    tl.store(out_amp_ptr + n[:, None] * C + ch[None, :], a * peak[:, None], mask=m2d)


@triton.jit
def _project_bwd_kernel(
    means_ptr, covs_ptr, amps_ptr, rot_ptr, origin_ptr, spacing_ptr, psf_ptr, gidx_ptr, sidx_ptr,
    gr_mean_ptr, gr_conic_ptr, gr_amp_ptr, gr_weight_ptr,
    d_means_ptr, d_covs_ptr, d_amps_ptr, d_rot_ptr, d_origin_ptr, d_spacing_ptr, d_psf_ptr,
    N, C,
    BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC64: tl.constexpr,
    NEED_MEANS: tl.constexpr, NEED_COVS: tl.constexpr, NEED_AMPS: tl.constexpr, NEED_ROT: tl.constexpr,
    NEED_ORIGIN: tl.constexpr, NEED_SPACING: tl.constexpr, NEED_PSF: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    g = tl.load(gidx_ptr + n, mask=mask, other=0).to(tl.int64)
    s = tl.load(sidx_ptr + n, mask=mask, other=0).to(tl.int64)
    (mx, my, mz, c00, c01, c02, c10, c11, c12, c20, c21, c22,
     r00, r01, r02, r10, r11, r12, r20, r21, r22, ox, oy, oz, du, dv, p0, p1, p2) = _gather(
        means_ptr, covs_ptr, rot_ptr, origin_ptr, spacing_ptr, psf_ptr, g, s, mask, ACC64)

    # ---- forward recomputation ----
    (ex, ey, ez, m0, m1, m2, t00, t10, t20, t01, t11, t21, t02, t12, t22, s00, s01, s11, sa, sb, sww,
     tt, mean_u, mean_v, cxx, cxy, cyy, det2, det_sig, k00, k01, k02, k10, k11, k12, k20, k21, k22,
     det_s, ratio, expo, weight, sq, peak, inv_det) = _pair_forward(
        mx, my, mz, c00, c01, c02, c10, c11, c12, c20, c21, c22,
        r00, r01, r02, r10, r11, r12, r20, r21, r22, ox, oy, oz, p0, p1, p2)

    # ---- upstream gradients ----
    ch = tl.arange(0, BLOCK_C)
    m2d = mask[:, None] & (ch[None, :] < C)
    amp = tl.load(amps_ptr + g[:, None] * C + ch[None, :], mask=m2d, other=0.0).to(tl.float32)
    gamp = tl.load(gr_amp_ptr + n[:, None] * C + ch[None, :], mask=m2d, other=0.0).to(tl.float32)
    if NEED_AMPS:
        tl.atomic_add(d_amps_ptr + g[:, None] * C + ch[None, :], gamp * peak[:, None], mask=m2d)
    g_peak = tl.sum(gamp * amp, axis=1)
    gmu = _ld(gr_mean_ptr + n * 2 + 0, mask, 0.0, ACC64)
    gmv = _ld(gr_mean_ptr + n * 2 + 1, mask, 0.0, ACC64)
    gk0 = _ld(gr_conic_ptr + n * 3 + 0, mask, 0.0, ACC64)
    gk1 = _ld(gr_conic_ptr + n * 3 + 1, mask, 0.0, ACC64)
    gk2 = _ld(gr_conic_ptr + n * 3 + 2, mask, 0.0, ACC64)
    gw = tl.load(gr_weight_ptr + n, mask=mask, other=0.0).to(tl.float32)

    # peak = sq * weight; weight = exp(expo); sq = sqrt(max(ratio, 0))
    g_weight = _acc(g_peak * sq + gw, ACC64)
    g_expo = g_weight * _acc(weight, ACC64)
    sq_acc = _acc(sq, ACC64)
    pos = ratio > 0.0
    g_ratio = tl.where(pos, _acc(g_peak * weight, ACC64) * 0.5 / tl.where(pos, sq_acc, 1.0), 0.0)
    # ratio = det_sig / det_s
    g_detsig = g_ratio / det_s
    g_dets = -g_ratio * ratio / det_s
    # det_s = sww * det2
    g_sww = g_dets * det2
    g_det2 = g_dets * sww
    # expo = -0.5 m2^2 / sww
    g_m2 = -g_expo * m2 / sww
    g_sww += 0.5 * g_expo * m2 * m2 / (sww * sww)
    # means_px = mean / spacing
    g_mean_u = gmu / du
    g_mean_v = gmv / dv
    g_du = -gmu * mean_u / (du * du)
    g_dv = -gmv * mean_v / (dv * dv)
    # conics: (cyy, -cxy, cxx) * inv_det * (du^2, du dv, dv^2)
    g_cyy = gk0 * inv_det * du * du
    g_cxy = -gk1 * inv_det * du * dv
    g_cxx = gk2 * inv_det * dv * dv
    g_inv = gk0 * cyy * du * du - gk1 * cxy * du * dv + gk2 * cxx * dv * dv
    g_du += 2.0 * gk0 * cyy * inv_det * du - gk1 * cxy * inv_det * dv
    g_dv += 2.0 * gk2 * cxx * inv_det * dv - gk1 * cxy * inv_det * du
    g_det2 += -g_inv * inv_det * inv_det
    # det2 = cxx cyy - cxy^2
    g_cxx += g_det2 * cyy
    g_cyy += g_det2 * cxx
    g_cxy += -2.0 * g_det2 * cxy
    # Schur complement: cxx = s00 - sa^2/sww, cxy = s01 - sa sb/sww, cyy = s11 - sb^2/sww
    g_s00 = g_cxx
    g_s01 = g_cxy
    g_s11 = g_cyy
    g_sa = -(2.0 * g_cxx * sa + g_cxy * sb) / sww
    g_sb = -(2.0 * g_cyy * sb + g_cxy * sa) / sww
    g_sww += (g_cxx * sa * sa + g_cxy * sa * sb + g_cyy * sb * sb) / (sww * sww)
    # mean = m_uv - s_uv,w * tt, tt = m2 / sww
    g_m0 = g_mean_u
    g_m1 = g_mean_v
    g_sa += -g_mean_u * tt
    g_sb += -g_mean_v * tt
    g_tt = -(g_mean_u * sa + g_mean_v * sb)
    g_m2 += g_tt / sww
    g_sww += -g_tt * tt / sww
    # G: gradient on S (entries read by the reference: 00, 01, 11, 02, 12, 22), S = R^T Sigma R + diag(psf)
    ga00 = g_s00
    ga01 = g_s01
    ga11 = g_s11
    ga02 = g_sa
    ga12 = g_sb
    ga22 = g_sww

    if NEED_PSF:
        _add3(d_psf_ptr, s, mask, ga00, ga11, ga22)
    if NEED_SPACING:
        tl.atomic_add(d_spacing_ptr + s * 2 + 0, g_du.to(tl.float32), mask=mask)
        tl.atomic_add(d_spacing_ptr + s * 2 + 1, g_dv.to(tl.float32), mask=mask)

    # m = R^T e, e = mu - o
    g_ex = r00 * g_m0 + r01 * g_m1 + r02 * g_m2
    g_ey = r10 * g_m0 + r11 * g_m1 + r12 * g_m2
    g_ez = r20 * g_m0 + r21 * g_m1 + r22 * g_m2
    if NEED_MEANS:
        _add3(d_means_ptr, g, mask, g_ex, g_ey, g_ez)
    if NEED_ORIGIN:
        _add3(d_origin_ptr, s, mask, -g_ex, -g_ey, -g_ez)

    if NEED_COVS:
        # dSigma = R G R^T + g_detsig * cof(Sigma); U = R G (G upper triangular as read)
        u00 = r00 * ga00
        u10 = r10 * ga00
        u20 = r20 * ga00
        u01 = r00 * ga01 + r01 * ga11
        u11 = r10 * ga01 + r11 * ga11
        u21 = r20 * ga01 + r21 * ga11
        u02 = r00 * ga02 + r01 * ga12 + r02 * ga22
        u12 = r10 * ga02 + r11 * ga12 + r12 * ga22
        u22 = r20 * ga02 + r21 * ga12 + r22 * ga22
        d00 = u00 * r00 + u01 * r01 + u02 * r02 + g_detsig * k00
        d01 = u00 * r10 + u01 * r11 + u02 * r12 + g_detsig * k01
        d02 = u00 * r20 + u01 * r21 + u02 * r22 + g_detsig * k02
        d10 = u10 * r00 + u11 * r01 + u12 * r02 + g_detsig * k10
        d11 = u10 * r10 + u11 * r11 + u12 * r12 + g_detsig * k11
        d12 = u10 * r20 + u11 * r21 + u12 * r22 + g_detsig * k12
        d20 = u20 * r00 + u21 * r01 + u22 * r02 + g_detsig * k20
        d21 = u20 * r10 + u21 * r11 + u22 * r12 + g_detsig * k21
        d22 = u20 * r20 + u21 * r21 + u22 * r22 + g_detsig * k22
        _add3x3(d_covs_ptr, g, mask, d00, d01, d02, d10, d11, d12, d20, d21, d22)

    if NEED_ROT:
        # dR = T G^T + T' G (T = Sigma R, T' = Sigma^T R) + e g_m^T
        q00 = c00 * r00 + c10 * r10 + c20 * r20
        q10 = c01 * r00 + c11 * r10 + c21 * r20
        q20 = c02 * r00 + c12 * r10 + c22 * r20
        q01 = c00 * r01 + c10 * r11 + c20 * r21
        q11 = c01 * r01 + c11 * r11 + c21 * r21
        q21 = c02 * r01 + c12 * r11 + c22 * r21
        q02 = c00 * r02 + c10 * r12 + c20 * r22
        q12 = c01 * r02 + c11 * r12 + c21 * r22
        q22 = c02 * r02 + c12 * r12 + c22 * r22
        e00 = t00 * ga00 + t01 * ga01 + t02 * ga02 + q00 * ga00 + ex * g_m0
        e10 = t10 * ga00 + t11 * ga01 + t12 * ga02 + q10 * ga00 + ey * g_m0
        e20 = t20 * ga00 + t21 * ga01 + t22 * ga02 + q20 * ga00 + ez * g_m0
        e01 = t01 * ga11 + t02 * ga12 + q00 * ga01 + q01 * ga11 + ex * g_m1
        e11 = t11 * ga11 + t12 * ga12 + q10 * ga01 + q11 * ga11 + ey * g_m1
        e21 = t21 * ga11 + t22 * ga12 + q20 * ga01 + q21 * ga11 + ez * g_m1
        e02 = t02 * ga22 + q00 * ga02 + q01 * ga12 + q02 * ga22 + ex * g_m2
        e12 = t12 * ga22 + q10 * ga02 + q11 * ga12 + q12 * ga22 + ey * g_m2
        e22 = t22 * ga22 + q20 * ga02 + q21 * ga12 + q22 * ga22 + ez * g_m2
        _add3x3(d_rot_ptr, s, mask, e00, e01, e02, e10, e11, e12, e20, e21, e22)


def _block_c(c: int) -> int:
    return max(1, triton.next_power_of_2(max(int(c), 1)))


class _ProjectToSlicesTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, covs, amps, rotation, origin, spacing, psf_var, g_idx, s_idx, k_sigma, acc64):
        means, covs, amps = means.contiguous(), covs.contiguous(), amps.contiguous()
        rotation, origin = rotation.contiguous(), origin.contiguous()
        spacing, psf_var = spacing.contiguous(), psf_var.contiguous()
        g_idx, s_idx = g_idx.contiguous(), s_idx.contiguous()
        n, c = int(g_idx.shape[0]), int(amps.shape[1])
        kw = dict(dtype=torch.float32, device=means.device)
        out_mean = torch.empty((n, 2), **kw)
        out_conic = torch.empty((n, 3), **kw)
        out_amp = torch.empty((n, c), **kw)
        out_weight = torch.empty((n,), **kw)
        out_qmax = torch.empty((n,), **kw)
        if n > 0:
            grid = (triton.cdiv(n, _BLOCK_FWD),)
            _project_fwd_kernel[grid](
                means, covs, amps, rotation, origin, spacing, psf_var, g_idx, s_idx,
                out_mean, out_conic, out_amp, out_weight, out_qmax,
                n, c, float(k_sigma) ** 2,
                BLOCK=_BLOCK_FWD, BLOCK_C=_block_c(c), ACC64=bool(acc64),
            )
        ctx.save_for_backward(means, covs, amps, rotation, origin, spacing, psf_var, g_idx, s_idx)
        ctx.acc64 = bool(acc64)
        ctx.mark_non_differentiable(out_qmax)
        return out_mean, out_conic, out_amp, out_weight, out_qmax

    @staticmethod
    @once_differentiable
    def backward(ctx, gr_mean, gr_conic, gr_amp, gr_weight, _gr_qmax):
        means, covs, amps, rotation, origin, spacing, psf_var, g_idx, s_idx = ctx.saved_tensors
        need = ctx.needs_input_grad
        n, c = int(g_idx.shape[0]), int(amps.shape[1])
        z = lambda t: torch.zeros(t.shape, dtype=torch.float32, device=t.device)  # noqa: E731
        d_means, d_covs, d_amps = z(means), z(covs), z(amps)
        d_rot, d_origin, d_spacing, d_psf = z(rotation), z(origin), z(spacing), z(psf_var)
        if n > 0 and any(need[:7]):
            grid = (triton.cdiv(n, _BLOCK_BWD),)
            _project_bwd_kernel[grid](
                means, covs, amps, rotation, origin, spacing, psf_var, g_idx, s_idx,
                gr_mean.contiguous(), gr_conic.contiguous(), gr_amp.contiguous(), gr_weight.contiguous(),
                d_means, d_covs, d_amps, d_rot, d_origin, d_spacing, d_psf,
                n, c,
                BLOCK=_BLOCK_BWD, BLOCK_C=_block_c(c), ACC64=ctx.acc64,
                NEED_MEANS=bool(need[0]), NEED_COVS=bool(need[1]), NEED_AMPS=bool(need[2]),
                NEED_ROT=bool(need[3]), NEED_ORIGIN=bool(need[4]), NEED_SPACING=bool(need[5]),
                NEED_PSF=bool(need[6]),
            )
        grads = (d_means, d_covs, d_amps, d_rot, d_origin, d_spacing, d_psf)
        return tuple(gr if need[i] else None for i, gr in enumerate(grads)) + (None, None, None, None)


def project_to_slices_triton(
    means, covs, amps, geom, g_idx, s_idx, *, k_sigma: float = 3.5, acc64: bool | None = None
):
    """Triton version of :func:`~gaussian_mri.render.slices.project_to_slices` for ``(G, C)`` amplitudes
    ``amps`` and precomputed candidate pairs ``(g_idx, s_idx)``; same :class:`PackedSplats`, same
    gradients (means, covs, amps, and the slice rotation, origin, spacing, psf_var when they require
    grad). Non-float32 inputs are handled by the PyTorch reference."""
    from .slices import PackedSplats, project_to_slices

    floats = (means, covs, amps, geom.rotation, geom.origin, geom.spacing, geom.psf_var)
    if any(t.dtype != torch.float32 for t in floats):
        return project_to_slices(means, covs, amps, geom, k_sigma=k_sigma, pairs=(g_idx, s_idx),
                                 backend="torch")
    acc64 = ACCUMULATE_FLOAT64 if acc64 is None else bool(acc64)
    from .backends import on_device

    with on_device(means.device):
        out_mean, out_conic, out_amp, out_weight, out_qmax = _ProjectToSlicesTriton.apply(
            means, covs, amps, geom.rotation, geom.origin, geom.spacing, geom.psf_var, g_idx, s_idx,
            float(k_sigma), acc64,
        )
    return PackedSplats(
        means=out_mean,
        conics=out_conic,
        amplitudes=out_amp,
        batch_index=s_idx,
        gauss_index=g_idx,
        weight_peak=out_weight,
        q_max=out_qmax,
    )
