"""Reference output grid and the naive-average SVR baseline.

``output_grid`` picks the reconstruction grid: isotropic, axis-aligned with a reference stack (or
RAS), covering the union of the masks' bounding boxes plus a margin. ``naive_average`` resamples
every stack linearly onto that grid in world coordinates (no motion correction, no PSF
deconvolution) and averages the stacks where they are defined: the baseline that SVR must beat.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..image import Image

__all__ = ["output_grid", "naive_average", "resample_linear"]

_CHUNK_POINTS = 2_000_000


def _orthonormal(direction: np.ndarray, what: str) -> np.ndarray:
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError(f"{what} axes are not orthogonal; sheared images are not supported")
    u, _, vt = np.linalg.svd(direction)
    return u @ vt


def _index_box_corners(image: Image, region: np.ndarray | None) -> np.ndarray:
    """RAS corners (8, 3) of the voxel-edge bounding box of ``region`` (all voxels if None)."""
    if region is None:
        lo = np.full(3, -0.5)
        hi = np.array(image.shape[::-1], dtype=np.float64) - 0.5
    else:
        idx = np.argwhere(region)
        lo = idx.min(0)[::-1] - 0.5
        hi = idx.max(0)[::-1] + 0.5
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    return (corners @ image.affine.T)[:, :3]


def output_grid(
    stacks: Sequence[Image],
    masks: Sequence[Image | None] | None = None,
    *,
    resolution_mm: float = 0.8,
    margin_mm: float = 5.0,
    reference_stack: int | Image | str | None = None,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Isotropic output grid covering the union of the masks' bounding boxes.

    Parameters
    ----------
    stacks : sequence of Image
        The input stacks (K, J, I).
    masks : sequence of (Image or None), optional
        One per stack (voxels > 0 are the region of interest), on any grid. ``None`` (or a ``None``
        entry) uses the whole field of view of that stack.
    resolution_mm : float
        Isotropic voxel size of the grid (mm).
    margin_mm : float
        Margin added on every side of the union bounding box (mm).
    reference_stack : int, Image, "ras" or None
        Whose axes the grid follows: a stack index, an image, or ``"ras"`` for the world axes.
        Default (``None``): the first stack.

    Returns
    -------
    shape : (K, J, I) tuple of int
    affine : ndarray, shape (4, 4)
        IJK-to-RAS of the grid; its axes are the (orthonormalised) reference axes scaled by
        ``resolution_mm``; the grid is centred on the union bounding box (+ margin).
    """
    stacks = list(stacks)
    if not stacks:
        raise ValueError("stacks is empty; pass at least one stack")
    for n, s in enumerate(stacks):
        if not isinstance(s, Image):
            raise TypeError(f"stacks[{n}] must be an Image, got {type(s).__name__}")
    if masks is None:
        masks = [None] * len(stacks)
    masks = list(masks)
    if len(masks) != len(stacks):
        raise ValueError(f"masks must have one entry per stack ({len(stacks)}), got {len(masks)}")
    if not (np.isfinite(resolution_mm) and resolution_mm > 0):
        raise ValueError(f"resolution_mm must be > 0, got {resolution_mm}")
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")

    if reference_stack is None:
        ref_dir = _orthonormal(stacks[0].direction, "stacks[0]")
    elif isinstance(reference_stack, str):
        if reference_stack.lower() != "ras":
            raise ValueError(f"reference_stack must be an index, an Image, 'ras' or None, got {reference_stack!r}")
        ref_dir = np.eye(3)
    elif isinstance(reference_stack, Image):
        ref_dir = _orthonormal(reference_stack.direction, "reference_stack")
    elif isinstance(reference_stack, (int, np.integer)) and not isinstance(reference_stack, bool):
        if not -len(stacks) <= reference_stack < len(stacks):
            raise ValueError(f"reference_stack index {reference_stack} is out of range for {len(stacks)} stacks")
        ref_dir = _orthonormal(stacks[reference_stack].direction, f"stacks[{reference_stack}]")
    else:
        raise TypeError(f"reference_stack must be an int, an Image, 'ras' or None, got {type(reference_stack).__name__}")

    corners = []
    for n, (stack, mask) in enumerate(zip(stacks, masks)):
        if mask is None:
            corners.append(_index_box_corners(stack, None))
            continue
        if not isinstance(mask, Image):
            raise TypeError(f"masks[{n}] must be an Image or None, got {type(mask).__name__}")
        region = np.asarray(mask.data) > 0
        if not region.any():
            raise ValueError(f"masks[{n}] is empty (no voxel > 0); fix the mask or pass None for the whole stack")
        corners.append(_index_box_corners(mask, region))
    proj = np.concatenate(corners) @ ref_dir  # coordinates along the reference axes
    lo, hi = proj.min(0) - margin_mm, proj.max(0) + margin_mm
    n = np.maximum(1, np.ceil((hi - lo) / resolution_mm - 1e-9)).astype(int)  # (n_i, n_j, n_k)
    centre = 0.5 * (lo + hi)
    affine = np.eye(4)
    affine[:3, :3] = ref_dir * resolution_mm
    affine[:3, 3] = ref_dir @ (centre - 0.5 * (n - 1) * resolution_mm)
    return (int(n[2]), int(n[1]), int(n[0])), affine


