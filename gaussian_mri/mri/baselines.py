"""Classical cine reconstructions used as baselines: zero-filled SENSE and L+S (Otazo et al. 2015).

Both take the package layout: k-space ``(frames, coils, ky, kx)`` (zero where not sampled), a
``(frames, ky)`` or ``(frames, ky, kx)`` mask and ``(coils, ny, nx)`` coil maps (normalised to
``sum_c |c|^2 = 1`` inside the object, as ESPIRiT gives), and return a complex ``(frames, ny, nx)``
image series in the units of the k-space (the FFT is unitary).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypedDict

import torch

from gaussian_mri._checks import require_tensor
from gaussian_mri.mri.operators import SenseOp, mask_as_weights

__all__ = [
    "LplusSStatus",
    "lplus_s",
    "singular_value_threshold",
    "soft_threshold",
    "temporal_fft",
    "temporal_ifft",
    "zero_filled_sense",
]


def soft_threshold(x: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Complex soft thresholding: ``x / |x| * max(|x| - threshold, 0)`` (0 where ``x == 0``).

    Parameters
    ----------
    x
        Real or complex tensor, any shape.
    threshold
        Non-negative threshold (scalar or broadcastable tensor), in the units of ``x``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``; the proximal operator of ``threshold * ||x||_1``.
    """
    mag = x.abs()
    shrink = torch.clamp(mag - threshold, min=0)
    safe = torch.where(mag > 0, mag, torch.ones_like(mag))
    scale = torch.where(mag > 0, shrink / safe, torch.zeros_like(mag))
    return x * scale


def singular_value_threshold(series: torch.Tensor, relative_threshold: float) -> torch.Tensor:
    """Singular value soft thresholding of the Casorati matrix ``(pixels, frames)`` of an image series.

    Parameters
    ----------
    series
        ``(frames, ny, nx)`` complex image series.
    relative_threshold
        The singular values are soft-thresholded by ``relative_threshold * sigma_max`` (Otazo's
        ``lambda_L``), so the operation does not depend on the data scale.

    Returns
    -------
    torch.Tensor
        ``(frames, ny, nx)``, the proximal operator of ``relative_threshold * sigma_max * ||.||_*``
        (``sigma_max`` of the input).
    """
    frames, ny, nx = series.shape
    casorati = series.reshape(frames, ny * nx).T  # (pixels, frames)
    u, s, vh = torch.linalg.svd(casorati, full_matrices=False)
    s_new = torch.clamp(s - relative_threshold * s[0], min=0).to(u.dtype)
    low_rank = (u * s_new[None, :]) @ vh
    return low_rank.T.reshape(frames, ny, nx)


def temporal_fft(series: torch.Tensor) -> torch.Tensor:
    """Unitary FFT along frames (dim 0), temporal frequency 0 at index ``frames // 2``."""
    return torch.fft.fftshift(torch.fft.fft(series, dim=0, norm="ortho"), dim=0)


