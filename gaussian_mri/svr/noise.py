"""Noise level of thick-slice stacks, for the noise-aware fit of :mod:`.recon`.

Immerkaer's estimator (J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image
Understanding 64(2), 1996): every slice is filtered in-plane with the difference of two Laplacians

    N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]],

which removes any image that is locally linear (or bilinear) and leaves white noise with standard
deviation ``6 sigma`` (the sum of squares of ``N`` is 36). Instead of Immerkaer's mean absolute value,
the median absolute value (x 1.4826, the normal consistency factor) inside the mask is used, so the
anatomy's edges, which ``N`` does not remove, do not inflate the estimate. The estimate is in the
stack's own intensity units and refers to the in-plane noise of one slice (independent between pixels,
as in single-shot fast spin echo with no in-plane interpolation; with interpolated pixels it is
underestimated).
"""

from __future__ import annotations

import numpy as np

__all__ = ["noise_sigma"]

_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sigma(stack: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust standard deviation of the in-plane white noise of a (K, J, I) stack.

    Parameters
    ----------
    stack : (K, J, I) array
        Slices along ``k``.
    mask : (K, J, I) bool array, optional
        Where to measure (pixels whose 3 x 3 neighbourhood lies inside the mask); default everywhere.

    Returns
    -------
    float
        Noise standard deviation in the stack's units (0 for a stack that is locally linear everywhere).
    """
    x = np.asarray(stack, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"stack must be (K, J, I), got shape {x.shape}")
    if x.shape[1] < 3 or x.shape[2] < 3:
        raise ValueError(f"slices must be at least 3 x 3 pixels to estimate the noise, got {x.shape[1:]}")
    h, w = x.shape[1] - 2, x.shape[2] - 2
    resp = np.zeros((x.shape[0], h, w))
    for dj in range(3):
        for di in range(3):
            resp += _KERNEL[dj, di] * x[:, dj:dj + h, di:di + w]
    if mask is None:
        inside = np.ones(resp.shape, bool)
    else:
        m = np.asarray(mask, bool)
        if m.shape != x.shape:
            raise ValueError(f"mask shape {m.shape} differs from the stack's {x.shape}")
        inside = np.ones(resp.shape, bool)
        for dj in range(3):
            for di in range(3):
                inside &= m[:, dj:dj + h, di:di + w]
    vals = np.abs(resp[inside])
    if vals.size == 0:
        raise ValueError("no pixel with its 3 x 3 neighbourhood inside the mask; the mask is too small to estimate the noise")
    return float(1.4826 * np.median(vals) / 6.0)