def resample_linear(image: Image, reference: Image) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling of ``image`` onto the grid of ``reference`` in world coordinates.

    Returns
    -------
    values : ndarray, shape reference.shape, float32
        Interpolated values (edge values are extended over the outer half voxel).
    defined : ndarray, shape reference.shape, bool
        True where the point lies inside ``image``'s voxel extent, i.e. index in
        ``[-0.5, n - 0.5]`` along every axis.
    """
    data = torch.as_tensor(np.asarray(image.data, dtype=np.float32))[None, None]
    kk, jj, ii = image.shape
    sizes = np.array([ii, jj, kk], dtype=np.float64)
    m = np.linalg.inv(image.affine) @ reference.affine  # reference ijk -> image ijk
    shape = reference.shape
    values = np.zeros(shape, np.float32)
    defined = np.zeros(shape, bool)
    jr, ir = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    plane = np.stack([ir, jr], -1).reshape(-1, 2).astype(np.float64)  # (J*I, 2) (i, j)
    per_k = plane.shape[0]
    chunk = max(1, _CHUNK_POINTS // per_k)
    for k0 in range(0, shape[0], chunk):
        ks = np.arange(k0, min(shape[0], k0 + chunk), dtype=np.float64)
        pts = np.concatenate(
            [np.repeat(plane[None], len(ks), 0), np.broadcast_to(ks[:, None, None], (len(ks), per_k, 1))], -1
        )  # (Kc, J*I, 3)
        idx = pts @ m[:3, :3].T + m[:3, 3]
        inside = np.all((idx >= -0.5) & (idx <= sizes - 0.5), axis=-1)
        norm = np.where(sizes > 1, idx * (2.0 / np.maximum(sizes - 1, 1)) - 1.0, 0.0)
        grid = torch.as_tensor(norm, dtype=torch.float32).reshape(1, len(ks), shape[1], shape[2], 3)
        out = torch.nn.functional.grid_sample(data, grid, mode="bilinear", padding_mode="border", align_corners=True)
        values[k0 : k0 + len(ks)] = out[0, 0].numpy()
        defined[k0 : k0 + len(ks)] = inside.reshape(len(ks), shape[1], shape[2])
    return values, defined


def naive_average(stacks: Sequence[Image], reference: Image) -> Image:
    """Average of the stacks resampled (trilinear, world coordinates) onto ``reference``'s grid.

    Parameters
    ----------
    stacks : sequence of Image
        Input stacks, data (K, J, I), any orientation; no motion correction is done.
    reference : Image
        The output grid (only its shape and affine are used), e.g. from :func:`output_grid`.

    Returns
    -------
    Image
        Data float32 of ``reference.shape``: at each voxel, the mean over the stacks whose voxel
        extent contains it (see :func:`resample_linear`); 0 where no stack is defined.
        ``meta["coverage"]`` (K, J, I) int32 is the number of stacks defined at each voxel.
    """
    stacks = list(stacks)
    if not stacks:
        raise ValueError("stacks is empty; pass at least one stack")
    if not isinstance(reference, Image):
        raise TypeError(f"reference must be an Image (the output grid), got {type(reference).__name__}")
    total = np.zeros(reference.shape, np.float64)
    count = np.zeros(reference.shape, np.int32)
    for n, stack in enumerate(stacks):
        if not isinstance(stack, Image):
            raise TypeError(f"stacks[{n}] must be an Image, got {type(stack).__name__}")
        if not np.all(np.isfinite(np.asarray(stack.data, dtype=np.float64))):
            raise ValueError(f"stacks[{n}] contains NaN or infinite values")
        values, defined = resample_linear(stack, reference)
        total[defined] += values[defined]
        count += defined
    out = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
    return Image(out, reference.affine.copy(), meta={"coverage": count})
