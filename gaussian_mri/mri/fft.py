"""Centred, orthonormal 2D FFT over the last two axes ``(ky, kx)``.

Convention (as mrpro's ``FastFourierOp`` and BART's ``fft -u``): ``ifftshift -> fft2(norm='ortho')
-> fftshift``, so the k-space centre sits at index ``N // 2`` and the transform is unitary
(``ifft2c(fft2c(x)) == x`` and ``||fft2c(x)|| == ||x||``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["fft2c", "ifft2c", "centring_ramp", "crop_kspace"]


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Image (..., ny, nx) -> k-space (..., ky, kx), centred and unitary."""
    x = torch.fft.ifftshift(image, dim=(-2, -1))
    x = torch.fft.fft2(x, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """K-space (..., ky, kx) -> image (..., ny, nx); exact inverse (and adjoint) of :func:`fft2c`."""
    x = torch.fft.ifftshift(kspace, dim=(-2, -1))
    x = torch.fft.ifft2(x, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def centring_ramp(ny: int, nx: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit-modulus ``r`` (ny, nx) with ``fft2c(x) == fftshift(r * fft2(x, norm="ortho"))`` for every image ``x``.

    ``ifftshift`` is a circular shift, which the FFT turns into this phase ramp (the shift theorem);
    ``r = sqrt(ny nx) fft2(ifftshift(e0))`` with ``e0`` the unit impulse at pixel (0, 0). A fit that
    compares ``fft2c`` of its images with measured k-space ``y`` can instead compare the plain ``fft2``
    with ``conj(r) * ifftshift(y)`` (same residual magnitudes, both shifts and their copies gone).
    """
    e0 = torch.zeros(ny, nx, dtype=torch.complex128, device="cpu")
    e0[0, 0] = 1
    r = torch.fft.fft2(torch.fft.ifftshift(e0), norm="ortho") * math.sqrt(ny * nx)
    return r.to(torch.complex64).to(device)


def crop_kspace(kspace: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
    """Central ``ny x nx`` of a centred k-space (..., KY, KX), rescaled for the unitary FFT.

    With ``kspace = fft2c(x)`` of an image ``x`` on a grid ``KY / ny`` times finer (same field of
    view), ``ifft2c`` of the result is ``x`` band-limited to the coarse grid, at the coarse pixel
    values (for even sizes coarse pixel ``p`` sits on fine pixel ``(KY / ny) p``).
    """
    ky, kx = kspace.shape[-2:]
    if ny > ky or nx > kx:
        raise ValueError(f"cannot crop a {ky} x {kx} k-space to {ny} x {nx}")
    y0, x0 = ky // 2 - ny // 2, kx // 2 - nx // 2
    return kspace[..., y0 : y0 + ny, x0 : x0 + nx] * math.sqrt((ny * nx) / (ky * kx))
