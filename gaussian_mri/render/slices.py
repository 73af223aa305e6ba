"""3D Gaussians seen on slice planes (analytic PSF), and the voxeliser.

For slice ``s`` with rotation ``R`` (columns ``u, v, w`` in RAS) and PSF covariance ``P`` (diagonal
in the slice frame), a 3D Gaussian with peak ``c``, mean ``m`` and covariance ``Sigma`` blurred by
the normalised PSF is again a Gaussian (METHODS.md s.1)::

    S     = R^T Sigma R + P                       (covariance addition, slice frame)
    c_obs = c sqrt(det Sigma / det S)             (exact convolution; "exact" mode)

Its restriction to the plane ``w = 0`` (pixel centres) is a 2D Gaussian with::

    mean  = m_uv - S_uv,w m_w / S_ww
    cov   = S_uv - S_uv,w S_w,uv / S_ww           (conditional covariance)
    peak  = c_obs exp(-m_w^2 / (2 S_ww))

which the 2D rasteriser renders. ``det S = S_ww det(cov)`` (Schur complement). Gaussians with
``|m_w| > k sqrt(S_ww)`` are skipped for that slice before any 3x3 algebra is done.

Two forward models are offered (``mode``):

* ``"exact"`` (default): the slice pixel is the PSF-weighted integral of the continuous model,
  exactly (tested against Monte-Carlo integration of the PSF).
* ``"normalised"``: the kernel regression of the published Gaussian SVR code: weights
  ``w_i = exp(...)`` of the PSF-blurred Gaussians without the ``sqrt(det)`` factor, and the pixel
  value ``sum c_i w_i / sum w_i``. It is not a convolution of any fixed volume; see the benchmark
  in ``benchmarks/README.md`` for the measured comparison.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import require_last_dim
from ..geometry import SliceGeometry, grid_geometry
from .backends import resolve_kernel_backend
from .splat2d import rasterize_splats

__all__ = ["project_to_slices", "render_slices", "voxelise", "PackedSplats"]


class PackedSplats:
    """2D splats produced on slices: see :func:`gaussian_mri.render.splat2d.rasterize_splats`."""

    def __init__(self, means, conics, amplitudes, batch_index, gauss_index, weight_peak, q_max):
        self.means = means  # (N, 2) pixels
        self.conics = conics  # (N, 3) pixels^-2
        self.amplitudes = amplitudes  # (N, C) peak values incl. the PSF factor
        self.batch_index = batch_index  # (N,) slice of each splat
        self.gauss_index = gauss_index  # (N,) 3D Gaussian of each splat
        self.weight_peak = weight_peak  # (N,) kernel weight peak (normalised mode), no sqrt(det) factor
        self.q_max = q_max  # (N,) in-plane cut-off k^2 - m_w^2 / S_ww: the 3D k-sigma ellipsoid on the plane

    def __len__(self) -> int:
        return int(self.means.shape[0])


def _candidate_pairs(means, covs, geom: SliceGeometry, k_sigma: float, max_pairs: int = 1 << 24):
    """(gauss_index, slice_index) of pairs with |m_w| <= k sqrt(S_ww); no gradient."""
    with torch.no_grad():
        normal = geom.normal  # (S, 3)
        g_idx, s_idx = [], []
        n_g = means.shape[0]
        step = max(1, max_pairs // max(n_g, 1))
        for s0 in range(0, geom.n_slices, step):
            nrm = normal[s0 : s0 + step]
            mw = means @ nrm.T - (geom.origin[s0 : s0 + step] * nrm).sum(-1)[None]  # (G, s)
            sww = torch.einsum("si,gij,sj->gs", nrm, covs, nrm) + geom.psf_var[s0 : s0 + step, 2][None]
            keep = mw * mw <= (k_sigma * k_sigma) * sww
            g, s = torch.nonzero(keep, as_tuple=True)
            g_idx.append(g)
            s_idx.append(s + s0)
        return torch.cat(g_idx), torch.cat(s_idx)


def _all_pairs(n_gaussians: int, n_slices: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (gauss_index, slice_index) pair, grouped by slice (sizes known on the host: no sync)."""
    g = torch.arange(n_gaussians, device=device).repeat(n_slices)
    s = torch.arange(n_slices, device=device).repeat_interleave(n_gaussians)
    return g, s


