"""The numerical cardiac cine: motion, static background, texture, coils and k-space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from gaussian_mri.cine.phantom import cardiac_contraction, simulate_cine
from gaussian_mri.mri.fft import fft2c

N_FRAMES = 12


@pytest.fixture(scope="module")
def sim():
    return simulate_cine(n_frames=N_FRAMES, n_coils=6, noise=0.0, seed=0)


def _lateral_wall_thickness_mm(myo: np.ndarray, blood: np.ndarray, spacing: float) -> float:
    """Mean length of myocardium crossed by rays from the LV blood-pool centroid, lateral side
    (away from the RV, angles -50..50 degrees from +x), in mm."""
    cy, cx = ndimage.center_of_mass(blood)
    lengths = []
    for ang in np.radians(np.arange(-50, 51, 10)):
        r = np.arange(0, 60, 0.1)
        yy = np.round(cy + r * np.sin(ang)).astype(int)
        xx = np.round(cx + r * np.cos(ang)).astype(int)
        ok = (yy >= 0) & (yy < myo.shape[0]) & (xx >= 0) & (xx < myo.shape[1])
        lengths.append(myo[yy[ok], xx[ok]].sum() * 0.1)
    return float(np.mean(lengths)) * spacing


def test_shapes_types_and_metadata(sim):
    assert sim.images.shape == (N_FRAMES, 160, 192) and sim.images.dtype == np.complex64
    assert sim.kspace.shape == (N_FRAMES, 6, 160, 192) and sim.kspace.dtype == np.complex64
    assert sim.coil_maps.shape == (6, 160, 192)
    assert sim.myocardium_mask.shape == sim.lv_blood_mask.shape == (N_FRAMES, 160, 192)
    assert sim.body_mask.shape == sim.static_mask.shape == (160, 192)
    assert sim.pixel_spacing_mm == 1.8
    assert sim.frame_duration_ms == pytest.approx(960.0 / N_FRAMES)
    np.testing.assert_allclose(sim.frame_times_ms, np.arange(N_FRAMES) * 80.0)
    np.testing.assert_allclose(np.sum(np.abs(sim.coil_maps) ** 2, axis=0), 1.0, rtol=1e-5)


def test_heart_beats_wall_thickens_cavity_shrinks(sim):
    blood_area = sim.lv_blood_mask.sum(axis=(1, 2)) * sim.pixel_spacing_mm**2
    es = int(np.argmax(sim.contraction))
    assert es not in (0, N_FRAMES - 1)
    assert blood_area[0] / blood_area[es] > 1.8  # LV cavity area roughly halves at end systole
    thick = np.array(
        [_lateral_wall_thickness_mm(sim.myocardium_mask[f], sim.lv_blood_mask[f], 1.8) for f in range(N_FRAMES)]
    )
    assert thick[es] > 1.25 * thick[0]  # systolic wall thickening (>25 %)
    assert 7.0 < thick[0] < 12.5 and 10.0 < thick[es] < 17.0  # plausible human values (mm)
    np.testing.assert_allclose(thick, sim.lv_wall_thickness_mm, atol=2 * 1.8)  # measured ~ nominal
    myo_area = sim.myocardium_mask.sum(axis=(1, 2))
    assert myo_area.max() / myo_area.min() < 1.2  # myocardium is nearly incompressible in-plane
    # the myocardium actually moves: masks differ between end diastole and end systole
    assert (sim.myocardium_mask[0] ^ sim.myocardium_mask[es]).sum() > 200


def test_contraction_curve_is_a_cycle():
    t = np.linspace(0, 1, 1001)
    c = cardiac_contraction(t)
    assert c[0] == pytest.approx(0.0) and c[-1] == pytest.approx(0.0, abs=1e-6)
    assert c.max() == pytest.approx(1.0) and 0.3 < t[np.argmax(c)] < 0.4
    assert np.abs(np.diff(c)).max() < 0.02  # continuous


def test_background_is_static_and_heart_is_not(sim):
    mag = np.abs(sim.images)
    static = sim.static_mask
    assert static.sum() > 0.7 * sim.body_mask.sum()
    assert not (static & ~sim.body_mask).any()
    np.testing.assert_array_equal(sim.images[:, static], np.broadcast_to(sim.images[0, static], (N_FRAMES, static.sum())))
    changing = np.ptp(mag, axis=0) > 0.05
    assert changing.sum() > 500 and not (changing & static).any()
    air = ~ndimage.binary_dilation(sim.body_mask)  # body_mask = pixels at least half inside the body
    assert np.abs(sim.images[:, air]).max() == 0  # air is empty


def test_texture_is_not_piecewise_constant(sim):
    img = np.abs(sim.images[0])
    # interior of the static tissue (away from edges): many distinct values, fine structure
    edges = ndimage.binary_dilation(ndimage.sobel(img, 0) ** 2 + ndimage.sobel(img, 1) ** 2 > 0.5, iterations=1)
    interior = sim.static_mask & ~edges & (img > 0.2)
    assert interior.sum() > 3000
    values = img[interior]
    assert np.unique(np.round(values, 4)).size > 0.5 * values.size
    lap = ndimage.laplace(img)[interior]
    assert np.std(lap) / np.mean(values) > 0.02  # high-frequency energy inside tissue
    # several tissues: the magnitude histogram inside the body has several separated modes
    hist, _ = np.histogram(img[sim.body_mask], bins=20, range=(0, 1.05))
    assert (hist > 0.02 * sim.body_mask.sum()).sum() >= 5
    # lungs are dark, blood is bright
    assert np.percentile(img[sim.body_mask], 5) < 0.1
    assert np.median(img[sim.lv_blood_mask[0]]) > 0.9


def test_phase_is_smooth_and_not_trivial(sim):
    img = sim.images[0]
    body = ndimage.binary_erosion(sim.body_mask, iterations=3) & (np.abs(img) > 0.2)
    phase = np.angle(img)
    assert np.ptp(np.unwrap(phase[body])) > 0.5 or np.std(phase[body]) > 0.2
    # neighbouring pixels: small phase differences (smooth) where both have signal
    dphi = np.angle(img[:, 1:] * np.conj(img[:, :-1]))
    both = body[:, 1:] & body[:, :-1]
    assert np.percentile(np.abs(dphi[both]), 99) < 0.3


def test_kspace_is_fft_of_coil_images(sim):
    expected = fft2c(torch.from_numpy(sim.coil_maps)[None] * torch.from_numpy(sim.images)[:, None]).numpy()
    assert np.abs(sim.kspace - expected).max() < 1e-6 * np.abs(expected).max()


def test_noise_level_and_determinism():
    a = simulate_cine(n_frames=2, ny=64, nx=64, n_coils=2, noise=0.05, seed=4)
    clean = fft2c(torch.from_numpy(a.coil_maps)[None] * torch.from_numpy(a.images)[:, None]).numpy()
    resid = a.kspace - clean
    assert a.noise_std == pytest.approx(0.05 * np.abs(a.images).max())
    assert np.std(resid) == pytest.approx(a.noise_std, rel=0.05)
    assert abs(np.mean(resid.real * resid.imag)) < 0.05 * a.noise_std**2  # circular
    b = simulate_cine(n_frames=2, ny=64, nx=64, n_coils=2, noise=0.05, seed=4)
    np.testing.assert_array_equal(a.kspace, b.kspace)
    c = simulate_cine(n_frames=2, ny=64, nx=64, n_coils=2, noise=0.05, seed=5)
    assert not np.array_equal(a.images, c.images)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_frames"):
        simulate_cine(n_frames=1)
    with pytest.raises(ValueError, match="even"):
        simulate_cine(ny=65)
    with pytest.raises(ValueError, match="noise"):
        simulate_cine(noise=-1.0)


@pytest.fixture(scope="module")
def fine_sim():
    return simulate_cine(n_frames=4, ny=64, nx=80, n_coils=4, noise=0.0, seed=1, supersample=4)


def test_supersampled_data_are_not_the_models_fft_of_the_images(fine_sim):
    """No inverse crime: the k-space of the 4x drawing is not fft2c(maps x images) on the output grid,
    but close to it (the same object and maps, only the detail beyond the grid and the product with the
    maps at full resolution differ); the images are the band-limited fine object."""
    plain = simulate_cine(n_frames=4, ny=64, nx=80, n_coils=4, noise=0.0, seed=1)
    np.testing.assert_allclose(fine_sim.coil_maps, plain.coil_maps, atol=1e-6)  # the same continuous maps
    model = fft2c(torch.from_numpy(fine_sim.coil_maps)[None] * torch.from_numpy(fine_sim.images)[:, None]).numpy()
    rel = np.linalg.norm(fine_sim.kspace - model) / np.linalg.norm(model)
    assert 1e-3 < rel < 0.2, rel
    # the images are band-limited: same anatomy as the plain drawing (not bit-equal: other textures)
    corr = np.corrcoef(np.abs(fine_sim.images).ravel(), np.abs(plain.images).ravel())[0, 1]
    assert corr > 0.9, corr
    assert fine_sim.images.shape == (4, 64, 80) and fine_sim.kspace.shape == (4, 4, 64, 80)
    assert fine_sim.meta["supersample"] == 4


def test_supersampled_masks_and_noise(fine_sim):
    assert fine_sim.body_mask.shape == (64, 80) and 0.3 < fine_sim.body_mask.mean() < 0.9
    assert fine_sim.myocardium_mask.shape == (4, 64, 80) and fine_sim.myocardium_mask.any()
    assert (fine_sim.static_mask <= fine_sim.body_mask).all() and fine_sim.static_mask.sum() > 0.5 * fine_sim.body_mask.sum()
    # noise: the requested level relative to the (band-limited) image maximum
    noisy = simulate_cine(n_frames=2, ny=64, nx=64, n_coils=2, noise=0.05, seed=4, supersample=2)
    clean = simulate_cine(n_frames=2, ny=64, nx=64, n_coils=2, noise=0.0, seed=4, supersample=2)
    assert np.std(noisy.kspace - clean.kspace) == pytest.approx(0.05 * np.abs(clean.images).max(), rel=0.05)
    with pytest.raises(ValueError, match="supersample"):
        simulate_cine(n_frames=2, ny=64, nx=64, supersample=0)
