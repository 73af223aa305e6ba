"""The centred unitary FFT helpers: the shift-free fit frame (``centring_ramp``) and ``crop_kspace``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussian_mri.mri.fft import centring_ramp, crop_kspace, fft2c, ifft2c


@pytest.mark.parametrize("shape", [(128, 160), (7, 10), (9, 9), (1, 6)])
def test_fft2c_is_a_shifted_ramped_plain_fft(shape):
    x = torch.randn(3, *shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    ramp = centring_ramp(*shape)
    assert torch.allclose(ramp.abs(), torch.ones(shape), atol=1e-6)
    plain = torch.fft.fftshift(ramp * torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    assert torch.allclose(plain, fft2c(x), atol=1e-5 * float(fft2c(x).abs().max()))
    # the residual the cine fit uses: |fft2c(x) - y| == |fft2(x) - conj(r) ifftshift(y)| everywhere
    y = torch.randn(3, *shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    a = (fft2c(x) - y).abs()
    b = torch.fft.fftshift((torch.fft.fft2(x, norm="ortho") - ramp.conj() * torch.fft.ifftshift(y, dim=(-2, -1))).abs(),
                           dim=(-2, -1))
    assert torch.allclose(a, b, atol=1e-5)


def test_crop_kspace_band_limits_a_finer_image():
    """A smooth image drawn on a 4x finer grid and cropped in k-space equals the same image drawn on the
    coarse grid (coarse pixel p on fine pixel 4p)."""
    n, s = 32, 4

    def blob(m):
        c = (np.arange(m) - m // 2) / m  # centred grid in field-of-view units
        yy, xx = np.meshgrid(c, c, indexing="ij")
        return torch.from_numpy(np.exp(-((xx - 0.05) ** 2 + (yy + 0.1) ** 2) / 0.01).astype(np.complex64))

    coarse = ifft2c(crop_kspace(fft2c(blob(s * n)), n, n))
    assert torch.allclose(coarse, blob(n), atol=1e-4)
    with pytest.raises(ValueError, match="cannot crop"):
        crop_kspace(torch.zeros(4, 4, dtype=torch.complex64), 8, 8)
