"""Centred, orthonormal 2D FFT over the last two axes ``(ky, kx)``.

Convention (as mrpro's ``FastFourierOp`` and BART's ``fft -u``): ``ifftshift -> fft2(norm='ortho')
-> fftshift``, so the k-space centre sits at index ``N // 2`` and the transform is unitary
(``ifft2c(fft2c(x)) == x`` and ``||fft2c(x)|| == ||x||``).
"""

from __future__ import annotations

import torch

__all__ = ["fft2c", "ifft2c"]


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