def project_to_slices(
    means: torch.Tensor,
    covs: torch.Tensor,
    amplitudes: torch.Tensor,
    geom: SliceGeometry,
    *,
    k_sigma: float = 3.5,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: str = "auto",
) -> PackedSplats:
    """Map each 3D Gaussian to the 2D splat it makes on each slice it reaches.

    Parameters
    ----------
    means : (G, 3) RAS mm
    covs : (G, 3, 3) mm^2, symmetric positive-definite (before the PSF)
    amplitudes : (G,) or (G, C) peak values
    geom : SliceGeometry
        Slice poses (may require grad, e.g. after :meth:`SliceGeometry.moved`), spacing, PSF.
    k_sigma : float
        Through-plane cull distance in standard deviations of the blurred Gaussian.
    pairs : optional precomputed ``(gauss_index, slice_index)``
    backend : ``"auto"``, ``"torch"`` (the reference below) or ``"triton"`` (one fused kernel per pass,
        :mod:`gaussian_mri.render.backends`)

    Returns
    -------
    PackedSplats in pixel units of each slice.
    """
    require_last_dim("means", means, 3)
    if covs.shape != (means.shape[0], 3, 3):
        raise ValueError(f"covs must be (G, 3, 3) with G={means.shape[0]}, got {tuple(covs.shape)}")
    amps = amplitudes[:, None] if amplitudes.dim() == 1 else amplitudes
    if resolve_kernel_backend(backend, means.device) == "triton" and means.dtype == torch.float32:
        from .triton_slices import project_to_slices_triton

        # (the kernels are float32; other dtypes take the reference path below)
        # No host synchronisation (culling with torch.nonzero would read its size back every call):
        # every (Gaussian, slice) pair, slice by slice. A pair beyond the k-sigma distance gets
        # q_max = k^2 - m_w^2 / S_ww < 0, so it renders nothing and receives no gradient: the same
        # images and gradients as leaving it out.
        g_idx, s_idx = pairs if pairs is not None else _all_pairs(means.shape[0], geom.n_slices, means.device)
        return project_to_slices_triton(means, covs, amps, geom, g_idx, s_idx, k_sigma=k_sigma)
    g_idx, s_idx = pairs if pairs is not None else _candidate_pairs(means, covs, geom, k_sigma)
    rot = geom.rotation[s_idx]  # (N, 3, 3)
    rel = means[g_idx] - geom.origin[s_idx]
    m = (rot.transpose(1, 2) @ rel[:, :, None])[:, :, 0]  # (N, 3) slice frame, mm
    sigma = covs[g_idx]
    s_full = rot.transpose(1, 2) @ sigma @ rot + torch.diag_embed(geom.psf_var[s_idx])
    s_ww = s_full[:, 2, 2]
    s_uvw = s_full[:, :2, 2]
    mean2 = m[:, :2] - s_uvw * (m[:, 2:3] / s_ww[:, None])
    cxx = s_full[:, 0, 0] - s_uvw[:, 0] * s_uvw[:, 0] / s_ww
    cxy = s_full[:, 0, 1] - s_uvw[:, 0] * s_uvw[:, 1] / s_ww
    cyy = s_full[:, 1, 1] - s_uvw[:, 1] * s_uvw[:, 1] / s_ww
    det2 = cxx * cyy - cxy * cxy  # mm^4
    det_sigma = torch.linalg.det(covs)[g_idx]  # per Gaussian, then per pair (several pairs share one)
    det_s = s_ww * det2
    falloff = torch.exp(-0.5 * m[:, 2] * m[:, 2] / s_ww)
    peak_factor = torch.sqrt((det_sigma / det_s).clamp_min(0)) * falloff
    sp = geom.spacing[s_idx]  # (N, 2)
    means_px = mean2 / sp
    # conic in pixel units: P_px = D C^-1 D with D = diag(du, dv)
    inv_det = 1.0 / det2
    conics = torch.stack(
        [cyy * inv_det * sp[:, 0] * sp[:, 0], -cxy * inv_det * sp[:, 0] * sp[:, 1], cxx * inv_det * sp[:, 1] * sp[:, 1]], -1
    )
    return PackedSplats(
        means=means_px,
        conics=conics,
        amplitudes=amps[g_idx] * peak_factor[:, None],
        batch_index=s_idx,
        gauss_index=g_idx,
        weight_peak=falloff,
        q_max=(k_sigma * k_sigma - m[:, 2] * m[:, 2] / s_ww).detach(),
    )


