"""Motion-resolved 2D Gaussians for cine MRI (Terpstra & van den Berg, "GaussianCine").

A cine of ``T`` frames on an ``ny x nx`` grid is the sum of ``M`` complex 2D Gaussians whose centres and
shapes change per frame::

    mu_t  = mu + dmu_t                              (pixels; x = column, y = row; pixel centres at integers)
    L_t   = [[exp(r11 + d11_t), 0], [r21 + d21_t, exp(r22 + d22_t)]]
    Sigma_t = L_t L_t^T                             (pixels^2)
    frame_t(p) = sum_i c_i exp(-1/2 (p - mu_t,i)^T Sigma_t,i^-1 (p - mu_t,i))

The paper writes ``L_t = L + l_t``. Here the diagonal of the Cholesky factor is stored as a log
(``r11, r22``) so that it stays positive, and the per-frame offsets of the diagonal (``dl[..., 0]`` and
``dl[..., 2]``) are added in log space (a multiplicative change of that axis); the off-diagonal offset
``dl[..., 1]`` is additive, as in the paper. With this choice every ``Sigma_t`` is positive definite.

Saved as ``.npz`` (see :meth:`CineGaussians.save`): ``format = "gaussian_mri.cine.gaussians"``,
``version = 1``, ``means`` (M, 2) px, ``chol_raw`` (M, 3) (log l11, l21 px, log l22), ``amplitudes``
(M, 2) real/imag in image units, ``dmu`` (T, M, 2) px, ``dl`` (T, M, 3), ``height``, ``width``,
``spacing_mm`` (2,) (row, col) mm, ``frame_ms``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._atomic import atomic_path
from ..render.splat2d import rasterize_gaussians_2d

__all__ = ["CineGaussians", "FORMAT", "K_SIGMA", "VERSION"]

K_SIGMA = 3.0
"""Default splat window in standard deviations (the reconstruction's default too)."""

FORMAT = "gaussian_mri.cine.gaussians"
VERSION = 1


@dataclass
class CineGaussians:
    """Parameters of ``M`` motion-resolved complex Gaussians over ``T`` frames.

    Attributes
    ----------
    means : (M, 2) float tensor, pixels
        Centres ``(x = column, y = row)`` of the reference (motion-free) Gaussians.
    chol_raw : (M, 3) float tensor
        ``(log l11, l21, log l22)`` of the Cholesky factor of the covariance (pixels).
    amplitudes : (M, 2) float tensor
        Real and imaginary part of the complex peak value ``c`` (image units).
    dmu : (T, M, 2) float tensor, pixels
        Per-frame displacement of every centre.
    dl : (T, M, 3) float tensor
        Per-frame offset of ``chol_raw`` (log-space on the diagonal, additive off the diagonal).
    height, width : int
        The 1x image grid (rows, columns).
    spacing_mm : (row, col) pixel size in mm.
    frame_ms : float
        Time between frames in ms (0 when unknown).
    """

    means: torch.Tensor
    chol_raw: torch.Tensor
    amplitudes: torch.Tensor
    dmu: torch.Tensor
    dl: torch.Tensor
    height: int
    width: int
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    frame_ms: float = 0.0

    def __post_init__(self) -> None:
        m = self.means.shape[0]
        t = self.dmu.shape[0]
        shapes = {
            "means": (self.means, (m, 2)),
            "chol_raw": (self.chol_raw, (m, 3)),
            "amplitudes": (self.amplitudes, (m, 2)),
            "dmu": (self.dmu, (t, m, 2)),
            "dl": (self.dl, (t, m, 3)),
        }
        for name, (value, shape) in shapes.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}, {self.width}")

    # ------------------------------------------------------------------ sizes
    @property
    def n_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.dmu.shape[0])

    # ------------------------------------------------------------------ per-frame geometry
    def _frames(self, frames: Sequence[int] | torch.Tensor | None, validate: bool = True) -> torch.Tensor:
        if frames is None:
            return torch.arange(self.n_frames, device=self.means.device)
        idx = torch.as_tensor(frames, dtype=torch.long, device=self.means.device).reshape(-1)
        # the range check reads the indices back to the host (a GPU sync): the fit loop skips it
        if validate and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_frames):
            raise IndexError(f"frame indices must lie in [0, {self.n_frames}), got {idx.tolist()}")
        return idx

    def frame_means(self, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Centres ``mu + dmu_t`` (B, M, 2) in pixels."""
        return self._means_at(self._frames(frames))

    def _means_at(self, idx: torch.Tensor) -> torch.Tensor:
        return self.means[None] + self.dmu[idx]

    def frame_cholesky(self, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Cholesky factors ``(l11, l21, l22)`` (B, M, 3) of ``Sigma_t`` in pixels."""
        return self._cholesky_at(self._frames(frames))

    def _cholesky_at(self, idx: torch.Tensor) -> torch.Tensor:
        raw = self.chol_raw[None] + self.dl[idx]
        return torch.stack([torch.exp(raw[..., 0]), raw[..., 1], torch.exp(raw[..., 2])], -1)

    def frame_covariance(self, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Covariances ``Sigma_t`` (B, M, 2, 2) in pixels^2 (x, y order)."""
        l11, l21, l22 = self.frame_cholesky(frames).unbind(-1)
        sxx = l11 * l11
        sxy = l11 * l21
        syy = l21 * l21 + l22 * l22
        return torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)

    def complex_amplitudes(self) -> torch.Tensor:
        return torch.complex(self.amplitudes[:, 0], self.amplitudes[:, 1])

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        frames: Sequence[int] | torch.Tensor | None = None,
        factor: float = 1.0,
        *,
        amplitude_scale: float | torch.Tensor = 1.0,
        k_sigma: float = K_SIGMA,
        backend: str = "auto",
        validate: bool = True,
    ) -> torch.Tensor:
        """Complex frames (B, ny*factor, nx*factor); differentiable in every parameter.

        ``factor > 1`` renders on a finer grid whose pixels subdivide the 1x pixels
        (:func:`gaussian_mri.render.splat2d.sr_grid`). ``backend``: the renderer
        (:mod:`gaussian_mri.render.backends`); ``validate=False`` skips the frame-range check (a host
        read-back), for indices known to be valid.
        """
        amps = self.amplitudes * amplitude_scale
        idx = self._frames(frames, validate)
        out = rasterize_gaussians_2d(
            self._means_at(idx),
            self._cholesky_at(idx),
            amps,
            height=self.height,
            width=self.width,
            factor=factor,
            k_sigma=k_sigma,
            backend=backend,
        )
        return torch.complex(out[:, 0], out[:, 1])

    def splat_values(
        self,
        values: torch.Tensor,
        frames: Sequence[int] | torch.Tensor | None = None,
        factor: float = 1.0,
        *,
        floor: float = 1e-3,
        default: float | Sequence[float] = 0.0,
        backend: str = "auto",
    ) -> torch.Tensor:
        """Kernel-weighted average of per-Gaussian values, as an image per frame.

        ``map_t(p) = sum_i w_i(p) v_ti / sum_i w_i(p)`` with ``w_i(p) = |c_i| exp(-q_i(p)/2)`` at the
        frame-``t`` position and shape (the Nadaraya-Watson average the paper's covariance maps show).
        Pixels whose total weight is below ``floor`` times its maximum get ``default``.

        values : (B, M, K) or (M, K) real; returns (B, K, H', W').
        """
        idx = self._frames(frames)
        if values.dim() == 2:
            values = values[None].expand(len(idx), -1, -1)
        w = torch.linalg.vector_norm(self.amplitudes, dim=1)
        w = (w / w.max().clamp_min(1e-30)).to(values.dtype)
        chans = torch.cat([values * w[None, :, None], w[None, :, None].expand(len(idx), -1, 1)], -1)
        out = rasterize_gaussians_2d(
            self._means_at(idx), self._cholesky_at(idx), chans, height=self.height, width=self.width, factor=factor,
            k_sigma=K_SIGMA, backend=backend,
        )
        num, den = out[:, :-1], out[:, -1:]
        ok = den > floor * den.amax().clamp_min(1e-30)
        dflt = torch.as_tensor(default, dtype=out.dtype, device=out.device).reshape(1, -1, 1, 1)
        return torch.where(ok, num / den.clamp_min(1e-30), dflt.expand_as(num))

    # ------------------------------------------------------------------ tissue maps
    def covariance_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-Gaussian ``(eigen_ratio, det_ratio)`` (T, M) relative to frame 0.

        ``eigen_ratio_t = (l_max / l_min)(Sigma_t) / (l_max / l_min)(Sigma_0)`` (anisotropy change,
        myocardial compression), ``det_ratio_t = det Sigma_t / det Sigma_0`` (area change, flow).
        """
        with torch.no_grad():
            cov = self.frame_covariance()
            ev = torch.linalg.eigvalsh(cov.double())  # ascending
            aniso = ev[..., 1] / ev[..., 0].clamp_min(1e-12)
            det = ev[..., 0] * ev[..., 1]
            return (aniso / aniso[:1]).to(self.means.dtype), (det / det[:1].clamp_min(1e-30)).to(self.means.dtype)

    # ------------------------------------------------------------------ I/O
    def to(self, device: torch.device | str) -> CineGaussians:
        return CineGaussians(
            self.means.to(device), self.chol_raw.to(device), self.amplitudes.to(device), self.dmu.to(device),
            self.dl.to(device), self.height, self.width, self.spacing_mm, self.frame_ms,
        )

    def detach(self) -> CineGaussians:
        return CineGaussians(
            self.means.detach().clone(), self.chol_raw.detach().clone(), self.amplitudes.detach().clone(),
            self.dmu.detach().clone(), self.dl.detach().clone(), self.height, self.width, self.spacing_mm,
            self.frame_ms,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.npz`` atomically (float32 arrays, format string and version; see the module docstring)."""
        path = Path(path)
        arrays = {
            "format": np.array(FORMAT),
            "version": np.int32(VERSION),
            "means": self.means.detach().cpu().numpy().astype(np.float32),
            "chol_raw": self.chol_raw.detach().cpu().numpy().astype(np.float32),
            "amplitudes": self.amplitudes.detach().cpu().numpy().astype(np.float32),
            "dmu": self.dmu.detach().cpu().numpy().astype(np.float32),
            "dl": self.dl.detach().cpu().numpy().astype(np.float32),
            "height": np.int32(self.height),
            "width": np.int32(self.width),
            "spacing_mm": np.asarray(self.spacing_mm, dtype=np.float64),
            "frame_ms": np.float64(self.frame_ms),
            "units": np.array(
                "means, dmu: pixels (x=column, y=row, pixel centres at integers); chol_raw: (log l11, l21, log l22) "
                "of the covariance Cholesky factor in pixels; dl: per-frame offset of chol_raw; amplitudes: "
                "(real, imag) image units; spacing_mm: (row, col) mm; frame_ms: ms"
            ),
        }
        with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> CineGaussians:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"]) if "format" in z.files else ""
            if fmt != FORMAT:
                raise ValueError(f"{path} is not a GaussianCine model file (format {fmt!r}, expected {FORMAT!r})")
            version = int(z["version"])
            if version > VERSION:
                raise ValueError(f"{path} has model version {version}; this code reads up to {VERSION}")

            def t(name: str) -> torch.Tensor:
                return torch.from_numpy(np.asarray(z[name], dtype=np.float32)).to(device)

            return cls(
                means=t("means"),
                chol_raw=t("chol_raw"),
                amplitudes=t("amplitudes"),
                dmu=t("dmu"),
                dl=t("dl"),
                height=int(z["height"]),
                width=int(z["width"]),
                spacing_mm=tuple(float(v) for v in z["spacing_mm"]),  # type: ignore[arg-type]
                frame_ms=float(z["frame_ms"]),
            )
