"""Stack-level rigid pre-alignment for slice-to-volume reconstruction.

Stacks of one fetal examination are minutes apart: the fetus moves between them by several mm and,
on the real subject shipped for the tests (mialsrtk-sub01), the two sagittal stacks are rotated by
~22 degrees relative to the first axial one. The joint gradient fit of :mod:`.recon` only refines
poses near their start, so the stacks are first aligned rigidly, as in SVRTK and NiftyMIC: every
stack is resampled (linearly, inside its mask) onto a common isotropic grid and registered to the
reference stack; in a second round each stack is registered to the average of the others
(already aligned), which covers the anatomy in all three directions instead of one thick-slice
stack. A registration is kept only if it raises the normalised correlation inside the fixed mask,
so a failed registration leaves the stack where the scanner put it. Slices much darker than their
neighbours (signal voids, drop-outs) are replaced by the median of their neighbours before
resampling: a dark band pulls the correlation metric towards a wrong pose (2-5 degrees on the
small simulated test set).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..image import Image
from ..metrics import ncc
from ..resample import resample_to_reference, rigid_align, rotation_angle_deg
from .baseline import output_grid

log = logging.getLogger(__name__)

__all__ = ["align_stacks", "stack_on_grid", "mask_around", "propagate_mask", "masks_from_reference"]


def stack_on_grid(stack: Image, mask: np.ndarray, grid: Image) -> tuple[Image, np.ndarray]:
    """A (masked) thick-slice stack resampled linearly onto an isotropic ``grid``, and where its
    mask lands there (resampled mask > 0.5): the stand-in volume of a stack for rigid registration."""
    volume = resample_to_reference(stack, grid)
    inside = np.asarray(resample_to_reference(stack.with_data(mask.astype(np.float32)), grid).data) > 0.5
    return volume, inside


def align_stacks(
    stacks: Sequence[Image],
    masks: Sequence[np.ndarray],
    *,
    reference: int = 0,
    resolution_mm: float = 1.5,
    rounds: int = 2,
) -> list[np.ndarray]:
    """Rigid world transforms that bring each stack onto the reference stack.

    Parameters
    ----------
    stacks : sequence of Image
        Thick-slice stacks (K, J, I), any orientation.
    masks : sequence of ndarray of bool
        One per stack, on the stack's grid (region of interest).
    reference : int
        Index of the stack that defines the anatomy frame (its transform is the identity).
    resolution_mm : float
        Isotropic grid spacing used for the registration (coarse is enough and fast).
    rounds : int
        1: register each stack to the reference stack; 2: then to the average of the others.

    Returns
    -------
    list of ndarray (4, 4)
        ``M[n]`` maps a point of stack ``n`` at its nominal (header) position to the reference
        frame: the slice poses of stack ``n`` are ``M[n] @ pose``.
    """
    n = len(stacks)
    if not 0 <= reference < n:
        raise ValueError(f"reference stack {reference} out of range for {n} stacks")
    eye = [np.eye(4) for _ in range(n)]
    if n < 2:
        return eye
    mask_imgs = [s.with_data(m.astype(np.uint8)) for s, m in zip(stacks, masks)]
    shape, affine = output_grid(stacks, mask_imgs, resolution_mm=resolution_mm, margin_mm=10.0, reference_stack=reference)
    grid = Image(np.zeros(shape, np.float32), affine)
    vols, inside = [], []
    for index, (s, m) in enumerate(zip(stacks, masks)):
        d = np.asarray(s.data, dtype=np.float32) * m
        d, bad = _replace_dark_slices(d, m)
        if bad.size:
            log.info("stack %d: slices %s much darker than their neighbours; replaced for the stack alignment", index, bad.tolist())
        med = float(np.median(d[m])) if m.any() else 1.0
        vol, ins = stack_on_grid(s.with_data(d / max(med, 1e-12)), m, grid)
        vols.append(vol)
        inside.append(ins)

    # T[n]: fixed (reference frame) points -> points of stack n, as returned by rigid_align.
    T = [np.eye(4) for _ in range(n)]

    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def moved(i):  # stack i (and its mask) in the reference frame; recomputed only when T[i] changes
        if i not in cache:
            cache[i] = np.asarray(resample_to_reference(vols[i], grid, transform=T[i]).data), np.asarray(
                resample_to_reference(Image(inside[i].astype(np.float32), affine), grid, transform=T[i]).data
            ) > 0.5
        return cache[i]

    for rnd in range(rounds):
        if rnd == 0:
            fixed, fixed_mask = np.asarray(vols[reference].data), inside[reference]
        for i in range(n):
            if i == reference:
                continue
            if rnd > 0:
                others = [moved(j) for j in range(n) if j != i]
                count = sum(m.astype(np.float32) for _, m in others)
                fixed = sum(v * m for v, m in others) / np.maximum(count, 1)
                fixed_mask = count >= max(1, (n - 1) // 2)
            fmask = Image(fixed_mask.astype(np.uint8), affine)
            before = _score(vols[i], T[i], fixed, fixed_mask, grid)
            # Start from the current pose: register the stack as already moved, then compose.
            start = Image(moved(i)[0].astype(np.float32), affine) if rnd > 0 else vols[i]
            try:
                step = rigid_align(start, Image(fixed.astype(np.float32), affine), fixed_mask=fmask, metric="correlation", initial="identity")
            except ValueError as exc:  # SimpleITK gives up (e.g. no overlap): keep the current pose
                log.warning("stack %d: rigid pre-alignment failed (%s); keeping its current position", i, exc)
                continue
            cand = T[i] @ step
            after = _score(vols[i], cand, fixed, fixed_mask, grid)
            if after > before:
                T[i] = cand
                cache.pop(i, None)
            log.info(
                "stack %d -> %s: %s (%.1f deg, NCC %.3f -> %.3f)",
                i, "reference" if rnd == 0 else "others", "kept" if after > before else "rejected",
                rotation_angle_deg(step), before, after,
            )
    return [np.linalg.inv(t) for t in T]


def _score(vol: Image, transform: np.ndarray, fixed: np.ndarray, fixed_mask: np.ndarray, grid: Image) -> float:
    moved = np.asarray(resample_to_reference(vol, grid, transform=transform).data)
    return float(ncc(moved, fixed, mask=fixed_mask))


def _replace_dark_slices(data: np.ndarray, mask: np.ndarray, min_ratio: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Replace slices much darker than their neighbours by the median of the (up to 4) nearest ones.

    A slice is replaced when its median intensity inside its mask is below ``min_ratio`` times that
    of the pixel-wise median of slices k-2..k+2 (itself excluded; a median, so one dark neighbour does
    not hide another): a signal void or drop-out. Only darkness is tested: replacing clean slices
    that merely differ from their neighbours (edge slices) biased the alignment on simulated data.
    Returns the new data and the indices replaced.
    """
    k_total = data.shape[0]
    if k_total < 3:
        return data, np.zeros(0, np.int64)
    refs = np.zeros_like(data)
    dark = np.zeros(k_total, bool)
    for k in range(k_total):
        near = [j for j in range(k - 2, k + 3) if j != k and 0 <= j < k_total]
        refs[k] = np.median(data[near], axis=0)
        sel = mask[k]
        if sel.sum() >= 20:
            dark[k] = np.median(data[k][sel]) < min_ratio * np.median(refs[k][sel])
    bad = np.nonzero(dark)[0]
    if bad.size:
        data = data.copy()
        data[bad] = refs[bad]
    return data, bad


