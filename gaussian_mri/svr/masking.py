"""Automatic, deliberately generous brain / region-of-interest mask for stacks without a mask.

Fetal stacks are acquired with the field of view (FOV) centred on the fetal head, so the method
looks for bright tissue near the FOV centre. :func:`auto_mask` does, in physical units (mm, so it
works for any voxel size and thick slices):

1. Robust intensity window (0.5 and 99.5 percentiles) and Gaussian smoothing (``smooth_mm``).
2. Otsu threshold of the smoothed image -> foreground (tissue and fluid, not air/background).
3. Restriction to a sphere of radius ``roi_radius_mm`` around the FOV centre (or ``centre_ras``).
4. Erosion by ``erode_mm`` (cuts thin bridges), connected components; the largest component that
   reaches the inner half of the sphere is kept, then dilated back by ``erode_mm``.
5. Holes filled slice by slice (dark parenchyma or ventricles inside a bright rim), then a generous
   dilation by ``dilate_mm``.

The result over-covers the brain (it includes surrounding fluid and tissue near the centre): it is a
region of interest for cropping and for weighting the reconstruction, not a segmentation. On the
full 320 x 320 stacks of the MIALSRTK sample subject it contains the whole manual brain mask of
every stack while covering 12-14 % of the FOV; on the bundled crops of those stacks
(``gaussian_mri/data``, checked by ``tests/test_svr_masking.py``) it contains >= 95 % of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..image import Image

__all__ = ["auto_mask", "otsu_threshold"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of ``values`` (any shape).

    Returns the upper edge of the best background bin: ``values > t`` is the bright class.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("otsu_threshold: values has no finite element")
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        raise ValueError("otsu_threshold: values are constant; there is no threshold to find")
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    between[w1 == 0] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def auto_mask(
    stack: Image,
    *,
    roi_radius_mm: float = 75.0,
    centre_ras: Sequence[float] | None = None,
    smooth_mm: float = 2.0,
    erode_mm: float = 3.0,
    dilate_mm: float = 5.0,
) -> Image:
    """Automatic generous brain mask of a stack (see the module docstring for the method).

    Parameters
    ----------
    stack : Image
        A stack, data (K, J, I), any voxel size and orientation.
    roi_radius_mm : float
        Radius (mm) of the sphere around the centre where the brain is searched. The default
        (75 mm) fits a term fetal head (occipito-frontal diameter ~ 110 mm) with centring slack.
    centre_ras : (3,) floats, optional
        RAS point (mm) inside the brain; default: the centre of the stack's field of view.
    smooth_mm : float
        Gaussian smoothing sigma (mm) before thresholding.
    erode_mm, dilate_mm : float
        Erosion radius used to separate components, and final safety dilation (mm).

    Returns
    -------
    Image
        uint8 {0, 1} mask on the stack's grid (same affine and slice thickness).

    Raises
    ------
    ValueError
        If the stack is constant or non-finite, a parameter is invalid, or no foreground is found
        near the centre (then draw or supply a mask, or pass ``centre_ras`` / a larger radius).
    """
    from scipy import ndimage as ndi

    if not isinstance(stack, Image):
        raise TypeError(f"stack must be a gaussian_mri.image.Image, got {type(stack).__name__}")
    for name, value, strict in (
        ("roi_radius_mm", roi_radius_mm, True),
        ("smooth_mm", smooth_mm, False),
        ("erode_mm", erode_mm, False),
        ("dilate_mm", dilate_mm, False),
    ):
        if not np.isfinite(value) or value < 0 or (strict and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if strict else '>= 0'} (mm), got {value}")
    data = np.asarray(stack.data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError("stack contains NaN or infinite values; auto_mask needs a finite image")
    lo, hi = np.percentile(data, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        raise ValueError(
            "stack is constant (all voxels equal); auto_mask cannot find a brain. Check the file or supply a mask"
        )
    spacing_kji = stack.spacing[::-1]
    img = np.clip(data, lo, hi)
    if smooth_mm > 0:
        img = ndi.gaussian_filter(img, sigma=smooth_mm / spacing_kji, mode="nearest")
    fg = img > otsu_threshold(img)

    # Distance of every voxel centre to the search centre (mm).
    if centre_ras is None:
        centre_ijk = (np.array(stack.shape[::-1], dtype=np.float64) - 1) / 2
        centre = stack.affine[:3, :3] @ centre_ijk + stack.affine[:3, 3]
    else:
        centre = np.asarray(centre_ras, dtype=np.float64)
        if centre.shape != (3,) or not np.all(np.isfinite(centre)):
            raise ValueError(f"centre_ras must be 3 finite RAS coordinates (mm), got {centre_ras!r}")
    dist = np.linalg.norm(stack.world_coordinates() - centre, axis=-1)
    roi = dist <= roi_radius_mm
    core = fg & roi
    if not core.any():
        raise ValueError(
            f"auto_mask found no foreground within {roi_radius_mm} mm of the centre {np.round(centre, 1).tolist()}; "
            "supply a mask, or pass centre_ras inside the brain / a larger roi_radius_mm"
        )

    def _grow(m: np.ndarray, r: float) -> np.ndarray:
        if r <= 0 or not m.any():
            return m
        return ndi.distance_transform_edt(~m, sampling=spacing_kji) <= r

    eroded = ndi.distance_transform_edt(core, sampling=spacing_kji) > erode_mm if erode_mm > 0 else core
    if not eroded.any():
        eroded = core
    labels, n = ndi.label(eroded)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    inner = np.bincount(labels[dist <= roi_radius_mm / 2].ravel(), minlength=n + 1)
    sizes[0] = 0
    candidates = np.flatnonzero(inner[1:] > 0) + 1
    best = candidates[np.argmax(sizes[candidates])] if candidates.size else int(np.argmax(sizes))
    mask = _grow(labels == best, erode_mm) & core
    for k in range(mask.shape[0]):
        mask[k] = ndi.binary_fill_holes(mask[k])
    mask = ndi.binary_fill_holes(mask)
    mask = _grow(mask, dilate_mm)
    meta = {"auto_mask": {"roi_radius_mm": roi_radius_mm, "centre_ras": centre.tolist(), "dilate_mm": dilate_mm}}
    return Image(mask.astype(np.uint8), stack.affine.copy(), slice_thickness=stack.slice_thickness, meta=meta)


def mask_on_stack(stack: Image, mask: Image | None) -> np.ndarray:
    """The boolean mask of ``stack`` as the reconstruction uses it: ``mask`` on the stack's grid (resampled
    nearest-neighbour when it is on another grid), or :func:`auto_mask` of the stack when ``mask`` is None.
    One rule for :func:`gaussian_mri.svr.reconstruct` and the QC report."""
    if mask is None:
        return np.asarray(auto_mask(stack).data) > 0
    if mask.shape == stack.shape and np.allclose(mask.affine, stack.affine, atol=1e-3):
        return np.asarray(mask.data) > 0
    from ..resample import resample_to_reference

    return np.asarray(resample_to_reference(mask, stack, order=0).data) > 0
