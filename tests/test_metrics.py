"""Image quality metrics (:mod:`gaussian_mri.metrics`) against scikit-image / NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from gaussian_mri.metrics import SSIM_WINDOW, all_metrics, ncc, nrmse, psnr, ssim

# skimage reference computed in float64 like ours: the only differences are summation order in
# the filters (~1e-15); the required agreement is 1e-4, so 1e-9 documents how close it really is.
SSIM_ATOL = 1e-9


def _pair(shape, seed=0, noise=0.3):
    """A smooth reference and a noisy, slightly biased copy (float64)."""
    rng = np.random.default_rng(seed)
    ref = gaussian_filter(rng.standard_normal(shape), 2.0) * 50 + 100
    img = 0.9 * ref + 5 + noise * ref.std() * rng.standard_normal(shape)
    return img, ref


def _sk_ssim(img, ref, data_range, full=False):
    return structural_similarity(
        img, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, full=full
    )


def _inner(shape, pad=5):
    inner = np.zeros(shape, dtype=bool)
    inner[tuple(slice(pad, n - pad) for n in shape)] = True
    return inner


@pytest.mark.parametrize("shape", [(64, 48), (20, 24, 22)])
def test_ssim_matches_skimage(shape):
    img, ref = _pair(shape)
    dr = float(ref.max() - ref.min())
    want = _sk_ssim(img, ref, dr)
    assert 0.1 < want < 0.99  # a non-trivial value
    assert ssim(img, ref) == pytest.approx(want, abs=SSIM_ATOL)  # default data_range = ref range
    assert ssim(img, ref, data_range=2 * dr) == pytest.approx(_sk_ssim(img, ref, 2 * dr), abs=SSIM_ATOL)
    # float32 inputs: skimage then works in float32, we still in float64 (brief: 1e-4).
    assert ssim(img.astype(np.float32), ref.astype(np.float32), data_range=dr) == pytest.approx(
        _sk_ssim(img.astype(np.float32), ref.astype(np.float32), dr), abs=1e-4
    )


@pytest.mark.parametrize("shape", [(40, 36), (16, 18, 20)])
def test_ssim_with_mask_is_mean_of_skimage_map(shape):
    img, ref = _pair(shape, seed=1)
    rng = np.random.default_rng(2)
    mask = gaussian_filter(rng.standard_normal(shape), 3) > 0
    dr = float(ref[mask].max() - ref[mask].min())
    _, smap = _sk_ssim(img, ref, dr, full=True)
    want = smap[mask & _inner(shape)].mean()
    assert ssim(img, ref, mask=mask) == pytest.approx(want, abs=SSIM_ATOL)


def test_ssim_series_is_mean_of_per_frame_2d_ssim():
    img, ref = _pair((12, 32, 30), seed=4)
    dr = float(ref.max() - ref.min())
    want = np.mean([_sk_ssim(img[t], ref[t], dr) for t in range(12)])
    assert ssim(img, ref, time_axis=0) == pytest.approx(want, abs=SSIM_ATOL)
    # The 3D SSIM of the same array is a different number (checks time_axis is honoured).
    assert abs(ssim(img, ref) - want) > 1e-3
    # Time last.
    moved = (np.moveaxis(img, 0, -1), np.moveaxis(ref, 0, -1))
    assert ssim(*moved, time_axis=-1) == pytest.approx(want, abs=SSIM_ATOL)
    # A 2D mask applies to every frame; frames are averaged with equal weight.
    mask2d = np.zeros((32, 30), dtype=bool)
    mask2d[8:20, 6:25] = True
    per_frame = [_sk_ssim(img[t], ref[t], dr, full=True)[1][mask2d].mean() for t in range(12)]
    got = ssim(img, ref, mask=mask2d, time_axis=0, data_range=dr)
    assert got == pytest.approx(np.mean(per_frame), abs=SSIM_ATOL)
    mask3d = np.broadcast_to(mask2d, (12, 32, 30))
    assert ssim(img, ref, mask=mask3d, time_axis=0, data_range=dr) == pytest.approx(got, abs=1e-15)


def test_psnr_nrmse_ncc_match_references():
    img, ref = _pair((30, 26, 28), seed=5)
    dr = float(ref.max() - ref.min())
    assert psnr(img, ref) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=dr), rel=1e-12)
    assert psnr(img, ref, data_range=1000.0) == pytest.approx(
        10 * np.log10(1000.0**2 / np.mean((img - ref) ** 2)), rel=1e-12
    )
    assert nrmse(img, ref) == pytest.approx(normalized_root_mse(ref, img, normalization="euclidean"), rel=1e-12)
    assert nrmse(img, ref) == pytest.approx(np.linalg.norm(img - ref) / np.linalg.norm(ref), rel=1e-12)
    assert ncc(img, ref) == pytest.approx(np.corrcoef(img.ravel(), ref.ravel())[0, 1], rel=1e-12)


def test_mask_restricts_all_metrics():
    img, ref = _pair((24, 22), seed=6)
    mask = np.zeros(img.shape, dtype=bool)
    mask[4:18, 3:20] = True
    img_bad = img.copy()
    img_bad[~mask] = 1e4  # garbage outside the mask must not matter (except SSIM's window)
    x, r = img[mask], ref[mask]
    dr = float(r.max() - r.min())
    assert psnr(img_bad, ref, mask=mask) == pytest.approx(peak_signal_noise_ratio(r, x, data_range=dr), rel=1e-12)
    assert nrmse(img_bad, ref, mask=mask) == pytest.approx(np.linalg.norm(x - r) / np.linalg.norm(r), rel=1e-12)
    assert ncc(img_bad, ref, mask=mask) == pytest.approx(np.corrcoef(x, r)[0, 1], rel=1e-12)
    # default data_range is the reference range inside the mask, not over the whole image
    assert psnr(img, ref, mask=mask) == pytest.approx(psnr(img, ref, mask=mask, data_range=dr), rel=1e-15)
    assert psnr(img, ref, mask=mask) != pytest.approx(psnr(img, ref, mask=mask, data_range=np.ptp(ref)))
    # integer label maps are accepted (nonzero = inside)
    assert psnr(img, ref, mask=mask.astype(np.uint8) * 3) == psnr(img, ref, mask=mask)


def test_perfect_and_scaled_images():
    _, ref = _pair((16, 16, 16), seed=7)
    assert psnr(ref, ref) == float("inf")
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert nrmse(ref, ref) == 0.0
    assert ncc(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert ncc(3 * ref + 7, ref) == pytest.approx(1.0, abs=1e-12)  # affine intensity change
    assert ncc(-ref, ref) == pytest.approx(-1.0, abs=1e-12)
    assert nrmse(np.zeros_like(ref), ref) == pytest.approx(1.0)
    assert np.isnan(ncc(np.ones_like(ref), ref))  # constant image: correlation undefined


def test_torch_and_numpy_agree():
    img, ref = _pair((20, 20, 20), seed=8)
    mask = ref > ref.mean()
    t_img, t_ref, t_mask = torch.from_numpy(img).float(), torch.from_numpy(ref).float(), torch.from_numpy(mask)
    for fn in (psnr, ssim, nrmse, ncc):
        # float32 tensors vs float64 arrays: the inputs differ by float32 rounding (~6e-8 relative).
        assert fn(t_img, t_ref, mask=t_mask) == pytest.approx(fn(img, ref, mask=mask), rel=1e-5)
    t = torch.from_numpy(img).requires_grad_(True)  # tensors needing grad are detached, not rejected
    assert psnr(t, ref) == pytest.approx(psnr(img, ref), rel=1e-15)


def test_all_metrics_consistent():
    img, ref = _pair((16, 16), seed=9)
    out = all_metrics(img, ref, data_range=250.0)
    assert out == {
        "psnr": psnr(img, ref, data_range=250.0),
        "ssim": ssim(img, ref, data_range=250.0),
        "nrmse": nrmse(img, ref),
        "ncc": ncc(img, ref),
        "data_range": 250.0,
    }


def test_bad_input_errors():
    img, ref = _pair((16, 16))
    with pytest.raises(ValueError, match=r"image shape \(16, 15\) differs from reference shape \(16, 16\)"):
        psnr(img[:, :15], ref)
    with pytest.raises(TypeError, match=r"image is complex .*np.abs\(image\)"):
        ssim(img + 1j, ref)
    bad = ref.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="reference contains 1 NaN or infinite values"):
        nrmse(img, bad)
    with pytest.raises(ValueError, match="mask is empty"):
        ncc(img, ref, mask=np.zeros(img.shape, dtype=bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        psnr(img, ref, mask=np.ones(img.shape))
    with pytest.raises(ValueError, match=r"mask shape \(4, 4\) does not match the image shape \(16, 16\)"):
        psnr(img, ref, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="image must be 2D .* or 3D .*pass time_axis"):
        psnr(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="time_axis=0 needs a 2D\\+t series of 3 dimensions"):
        ssim(img, ref, time_axis=0)
    with pytest.raises(ValueError, match=f"SSIM needs at least {SSIM_WINDOW} voxels along every spatial axis"):
        ssim(np.ones((10, 30, 30)), np.ones((10, 30, 30)), data_range=1.0)
    with pytest.raises(ValueError, match="reference is constant inside the mask.*pass data_range"):
        psnr(img, np.ones_like(ref))
    with pytest.raises(ValueError, match="data_range must be a finite number > 0, got -1.0"):
        ssim(img, ref, data_range=-1)
    with pytest.raises(ValueError, match="reference is zero everywhere inside the mask"):
        nrmse(img, np.zeros_like(ref))
    border_only = np.zeros(img.shape, dtype=bool)
    border_only[:3] = True
    with pytest.raises(ValueError, match="no voxel at least 5 voxels from the image border"):
        ssim(img, ref, mask=border_only)


@pytest.mark.parametrize("case", ["2d", "3d", "series", "series-2d-mask", "masked-3d", "integers"])
def test_torch_metrics_on_the_tensors_device_equal_the_numpy_reference(case):
    """Tensors are scored in torch (on their device: a GPU result stays on the GPU) with the same
    definitions as the NumPy/SciPy reference: equal to float64 rounding, masks and series included."""
    import torch

    from gaussian_mri import metrics

    rng = np.random.default_rng(7)
    shape = {"2d": (40, 33), "3d": (14, 20, 17), "masked-3d": (14, 20, 17), "integers": (30, 31)}.get(case, (5, 24, 26))
    ref = rng.random(shape) * 100
    img = ref + rng.normal(0, 8, shape)
    kwargs, mask = {}, None
    if case.startswith("series"):
        kwargs["time_axis"] = 0
    if case == "series-2d-mask":
        mask = rng.random(shape[1:]) > 0.4
    if case == "masked-3d":
        mask = rng.random(shape) > 0.5
    if case == "integers":
        ref, img = ref.astype(np.int32), np.clip(img, 0, None).astype(np.uint8)
    if mask is not None:
        kwargs["mask"] = mask
    numpy_values = metrics.all_metrics(img, ref, **kwargs)
    tensor_kwargs = dict(kwargs, mask=torch.as_tensor(mask)) if mask is not None else kwargs
    torch_values = metrics.all_metrics(torch.as_tensor(img), torch.as_tensor(ref), **tensor_kwargs)
    for key, value in numpy_values.items():
        assert torch_values[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    with pytest.raises(ValueError, match="contains 1 NaN"):
        bad = torch.as_tensor(img, dtype=torch.float64).clone()
        bad.view(-1)[3] = float("nan")
        metrics.psnr(bad, torch.as_tensor(ref))