def temporal_ifft(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint) of :func:`temporal_fft`."""
    return torch.fft.ifft(torch.fft.ifftshift(spectrum, dim=0), dim=0, norm="ortho")


def zero_filled_sense(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    coil_maps: torch.Tensor,
    *,
    density_compensation: bool = False,
) -> torch.Tensor:
    """Zero-filled, coil-combined reconstruction of each frame.

    Parameters
    ----------
    kspace
        ``(frames, coils, ky, kx)`` complex k-space, zero where not sampled.
    mask
        ``(frames, ky)`` or ``(frames, ky, kx)`` sampling mask.
    coil_maps
        ``(coils, ny, nx)`` complex sensitivities.
    density_compensation
        ``False`` (default): the plain coil-combined adjoint ``x_t = sum_c conj(c) ifft2c(mask_t y_t)``
        (``E^H y``, the usual "zero-filled" baseline and the L+S starting point); each frame is a blurred,
        aliased image at reduced intensity (about ``1/R`` of the energy).
        ``True``: divide every sampled k-space location by its sampling density ``w`` (the fraction of
        frames that sample it, :func:`gaussian_mri.mri.sampling.sampling_density`) before the adjoint,
        ``x_t = sum_c conj(c) ifft2c(mask_t y_t / w)``. Averaged over frames this is then an unbiased
        estimate of the fully sampled image (right intensity and frequency balance), but each frame's
        aliasing is amplified where ``w`` is small (the k-space edge of a variable-density mask), so its
        per-frame error is larger.

    Returns
    -------
    torch.Tensor
        ``(frames, ny, nx)`` complex image series.

    Raises
    ------
    ValueError, TypeError
        If shapes or dtypes of ``kspace``, ``mask`` and ``coil_maps`` do not match.
    """
    op = SenseOp(coil_maps, mask)
    require_tensor("kspace", kspace)
    if not density_compensation:
        return op.adjoint(kspace)
    if kspace.dim() != 4:
        raise ValueError(f"kspace must be (frames, coils, ky, kx), got {tuple(kspace.shape)}")
    weights = mask_as_weights(mask, kspace.shape[-2], kspace.shape[-1])
    density = weights.mean(dim=0, keepdim=True)
    inverse = torch.where(density > 0, 1.0 / density.clamp_min(1e-12), torch.zeros_like(density))
    return op.adjoint(kspace * inverse.to(kspace.real.dtype))


class LplusSStatus(TypedDict):
    """State passed to the :func:`lplus_s` callback after each iteration."""

    iteration: int
    """1-based iteration number."""
    relative_change: float
    """``||M_k - M_{k-1}|| / ||M_{k-1}||``."""
    low_rank: torch.Tensor
    """Current L, ``(frames, ny, nx)``, in the units of the input k-space."""
    sparse: torch.Tensor
    """Current S, ``(frames, ny, nx)``."""


def lplus_s(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    coil_maps: torch.Tensor,
    *,
    lambda_l: float = 0.01,
    lambda_s: float = 0.0025,
    n_iter: int = 50,
    tol: float = 0.0025,
    callback: Callable[[LplusSStatus], bool | None] | None = None,
    return_components: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Low-rank plus sparse (L+S) cine reconstruction, Otazo et al. 2015.

    Parameters
    ----------
    kspace
        ``(frames, coils, ky, kx)`` complex k-space, zero where not sampled.
    mask
        ``(frames, ky)`` or ``(frames, ky, kx)`` sampling mask.
    coil_maps
        ``(coils, ny, nx)`` sensitivities, normalised so that ``||E|| <= 1`` (``sum_c |c|^2 <= 1``), which
        the data-consistency step (a gradient step of length 1) needs.
    lambda_l
        Singular value threshold relative to the largest singular value of ``M - S`` (cine default).
    lambda_s
        Soft threshold on the temporal Fourier coefficients of ``M - L``, for data scaled so that
        ``max |E^H d| = 1`` (see Notes).
    n_iter
        Maximum number of iterations.
    tol
        Stop when ``||M_k - M_{k-1}|| < tol ||M_{k-1}||``.
    callback
        Called after every iteration with a :class:`LplusSStatus`; returning ``False`` stops the loop.
    return_components
        Return ``(L, S)`` instead of ``L + S``.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        ``L + S`` as ``(frames, ny, nx)`` complex, in the units of ``kspace``; or ``(L, S)``.

    Notes
    -----
    With ``E`` the :class:`~gaussian_mri.mri.operators.SenseOp` and ``T`` the unitary temporal FFT::

        M = E^H d;  L_prev = M;  S = 0
        repeat:
            L = SVT(M - S, lambda_l * sigma_max(M - S))
            S = T^H soft(T(M - L_prev), lambda_s)
            M = L + S - E^H (E (L + S) - d)
            L_prev = L

    The data ``d`` is divided by ``max |E^H d|`` before iterating and the result multiplied back, so
    ``lambda_s`` (an absolute threshold in Otazo's code) is relative to the zero-filled image
    maximum and the reconstruction scales linearly with the data.

    References
    ----------
    .. [OTA2015] Otazo R, Candes E, Sodickson DK. Low-rank plus sparse matrix decomposition for
       accelerated dynamic MRI with separation of background and dynamic components. Magn Reson Med
       2015; 73:1125-1136.
    """
    for name, value in (("lambda_l", lambda_l), ("lambda_s", lambda_s), ("tol", tol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
    op = SenseOp(coil_maps, mask)
    m = op.adjoint(kspace)  # also validates shapes
    scale = float(m.abs().max())
    if scale == 0.0:
        zeros = torch.zeros_like(m)
        return (zeros, zeros.clone()) if return_components else zeros
    d = kspace / scale
    m = m / scale
    low_rank_prev = m
    sparse = torch.zeros_like(m)
    low_rank = m
    for it in range(1, n_iter + 1):
        m_prev = m
        low_rank = singular_value_threshold(m - sparse, lambda_l)
        sparse = temporal_ifft(soft_threshold(temporal_fft(m - low_rank_prev), lambda_s))
        estimate = low_rank + sparse
        m = estimate - op.adjoint(op.forward(estimate) - d)
        low_rank_prev = low_rank
        denom = float(torch.linalg.vector_norm(m_prev))
        change = float(torch.linalg.vector_norm(m - m_prev)) / denom if denom > 0 else 0.0
        if callback is not None:
            status: LplusSStatus = {
                "iteration": it,
                "relative_change": change,
                "low_rank": low_rank * scale,
                "sparse": sparse * scale,
            }
            if callback(status) is False:
                break
        if change < tol:
            break
    if return_components:
        return low_rank * scale, sparse * scale
    return (low_rank + sparse) * scale
