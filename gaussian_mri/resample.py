"""World-coordinate resampling between image grids and rigid registration.

Both work in RAS millimetres (the package convention). A *world transform* here is a 4x4 matrix
``T`` that maps a point ``p`` of the reference (fixed) space to the corresponding point ``T p`` of
the image (moving) space: this is the direction ITK registration returns, and the one needed to
pull image values onto the reference grid, ``out(p) = image(T p)``.
"""

from __future__ import annotations

import logging

import numpy as np

from .image import Image, to_sitk

__all__ = ["resample_to_reference", "rigid_align", "rotation_angle_deg"]

log = logging.getLogger(__name__)

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
_SNAP = 1e-6  # voxel units: continuous indices this close to an integer are snapped onto it


def _check_transform(transform: object) -> np.ndarray:
    t = np.asarray(transform, dtype=np.float64)
    if t.shape != (4, 4):
        raise ValueError(f"transform must be a 4x4 world (RAS) matrix, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("transform contains NaN or infinite values")
    if not np.allclose(t[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"transform last row must be [0, 0, 0, 1], got {t[3].tolist()}")
    if abs(np.linalg.det(t[:3, :3])) < 1e-12:
        raise ValueError("transform is singular (its 3x3 part has zero determinant)")
    return t


def resample_to_reference(
    image: Image,
    reference: Image,
    *,
    transform: np.ndarray | None = None,
    order: int = 1,
    fill: float = 0.0,
) -> Image:
    """Resample ``image`` onto the voxel grid of ``reference``, in world (RAS) coordinates.

    Each reference voxel centre ``p = reference.affine @ (i, j, k, 1)`` takes the value of
    ``image`` at the world point ``transform @ p`` (``p`` itself without ``transform``),
    interpolated with a B-spline of ``order``.

    Parameters
    ----------
    image : Image
        Volume to resample, data ``(K, J, I)``.
    reference : Image
        Defines the output grid (shape, affine); its voxels are not used.
    transform : ndarray, shape (4, 4), optional
        World (RAS, mm) transform mapping reference-space points to image-space points, e.g. the
        result of :func:`rigid_align` (usually rigid; any invertible affine works).
    order : int
        0 nearest neighbour (labels, masks), 1 trilinear (default), 3 cubic B-spline.
    fill : float
        Value for reference voxels whose point lies outside the image: outside the voxel centres
        ``[0, n - 1]`` along any axis for ``order >= 1``, outside the voxels themselves
        ``[-0.5, n - 0.5)`` for ``order = 0``.

    Returns
    -------
    Image
        ``reference``'s grid and slice thickness; data ``(K, J, I)`` of ``image``'s dtype for
        ``order=0``, otherwise float64 for float64 input and float32 for any other dtype.
        ``meta["coverage"]`` is the fraction of output voxels that lie inside the image.

    Notes
    -----
    Uses ``scipy.ndimage.map_coordinates`` (mode ``"constant"``). Continuous indices within 1e-6
    voxel of an integer are snapped onto it, so resampling onto the same or an integer-shifted
    grid copies voxels exactly despite float rounding of the matrix products.
    """
    from scipy.ndimage import map_coordinates, spline_filter

    if not isinstance(image, Image) or not isinstance(reference, Image):
        raise TypeError(
            f"image and reference must be gaussian_mri.image.Image, got {type(image).__name__} and "
            f"{type(reference).__name__}"
        )
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(
            f"order must be an integer spline order 0..5 (0 nearest, 1 linear, 3 cubic), got {order!r}"
        )
    world = np.eye(4) if transform is None else _check_transform(transform)
    # reference (i, j, k) -> image (i, j, k)
    ijk_map = np.linalg.inv(image.affine) @ world @ reference.affine
    data = np.asarray(image.data)
    if data.dtype.kind == "c":
        raise TypeError(
            f"image data is complex ({data.dtype}); resample the real and imaginary parts separately"
        )
    if data.dtype.kind not in "biuf":
        raise TypeError(f"image data must be numeric, got dtype {data.dtype}")
    if order == 0:
        out_dtype = np.uint8 if data.dtype == np.bool_ else data.dtype
        src = data.astype(out_dtype, copy=False)
    else:
        out_dtype = np.float64 if data.dtype == np.float64 else np.float32
        src = data.astype(np.float64)
        if order > 1:  # prefilter once, not per chunk
            src = spline_filter(src, order=order, mode="constant")
    kk, jj, ii = reference.shape
    out = np.empty(reference.shape, dtype=out_dtype)
    j_idx, i_idx = np.meshgrid(np.arange(jj, dtype=float), np.arange(ii, dtype=float), indexing="ij")
    plane = np.stack([i_idx.ravel(), j_idx.ravel(), np.zeros(i_idx.size), np.ones(i_idx.size)])  # (4, J*I)
    inside = 0
    upper = np.array(image.shape[::-1], dtype=np.float64)[:, None] - 1.0  # (I-1, J-1, K-1)
    for k in range(kk):  # plane by plane: bounded memory for large grids
        plane[2] = k
        c = (ijk_map @ plane)[:3]  # (3, J*I), rows (i, j, k) of the image
        snapped = np.round(c)
        c = np.where(np.abs(c - snapped) < _SNAP, snapped, c)
        if order == 0:  # nearest voxel (round half up); a voxel covers [n - 0.5, n + 0.5)
            idx = np.floor(c + 0.5).astype(np.int64)
            ok = np.all((idx >= 0) & (idx <= upper), axis=0)
            values = np.full(idx.shape[1], fill, dtype=out_dtype)
            values[ok] = src[idx[2, ok], idx[1, ok], idx[0, ok]]
        else:
            ok = np.all((c >= 0.0) & (c <= upper), axis=0)
            values = map_coordinates(
                src, c[::-1], order=order, mode="constant", cval=fill, prefilter=False, output=np.float64
            )
        inside += int(ok.sum())
        out[k] = values.reshape(jj, ii).astype(out_dtype, copy=False)
    meta = {"resampled_from": image.meta.get("path"), "coverage": inside / max(out.size, 1)}
    return Image(out, reference.affine.copy(), slice_thickness=reference.slice_thickness, meta=meta)


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Rotation angle (degrees) of the 3x3 rotation part of a 4x4 (or 3x3) rigid matrix."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    cos = (np.trace(r) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _shrink_schedule(shape: tuple[int, int, int], levels: int = 3, min_size: int = 16) -> list[int]:
    """Shrink factors (coarse to fine) leaving at least ``min_size`` voxels on the smallest axis."""
    smallest = min(shape)
    factors = []
    for level in reversed(range(levels)):
        f = 2**level
        if smallest // f >= min_size or f == 1:
            factors.append(f)
    return factors


def rigid_align(
    moving: Image,
    fixed: Image,
    *,
    fixed_mask: Image | None = None,
    metric: str = "mattes",
    initial: str | np.ndarray = "identity",
    iterations: int = 200,
    sampling: float = 0.25,
    seed: int = 42,
) -> np.ndarray:
    """Rigid registration of ``moving`` to ``fixed`` (SimpleITK, centred Euler 3D).

    Parameters
    ----------
    moving, fixed : Image
        3D volumes, any grids; both are compared in world coordinates.
    fixed_mask : Image, optional
        Voxels (nonzero) of the fixed space where the metric is evaluated; any grid (ITK evaluates
        it in physical space).
    metric : {"mattes", "correlation"}
        Mattes mutual information (50 bins; different contrasts or intensity scales) or normalised
        correlation (same contrast, faster and sharper).
    initial : {"identity", "geometry", "moments"} or ndarray (4, 4)
        Starting pose: the world identity (images already roughly in place, e.g. a reconstruction
        and its reference), the image centres aligned, the intensity centres of mass aligned, or a
        rigid RAS matrix in the convention of the result (e.g. a previous result, or one of several
        rotated starts). The rotation centre is always the fixed image centre.
    iterations : int
        Maximum optimiser iterations per resolution level.
    sampling : float
        Fraction of fixed voxels (random, seeded) used by the metric, in (0, 1].
    seed : int
        Seed of the metric sampling (fixed for reproducible results).

    Returns
    -------
    ndarray, shape (4, 4), float64
        RAS world matrix mapping fixed-space points (mm) to the corresponding moving-space points:
        ``resample_to_reference(moving, fixed, transform=T)`` brings ``moving`` onto ``fixed``.

    Notes
    -----
    Multi-resolution (shrink 4, 2, 1 with Gaussian smoothing 2, 1, 0 voxels, fewer levels for small
    images), regular-step gradient descent with parameter scales from physical shifts, linear
    interpolation. ITK works in LPS; the result is converted to RAS.
    """
    import SimpleITK as sitk

    if not isinstance(moving, Image) or not isinstance(fixed, Image):
        raise TypeError(
            "moving and fixed must be gaussian_mri.image.Image, got "
            f"{type(moving).__name__} and {type(fixed).__name__}"
        )
    if metric not in ("mattes", "correlation"):
        raise ValueError(f"metric must be 'mattes' or 'correlation', got {metric!r}")
    start = None
    if isinstance(initial, np.ndarray):
        start = np.asarray(initial, dtype=np.float64)
        rot0 = start[:3, :3] if start.shape == (4, 4) else None
        if rot0 is None or not np.allclose(rot0.T @ rot0, np.eye(3), atol=1e-6) or np.linalg.det(rot0) < 0:
            raise ValueError(f"initial as a matrix must be a rigid 4x4 (rotation + translation), got {start.tolist()}")
    elif initial not in ("identity", "geometry", "moments"):
        raise ValueError(f"initial must be 'identity', 'geometry', 'moments' or a 4x4 matrix, got {initial!r}")
    if not 0.0 < sampling <= 1.0:
        raise ValueError(f"sampling must be a fraction in (0, 1], got {sampling}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    def as_float(image: Image, name: str):
        data = np.asarray(image.data)
        if data.dtype.kind not in "biuf":
            raise TypeError(f"{name} data must be real numeric, got dtype {data.dtype}")
        if not np.isfinite(data).all():
            raise ValueError(f"{name} contains NaN or infinite voxels; clean it first")
        return to_sitk(image.with_data(data.astype(np.float32)))

    fixed_itk = as_float(fixed, "fixed")
    moving_itk = as_float(moving, "moving")

    if start is not None or initial == "identity":
        init = sitk.Euler3DTransform()
        middle = [(n - 1) / 2.0 for n in fixed_itk.GetSize()]
        centre = np.asarray(fixed_itk.TransformContinuousIndexToPhysicalPoint(middle), dtype=np.float64)
        init.SetCenter(centre.tolist())
        if start is not None:
            lps0 = _LPS @ start @ _LPS
            init.SetMatrix(lps0[:3, :3].ravel().tolist())
            # x -> R (x - c) + c + t  ==  lps0: t = lps0_t - c + R c
            init.SetTranslation((lps0[:3, 3] - centre + lps0[:3, :3] @ centre).tolist())
    else:
        mode = (
            sitk.CenteredTransformInitializerFilter.GEOMETRY
            if initial == "geometry"
            else sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        init = sitk.Euler3DTransform(
            sitk.CenteredTransformInitializer(fixed_itk, moving_itk, sitk.Euler3DTransform(), mode)
        )

    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    else:
        reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    if fixed_mask is not None:
        if not isinstance(fixed_mask, Image):
            raise TypeError(f"fixed_mask must be a gaussian_mri.image.Image, got {type(fixed_mask).__name__}")
        mask_data = np.asarray(fixed_mask.data) != 0
        if not mask_data.any():
            raise ValueError("fixed_mask is empty (no nonzero voxel)")
        reg.SetMetricFixedMask(to_sitk(fixed_mask.with_data(mask_data.astype(np.uint8))))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = _shrink_schedule(fixed.shape)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([{4: 2.0, 2: 1.0, 1: 0.0}[f] for f in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=True)
    try:
        reg.Execute(fixed_itk, moving_itk)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(
            "rigid registration failed (do the images overlap in world coordinates? try initial='geometry' "
            f"or 'moments'): {first[-1] if first else exc}"
        ) from exc
    log.debug(
        "rigid_align: %s after %d iterations, metric %.5g (%s)",
        reg.GetOptimizerStopConditionDescription(),
        reg.GetOptimizerIteration(),
        reg.GetMetricValue(),
        metric,
    )
    rot = np.asarray(init.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(init.GetCenter(), dtype=np.float64)
    trans = np.asarray(init.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = rot
    lps[:3, 3] = centre + trans - rot @ centre  # x -> R (x - c) + c + t
    return _LPS @ lps @ _LPS
