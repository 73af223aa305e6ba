"""Baselines: soft threshold, SVT, temporal FFT units against references; L+S beats zero filling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cine_sim import cine_phantom, smooth_coil_maps

from gaussian_mri.mri.baselines import (
    lplus_s,
    singular_value_threshold,
    soft_threshold,
    temporal_fft,
    temporal_ifft,
    zero_filled_sense,
)
from gaussian_mri.mri.operators import SenseOp
from gaussian_mri.mri.sampling import gro_mask, sampling_density

FRAMES, COILS, N = 16, 6, 40


@pytest.fixture(autouse=True, scope="module")
def _single_thread():  # noqa: ANN202
    """These tensors are tiny: intra-op threads only add overhead (60x slower on a loaded 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


def test_soft_threshold_against_elementwise_reference() -> None:
    x = torch.tensor([3 + 4j, 0.3 + 0.4j, 0, -2j, 1e-3], dtype=torch.complex128)
    expected = []
    for v in x.tolist():
        mag = abs(v)
        expected.append(0 if mag <= 1 else v / mag * (mag - 1))
    torch.testing.assert_close(soft_threshold(x, 1.0), torch.tensor(expected, dtype=torch.complex128))
    real = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0])
    torch.testing.assert_close(soft_threshold(real, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))


def test_singular_value_threshold_against_numpy_svd() -> None:
    gen = torch.Generator().manual_seed(1)
    series = torch.randn(6, 5, 4, generator=gen, dtype=torch.complex128)
    lam = 0.6
    out = singular_value_threshold(series, lam)
    casorati = series.reshape(6, 20).T.numpy()
    u, s, vh = np.linalg.svd(casorati, full_matrices=False)
    s_new = np.maximum(s - lam * s[0], 0)
    expected = ((u * s_new) @ vh).T.reshape(6, 5, 4)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    # the smallest singular values are removed: rank drops
    assert np.linalg.matrix_rank(out.reshape(6, 20).numpy(), tol=1e-9) == int((s > lam * s[0]).sum()) < 6
    # lambda = 0 is the identity
    torch.testing.assert_close(singular_value_threshold(series, 0.0), series)


def test_temporal_fft_is_unitary_and_puts_dc_in_the_middle() -> None:
    x = torch.randn(8, 3, 2, dtype=torch.complex128)
    f = temporal_fft(x)
    torch.testing.assert_close(temporal_ifft(f), x)
    torch.testing.assert_close(torch.linalg.vector_norm(f), torch.linalg.vector_norm(x))
    const = torch.ones(8, 1, 1, dtype=torch.complex128)
    spec = temporal_fft(const)[:, 0, 0]
    assert abs(spec[4] - 8**0.5) < 1e-12 and float(spec.abs().sum() - spec[4].abs()) < 1e-12


@pytest.fixture(scope="module")
def cine() -> dict[str, torch.Tensor]:
    image = cine_phantom(FRAMES, N, N)
    maps = smooth_coil_maps(COILS, N, N)
    return {"image": image, "maps": maps}


def test_zero_filled_modes(cine: dict[str, torch.Tensor]) -> None:
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(N, FRAMES, 4)
    k = SenseOp(maps, mask)(image)
    plain = zero_filled_sense(k, mask, maps)
    torch.testing.assert_close(plain, SenseOp(maps, mask).adjoint(k))
    # density compensation: for a static object the time average of the compensated zero-filled
    # frames is the truth (sum_t mask_t / (F w) = 1 on every sampled line; none is never sampled here)
    assert bool((sampling_density(mask) > 0).all())
    static = image[:1].expand(FRAMES, N, N)
    ks = SenseOp(maps, mask)(static)
    dc = zero_filled_sense(ks, mask, maps, density_compensation=True)
    torch.testing.assert_close(dc.mean(0), static[0], rtol=0, atol=1e-5)
    # ...which the plain adjoint is not (its low frequencies are weighted by the density)
    assert _nrmse(zero_filled_sense(ks, mask, maps).mean(0), static[0]) > 0.3
    # fully sampled: both are the truth
    full = torch.ones(FRAMES, N, dtype=torch.bool)
    kf = SenseOp(maps, full)(image)
    torch.testing.assert_close(zero_filled_sense(kf, full, maps), image, rtol=0, atol=1e-5)
    dc_full = zero_filled_sense(kf, full, maps, density_compensation=True)
    torch.testing.assert_close(dc_full, image, rtol=0, atol=1e-5)


@pytest.mark.parametrize("R", [4, 6])
def test_lplus_s_beats_zero_filled(cine: dict[str, torch.Tensor], R: int) -> None:  # noqa: N803
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(N, FRAMES, R)
    k = SenseOp(maps, mask)(image)
    gen = torch.Generator().manual_seed(R)
    k = k + 0.003 * torch.randn(k.shape, generator=gen, dtype=torch.complex64) * mask[:, None, :, None]
    iterations = []
    rec = lplus_s(k, mask, maps, callback=lambda st: iterations.append(st["iteration"]))
    assert rec.shape == image.shape and rec.dtype == torch.complex64
    err_ls = _nrmse(rec, image)
    err_zf = min(
        _nrmse(zero_filled_sense(k, mask, maps, density_compensation=d), image) for d in (False, True)
    )
    # measured (no noise, N=48): R=4 0.09 vs 0.58, R=6 0.27 vs 0.74; require a clear margin
    assert err_ls < 0.6 * err_zf, (err_ls, err_zf)
    assert 1 <= len(iterations) <= 50


def test_lplus_s_scale_equivariant_and_callback_stops(cine: dict[str, torch.Tensor]) -> None:
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(N, FRAMES, 4)
    k = SenseOp(maps, mask)(image).to(torch.complex128)
    a = lplus_s(k, mask, maps.to(torch.complex128), n_iter=5)
    b = lplus_s(k * 1000.0, mask, maps.to(torch.complex128), n_iter=5)
    torch.testing.assert_close(b, 1000.0 * a, rtol=1e-8, atol=1e-8)
    seen = []

    def stop_after_two(status):  # noqa: ANN001, ANN202
        seen.append(status["relative_change"])
        return len(seen) < 2

    low, sparse = lplus_s(k, mask, maps.to(torch.complex128), callback=stop_after_two, return_components=True)
    assert len(seen) == 2
    assert low.shape == sparse.shape == image.shape
    # one iteration with lambdas 0 and no data term change: L + S reproduces M = E^H d for full sampling
    full = torch.ones(FRAMES, N, dtype=torch.bool)
    kf = SenseOp(maps, full)(image)
    torch.testing.assert_close(
        lplus_s(kf, full, maps, lambda_l=0.0, lambda_s=0.0, n_iter=3), image, rtol=0, atol=1e-5
    )


def test_lplus_s_bad_arguments(cine: dict[str, torch.Tensor]) -> None:
    maps = cine["maps"]
    mask = gro_mask(N, FRAMES, 4)
    k = SenseOp(maps, mask)(cine["image"])
    with pytest.raises(ValueError, match="lambda_l must be a finite number >= 0, got -1"):
        lplus_s(k, mask, maps, lambda_l=-1)
    with pytest.raises(ValueError, match="n_iter must be a positive int, got 0"):
        lplus_s(k, mask, maps, n_iter=0)
    with pytest.raises(ValueError, match=r"y must be multi-coil data \(16, 6, 40, 40\)"):
        lplus_s(k[:, :3], mask, maps)
    with pytest.raises(ValueError, match=r"mask must have shape \(frames, 40\)"):
        zero_filled_sense(k, mask[:, :10], maps)
