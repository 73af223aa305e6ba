"""The 3D Gaussian model of a volume: parameters, covariances, file format, rendering.

Each Gaussian ``i`` has a mean ``m_i`` (RAS mm), scales ``s_i`` (mm, the standard deviations along
its principal axes), a rotation (unit quaternion ``q_i``, ``(w, x, y, z)``) and a peak intensity
``c_i``. Its covariance is ``Sigma_i = R(q_i) diag(s_i^2) R(q_i)^T`` (SPD by construction, as in
gsplat). The volume is the plain sum ``f(x) = sum_i c_i exp(-1/2 (x - m_i)^T Sigma_i^-1 (x - m_i))``.

File format (``.npz``, written by :func:`save_gaussians`, read by :func:`load_gaussians`)::

    format        "gaussian-mri/gaussians3d"
    version       1
    means_mm      (G, 3) float32, RAS millimetres
    scales_mm     (G, 3) float32, standard deviations along the principal axes
    quats_wxyz    (G, 4) float32, unit quaternions (rotation of the principal axes)
    amplitudes    (G,)   float32, peak intensity in the units of the input stacks
    psf_mode      "exact" | "normalised", the forward model the Gaussians were fitted with

The model renders at any resolution with :func:`render_volume` (no refit).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_path
from ..render.slices import voxelise
from ..transforms import quaternion_to_matrix

__all__ = ["GaussianModel3D", "save_gaussians", "load_gaussians", "render_volume", "grid_for_box", "covariance_maps"]

FORMAT = "gaussian-mri/gaussians3d"


@dataclass
class GaussianModel3D:
    """Optimisable Gaussian parameters (all tensors on one device, float32)."""

    means: torch.Tensor  # (G, 3) mm
    log_scales: torch.Tensor  # (G, 3) log mm
    quats: torch.Tensor  # (G, 4) (w, x, y, z), not necessarily normalised
    amplitudes: torch.Tensor  # (G,)
    psf_mode: str = "exact"

    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    def parameters(self) -> list[torch.Tensor]:
        return [self.means, self.log_scales, self.quats, self.amplitudes]

    def covariances(self) -> torch.Tensor:
        """(G, 3, 3) mm^2."""
        rot = quaternion_to_matrix(self.quats)
        m = rot * torch.exp(self.log_scales)[:, None, :]
        return m @ m.transpose(1, 2)

    def detach(self) -> GaussianModel3D:
        return GaussianModel3D(*(p.detach().clone() for p in self.parameters()), psf_mode=self.psf_mode)


def save_gaussians(model: GaussianModel3D, path: str | os.PathLike, *, intensity_scale: float = 1.0) -> Path:
    """Write the documented ``.npz`` file atomically (amplitudes multiplied by ``intensity_scale``)."""
    path = Path(path)
    q = torch.nn.functional.normalize(model.quats.detach(), dim=-1)
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(1),
        "means_mm": model.means.detach().cpu().numpy().astype(np.float32),
        "scales_mm": torch.exp(model.log_scales.detach()).cpu().numpy().astype(np.float32),
        "quats_wxyz": q.cpu().numpy().astype(np.float32),
        "amplitudes": (model.amplitudes.detach().cpu().numpy() * intensity_scale).astype(np.float32),
        "psf_mode": np.array(model.psf_mode),
    }
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_gaussians(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> GaussianModel3D:
    """Read a file written by :func:`save_gaussians`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Gaussian file not found: {path}")
    with np.load(path) as z:
        if "format" not in z or str(z["format"]) != FORMAT:
            raise ValueError(f"{path} is not a GaussianMRI 3D Gaussian file (missing format '{FORMAT}')")
        t = lambda k: torch.as_tensor(z[k], dtype=torch.float32, device=device)  # noqa: E731
        return GaussianModel3D(
            means=t("means_mm"),
            log_scales=torch.log(t("scales_mm")),
            quats=t("quats_wxyz"),
            amplitudes=t("amplitudes"),
            psf_mode=str(z["psf_mode"]),
        )