# --------------------------------------------------------------------------------------------------
# One mask for the reference stack, propagated to the others (SVRTK's ``reconstruct ... -mask``)
# --------------------------------------------------------------------------------------------------


def _mask_float(mask: Image) -> Image:
    return mask.with_data((np.asarray(mask.data) > 0).astype(np.float32))


def mask_around(reference_mask: Image, stack: Image, margin_mm: float) -> np.ndarray:
    """The reference mask where it lies on ``stack``'s grid in world coordinates (no alignment), grown
    by ``margin_mm`` (Euclidean, in mm on the anisotropic grid): the region of ``stack`` used to
    register it to the reference stack before its own mask is known. It covers the anatomy as long as
    the motion between the stacks moves no part of the mask by more than ``margin_mm``."""
    from scipy.ndimage import distance_transform_edt

    inside = np.asarray(resample_to_reference(_mask_float(reference_mask), stack, order=1).data) > 0.5
    if not inside.any():
        return inside
    sampling = np.asarray(stack.spacing, dtype=np.float64)[::-1]  # (k, j, i)
    return distance_transform_edt(~inside, sampling=sampling) <= margin_mm


def propagate_mask(reference_mask: Image, stack: Image, transform: np.ndarray | None = None, dilate_voxels: int = 1) -> np.ndarray:
    """The reference stack's mask mapped onto ``stack`` through the rigid stack alignment.

    ``transform`` is what :func:`align_stacks` returns for ``stack`` (its nominal position to the
    reference frame; ``None``: the identity, i.e. world coordinates only). Each voxel of ``stack``
    takes the mask (linearly interpolated, > 0.5) at its aligned position, as SVRTK transforms its
    template mask onto every stack (``reconstruct ... -mask``, Kuklisova-Murgasova et al. 2012,
    https://github.com/SVRTK/SVRTK). The result is then dilated by ``dilate_voxels`` in the slice
    plane (not across slices, whose spacing is 2-4x larger), so that partial-volume edges of a
    thick-slice reference mask do not cut the anatomy. Returns a boolean array ``(K, J, I)``.
    """
    from scipy.ndimage import binary_dilation

    moved = resample_to_reference(_mask_float(reference_mask), stack, transform=transform, order=1)
    inside = np.asarray(moved.data) > 0.5
    if dilate_voxels > 0 and inside.any():
        plane = np.zeros((1, 3, 3), bool)
        plane[0, 1, :] = plane[0, :, 1] = True
        inside = binary_dilation(inside, structure=plane, iterations=int(dilate_voxels))
    return inside


