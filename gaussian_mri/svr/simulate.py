"""Simulate thick-slice fetal MRI stacks from an isotropic volume (NeSVoR/SVoRT protocol).

The simulated pixel values are computed independently of any Gaussian-primitive model (no inverse
crime): each pixel is the volume integrated numerically under the slice's Gaussian PSF, by a
tensor-product Gauss-Hermite quadrature of PSF sample offsets in the slice frame, with trilinear
interpolation of the voxel volume at every sample (``torch.nn.functional.grid_sample``).

Conventions
-----------
* Stack geometry follows :func:`gaussian_mri.geometry.stack_geometry`: ``k`` is the slice
  direction, slice ``k`` is the plane through voxel centres ``(i, j, k)``; slice spacing is
  ``thickness_mm + gap_mm``; ``Image.slice_thickness`` is set to ``thickness_mm``.
* PSF (METHODS.md s.1/s.2): Gaussian, in-plane FWHM = ``inplane_fwhm_factor`` x in-plane spacing,
  through-plane FWHM = ``through_plane_fwhm_factor`` x slice thickness
  (:func:`gaussian_mri.geometry.psf_variances`).
* Motion: slice ``s`` of a stack has a ground-truth rigid world transform ``T_s`` (4x4, RAS mm), the
  convention of :meth:`gaussian_mri.geometry.SliceGeometry.moved`: the acquired slice sees the volume
  at the pose ``T_s @ nominal pose``, i.e. the pixel at nominal world position ``x`` (and every PSF
  sample around it) reads the volume at ``T_s x``. ``T_s`` rotates about the nominal slice centre
  (:attr:`SliceGeometry.centre`): ``T_s = rigid_matrix(rotvec_s, t_s, centre_s)``. So
  ``stack_geometry(stack.image).moved(stack.transforms)`` is where the slices really were.
* Named orientations are in world (RAS) axes; the columns of each rotation are the RAS directions of
  the stack axes ``i, j, k`` (all right-handed):

  ========== ============ ============ =============
  name       i (columns)  j (rows)     k (normal)
  ========== ============ ============ =============
  axial      R            A            S
  coronal    R            S            P
  sagittal   A            S            R
  ========== ============ ============ =============

Degradations, applied in this order to the PSF-integrated slices: smooth multiplicative bias field
(fixed in the scanner frame, i.e. on the nominal stack grid), corruption of a fraction of the slices
(signal voids / drop-outs), then additive noise. Each degradation of each stack draws from its own
random stream derived from ``seed``, so switching one on does not change the others.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_write_text
from ..geometry import SliceGeometry, stack_geometry
from ..image import Image, read_image, write_image
from ..transforms import rigid_matrix

__all__ = [
    "ORIENTATIONS",
    "MOTION_PRESETS",
    "MotionSpec",
    "SimulatedStack",
    "simulate_stacks",
    "render_slices",
    "motion_trajectory",
    "save_simulation",
    "load_simulation",
]

ORIENTATIONS: dict[str, np.ndarray] = {
    "axial": np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "sagittal": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}

# name -> (rotation_deg, translation_mm, jump_probability)
MOTION_PRESETS: dict[str, tuple[float, float, float]] = {
    "none": (0.0, 0.0, 0.0),
    "mild": (2.0, 1.0, 0.0),
    "moderate": (5.0, 3.0, 0.05),
    "severe": (10.0, 6.0, 0.1),
}

_STREAM_MOTION, _STREAM_BIAS, _STREAM_VOIDS, _STREAM_NOISE = 0, 1, 2, 3
_MAX_SAMPLES_PER_CHUNK = 2_000_000
_FORMAT = "gaussian-mri-simulation"


@dataclass(frozen=True)
class MotionSpec:
    """Random rigid per-slice motion of the subject during a stack's acquisition.

    Each stack gets a trajectory over its slices (acquisition order = ``k`` order): a smooth random
    path (Gaussian-filtered white noise with correlation length ``smoothness_slices``) plus, at each
    slice with probability ``jump_probability``, a sudden jump (a random step that persists). The
    rotation vectors and the translations are then scaled so that the largest rotation angle over
    the stack equals ``rotation_deg`` and the largest translation length equals ``translation_mm``.

    Attributes
    ----------
    rotation_deg : float
        Maximum rotation angle over a stack, degrees (>= 0; 0 = no rotation).
    translation_mm : float
        Maximum translation length over a stack, mm (>= 0).
    jump_probability : float
        Probability in [0, 1] of a sudden jump before each slice.
    smoothness_slices : float
        Correlation length (Gaussian filter sigma) of the smooth path, in slices (> 0).
    seed : int or None
        Seed of the motion streams; ``None`` derives them from the ``seed`` of :func:`simulate_stacks`.
    stack_rotation_deg, stack_translation_mm : float
        Motion between stacks (stacks are minutes apart): every stack also gets one rigid offset,
        a rotation of exactly this angle about a random axis through the mask's centre and a
        translation of exactly this length in a random direction, applied after the slice motion.
    interleave : int
        Slices are acquired in this many interleaved passes (2: 0, 2, 4, ..., then 1, 3, 5, ..., as
        fetal single-shot stacks usually are); the smooth path runs over acquisition time, so with
        ``interleave > 1`` neighbouring slices are far apart in time and their poses differ more.
    """

    rotation_deg: float = 0.0
    translation_mm: float = 0.0
    jump_probability: float = 0.0
    smoothness_slices: float = 4.0
    seed: int | None = None
    stack_rotation_deg: float = 0.0
    stack_translation_mm: float = 0.0
    interleave: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.interleave, bool) or int(self.interleave) != self.interleave or self.interleave < 1:
            raise ValueError(f"MotionSpec.interleave must be an integer >= 1, got {self.interleave!r}")
        for name in ("rotation_deg", "translation_mm", "stack_rotation_deg", "stack_translation_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"MotionSpec.{name} must be a finite number >= 0, got {value}")
        for name in ("rotation_deg", "stack_rotation_deg"):
            if getattr(self, name) > 90:
                raise ValueError(f"MotionSpec.{name} must be <= 90 degrees, got {getattr(self, name)}")
        if not 0.0 <= self.jump_probability <= 1.0:
            raise ValueError(f"MotionSpec.jump_probability must be in [0, 1], got {self.jump_probability}")
        if not self.smoothness_slices > 0:
            raise ValueError(f"MotionSpec.smoothness_slices must be > 0, got {self.smoothness_slices}")

    @classmethod
    def preset(cls, name: str, seed: int | None = None) -> MotionSpec:
        """One of ``MOTION_PRESETS`` (``none``, ``mild``, ``moderate``, ``severe``)."""
        key = str(name).lower()
        if key not in MOTION_PRESETS:
            raise ValueError(f"motion preset must be one of {sorted(MOTION_PRESETS)}, got {name!r}")
        rot, trans, jump = MOTION_PRESETS[key]
        return cls(rotation_deg=rot, translation_mm=trans, jump_probability=jump, seed=seed)

    @property
    def is_static(self) -> bool:
        return self.rotation_deg == 0 and self.translation_mm == 0 and self.stack_rotation_deg == 0 and self.stack_translation_mm == 0

    def as_dict(self) -> dict:
        return {
            "rotation_deg": self.rotation_deg,
            "translation_mm": self.translation_mm,
            "jump_probability": self.jump_probability,
            "smoothness_slices": self.smoothness_slices,
            "seed": self.seed,
            "stack_rotation_deg": self.stack_rotation_deg,
            "stack_translation_mm": self.stack_translation_mm,
            "interleave": self.interleave,
        }


@dataclass
class SimulatedStack:
    """One simulated stack with its ground truth.

    Attributes
    ----------
    image : Image
        The stack, data (K, J, I) float32, ``slice_thickness`` set (mm).
    mask : Image
        Brain mask seen by each (moved) slice, same grid, uint8 {0, 1}.
    transforms : ndarray, shape (K, 4, 4), float64
        True rigid world transform of each slice (RAS mm), :meth:`SliceGeometry.moved` convention,
        rotation about the nominal slice centre. Identity without motion.
    corrupted : ndarray, shape (n,), int64
        Sorted indices ``k`` of the corrupted slices.
    params : dict
        ``{"simulation": <all simulate_stacks parameters>, "stack": <this stack's values>}``
        (JSON-serialisable).
    """

    image: Image
    mask: Image
    transforms: np.ndarray
    corrupted: np.ndarray
    params: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# PSF integration
# --------------------------------------------------------------------------------------------------


def _gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` with ``E[f(X)] ~ sum w f(z sigma)`` for ``X ~ N(0, sigma^2)``."""
    if n == 1:
        return np.zeros(1), np.ones(1)
    x, w = np.polynomial.hermite.hermgauss(n)
    return x * math.sqrt(2.0), w / math.sqrt(math.pi)


def _psf_quadrature(psf_points: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal nodes (Q, 3) and weights (Q,) of the tensor-product rule."""
    nodes, weights = zip(*(_gauss_hermite(int(n)) for n in psf_points))
    zu, zv, zw = np.meshgrid(*nodes, indexing="ij")
    wu, wv, ww = np.meshgrid(*weights, indexing="ij")
    z = np.stack([zu.ravel(), zv.ravel(), zw.ravel()], -1)
    return z, (wu * wv * ww).ravel()


def _check_psf_points(psf_points: Sequence[int]) -> tuple[int, int, int]:
    pts = tuple(psf_points)
    if len(pts) != 3 or not all(isinstance(n, (int, np.integer)) and 1 <= n <= 32 for n in pts):
        raise ValueError(f"psf_points must be three integers in [1, 32] (u, v, w), got {psf_points!r}")
    return tuple(int(n) for n in pts)  # type: ignore[return-value]


def _normalise_index(idx: torch.Tensor, sizes: tuple[int, int, int]) -> torch.Tensor:
    """Voxel indices (..., 3) in (i, j, k) order -> grid_sample coordinates (align_corners=True)."""
    out = []
    for a, n in enumerate(sizes):
        out.append(idx[..., a] * (2.0 / (n - 1)) - 1.0 if n > 1 else idx[..., a] * 0.0)
    return torch.stack(out, -1)


def _integrate(
    volume: torch.Tensor,
    world_to_index: np.ndarray,
    geometry: SliceGeometry,
    psf_points: tuple[int, int, int],
) -> torch.Tensor:
    """PSF-weighted integral of a multi-channel volume over slices.

    Parameters
    ----------
    volume : (C, K, J, I) float32 tensor
    world_to_index : (4, 4) array mapping RAS mm to (i, j, k, 1)
    geometry : SliceGeometry of S slices, H x W pixels (any float dtype)

    Returns
    -------
    (C, S, H, W) float32 tensor. Samples outside the volume read 0 (trilinear blend at the border).
    """
    c, kk, jj, ii = volume.shape
    geom = geometry.to(dtype=torch.float64, device="cpu")
    z, w = _psf_quadrature(psf_points)
    z_t = torch.as_tensor(z, dtype=torch.float64)  # (Q, 3)
    w_t = torch.as_tensor(w, dtype=torch.float32)  # (Q,)
    q = z_t.shape[0]
    m = torch.as_tensor(world_to_index[:3, :3], dtype=torch.float64)
    b = torch.as_tensor(world_to_index[:3, 3], dtype=torch.float64)
    h, wd = geom.height, geom.width
    per_slice = h * wd * q
    chunk = max(1, _MAX_SAMPLES_PER_CHUNK // per_slice)
    vol = volume[None].to(torch.float32)
    out = torch.empty((c, geom.n_slices, h, wd), dtype=torch.float32)
    for s0 in range(0, geom.n_slices, chunk):
        g = geom.select(slice(s0, s0 + chunk))
        sc = g.n_slices
        # PSF sample offsets in the slice frame (S, Q, 3), then in the world (S, Q, 3).
        off = z_t[None] * g.psf_var.clamp_min(0).sqrt()[:, None, :]
        off_world = off @ g.rotation.transpose(1, 2)
        pts = g.pixel_to_world()[:, :, :, None, :] + off_world[:, None, None, :, :]  # (S, H, W, Q, 3)
        idx = pts @ m.T + b
        grid = _normalise_index(idx, (ii, jj, kk)).to(torch.float32).reshape(1, sc, h, wd * q, 3)
        samples = torch.nn.functional.grid_sample(
            vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )  # (1, C, S, H, W*Q)
        samples = samples.reshape(c, sc, h, wd, q)
        out[:, s0 : s0 + sc] = samples @ w_t
    return out


def render_slices(
    volume: Image,
    geometry: SliceGeometry,
    *,
    psf_points: Sequence[int] = (3, 3, 7),
) -> np.ndarray:
    """Integrate a voxel volume under each slice pixel's Gaussian PSF (numerical quadrature).

    Parameters
    ----------
    volume : Image
        Voxel volume, data (K, J, I); trilinear interpolation between voxel centres, 0 outside.
    geometry : SliceGeometry
        ``S`` slices of ``H x W`` pixels; ``geometry.psf_var`` (S, 3) mm^2 are the PSF variances
        along ``(u, v, w)`` of the slice frame.
    psf_points : (3,) ints
        Gauss-Hermite points per slice axis ``(u, v, w)``; exact for polynomials of degree
        ``2n - 1`` in each axis.

    Returns
    -------
    ndarray, shape (S, H, W), float32
        ``I(p) = E_{e ~ N(0, R diag(psf_var) R^T)} [V(x_p + e)]`` for pixel centre ``x_p``.
    """
    pts = _check_psf_points(psf_points)
    data = torch.as_tensor(np.asarray(volume.data, dtype=np.float32))
    return _integrate(data[None], np.linalg.inv(volume.affine), geometry, pts)[0].numpy()


# --------------------------------------------------------------------------------------------------
# Random components
# --------------------------------------------------------------------------------------------------


def _rng(seed: int, stack: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stack), int(stream)])


def _scaled_path(rng: np.random.Generator, n: int, amplitude: float, spec: MotionSpec) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    pad = int(math.ceil(3 * spec.smoothness_slices))
    white = rng.standard_normal((n + 2 * pad, 3))
    path = gaussian_filter1d(white, spec.smoothness_slices, axis=0, mode="nearest")[pad : pad + n]
    path = path / max(float(path.std()), 1e-12)
    jumps = rng.random(n) < spec.jump_probability
    jumps[0] = False
    steps = rng.standard_normal((n, 3)) * 2.0 * jumps[:, None]
    path = path + np.cumsum(steps, axis=0)
    peak = float(np.linalg.norm(path, axis=1).max())
    if amplitude == 0 or peak < 1e-12:
        return np.zeros((n, 3))
    return path * (amplitude / peak)


def motion_trajectory(spec: MotionSpec, n_slices: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random per-slice rotation vectors and translations following ``spec``.

    Returns
    -------
    rotvec : ndarray, shape (n_slices, 3)
        Axis * angle in radians; ``max |rotvec| = radians(spec.rotation_deg)``.
    translation : ndarray, shape (n_slices, 3)
        mm; ``max |translation| = spec.translation_mm``.
    """
    rot = _scaled_path(rng, n_slices, math.radians(spec.rotation_deg), spec)
    trans = _scaled_path(rng, n_slices, spec.translation_mm, spec)
    if spec.interleave > 1:  # the paths are over acquisition time: slice order[t] is acquired t-th
        order = acquisition_order(n_slices, spec.interleave)
        rot[order], trans[order] = rot.copy(), trans.copy()
    return rot, trans


def acquisition_order(n_slices: int, interleave: int) -> np.ndarray:
    """Slice indices in the order they are acquired: ``interleave`` passes, pass ``p`` takes p, p + interleave, ..."""
    return np.concatenate([np.arange(p, n_slices, interleave) for p in range(interleave)])


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """exp(strength * f) with f a random quadratic polynomial of the normalised stack coordinates
    spanning exactly [-1, 1] over the grid. Shape (K, J, I)."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    k, j, i = np.meshgrid(*axes, indexing="ij")
    terms = [i, j, k, i * i, j * j, k * k, i * j, j * k, i * k]
    coef = rng.standard_normal(len(terms))
    f = sum(c * t for c, t in zip(coef, terms))
    f = f - 0.5 * (f.max() + f.min())
    span = float(np.abs(f).max())
    f = f / span if span > 1e-12 else np.zeros_like(f)
    return np.exp(strength * f)


def _void_multiplier(rng: np.random.Generator, mask_slice: np.ndarray) -> tuple[np.ndarray, str]:
    """(H, W) multiplicative corruption of one slice and its kind ("dropout" or "void")."""
    h, w = mask_slice.shape
    floor = rng.uniform(0.0, 0.1)
    if rng.random() < 0.3:
        return np.full((h, w), floor), "dropout"
    rows, cols = np.nonzero(mask_slice)
    if rows.size:
        cy, cx = 0.5 * (rows.min() + rows.max()), 0.5 * (cols.min() + cols.max())
        ry = max(0.5 * (rows.max() - rows.min() + 1), 4.0)
        rx = max(0.5 * (cols.max() - cols.min() + 1), 4.0)
    else:
        cy, cx, ry, rx = (h - 1) / 2, (w - 1) / 2, h / 2, w / 2
    cy += rng.uniform(-0.2, 0.2) * ry
    cx += rng.uniform(-0.2, 0.2) * rx
    ry *= rng.uniform(0.8, 1.2)
    rx *= rng.uniform(0.8, 1.2)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    edge = 1.0 / (1.0 + np.exp(-(r - 1.0) / 0.08))
    return floor + (1.0 - floor) * edge, "void"


# --------------------------------------------------------------------------------------------------
# Stack geometry
# --------------------------------------------------------------------------------------------------


def _orientation_matrix(value: object, index: int) -> tuple[np.ndarray, str]:
    if isinstance(value, str):
        key = value.lower()
        if key not in ORIENTATIONS:
            raise ValueError(
                f"orientations[{index}] must be one of {sorted(ORIENTATIONS)} or a 3x3 rotation, got {value!r}"
            )
        return ORIENTATIONS[key].copy(), key
    rot = np.asarray(value, dtype=np.float64)
    if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
        raise ValueError(f"orientations[{index}] must be a name or a finite 3x3 rotation matrix, got shape {rot.shape}")
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6):
        raise ValueError(
            f"orientations[{index}] is not orthonormal (R^T R != I); its columns must be the unit RAS "
            "directions of the stack axes i, j, k"
        )
    u, _, vt = np.linalg.svd(rot)
    return u @ vt, "custom"


def _mask_extent(mask: Image, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extent ``(lo, hi)`` (3,) of the mask's voxels (voxel edges included) along the columns of
    ``rot`` (the frame coordinates ``u, v, w`` in mm)."""
    idx = np.argwhere(np.asarray(mask.data) > 0)[:, ::-1].astype(np.float64)  # (N, 3) (i, j, k)
    if idx.size == 0:
        raise ValueError("mask is empty (no voxel > 0); pass mask=None to use the whole volume, or fix the mask")
    lin = rot.T @ mask.affine[:3, :3]  # voxel index -> frame coordinates
    proj = idx @ lin.T + rot.T @ mask.affine[:3, 3]
    half_voxel = 0.5 * np.abs(lin).sum(1)
    return proj.min(0) - half_voxel, proj.max(0) + half_voxel


def _stack_affine(
    rot: np.ndarray, extent: tuple[np.ndarray, np.ndarray], spacing: np.ndarray, margin_mm: float
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape (K, J, I) of a stack with axes ``rot`` covering ``extent`` + margin, centred."""
    lo, hi = extent[0] - margin_mm, extent[1] + margin_mm
    n = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-9)).astype(int)  # (n_i, n_j, n_k)
    centre_frame = 0.5 * (lo + hi)
    origin = rot @ (centre_frame - 0.5 * (n - 1) * spacing)
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing[None, :]
    affine[:3, 3] = origin
    return affine, (int(n[2]), int(n[1]), int(n[0]))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def simulate_stacks(
    volume: Image,
    mask: Image | None = None,
    *,
    orientations: Sequence[str | np.ndarray] = ("axial", "coronal", "sagittal"),
    thickness_mm: float = 3.0,
    gap_mm: float = 0.0,
    inplane_mm: float = 1.0,
    margin_mm: float = 10.0,
    inplane_fwhm_factor: float = 1.2,
    through_plane_fwhm_factor: float = 1.0,
    motion: MotionSpec | str | None = None,
    noise_sigma: float = 0.0,
    noise_type: str = "gaussian",
    bias_field: float = 0.0,
    void_fraction: float = 0.0,
    psf_points: Sequence[int] = (3, 3, 7),
    seed: int = 0,
) -> list[SimulatedStack]:
    """Simulate thick-slice stacks of ``volume`` with known motion, PSF, bias, voids and noise.

    Parameters
    ----------
    volume : Image
        Ground-truth isotropic volume, data (K, J, I), finite values.
    mask : Image, optional
        Brain mask (any grid; voxels > 0 are brain). Each stack covers the mask's voxels (their
        bounding box in the stack's frame) plus ``margin_mm`` on every side, centred on that box.
        ``None``: the non-zero voxels of ``volume``.
    orientations : sequence of str or (3, 3) arrays
        One entry per stack: ``"axial"``, ``"coronal"``, ``"sagittal"`` or a rotation whose columns
        are the RAS directions of the stack axes ``i, j, k``.
    thickness_mm : float
        Slice thickness (mm), the through-plane PSF FWHM before ``through_plane_fwhm_factor``.
    gap_mm : float
        Gap between slices (mm); slice spacing = ``thickness_mm + gap_mm``.
    inplane_mm : float
        In-plane pixel size (mm).
    margin_mm : float
        Margin added around the mask bounding box on every side (mm).
    inplane_fwhm_factor, through_plane_fwhm_factor : float
        PSF FWHM factors (>= 0; 0 removes the PSF along that axis), see :func:`psf_variances`.
    motion : MotionSpec, str or None
        Per-slice rigid motion; a preset name of ``MOTION_PRESETS``; ``None`` = no motion.
    noise_sigma : float
        Noise standard deviation as a fraction of the volume's intensity range (max - min).
    noise_type : {"gaussian", "rician"}
        Additive Gaussian noise, or Rician (magnitude of the signal plus complex Gaussian noise).
    bias_field : float
        Strength ``b`` of the smooth multiplicative bias ``exp(b f)``, ``f`` a random quadratic over
        the stack grid spanning exactly [-1, 1]; so the field spans ``[exp(-b), exp(b)]``.
    void_fraction : float
        Fraction in [0, 1] of each stack's slices corrupted (``round(fraction * K)`` slices): 30 %
        full drop-outs (slice x U(0, 0.1)), 70 % signal voids (an ellipse of 0.8-1.2 x the brain's
        half-extents in that slice, or of the FOV's without brain, centre jittered by up to 20 %,
        intensity x U(0, 0.1) inside, smooth edge).
    psf_points : (3,) ints
        Gauss-Hermite PSF quadrature points along ``(u, v, w)``.
    seed : int
        Seed of every random stream (motion unless ``motion.seed`` is set, bias, voids, noise).

    Returns
    -------
    list of SimulatedStack
        One per orientation, in order.

    Raises
    ------
    ValueError
        Invalid parameters (named in the message), empty mask, non-finite volume.
    """
    if not isinstance(volume, Image):
        raise TypeError(f"volume must be a gaussian_mri.image.Image, got {type(volume).__name__}")
    if mask is not None and not isinstance(mask, Image):
        raise TypeError(f"mask must be a gaussian_mri.image.Image or None, got {type(mask).__name__}")
    thickness_mm = _positive("thickness_mm", thickness_mm)
    gap_mm = _non_negative("gap_mm", gap_mm)
    inplane_mm = _positive("inplane_mm", inplane_mm)
    margin_mm = _non_negative("margin_mm", margin_mm)
    inplane_fwhm_factor = _non_negative("inplane_fwhm_factor", inplane_fwhm_factor)
    through_plane_fwhm_factor = _non_negative("through_plane_fwhm_factor", through_plane_fwhm_factor)
    noise_sigma = _non_negative("noise_sigma", noise_sigma)
    bias_field = _non_negative("bias_field", bias_field)
    void_fraction = _non_negative("void_fraction", void_fraction)
    if void_fraction > 1:
        raise ValueError(f"void_fraction must be in [0, 1], got {void_fraction}")
    if noise_type not in ("gaussian", "rician"):
        raise ValueError(f"noise_type must be 'gaussian' or 'rician', got {noise_type!r}")
    pts = _check_psf_points(psf_points)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if motion is None:
        motion = MotionSpec()
    elif isinstance(motion, str):
        motion = MotionSpec.preset(motion)
    elif not isinstance(motion, MotionSpec):
        raise TypeError(f"motion must be a MotionSpec, a preset name {sorted(MOTION_PRESETS)} or None")
    if isinstance(orientations, (str, np.ndarray)) and not (
        isinstance(orientations, np.ndarray) and orientations.ndim == 3
    ):
        orientations = [orientations]  # type: ignore[list-item]
    rots = [_orientation_matrix(o, n) for n, o in enumerate(orientations)]
    if not rots:
        raise ValueError("orientations must name at least one stack")

    if min(volume.shape) < 2:
        raise ValueError(f"volume must have at least 2 voxels along every axis, got shape (K, J, I) = {volume.shape}")
    data = np.asarray(volume.data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ValueError("volume contains NaN or infinite values; clean the volume first")
    vmin, vmax = float(data.min()), float(data.max())
    intensity_range = vmax - vmin
    if noise_sigma > 0 and intensity_range <= 0:
        raise ValueError("noise_sigma is relative to the volume's intensity range, but the volume is constant")
    noise_abs = noise_sigma * intensity_range

    if mask is None:
        support = Image((data != 0).astype(np.uint8), volume.affine)
        if not support.data.any():
            raise ValueError("volume is all zeros and no mask was given; nothing to simulate")
        mask_img = support
    else:
        mask_img = Image((np.asarray(mask.data) > 0).astype(np.uint8), mask.affine)
        if not mask_img.data.any():
            raise ValueError("mask is empty (no voxel > 0); pass mask=None to use the whole volume, or fix the mask")

    same_grid = mask_img.shape == volume.shape and np.allclose(mask_img.affine, volume.affine, atol=1e-6)
    vol_t = torch.as_tensor(data)
    mask_t = torch.as_tensor(mask_img.data.astype(np.float32))
    vol_w2i = np.linalg.inv(volume.affine)
    mask_w2i = np.linalg.inv(mask_img.affine)

    sim_params = {
        "volume": volume.meta.get("path"),
        "mask": None if mask is None else mask.meta.get("path"),
        "orientations": [name if name != "custom" else rot.tolist() for rot, name in rots],
        "thickness_mm": thickness_mm,
        "gap_mm": gap_mm,
        "inplane_mm": inplane_mm,
        "margin_mm": margin_mm,
        "inplane_fwhm_factor": inplane_fwhm_factor,
        "through_plane_fwhm_factor": through_plane_fwhm_factor,
        "motion": motion.as_dict(),
        "noise_sigma": noise_sigma,
        "noise_type": noise_type,
        "noise_sigma_abs": noise_abs,
        "intensity_range": [vmin, vmax],
        "bias_field": bias_field,
        "void_fraction": void_fraction,
        "psf_points": list(pts),
        "seed": int(seed),
    }

    spacing = np.array([inplane_mm, inplane_mm, thickness_mm + gap_mm])
    motion_seed = int(seed) if motion.seed is None else int(motion.seed)
    mask_idx = np.argwhere(np.asarray(mask_img.data) > 0)[:, ::-1].mean(0)
    mask_centre = mask_img.affine[:3, :3] @ mask_idx + mask_img.affine[:3, 3]
    stacks: list[SimulatedStack] = []
    for n, (rot, name) in enumerate(rots):
        affine, shape = _stack_affine(rot, _mask_extent(mask_img, rot), spacing, margin_mm)
        n_k = shape[0]
        template = Image(np.zeros(shape, np.float32), affine, slice_thickness=thickness_mm)
        nominal, _ = stack_geometry(
            template,
            thickness=thickness_mm,
            inplane_fwhm_factor=inplane_fwhm_factor,
            through_plane_fwhm_factor=through_plane_fwhm_factor,
            dtype=torch.float64,
        )
        # Ground-truth motion about the nominal slice centres.
        motion_rng = _rng(motion_seed, n, _STREAM_MOTION)
        rotvec, trans = motion_trajectory(motion, n_k, motion_rng)
        transforms = rigid_matrix(
            torch.as_tensor(rotvec), torch.as_tensor(trans), nominal.centre
        ) if not motion.is_static else torch.eye(4, dtype=torch.float64).repeat(n_k, 1, 1)
        if motion.stack_rotation_deg > 0 or motion.stack_translation_mm > 0:
            axis, direction = _unit(motion_rng), _unit(motion_rng)
            offset = rigid_matrix(
                torch.as_tensor(axis * math.radians(motion.stack_rotation_deg)),
                torch.as_tensor(direction * motion.stack_translation_mm),
                torch.as_tensor(mask_centre),
            )
            transforms = offset[None] @ transforms
        moved = nominal.moved(transforms)

        if same_grid:
            both = _integrate(torch.stack([vol_t, mask_t]), vol_w2i, moved, pts)
            img, msk = both[0].numpy(), both[1].numpy()
        else:
            img = _integrate(vol_t[None], vol_w2i, moved, pts)[0].numpy()
            msk = _integrate(mask_t[None], mask_w2i, moved, pts)[0].numpy()
        img = img.astype(np.float64)
        msk_u8 = (msk >= 0.5).astype(np.uint8)

        if bias_field > 0:
            img = img * _bias_field(_rng(seed, n, _STREAM_BIAS), shape, bias_field)
        corrupted: list[int] = []
        kinds: list[str] = []
        n_void = int(round(void_fraction * n_k))
        if n_void > 0:
            rng = _rng(seed, n, _STREAM_VOIDS)
            corrupted = sorted(int(k) for k in rng.choice(n_k, size=n_void, replace=False))
            for k in corrupted:
                mult, kind = _void_multiplier(rng, msk_u8[k])
                img[k] = img[k] * mult
                kinds.append(kind)
        if noise_abs > 0:
            rng = _rng(seed, n, _STREAM_NOISE)
            if noise_type == "gaussian":
                img = img + rng.normal(0.0, noise_abs, img.shape)
            else:
                img = np.hypot(img + rng.normal(0.0, noise_abs, img.shape), rng.normal(0.0, noise_abs, img.shape))

        stack_params = {
            "index": n,
            "orientation": name,
            "rotation": rot.tolist(),
            "shape_kji": list(shape),
            "slice_spacing_mm": float(spacing[2]),
            "corruption_kinds": kinds,
            "max_rotation_deg": float(np.degrees(np.linalg.norm(rotvec, axis=1).max())),
            "max_translation_mm": float(np.linalg.norm(trans, axis=1).max()),
        }
        stacks.append(
            SimulatedStack(
                image=Image(img.astype(np.float32), affine, slice_thickness=thickness_mm),
                mask=Image(msk_u8, affine.copy(), slice_thickness=thickness_mm),
                transforms=transforms.numpy().astype(np.float64),
                corrupted=np.asarray(corrupted, dtype=np.int64),
                params={"simulation": sim_params, "stack": stack_params},
            )
        )
    return stacks


_CONVENTION = (
    "transforms[s] is the true rigid world transform (RAS mm, 4x4) of slice k=s: the acquired slice "
    "sees the volume at pose transforms[s] @ nominal pose (SliceGeometry.moved), rotation about the "
    "nominal slice centre; nominal pose = stack_geometry(stack image)."
)


def save_simulation(stacks: Sequence[SimulatedStack], out_dir: str | os.PathLike) -> Path:
    """Write ``stack_XX.nii.gz``, ``mask_XX.nii.gz`` and ``transforms.json`` into ``out_dir``.

    ``transforms.json`` holds every parameter (with the seed), and per stack the file names, the
    (K, 4, 4) true slice transforms, the corrupted slice indices and their kinds. Images are written
    atomically and ``transforms.json`` last (also atomically), so its presence means a complete run.
    ``out_dir`` is created if needed. Returns the path of ``transforms.json``.
    """
    if not stacks:
        raise ValueError("stacks is empty; nothing to save")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, st in enumerate(stacks):
        if not isinstance(st, SimulatedStack):
            raise TypeError(f"stacks[{n}] must be a SimulatedStack, got {type(st).__name__}")
        img_name, mask_name = f"stack_{n:02d}.nii.gz", f"mask_{n:02d}.nii.gz"
        write_image(st.image, out / img_name)
        write_image(st.mask, out / mask_name)
        entries.append(
            {
                "image": img_name,
                "mask": mask_name,
                "slice_thickness_mm": st.image.slice_thickness,
                "transforms": np.asarray(st.transforms, dtype=np.float64).tolist(),
                "corrupted": [int(k) for k in st.corrupted],
                **{k: v for k, v in st.params.get("stack", {}).items() if k not in ("index",)},
            }
        )
    doc = {
        "format": _FORMAT,
        "version": 1,
        "convention": _CONVENTION,
        "parameters": stacks[0].params.get("simulation", {}),
        "stacks": entries,
    }
    return atomic_write_text(out / "transforms.json", json.dumps(doc, indent=1))


def load_simulation(out_dir: str | os.PathLike) -> list[SimulatedStack]:
    """Read back a folder written by :func:`save_simulation`."""
    out = Path(out_dir)
    path = out / "transforms.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; out_dir must be a folder written by save_simulation")
    doc = json.loads(path.read_text())
    if doc.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a gaussian-mri simulation file (format={doc.get('format')!r})")
    stacks = []
    for n, entry in enumerate(doc["stacks"]):
        image = read_image(out / entry["image"])
        mask = read_image(out / entry["mask"])
        transforms = np.asarray(entry["transforms"], dtype=np.float64)
        if transforms.shape != (image.shape[0], 4, 4):
            raise ValueError(f"{path}: stacks[{n}].transforms has shape {transforms.shape}, expected ({image.shape[0]}, 4, 4)")
        stack_params = {
            k: v for k, v in entry.items() if k not in ("image", "mask", "transforms", "corrupted", "slice_thickness_mm")
        }
        stack_params["index"] = n
        stacks.append(
            SimulatedStack(
                image=image,
                mask=mask,
                transforms=transforms,
                corrupted=np.asarray(entry["corrupted"], dtype=np.int64),
                params={"simulation": doc.get("parameters", {}), "stack": stack_params},
            )
        )
    return stacks
