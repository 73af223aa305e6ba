"""Image quality metrics: PSNR, SSIM, NRMSE and NCC, optionally inside a mask.

All functions take ``(image, reference)`` as NumPy arrays or torch tensors of the same shape, real
valued (take the magnitude of complex images first), and compute in float64: NumPy/SciPy for
arrays, torch on the tensors' device for tensors (a GPU result is scored on the GPU; the two
implementations agree to float64 rounding, ``tests/test_metrics.py``). They accept

* 2D images ``(rows, cols)``,
* 3D volumes ``(K, J, I)``,
* 2D+t series ``(frames, rows, cols)`` when ``time_axis`` names the frame axis (usually 0).

Definitions (``x`` = image, ``r`` = reference, sums over the voxels in the mask, all voxels
without one; ``N`` = number of those voxels):

* ``data_range``: default ``max(r) - min(r)`` inside the mask (over all frames of a series).
* ``PSNR = 10 log10(data_range^2 / MSE)``, ``MSE = sum (x - r)^2 / N``, in dB; ``inf`` when
  ``x == r``.
* ``NRMSE = ||x - r||_2 / ||r||_2`` (no mean subtraction, no range normalisation); 0 is perfect.
* ``NCC``: Pearson correlation of ``x`` and ``r`` inside the mask, in [-1, 1]; 1 is perfect up to
  a positive affine intensity change.
* ``SSIM``: Wang et al. (2004) with an isotropic Gaussian window of sigma 1.5 voxels truncated at
  3.5 sigma (11 taps per axis), ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) covariances,
  reflective borders, as ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=...)``. The SSIM map is averaged over the
  voxels that are inside the mask and at least 5 voxels from the image border (skimage drops the
  same border, where the window is reflected). For a 2D+t series the map is 2D per frame, each
  frame's mean is taken and the frame means are averaged (frames with no masked voxel are left
  out).

PSNR, NRMSE and NCC are point-wise, so ``time_axis`` does not change them: they pool all frames.

References
----------
.. [WANG2004] Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. Image quality assessment: from
   error visibility to structural similarity. IEEE TIP 13(4), 600-612, 2004.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["psnr", "ssim", "nrmse", "ncc", "SSIM_SIGMA", "SSIM_TRUNCATE", "SSIM_WINDOW", "all_metrics"]

SSIM_SIGMA = 1.5
"""Standard deviation of the SSIM Gaussian window, voxels (Wang et al. 2004)."""
SSIM_TRUNCATE = 3.5
"""Window truncation in standard deviations (skimage with ``gaussian_weights=True``)."""
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5, as scipy.ndimage computes it
SSIM_WINDOW = 2 * SSIM_RADIUS + 1  # 11
_K1, _K2 = 0.01, 0.03


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "device") and hasattr(value, "cpu")


def _as_float64(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind == "c":
        raise TypeError(
            f"{name} is complex ({arr.dtype}); pass a real image, e.g. the magnitude np.abs({name})"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array or tensor, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite values; clean the input first")
    return arr


def _prepare(
    image: Any, reference: Any, mask: Any, time_axis: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Float64 arrays, frames first for a series, and a full-shape boolean mask."""
    x = _as_float64("image", image)
    r = _as_float64("reference", reference)
    if x.shape != r.shape:
        raise ValueError(
            f"image shape {x.shape} differs from reference shape {r.shape}; resample one onto the other"
        )
    series = time_axis is not None
    if series:
        if x.ndim != 3:
            raise ValueError(
                f"time_axis={time_axis} needs a 2D+t series of 3 dimensions (frames, rows, cols), "
                f"got shape {x.shape}"
            )
        if not -3 <= time_axis < 3:
            raise ValueError(f"time_axis must be in [-3, 2] for a 2D+t series, got {time_axis}")
        x = np.moveaxis(x, time_axis, 0)
        r = np.moveaxis(r, time_axis, 0)
    elif x.ndim not in (2, 3):
        raise ValueError(
            f"image must be 2D (rows, cols) or 3D (K, J, I), got shape {x.shape}; "
            "for a 2D+t series pass time_axis"
        )
    if mask is None:
        m = np.ones(x.shape, dtype=bool)
    else:
        if hasattr(mask, "detach") and hasattr(mask, "cpu"):
            mask = mask.detach().cpu().numpy()
        m = np.asarray(mask)
        if m.dtype.kind not in "biu":
            raise TypeError(
                f"mask must be boolean (or an integer label map, nonzero = inside), got dtype {m.dtype}"
            )
        m = m != 0
        if series and m.ndim == 3:
            m = np.moveaxis(m, time_axis, 0)
        if series and m.shape == x.shape[1:]:
            m = np.broadcast_to(m, x.shape)  # one 2D mask for all frames
        if m.shape != x.shape:
            want = f"{x.shape} or one frame {x.shape[1:]}" if series else f"{x.shape}"
            raise ValueError(f"mask shape {m.shape} does not match the image shape {want}")
        if not m.any():
            raise ValueError("mask is empty (no voxel inside); the metrics are undefined")
    return x, r, m, series