def render_slices(
    means: torch.Tensor,
    covs: torch.Tensor,
    amplitudes: torch.Tensor,
    geom: SliceGeometry,
    *,
    mode: str = "exact",
    k_sigma: float = 3.5,
    chunk_pairs: int = 1 << 21,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """Render the slices seen through the PSF: (S, H, W) for (G,) amplitudes, else (S, C, H, W).

    ``mode`` is ``"exact"`` (PSF convolution, default) or ``"normalised"`` (kernel regression of the
    published Gaussian SVR code; ``eps`` regularises the weight sum). ``backend`` chooses the PyTorch
    reference or the Triton kernels for the projection and the rasteriser (:mod:`gaussian_mri.render.backends`).
    """
    if mode not in ("exact", "normalised"):
        raise ValueError(f"mode must be 'exact' or 'normalised', got {mode!r}")
    packed = project_to_slices(means, covs, amplitudes, geom, k_sigma=k_sigma, backend=backend)
    squeeze = amplitudes.dim() == 1
    if mode == "exact":
        out = rasterize_splats(
            packed.means, packed.conics, packed.amplitudes, packed.batch_index,
            n_batch=geom.n_slices, height=geom.height, width=geom.width, q_max=packed.q_max, chunk_pairs=chunk_pairs,
            backend=backend, validate=False,  # batch_index comes from the projector: always in range
        )
    else:
        amps = amplitudes[:, None] if squeeze else amplitudes
        w = packed.weight_peak[:, None]
        chan = torch.cat([amps[packed.gauss_index] * w, w], 1)
        acc = rasterize_splats(
            packed.means, packed.conics, chan, packed.batch_index,
            n_batch=geom.n_slices, height=geom.height, width=geom.width, q_max=packed.q_max, chunk_pairs=chunk_pairs,
            backend=backend, validate=False,  # batch_index comes from the projector: always in range
        )
        out = acc[:, :-1] / (acc[:, -1:] + eps)
    return out[:, 0] if squeeze else out


def voxelise(
    means: torch.Tensor,
    covs: torch.Tensor,
    amplitudes: torch.Tensor,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    psf_sigma_mm: float = 0.0,
    k_sigma: float = 3.5,
    planes_per_chunk: int = 16,
    backend: str = "auto",
) -> torch.Tensor:
    """Render the 3D model on a voxel grid ``shape = (K, J, I)`` with IJK-to-RAS ``affine``.

    ``psf_sigma_mm`` > 0 blurs with a small isotropic Gaussian (anti-aliasing; exact convolution).
    Planes are rendered in chunks of ``planes_per_chunk``. Returns (K, J, I) (or (K, C, J, I)).
    """
    var = float(psf_sigma_mm) ** 2
    geom = grid_geometry(shape, np.asarray(affine, dtype=np.float64), psf_var=(var, var, var), dtype=means.dtype, device=means.device)
    parts = []
    for k0 in range(0, geom.n_slices, planes_per_chunk):
        sub = geom.select(slice(k0, k0 + planes_per_chunk))
        parts.append(render_slices(means, covs, amplitudes, sub, mode="exact", k_sigma=k_sigma, backend=backend))
    return torch.cat(parts, 0)