def masks_from_reference(
    stacks: Sequence[Image],
    reference_mask: Image,
    *,
    reference: int = 0,
    align: bool = True,
    margin_mm: float = 10.0,
    dilate_voxels: int = 1,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks of all stacks from the mask of the reference stack, and the stack alignment found with them.

    As SVRTK does with one ``-mask`` (https://github.com/SVRTK/SVRTK, ``reconstruct``: the stacks are
    registered to the masked template stack, then the mask is transformed onto every stack):

    1. the reference stack's mask is ``reference_mask`` on its grid (nearest neighbour);
    2. with ``align``, every other stack is registered to the reference stack by :func:`align_stacks`
       within :func:`mask_around` (the reference mask where it lies on that stack in world
       coordinates, grown by ``margin_mm``); without, the transforms are identities (world
       coordinates only);
    3. the reference mask is mapped onto every other stack through its transform
       (:func:`propagate_mask`).

    Returns ``(masks, transforms)``: boolean arrays on each stack's grid, and the :func:`align_stacks`
    transforms. :raises ValueError: when the reference mask misses a stack altogether.
    """
    n = len(stacks)
    if not 0 <= reference < n:
        raise ValueError(f"reference stack {reference} out of range for {n} stacks")
    own = np.asarray(resample_to_reference(reference_mask, stacks[reference], order=0).data) > 0
    if not own.any():
        raise ValueError(
            f"the mask does not overlap the reference stack {reference} in world coordinates: a single mask "
            "is the mask of the reference stack (--reference-stack, default the first); give that stack's mask"
        )
    transforms = [np.eye(4) for _ in range(n)]
    if align and n > 1:
        regions = []
        for index, stack in enumerate(stacks):
            region = own if index == reference else mask_around(reference_mask, stack, margin_mm)
            if not region.any():
                raise ValueError(
                    f"the mask of the reference stack {reference} does not reach stack {index} within {margin_mm:g} mm "
                    "in world coordinates, so it cannot be propagated there: give one mask per stack instead"
                )
            regions.append(region)
        transforms = align_stacks(stacks, regions, reference=reference)
    masks = []
    for index, (stack, transform) in enumerate(zip(stacks, transforms)):
        if index == reference:
            masks.append(own)
            continue
        mask = propagate_mask(reference_mask, stack, transform, dilate_voxels)
        if not mask.any():
            raise ValueError(
                f"the mask of the reference stack {reference}, propagated to stack {index}, is empty there (the stacks do "
                "not overlap after the alignment): give one mask per stack instead"
            )
        masks.append(mask)
    return masks, transforms

