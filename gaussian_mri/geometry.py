"""Slice geometry: where each 2D slice of a thick-slice stack lies in the world, and its PSF.

A stack is a 3D image whose ``k`` axis is the slice direction. Slice ``k`` is the plane through the
voxel centres ``(i, j, k)``. Its frame has axes ``u`` (along ``i``, image columns, pixel ``x``),
``v`` (along ``j``, image rows, pixel ``y``) and ``w`` (the slice normal, along ``k``).

The PSF convention shared by NeSVoR, SVRTK, NiftyMIC and the Gaussian SVR code (METHODS.md s.1):
in-plane FWHM = 1.2 x in-plane spacing, through-plane FWHM = slice thickness, Gaussian, so
``sigma = FWHM / (2 sqrt(2 ln 2))``. Both factors are parameters here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .image import Image

__all__ = ["FWHM_TO_SIGMA", "SliceGeometry", "stack_geometry", "grid_geometry", "psf_variances"]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # 1 / 2.3548


def psf_variances(
    spacing_uv: tuple[float, float],
    thickness: float,
    *,
    inplane_fwhm_factor: float = 1.2,
    through_plane_fwhm_factor: float = 1.0,
) -> tuple[float, float, float]:
    """Gaussian PSF variances ``(var_u, var_v, var_w)`` in mm^2 in slice coordinates."""
    su = inplane_fwhm_factor * spacing_uv[0] * FWHM_TO_SIGMA
    sv = inplane_fwhm_factor * spacing_uv[1] * FWHM_TO_SIGMA
    sw = through_plane_fwhm_factor * thickness * FWHM_TO_SIGMA
    return (su * su, sv * sv, sw * sw)


@dataclass
class SliceGeometry:
    """A batch of ``S`` slices that share one pixel grid shape ``(height, width)``.

    Attributes
    ----------
    rotation : (S, 3, 3) tensor
        Columns are the RAS unit vectors of the slice axes ``u`` (columns), ``v`` (rows), ``w``
        (normal). Must be orthonormal.
    origin : (S, 3) tensor, mm
        RAS position of the centre of pixel ``(row 0, col 0)``.
    spacing : (S, 2) tensor, mm
        Pixel size ``(du, dv)`` along ``u`` and ``v``.
    psf_var : (S, 3) tensor, mm^2
        Diagonal Gaussian PSF variances in the slice frame ``(u, v, w)``; zeros mean no PSF.
    height, width : int
        Pixel grid shape (rows, columns).
    """

    rotation: torch.Tensor
    origin: torch.Tensor
    spacing: torch.Tensor
    psf_var: torch.Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        s = self.rotation.shape[0]
        if self.rotation.shape != (s, 3, 3):
            raise ValueError(f"rotation must be (S, 3, 3), got {tuple(self.rotation.shape)}")
        for name, want in (("origin", 3), ("spacing", 2), ("psf_var", 3)):
            t = getattr(self, name)
            if t.shape != (s, want):
                raise ValueError(f"{name} must be (S={s}, {want}), got {tuple(t.shape)}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"grid shape must be positive, got ({self.height}, {self.width})")

    @property
    def n_slices(self) -> int:
        return int(self.rotation.shape[0])

    @property
    def normal(self) -> torch.Tensor:
        """(S, 3) unit normals ``w``."""
        return self.rotation[:, :, 2]

    @property
    def centre(self) -> torch.Tensor:
        """(S, 3) RAS position of each slice's grid centre (mm): the natural centre of rotation."""
        half = torch.stack(
            [
                (self.width - 1) / 2.0 * torch.ones_like(self.spacing[:, 0]),
                (self.height - 1) / 2.0 * torch.ones_like(self.spacing[:, 1]),
            ],
            -1,
        ) * self.spacing
        return self.origin + self.rotation[:, :, 0] * half[:, :1] + self.rotation[:, :, 1] * half[:, 1:]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SliceGeometry:
        return SliceGeometry(
            rotation=self.rotation.to(device=device, dtype=dtype),
            origin=self.origin.to(device=device, dtype=dtype),
            spacing=self.spacing.to(device=device, dtype=dtype),
            psf_var=self.psf_var.to(device=device, dtype=dtype),
            height=self.height,
            width=self.width,
        )

    def select(self, index: torch.Tensor | slice) -> SliceGeometry:
        """A subset of the slices."""
        return SliceGeometry(
            rotation=self.rotation[index],
            origin=self.origin[index],
            spacing=self.spacing[index],
            psf_var=self.psf_var[index],
            height=self.height,
            width=self.width,
        )

    def moved(self, motion: torch.Tensor) -> SliceGeometry:
        """Slices moved rigidly by per-slice (S, 4, 4) world transforms (differentiable)."""
        rot = motion[:, :3, :3] @ self.rotation
        origin = (motion[:, :3, :3] @ self.origin[:, :, None])[:, :, 0] + motion[:, :3, 3]
        return SliceGeometry(rot, origin, self.spacing, self.psf_var, self.height, self.width)

    def pixel_to_world(self) -> torch.Tensor:
        """RAS coordinates of every pixel centre, (S, H, W, 3)."""
        dev, dt = self.origin.device, self.origin.dtype
        rows = torch.arange(self.height, device=dev, dtype=dt)
        cols = torch.arange(self.width, device=dev, dtype=dt)
        u = cols[None, None, :, None] * self.spacing[:, None, None, :1] * self.rotation[:, None, None, :, 0]
        v = rows[None, :, None, None] * self.spacing[:, None, None, 1:] * self.rotation[:, None, None, :, 1]
        return self.origin[:, None, None, :] + u + v