def grid_for_box(lo: np.ndarray, hi: np.ndarray, resolution_mm: float, rotation: np.ndarray | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """An isotropic grid covering the box ``[lo, hi]`` (coordinates in the ``rotation`` frame).

    Returns ``(shape (K, J, I), affine)`` with IJK-to-RAS ``affine``.
    """
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    size = np.maximum(np.ceil((np.asarray(hi) - np.asarray(lo)) / resolution_mm).astype(int) + 1, 1)
    affine = np.eye(4)
    affine[:3, :3] = rot * resolution_mm
    affine[:3, 3] = rot @ np.asarray(lo, dtype=np.float64)
    return (int(size[2]), int(size[1]), int(size[0])), affine


def render_volume(
    model: GaussianModel3D,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    antialias: bool = False,
    k_sigma: float = 3.5,
    backend: str = "auto",
) -> torch.Tensor:
    """Render the model on any grid ``shape = (K, J, I)`` with IJK-to-RAS ``affine``; (K, J, I).

    With ``antialias`` the model is convolved (exactly) with an isotropic Gaussian of FWHM = one
    voxel before sampling, which is what a coarse grid should show; leave it off for grids at or
    finer than the reconstruction resolution. A model fitted with ``psf_mode="normalised"`` is
    rendered as the same kernel regression it was fitted as (``sum c w / sum w``). Renders on the
    model's device; ``backend`` picks the renderer (:mod:`gaussian_mri.render.backends`).
    """
    with torch.no_grad():
        spacing = float(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).mean())
        sigma = spacing / (2.0 * math.sqrt(2.0 * math.log(2.0))) if antialias else 0.0
        covs = model.covariances()
        if model.psf_mode == "normalised":
            # The model was fitted as a kernel regression: render it the same way, sum c w / sum w,
            # with unit-peak kernels (no sqrt(det) factor), exactly as the slices were predicted.
            ones = torch.ones_like(model.amplitudes)
            chan = torch.stack([model.amplitudes, ones], 1)
            acc = voxelise(model.means, covs, chan, shape, affine, psf_sigma_mm=0.0, k_sigma=k_sigma, backend=backend)
            return acc[:, 0] / (acc[:, 1] + 1e-6)
        return voxelise(model.means, covs, model.amplitudes, shape, affine, psf_sigma_mm=sigma, k_sigma=k_sigma, backend=backend)


def covariance_maps(
    model: GaussianModel3D, shape: tuple[int, int, int], affine: np.ndarray, *, k_sigma: float = 3.0,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """Covariance-derived maps splatted on a grid, each a kernel-weighted average over Gaussians.

    Returns ``scale`` (mean of the three standard deviations, mm), ``anisotropy`` (FA of the
    covariance eigenvalues, 0 = sphere, 1 = line) and ``tensor`` (K, J, I, 3, 3) mm^2 (the
    covariance itself, in RAS), plus ``weight`` (sum of kernel weights; maps are 0 where it is ~0).
    All on the model's device.
    """
    with torch.no_grad():
        covs = model.covariances()
        scales = torch.exp(model.log_scales)
        lam = scales * scales
        md = lam.mean(-1, keepdim=True)
        fa = torch.sqrt(1.5 * ((lam - md) ** 2).sum(-1) / (lam * lam).sum(-1).clamp_min(1e-12))
        dev = model.means.device
        iu = torch.tensor([0, 0, 0, 1, 1, 2], device=dev), torch.tensor([0, 1, 2, 1, 2, 2], device=dev)
        chan = torch.cat(
            [torch.ones_like(fa)[:, None], scales.mean(-1, keepdim=True), fa[:, None], covs[:, iu[0], iu[1]]], 1
        )
        acc = voxelise(model.means, covs, chan, shape, affine, k_sigma=k_sigma, backend=backend)  # (K, C, J, I)
        acc = acc.permute(0, 2, 3, 1)  # (K, J, I, C)
        w = acc[..., 0]
        safe = torch.where(w > 1e-3, w, torch.ones_like(w))
        valid = (w > 1e-3).to(acc.dtype)
        scale_map = acc[..., 1] / safe * valid
        fa_map = acc[..., 2] / safe * valid
        six = acc[..., 3:] / safe[..., None] * valid[..., None]
        tensor = torch.stack(
            [
                torch.stack([six[..., 0], six[..., 1], six[..., 2]], -1),
                torch.stack([six[..., 1], six[..., 3], six[..., 4]], -1),
                torch.stack([six[..., 2], six[..., 4], six[..., 5]], -1),
            ],
            -2,
        )
        return {"scale": scale_map, "anisotropy": fa_map, "tensor": tensor, "weight": w}
