"""The metrics of :mod:`gaussian_mri.metrics` in torch, float64, on the device of the input tensors.

Same definitions, checks and messages as the NumPy/SciPy implementation (which stays the reference);
used by :mod:`gaussian_mri.metrics` when it is given torch tensors, so that a result on a GPU is scored
there. The SSIM window is SciPy's ``gaussian_filter(sigma=1.5, truncate=3.5, mode="reflect")``:
separable, 11 taps, borders mirrored with the edge voxel repeated (``d c b a | a b c d``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import metrics as M


def _device(*values: Any) -> torch.device:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _as_float64(name: str, value: Any, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(np.asarray(value), device=device)
    if value.is_complex():
        raise TypeError(f"{name} is complex ({value.dtype}); pass a real image, e.g. the magnitude np.abs({name})")
    integer = value.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    if not (value.dtype.is_floating_point or integer):
        raise TypeError(f"{name} must be a real numeric array or tensor, got dtype {value.dtype}")
    value = value.detach().to(device=device, dtype=torch.float64)
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite values; clean the input first")
    return value


def prepare(image: Any, reference: Any, mask: Any, time_axis: int | None):
    device = _device(image, reference, mask)
    x = _as_float64("image", image, device)
    r = _as_float64("reference", reference, device)
    if x.shape != r.shape:
        raise ValueError(f"image shape {tuple(x.shape)} differs from reference shape {tuple(r.shape)}; resample one onto the other")
    series = time_axis is not None
    if series:
        if x.dim() != 3:
            raise ValueError(f"time_axis={time_axis} needs a 2D+t series of 3 dimensions (frames, rows, cols), got shape {tuple(x.shape)}")
        if not -3 <= time_axis < 3:
            raise ValueError(f"time_axis must be in [-3, 2] for a 2D+t series, got {time_axis}")
        x, r = torch.movedim(x, time_axis, 0), torch.movedim(r, time_axis, 0)
    elif x.dim() not in (2, 3):
        raise ValueError(f"image must be 2D (rows, cols) or 3D (K, J, I), got shape {tuple(x.shape)}; for a 2D+t series pass time_axis")
    if mask is None:
        m = torch.ones(x.shape, dtype=torch.bool, device=device)
    else:
        m = mask.detach().to(device) if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask), device=device)
        if m.is_floating_point() or m.is_complex():
            raise TypeError(f"mask must be boolean (or an integer label map, nonzero = inside), got dtype {m.dtype}")
        m = m != 0
        if series and m.dim() == 3:
            m = torch.movedim(m, time_axis, 0)
        if series and m.shape == x.shape[1:]:
            m = m.expand(x.shape)
        if m.shape != x.shape:
            want = f"{tuple(x.shape)} or one frame {tuple(x.shape[1:])}" if series else f"{tuple(x.shape)}"
            raise ValueError(f"mask shape {tuple(m.shape)} does not match the image shape {want}")
        if not bool(m.any()):
            raise ValueError("mask is empty (no voxel inside); the metrics are undefined")
    return x, r, m, series


def psnr(image, reference, *, mask=None, data_range=None, time_axis=None) -> float:
    x, r, m, _ = prepare(image, reference, mask, time_axis)
    dr = M._data_range(r, m, data_range)
    mse = float(((x[m] - r[m]) ** 2).mean())
    if mse == 0.0:
        return float("inf")
    return float(10.0 * math.log10(dr * dr / mse))


def nrmse(image, reference, *, mask=None, time_axis=None) -> float:
    x, r, m, _ = prepare(image, reference, mask, time_axis)
    denom = float(torch.linalg.vector_norm(r[m]))
    if denom == 0.0:
        raise ValueError("reference is zero everywhere inside the mask; NRMSE (relative to ||reference||) is undefined")
    return float(torch.linalg.vector_norm(x[m] - r[m])) / denom


def ncc(image, reference, *, mask=None, time_axis=None) -> float:
    x, r, m, _ = prepare(image, reference, mask, time_axis)
    a = x[m] - x[m].mean()
    b = r[m] - r[m].mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if denom == 0.0:
        return float("nan")
    return float(min(max(float((a * b).sum()) / denom, -1.0), 1.0))


def _window(device: torch.device) -> torch.Tensor:
    taps = torch.arange(-M.SSIM_RADIUS, M.SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (taps / M.SSIM_SIGMA) ** 2)
    return w / w.sum()


def _filter_axis(a: torch.Tensor, axis: int, w: torch.Tensor) -> torch.Tensor:
    """Correlate along ``axis`` with the symmetric window ``w``, SciPy's "reflect" borders."""
    p = M.SSIM_RADIUS
    n = a.shape[axis]
    left = torch.flip(a.narrow(axis, 0, p), (axis,))
    right = torch.flip(a.narrow(axis, n - p, p), (axis,))
    padded = torch.cat([left, a, right], axis)
    out = torch.zeros_like(a)
    for k in range(2 * p + 1):
        out = out + w[k] * padded.narrow(axis, k, n)
    return out


def ssim_map(x: torch.Tensor, r: torch.Tensor, dr: float, *, series: bool = False) -> torch.Tensor:
    w = _window(x.device)
    axes = range(1, x.dim()) if series else range(x.dim())

    def filt(a):
        for axis in axes:
            a = _filter_axis(a, axis, w)
        return a

    ux, uy = filt(x), filt(r)
    vx = filt(x * x) - ux * ux
    vy = filt(r * r) - uy * uy
    vxy = filt(x * r) - ux * uy
    c1 = (M._K1 * dr) ** 2
    c2 = (M._K2 * dr) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(image, reference, *, mask=None, data_range=None, time_axis=None) -> float:
    x, r, m, series = prepare(image, reference, mask, time_axis)
    spatial = tuple(x.shape[1:]) if series else tuple(x.shape)
    if min(spatial) < M.SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {M.SSIM_WINDOW} voxels along every spatial axis (Gaussian window, sigma "
                         f"{M.SSIM_SIGMA}), got spatial shape {spatial}")
    dr = M._data_range(r, m, data_range)
    s = ssim_map(x, r, dr, series=series)
    inner = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    p = M.SSIM_RADIUS
    core = (slice(None),) if series else ()
    inner[core + tuple(slice(p, n - p) for n in spatial)] = True
    keep = m & inner
    if not bool(keep.any()):
        raise ValueError(f"the mask has no voxel at least {p} voxels from the image border, where SSIM is evaluated")
    if not series:
        return float(s[keep].mean())
    counts = keep.flatten(1).sum(1)
    sums = (s * keep).flatten(1).sum(1)
    used = counts > 0
    return float((sums[used] / counts[used]).mean())