def _orthonormal_direction(image: Image) -> np.ndarray:
    d = image.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise ValueError(f"image axes are not orthogonal (direction matrix {d.tolist()}); sheared stacks are not supported")
    # Re-orthonormalise (SVD) to remove float32 header noise.
    u, _, vt = np.linalg.svd(d)
    return u @ vt


def stack_geometry(
    image: Image,
    *,
    thickness: float | None = None,
    inplane_fwhm_factor: float = 1.2,
    through_plane_fwhm_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[SliceGeometry, float]:
    """Per-slice poses, spacing and PSF of a thick-slice stack.

    Parameters
    ----------
    image : Image
        The stack (``k`` is the slice direction).
    thickness : float, optional
        Slice thickness in mm. Default: the header value (``image.slice_thickness``) when present,
        otherwise the slice spacing.

    Returns
    -------
    (SliceGeometry, thickness_mm)
    """
    spacing = image.spacing
    if thickness is None:
        thickness = image.slice_thickness if image.slice_thickness is not None else float(spacing[2])
    if not thickness > 0:
        raise ValueError(f"slice thickness must be > 0 mm, got {thickness}")
    k_count, j_count, i_count = image.shape
    fov_w = float(spacing[2]) * k_count
    # Relative slack: a thickness equal to the extent (e.g. from a float32 header) is not an error.
    if thickness > max(fov_w, 1e-6) * (1.0 + 1e-6) and k_count > 1:
        raise ValueError(
            f"slice thickness {thickness} mm is larger than the stack's through-plane extent "
            f"({k_count} slices x {spacing[2]:.3g} mm = {fov_w:.3g} mm); check the thickness value"
        )
    rot = _orthonormal_direction(image)
    origins = np.stack([image.affine[:3, :3] @ np.array([0.0, 0.0, k]) + image.affine[:3, 3] for k in range(k_count)])
    var = psf_variances(
        (float(spacing[0]), float(spacing[1])),
        float(thickness),
        inplane_fwhm_factor=inplane_fwhm_factor,
        through_plane_fwhm_factor=through_plane_fwhm_factor,
    )
    geom = SliceGeometry(
        rotation=torch.as_tensor(np.repeat(rot[None], k_count, 0), dtype=dtype, device=device),
        origin=torch.as_tensor(origins, dtype=dtype, device=device),
        spacing=torch.as_tensor(np.repeat(spacing[None, :2], k_count, 0), dtype=dtype, device=device),
        psf_var=torch.as_tensor(np.repeat(np.array(var)[None], k_count, 0), dtype=dtype, device=device),
        height=j_count,
        width=i_count,
    )
    return geom, float(thickness)


def grid_geometry(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    psf_var: tuple[float, float, float] = (0.0, 0.0, 0.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SliceGeometry:
    """The planes ``k = 0..K-1`` of a 3D voxel grid as slices (used by the voxeliser)."""
    image = Image(np.zeros((1, 1, 1), np.uint8), affine)
    rot = _orthonormal_direction(image)
    spacing = image.spacing
    k_count, j_count, i_count = shape
    origins = affine[:3, 3][None, :] + np.arange(k_count)[:, None] * affine[:3, 2][None, :]
    return SliceGeometry(
        rotation=torch.as_tensor(np.repeat(rot[None], k_count, 0), dtype=dtype, device=device),
        origin=torch.as_tensor(origins, dtype=dtype, device=device),
        spacing=torch.as_tensor(np.repeat(spacing[None, :2], k_count, 0), dtype=dtype, device=device),
        psf_var=torch.as_tensor(np.repeat(np.array(psf_var, dtype=np.float64)[None], k_count, 0), dtype=dtype, device=device),
        height=j_count,
        width=i_count,
    )