def _data_range(r, m, data_range: float | None) -> float:
    if data_range is None:
        inside = r[m]
        data_range = float(inside.max() - inside.min())
        if not data_range > 0:
            raise ValueError(
                "reference is constant inside the mask, so the default data_range (max - min) is 0; "
                "pass data_range explicitly"
            )
        return data_range
    data_range = float(data_range)
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
    return data_range


def psnr(
    image: Any,
    reference: Any,
    *,
    mask: Any = None,
    data_range: float | None = None,
    time_axis: int | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` inside ``mask``.

    Parameters
    ----------
    image, reference : ndarray or Tensor, shape (rows, cols), (K, J, I) or 2D+t
        Real images of the same shape, any units.
    mask : ndarray or Tensor of bool, same shape (or one frame of a series), optional
        Voxels to evaluate (integer label maps: nonzero = inside). Default: all.
    data_range : float, optional
        Peak value range, same units as the images. Default: ``max - min`` of ``reference``
        inside ``mask``.
    time_axis : int, optional
        Frame axis of a 2D+t series; PSNR pools all frames.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the images are identical inside the mask.
    """
    if _is_tensor(image) or _is_tensor(reference):
        from . import _metrics_torch

        return _metrics_torch.psnr(image, reference, mask=mask, data_range=data_range, time_axis=time_axis)
    x, r, m, _ = _prepare(image, reference, mask, time_axis)
    dr = _data_range(r, m, data_range)
    mse = float(np.mean((x[m] - r[m]) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(dr * dr / mse))


def nrmse(image: Any, reference: Any, *, mask: Any = None, time_axis: int | None = None) -> float:
    """Normalised root-mean-square error ``||x - r||_2 / ||r||_2`` inside ``mask``.

    Parameters
    ----------
    image, reference : ndarray or Tensor, shape (rows, cols), (K, J, I) or 2D+t
        Real images of the same shape.
    mask : ndarray or Tensor of bool, optional
        Voxels to evaluate. Default: all.
    time_axis : int, optional
        Frame axis of a 2D+t series; NRMSE pools all frames.

    Returns
    -------
    float
        0 for a perfect match; 1 for an all-zero image. Equals ``skimage.metrics.
        normalized_root_mse(r, x, normalization='euclidean')``.

    Raises
    ------
    ValueError
        If the reference is zero everywhere inside the mask.
    """
    if _is_tensor(image) or _is_tensor(reference):
        from . import _metrics_torch

        return _metrics_torch.nrmse(image, reference, mask=mask, time_axis=time_axis)
    x, r, m, _ = _prepare(image, reference, mask, time_axis)
    denom = float(np.linalg.norm(r[m]))
    if denom == 0.0:
        raise ValueError(
            "reference is zero everywhere inside the mask; NRMSE (relative to ||reference||) is undefined"
        )
    return float(np.linalg.norm(x[m] - r[m]) / denom)


def ncc(image: Any, reference: Any, *, mask: Any = None, time_axis: int | None = None) -> float:
    """Normalised cross-correlation: the Pearson correlation of image and reference inside ``mask``.

    Parameters
    ----------
    image, reference : ndarray or Tensor, shape (rows, cols), (K, J, I) or 2D+t
        Real images of the same shape.
    mask : ndarray or Tensor of bool, optional
        Voxels to evaluate. Default: all.
    time_axis : int, optional
        Frame axis of a 2D+t series; NCC pools all frames.

    Returns
    -------
    float
        In [-1, 1]; NaN when either image is constant inside the mask (correlation undefined).
    """
    if _is_tensor(image) or _is_tensor(reference):
        from . import _metrics_torch

        return _metrics_torch.ncc(image, reference, mask=mask, time_axis=time_axis)
    x, r, m, _ = _prepare(image, reference, mask, time_axis)
    a = x[m] - x[m].mean()
    b = r[m] - r[m].mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(a * b) / denom, -1.0, 1.0))


def ssim_map(x: np.ndarray, r: np.ndarray, data_range: float, *, series: bool = False) -> np.ndarray:
    """SSIM map (same shape as ``x``) with the Gaussian window, float64; see the module notes.

    ``series=True``: the first axis is time and is not filtered (a 2D map per frame).
    """
    from scipy.ndimage import gaussian_filter

    sigma = (0.0,) + (SSIM_SIGMA,) * (x.ndim - 1) if series else SSIM_SIGMA

    def filt(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = filt(x), filt(r)
    vx = filt(x * x) - ux * ux
    vy = filt(r * r) - uy * uy
    vxy = filt(x * r) - ux * uy
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(
    image: Any,
    reference: Any,
    *,
    mask: Any = None,
    data_range: float | None = None,
    time_axis: int | None = None,
) -> float:
    """Structural similarity (Gaussian window, sigma 1.5 voxels, 11 taps), mean inside ``mask``.

    Parameters
    ----------
    image, reference : ndarray or Tensor, shape (rows, cols), (K, J, I) or 2D+t
        Real images of the same shape; every spatial axis needs at least 11 voxels.
    mask : ndarray or Tensor of bool, same shape (or one frame of a series), optional
        The SSIM map is averaged over these voxels (the window itself also sees voxels outside
        the mask). Default: all.
    data_range : float, optional
        Sets the stabilising constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``. Default:
        ``max - min`` of ``reference`` inside ``mask``.
    time_axis : int, optional
        Frame axis of a 2D+t series: 2D SSIM per frame, frame means averaged.

    Returns
    -------
    float
        Mean SSIM, at most 1 (identical images).

    Notes
    -----
    Equal (up to float rounding) to ``skimage.metrics.structural_similarity(image, reference,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range)``
    without a mask: voxels closer than 5 to the border are left out of the mean, as skimage
    does, also with a mask.
    """
    if _is_tensor(image) or _is_tensor(reference):
        from . import _metrics_torch

        return _metrics_torch.ssim(image, reference, mask=mask, data_range=data_range, time_axis=time_axis)
    x, r, m, series = _prepare(image, reference, mask, time_axis)
    spatial = x.shape[1:] if series else x.shape
    if min(spatial) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW} voxels along every spatial axis (Gaussian window, sigma "
            f"{SSIM_SIGMA}), got spatial shape {spatial}"
        )
    dr = _data_range(r, m, data_range)
    s = ssim_map(x, r, dr, series=series)
    inner = np.zeros(x.shape, dtype=bool)
    p = SSIM_RADIUS
    core = (slice(None),) if series else ()
    inner[core + tuple(slice(p, n - p) for n in spatial)] = True
    keep = m & inner
    if not keep.any():
        raise ValueError(
            f"the mask has no voxel at least {p} voxels from the image border, where SSIM is evaluated"
        )
    if not series:
        return float(s[keep].mean())
    frames = [float(s[t][keep[t]].mean()) for t in range(s.shape[0]) if keep[t].any()]
    return float(np.mean(frames))


def all_metrics(
    image: Any,
    reference: Any,
    *,
    mask: Any = None,
    data_range: float | None = None,
    time_axis: int | None = None,
) -> dict[str, float]:
    """``{"psnr", "ssim", "nrmse", "ncc", "data_range"}`` with the definitions of this module."""
    if _is_tensor(image) or _is_tensor(reference):
        from . import _metrics_torch

        x, r, m, _ = _metrics_torch.prepare(image, reference, mask, time_axis)
    else:
        x, r, m, _ = _prepare(image, reference, mask, time_axis)
    dr = _data_range(r, m, data_range)  # max - min of r[m]: the same code for arrays and tensors
    kwargs = dict(mask=mask, time_axis=time_axis)
    return {
        "psnr": psnr(image, reference, data_range=dr, **kwargs),
        "ssim": ssim(image, reference, data_range=dr, **kwargs),
        "nrmse": nrmse(image, reference, **kwargs),
        "ncc": ncc(image, reference, **kwargs),
        "data_range": dr,
    }
