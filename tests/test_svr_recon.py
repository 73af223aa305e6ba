"""Small acceptance tests of the Gaussian SVR (:func:`gaussian_mri.svr.recon.reconstruct`).

Ground truth: the Fidon et al. 2021 fetal brain atlas (CC0; GA 21 weeks, the crop bundled in
``tests/data/fidon-atlas-GA21``, see tests/data/SOURCE.md) smoothed and resampled to 2 mm, intensities
scaled to [0, 1]. Three orthogonal stacks (2 mm in-plane, 4 mm slices, 1 % noise) are simulated
from it by :func:`simulate_stacks` (independent PSF quadrature, no inverse crime). The recon is
small (a few thousand Gaussians, ~100 iterations) so that each test runs in well under a minute on
2 CPU cores; the thresholds are margins that a broken fit, motion model or robust weighting fails.

Measured numbers are printed (``pytest -s``) and kept in ``MEASURED``.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
from _cases import atlas_truth  # bundled CC0 atlas crop (tests/data/SOURCE.md)
import torch

from gaussian_mri import metrics
from gaussian_mri.geometry import stack_geometry
from gaussian_mri.image import Image
from gaussian_mri.resample import resample_to_reference, rotation_angle_deg
from gaussian_mri.svr.baseline import naive_average, output_grid
from gaussian_mri.svr.model import load_gaussians, render_volume, save_gaussians
from gaussian_mri.svr.recon import SVRCancelled, SVRConfig, reconstruct
from gaussian_mri.svr.register import _replace_dark_slices, align_stacks
from gaussian_mri.svr.simulate import MotionSpec, simulate_stacks


RES = 2.0  # output resolution (mm); stacks: RES in-plane, 2 RES thick
MARGIN = 4.0
CONFIG = SVRConfig(
    resolution_mm=RES,
    margin_mm=MARGIN,
    n_gaussians=1500,
    iterations=80,
    slices_per_batch=12,
    device="cpu",
    maps=False,
    seed=0,
)
MEASURED: dict[str, dict] = {}


def _report(name: str, **values) -> None:
    MEASURED.setdefault(name, {}).update(values)
    print(f"\n[{name}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


# --------------------------------------------------------------------------------------------------
# Data (cached per session: the tests below share the ground truth and the clean reconstruction)
# --------------------------------------------------------------------------------------------------


def _truth() -> tuple[Image, Image]:
    """Atlas smoothed (anti-alias) and resampled to RES mm on a box around the brain (+6 mm)."""
    return atlas_truth(RES)


@functools.lru_cache(maxsize=None)
def _simulate(rotation_deg: float = 0.0, translation_mm: float = 0.0, void_fraction: float = 0.0):
    vol, mask = _truth()
    motion = MotionSpec(rotation_deg=rotation_deg, translation_mm=translation_mm, seed=3) if rotation_deg or translation_mm else None
    return simulate_stacks(
        vol, mask, thickness_mm=2 * RES, inplane_mm=RES, margin_mm=MARGIN, motion=motion,
        void_fraction=void_fraction, noise_sigma=0.01, seed=1,
    )


@functools.lru_cache(maxsize=None)
def _reference_on_output_grid():
    """Ground truth and its mask on the output grid of the (motion-free) stacks."""
    sims = _simulate()
    shape, affine = output_grid([s.image for s in sims], [s.mask for s in sims], resolution_mm=RES, margin_mm=MARGIN)
    grid = Image(np.zeros(shape, np.float32), affine)
    vol, mask = _truth()
    gt = np.asarray(resample_to_reference(vol, grid, order=1).data, np.float64)
    gm = np.asarray(resample_to_reference(mask, grid, order=0).data) > 0
    return grid, gt, gm


@functools.lru_cache(maxsize=None)
def _recon(rotation_deg: float = 0.0, translation_mm: float = 0.0, void_fraction: float = 0.0, motion: str = "slice"):
    sims = _simulate(rotation_deg, translation_mm, void_fraction)
    return reconstruct([s.image for s in sims], [s.mask for s in sims], config=CONFIG, motion=motion)


def _quality(volume: Image, frame: np.ndarray | None = None) -> tuple[float, float]:
    """PSNR, SSIM of a volume against the ground truth resampled onto the volume's own grid.

    ``frame``: world transform from the volume's frame to the truth's (the recon is in the frame of
    stack 0, which the simulation may have moved as a whole)."""
    vol, mask = _truth()
    gt = np.asarray(resample_to_reference(vol, volume, transform=frame, order=1).data, np.float64)
    gm = np.asarray(resample_to_reference(mask, volume, transform=frame, order=0).data) > 0
    v = np.asarray(volume.data, np.float64)
    return metrics.psnr(v, gt, mask=gm), metrics.ssim(v, gt, mask=gm)


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rigid 4x4 ``G`` minimising ``sum |G src - dst|^2`` (points (N, 3))."""
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    g = np.eye(4)
    g[:3, :3] = rot
    g[:3, 3] = cd - rot @ cs
    return g


def _corner_error(sims, rows, use_identity: bool = False, with_frame: bool = False):
    """Mean slice-corner displacement (mm) between estimated and true poses after removing the gauge.

    The recon is free up to a global rigid motion ``G`` (it may sit rigidly moved against the truth,
    with every slice pose moved by the same ``G``): ``G`` is fitted (Kabsch) to all corners, then
    the remaining mean corner distance is reported. ``use_identity`` scores the nominal poses;
    ``with_frame`` also returns ``G`` (the recon's frame -> the truth's, for :func:`_quality`).
    """
    est, true = [], []
    for r in rows:
        st = sims[r["stack"]]
        geom, _ = stack_geometry(st.image, dtype=torch.float64)
        o = geom.origin[r["slice"]].numpy()
        u, v = geom.rotation[r["slice"], :, 0].numpy(), geom.rotation[r["slice"], :, 1].numpy()
        du, dv = geom.spacing[r["slice"]].numpy()
        corners = np.array([o + a * (geom.width - 1) * du * u + b * (geom.height - 1) * dv * v for a in (0, 1) for b in (0, 1)])
        hom = np.c_[corners, np.ones(4)]
        t_est = np.eye(4) if use_identity else np.asarray(r["transform"])
        t_true = st.transforms[r["slice"]]
        est.append((hom @ t_est.T)[:, :3])
        true.append((hom @ t_true.T)[:, :3])
    est, true = np.concatenate(est), np.concatenate(true)
    g = _kabsch(est, true)
    err = float(np.linalg.norm(est @ g[:3, :3].T + g[:3, 3] - true, axis=1).mean())
    return (err, g) if with_frame else err


# --------------------------------------------------------------------------------------------------
# (a) no motion: better than the naive average
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_motion_beats_naive_average():
    sims = _simulate()
    grid, gt, gm = _reference_on_output_grid()
    base = naive_average([s.image for s in sims], grid)
    p0, s0 = _quality(base)
    res = _recon(motion="none")
    p1, s1 = _quality(res.volume)
    _report("a_no_motion", naive_psnr=p0, naive_ssim=s0, gauss_psnr=p1, gauss_ssim=s1, fit_s=res.timings["fit_s"])
    assert p1 > p0 + 2.0, f"Gaussian recon PSNR {p1:.2f} dB is not 2 dB above the naive average {p0:.2f} dB"
    assert s1 > s0 + 0.01, f"Gaussian recon SSIM {s1:.4f} is not 0.01 above the naive average {s0:.4f}"


# --------------------------------------------------------------------------------------------------
# (b) moderate motion: motion correction helps and recovers the slice poses
# --------------------------------------------------------------------------------------------------

MOTION = (4.0, 2.0)  # max rotation (deg), max translation (mm) per stack


@pytest.mark.slow
def test_motion_correction_improves_psnr_and_poses():
    sims = _simulate(*MOTION)
    off = _recon(*MOTION, motion="none")
    on = _recon(*MOTION, motion="slice")
    p_off, s_off = _quality(off.volume)
    # The recon sits in the frame of stack 0's (moved) slices: compare in the frame of the poses.
    err_on, frame = _corner_error(sims, on.slices, with_frame=True)
    p_on, s_on = _quality(on.volume, frame)
    err_id = _corner_error(sims, on.slices, use_identity=True)
    true_max = max(s.params["stack"]["max_rotation_deg"] for s in sims), max(s.params["stack"]["max_translation_mm"] for s in sims)
    _report(
        "b_motion", psnr_off=p_off, ssim_off=s_off, psnr_on=p_on, ssim_on=s_on,
        corner_err_recovered_mm=err_on, corner_err_identity_mm=err_id,
        true_max_rot_deg=true_max[0], true_max_trans_mm=true_max[1], fit_s=on.timings["fit_s"] + off.timings["fit_s"],
    )
    assert p_on > p_off + 0.5, f"motion correction on: PSNR {p_on:.2f} dB, off: {p_off:.2f} dB"
    assert err_on < 0.6 * err_id, f"recovered poses corner error {err_on:.2f} mm vs identity {err_id:.2f} mm"


# --------------------------------------------------------------------------------------------------
# (b2) motion between stacks: rigid pre-alignment
# --------------------------------------------------------------------------------------------------

STACK_OFFSET = {"stack_rotation_deg": 15.0, "stack_translation_mm": 5.0}


@functools.lru_cache(maxsize=None)
def _simulate_stack_offsets():
    vol, mask = _truth()
    return simulate_stacks(
        vol, mask, thickness_mm=2 * RES, inplane_mm=RES, margin_mm=MARGIN + 4.0,
        motion=MotionSpec(**STACK_OFFSET, seed=4), noise_sigma=0.01, seed=1,
    )


def _box_corners(image: Image) -> np.ndarray:
    k, j, i = image.shape
    idx = np.array([[a, b, c, 1.0] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)])
    return idx @ image.affine.T


def test_stack_alignment_recovers_the_motion_between_stacks():
    sims = _simulate_stack_offsets()
    found = align_stacks([s.image for s in sims], [np.asarray(s.mask.data) > 0 for s in sims])
    np.testing.assert_allclose(found[0], np.eye(4))
    t0_inv = np.linalg.inv(sims[0].transforms[0])
    errs, errs_id = [], []
    for st, m in zip(sims[1:], found[1:]):
        corners = _box_corners(st.image)
        expected = corners @ (t0_inv @ st.transforms[0]).T  # stack n's anatomy in stack 0's frame
        errs.append(np.linalg.norm((corners @ m.T - expected)[:, :3], axis=1).mean())
        errs_id.append(np.linalg.norm((corners - expected)[:, :3], axis=1).mean())
    _report("b2_stack_alignment", corner_err_mm=[round(e, 2) for e in errs], corner_err_identity_mm=[round(e, 2) for e in errs_id])
    assert min(errs_id) > 5.0  # the offsets are large...
    assert max(errs) < 0.5 * RES, f"stack alignment corner errors {errs} mm (identity {errs_id}); want < {0.5 * RES} mm"


def test_stack_alignment_ignores_dark_slices():
    sims = _simulate(void_fraction=0.1)
    found = align_stacks([s.image for s in sims], [np.asarray(s.mask.data) > 0 for s in sims])
    _, mask = _truth()
    brain = mask.world_coordinates()[np.asarray(mask.data) > 0]
    shift = [float(np.linalg.norm(brain @ m[:3, :3].T + m[:3, 3] - brain, axis=1).mean()) for m in found]
    _report("b2_alignment_with_voids", rotation_deg=[round(rotation_angle_deg(m), 2) for m in found], brain_shift_mm=[round(t, 2) for t in shift])
    # No motion between these stacks: the voids must not move them (3-5 deg, 1.2-1.4 mm without the check).
    assert max(shift) < 0.5 * RES, shift
    # The check itself: the corrupted slices of every stack are found, clean stacks are left alone.
    for st in sims:
        data, mask = np.asarray(st.image.data, np.float32), np.asarray(st.mask.data) > 0
        big = [k for k in st.corrupted.tolist() if mask[k].sum() >= 20]
        new, bad = _replace_dark_slices(data, mask)
        assert set(big) <= set(bad.tolist()), (st.corrupted, bad)
        assert not np.array_equal(new[bad], data[bad])
    clean = _simulate()[0]
    _, bad = _replace_dark_slices(np.asarray(clean.image.data, np.float32), np.asarray(clean.mask.data) > 0)
    assert bad.size == 0, bad


@pytest.mark.slow
def test_reconstruction_with_motion_between_stacks_needs_the_alignment():
    sims = _simulate_stack_offsets()
    stacks, masks = [s.image for s in sims], [s.mask for s in sims]
    frame = sims[0].transforms[0]
    on = reconstruct(stacks, masks, config=CONFIG, motion="stack")
    off = reconstruct(stacks, masks, config=CONFIG, motion="stack", stack_alignment=False)
    p_on, s_on = _quality(on.volume, frame)
    p_off, s_off = _quality(off.volume, frame)
    p_static, _ = _quality(_recon(motion="slice").volume)
    _report("b2_stack_motion_recon", psnr_aligned=p_on, ssim_aligned=s_on, psnr_not_aligned=p_off, ssim_not_aligned=s_off, psnr_static=p_static)
    assert p_on > p_off + 2.0, f"with stack alignment {p_on:.2f} dB, without {p_off:.2f} dB"
    assert p_on > p_static - 1.0, f"with stack alignment {p_on:.2f} dB vs no motion at all {p_static:.2f} dB"


# --------------------------------------------------------------------------------------------------
# (c) corrupted slices: lowest robust weights, quality kept
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_corrupted_slices_get_lowest_weights():
    sims = _simulate(void_fraction=0.1)
    res = _recon(void_fraction=0.1, motion="slice")
    clean = _recon(motion="slice")
    w = np.array([r["weight"] for r in res.slices])
    corrupted = np.array([int(r["slice"]) in set(sims[r["stack"]].corrupted.tolist()) for r in res.slices])
    n_listed = sum(len(s.corrupted) for s in sims)
    rank = np.array([(w < x).mean() for x in w])  # fraction of slices with a lower weight
    p_c, s_c = _quality(res.volume)
    p_0, s_0 = _quality(clean.volume)
    _report(
        "c_corrupted", n_corrupted=int(corrupted.sum()), n_listed=n_listed, n_slices=len(w),
        corrupted_weights=np.round(w[corrupted], 3).tolist(), corrupted_rank_max=float(rank[corrupted].max()),
        clean_weight_median=float(np.median(w[~corrupted])), psnr_corrupted=p_c, psnr_clean=p_0, ssim_corrupted=s_c, ssim_clean=s_0,
    )
    assert corrupted.sum() >= 3
    assert rank[corrupted].max() < 0.15, f"corrupted slices' weight ranks {rank[corrupted]} (want all in the lowest 15 %)"
    # Equal weights (robust weighting off) would pass the rank test: the corrupted slices must be down-weighted.
    assert w[corrupted].max() < 0.1 * np.median(w[~corrupted]), f"corrupted slices' weights {w[corrupted]}"
    assert p_c > p_0 - 1.0, f"PSNR with 10 % corrupted slices {p_c:.2f} dB vs clean {p_0:.2f} dB"


# --------------------------------------------------------------------------------------------------
# (d) outputs: geometry, Gaussian file round trip, maps, cancel
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _small_result():
    sims = _simulate()
    stacks, masks = [s.image for s in sims], [s.mask for s in sims]
    return stacks, masks, reconstruct(stacks, masks, config=CONFIG, iterations=15, n_gaussians=800, maps=True)


@pytest.mark.slow
def test_output_geometry_and_model_round_trip(tmp_path):
    stacks, masks, res = _small_result()
    shape, affine = output_grid(stacks, masks, resolution_mm=RES, margin_mm=MARGIN)
    assert res.volume.shape == shape
    np.testing.assert_allclose(res.volume.affine, affine, atol=1e-9)
    assert res.mask.shape == shape and np.allclose(res.mask.affine, affine)
    assert np.isfinite(res.volume.data).all() and np.asarray(res.mask.data).any()
    assert len(res.slices) == sum(int((np.asarray(m.data) > 0).any(axis=(1, 2)).sum()) for m in masks)
    for row in res.slices[:5]:
        t = np.asarray(row["transform"])
        assert t.shape == (4, 4) and np.allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-5)
    for key in ("prepare_s", "fit_s", "render_s", "total_s"):
        assert res.timings[key] >= 0

    path = save_gaussians(res.model, tmp_path / "model.npz")
    loaded = load_gaussians(path)
    assert loaded.n == res.model.n and loaded.psf_mode == res.model.psf_mode
    again = render_volume(loaded, shape, affine).numpy()
    vol = np.asarray(res.volume.data)
    err = np.abs(again - vol).max()
    _report("d_roundtrip", max_abs_diff=float(err), volume_max=float(np.abs(vol).max()))
    np.testing.assert_allclose(again, vol, rtol=1e-4, atol=1e-4 * float(np.abs(vol).max()))


def test_covariance_maps_exist_and_are_finite():
    _, _, res = _small_result()
    for name in ("scale", "anisotropy"):
        m = res.maps[name]
        assert m.shape == res.volume.shape and np.allclose(m.affine, res.volume.affine)
        data = np.asarray(m.data)
        assert np.isfinite(data).all()
        inside = data[np.asarray(res.mask.data) > 0]
        assert inside.max() > 0
    fa = np.asarray(res.maps["anisotropy"].data)
    assert fa.min() >= -1e-6 and fa.max() <= 1 + 1e-6
    assert res.tensor is not None and res.tensor.shape == (*res.volume.shape, 3, 3) and np.isfinite(res.tensor).all()


def test_cancel_via_callback_raises():
    sims = _simulate()
    seen = []

    def cb(status):
        seen.append(status)
        return False if status["iteration"] >= 6 else None

    with pytest.raises(SVRCancelled):
        reconstruct([s.image for s in sims], [s.mask for s in sims], config=CONFIG, iterations=50, n_gaussians=300, callback=cb)
    assert seen and {"stage", "iteration", "total", "loss", "elapsed_s", "eta_s"} <= set(seen[-1])
    assert seen[-1]["iteration"] < 50


# --------------------------------------------------------------------------------------------------
# (e) bad input
# --------------------------------------------------------------------------------------------------

QUICK = dict(config=CONFIG, iterations=3, n_gaussians=200)


def test_no_stacks_raises():
    with pytest.raises(ValueError, match="no stacks"):
        reconstruct([], **QUICK)


def test_refresh_intervals_must_be_positive():
    for bad in ({"reweight_every": 0}, {"full_refresh_every": 0}):
        with pytest.raises(ValueError, match="full_refresh_every must be >= 1"):
            SVRConfig(**bad).validated()


def test_default_config_is_the_fast_preset():
    from gaussian_mri.svr.recon import PRESETS, preset

    default = SVRConfig()
    assert {k: getattr(default, k) for k in PRESETS["fast"]} == PRESETS["fast"]
    assert preset("fast") == default
    assert preset("standard").n_gaussians > default.n_gaussians


def test_reference_stack_out_of_range_raises():
    sims = _simulate()
    with pytest.raises(ValueError, match="reference_stack 3 is out of range: there are 3 stacks"):
        reconstruct([s.image for s in sims], [s.mask for s in sims], reference_stack=3, **QUICK)


def test_reference_stack_defines_the_frame():
    sims = _simulate_stack_offsets()
    res = reconstruct([s.image for s in sims], [s.mask for s in sims], reference_stack=1, motion="stack", **QUICK)
    by_stack = {r["stack"]: np.asarray(r["transform"]) for r in res.slices}
    # The reference stack stays where its header puts it; the others are moved onto it.
    np.testing.assert_allclose(by_stack[1], np.eye(4), atol=1e-5)
    assert rotation_angle_deg(by_stack[0]) > 10.0


def test_nan_stack_raises():
    sims = _simulate()
    bad = np.asarray(sims[1].image.data, np.float32).copy()
    bad[2, 3, 4] = np.nan
    stacks = [sims[0].image, sims[1].image.with_data(bad), sims[2].image]
    with pytest.raises(ValueError, match="NaN"):
        reconstruct(stacks, [s.mask for s in sims], **QUICK)


def test_constant_stack_raises():
    sims = _simulate()
    stacks = [sims[0].image, sims[1].image.with_data(np.full(sims[1].image.shape, 3.0, np.float32)), sims[2].image]
    with pytest.raises(ValueError, match="constant"):
        reconstruct(stacks, [s.mask for s in sims], **QUICK)


def test_empty_mask_raises():
    sims = _simulate()
    masks = [s.mask for s in sims]
    masks[2] = masks[2].with_data(np.zeros(masks[2].shape, np.uint8))
    with pytest.raises(ValueError, match="empty"):
        reconstruct([s.image for s in sims], masks, **QUICK)


def test_mask_on_another_grid_warns_and_works():
    sims = _simulate()
    _, brain = _truth()  # the ground-truth mask lives on the 2 mm volume grid, not on the stacks
    masks = [sims[0].mask, brain, sims[2].mask]
    with pytest.warns(UserWarning, match="different grid"):
        res = reconstruct([s.image for s in sims], masks, **QUICK)
    assert np.isfinite(res.volume.data).all()
    assert any(r["stack"] == 1 for r in res.slices)


def test_single_stack_warns():
    sims = _simulate()
    with pytest.warns(UserWarning, match="only one stack"):
        res = reconstruct([sims[0].image], [sims[0].mask], **QUICK)
    assert any("one stack" in w for w in res.warnings)
    assert np.isfinite(res.volume.data).all()


def test_bias_field_fits_a_smooth_intensity_drift():
    """Stacks with a multiplicative bias: the bias-field model fits them better (lower data loss) than without it,
    and its coefficients are finite; a model that ignores or breaks the field fails this."""
    vol, mask = _truth()
    sims = simulate_stacks(vol, mask, thickness_mm=2 * RES, inplane_mm=RES, margin_mm=MARGIN, bias_field=0.4,
                           noise_sigma=0.005, seed=2)
    cfg = replace(CONFIG, iterations=40, motion="none", robust=False)
    with_bias = reconstruct([s.image for s in sims], [s.mask for s in sims], config=cfg, bias_field=True)
    without = reconstruct([s.image for s in sims], [s.mask for s in sims], config=cfg, bias_field=False)
    tail = lambda r: float(np.mean(r.losses[-10:]))  # noqa: E731
    _report("bias_field", loss_with=tail(with_bias), loss_without=tail(without))
    assert np.isfinite(with_bias.volume.data).all()
    assert tail(with_bias) < 0.9 * tail(without)


def test_time_budget_stops_early_and_says_so():
    sims = _simulate()
    res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=CONFIG, time_budget_s=0.0, maps=False)
    assert res.timings["iterations"] == 1
    assert any("time budget" in w for w in res.warnings)


# --------------------------------------------------------------------------------------------------
# Robust slice weights (unit level: no fit)
# --------------------------------------------------------------------------------------------------


def test_robust_weights_flag_outliers_not_the_tail_of_clean_slices():
    """Clean slice errors spread over about a decade (edge slices, partial volume); corrupted slices
    are orders of magnitude worse. Only the latter may be zeroed (the previous linear z-score
    zeroed clean edge slices too)."""
    from gaussian_mri.svr.recon import _robust_weights

    rng = np.random.default_rng(0)
    clean = np.exp(rng.normal(np.log(5e-5), 0.5, size=200))
    clean[:5] = 5e-5 * 10.0  # the worst clean slices: 10x the typical error
    bad = np.array([0.4, 0.6, 0.05])  # signal voids / drop-outs: 1000x and more
    w = _robust_weights(torch.as_tensor(np.r_[clean, bad]), CONFIG).numpy()
    assert w[:200].min() > 0.2, f"a clean slice got weight {w[:200].min():.3g}"
    assert np.median(w[:200]) > 0.95
    assert w[200:].max() < 0.01, f"corrupted slices' weights {w[200:]}"
    # One-sided: better-than-typical slices keep weight 1.
    w2 = _robust_weights(torch.as_tensor(np.r_[clean, 1e-9]), CONFIG).numpy()
    assert w2[-1] == 1.0
    # A widely spread clean population (log-sd 2) must not hide a 1000x outlier (MAD cap).
    spread = np.exp(rng.normal(np.log(5e-5), 2.0, size=200))
    w3 = _robust_weights(torch.as_tensor(np.r_[spread, np.median(spread) * 1e4]), CONFIG).numpy()
    assert w3[-1] < 0.01, f"outlier weight {w3[-1]:.3g} among widely spread clean errors"


# --------------------------------------------------------------------------------------------------
# (g) severe motion: slice-to-volume registration rounds (issue: pose recovery far from the start)
# --------------------------------------------------------------------------------------------------

SEVERE = MotionSpec(rotation_deg=12.0, translation_mm=6.0, smoothness_slices=4.0, interleave=2, seed=3)


@functools.lru_cache(maxsize=None)
def _simulate_severe():
    vol, mask = _truth()
    return simulate_stacks(vol, mask, thickness_mm=2 * RES, inplane_mm=RES, margin_mm=MARGIN, motion=SEVERE, noise_sigma=0.01, seed=1)


def test_registration_rounds_run_inside_the_fit():
    """The rounds run at their iterations, report their stage and time, and leave finite poses. (Whether they
    help is measured on 1 mm stacks in benchmarks/svr_motion_sweep.py; on this 2 mm / 1,500-Gaussian case they
    do not: corner error 1.44 mm with the fit alone, 2.41 mm with the rounds, benchmarks/README.md.)"""
    sims = _simulate_severe()
    stages = []
    res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=CONFIG, iterations=30,
                      registration_rounds=(0.5,), callback=lambda st: stages.append((st["stage"], st["iteration"])))
    assert ("register", 15) in stages
    assert res.timings["register_s"] > 0
    assert all(np.isfinite(np.asarray(r["transform"])).all() for r in res.slices)
    with pytest.warns(UserWarning, match="need motion='slice'"):
        r2 = reconstruct([s.image for s in sims], [s.mask for s in sims], config=CONFIG, iterations=5,
                         motion="stack", registration_rounds=(0.5,))
    assert "register_s" not in r2.timings


def test_registration_rounds_must_be_fractions():
    with pytest.raises(ValueError, match="registration_rounds"):
        SVRConfig(registration_rounds=(0.2, 1.5)).validated()
    with pytest.raises(ValueError, match="registration_rounds"):
        SVRConfig(registration_rounds=(0.0, 0.5)).validated()
    with pytest.raises(ValueError, match="smoothness"):
        SVRConfig(smoothness=-1.0).validated()
    with pytest.raises(ValueError, match="smoothness"):
        SVRConfig(smoothness="strong").validated()
    for bad in (float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="smoothness"):
            SVRConfig(smoothness=bad).validated()


# --------------------------------------------------------------------------------------------------
# (h) noise-aware fit: edge-preserving prior scaled by the stacks' noise
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _noisy_recons():
    vol, mask = _truth()
    sims = simulate_stacks(vol, mask, thickness_mm=2 * RES, inplane_mm=RES, margin_mm=MARGIN, noise_sigma=0.04,
                           noise_type="rician", seed=1)
    stacks, masks = [s.image for s in sims], [s.mask for s in sims]
    # the noise relative to the median intensity inside the masks: what the fit should measure
    expected = float(np.median([0.04 / np.median(np.asarray(s.data)[np.asarray(m.data) > 0]) for s, m in zip(stacks, masks)]))
    return (reconstruct(stacks, masks, config=CONFIG, smoothness=0.0),
            reconstruct(stacks, masks, config=CONFIG, smoothness="auto"), expected)


def _grain_and_edges(volume: Image) -> tuple[float, float]:
    """Residual standard deviation against the truth on its flattest quarter, and the mean gradient
    magnitude at the truth's strongest edges relative to the truth's (volume on its own grid)."""
    from scipy import ndimage

    vol, mask = _truth()
    gt = np.asarray(resample_to_reference(vol, volume, order=1).data, np.float64)
    gm = np.asarray(resample_to_reference(mask, volume, order=0).data) > 0
    v = np.asarray(volume.data, np.float64)
    v = v * float((v[gm] * gt[gm]).sum() / (v[gm] ** 2).sum())
    grad = lambda x: np.sqrt(sum(g * g for g in np.gradient(x)))  # noqa: E731
    g_gt = grad(gt)
    inner = ndimage.binary_erosion(gm, iterations=1)
    flat = inner & (g_gt <= np.quantile(g_gt[inner], 0.25))
    edges = gm & (g_gt >= np.quantile(g_gt[gm], 0.9))
    return float((v - gt)[flat].std()), float(grad(v)[edges].mean() / g_gt[edges].mean())


@pytest.mark.slow
def test_noise_aware_fit_removes_grain_without_losing_quality():
    plain, smooth, expected_noise = _noisy_recons()
    (grain_p, edge_p), (grain_s, edge_s) = _grain_and_edges(plain.volume), _grain_and_edges(smooth.volume)
    p_p, s_p = _quality(plain.volume)
    p_s, s_s = _quality(smooth.volume)
    _report("h_noise", noise_estimate=smooth.noise_level, weight=smooth.smoothness_weight, grain_plain=grain_p,
            grain_smooth=grain_s, edge_plain=edge_p, edge_smooth=edge_s, psnr_plain=p_p, psnr_smooth=p_s, ssim_plain=s_p, ssim_smooth=s_s)
    assert smooth.smoothness_weight > 0 and plain.smoothness_weight == 0 and plain.noise_level is None
    assert smooth.noise_level == pytest.approx(expected_noise, rel=0.15)
    # measured (2026-11-30): grain 0.0363 -> 0.0317, edges 0.901 -> 0.904, PSNR 27.10 -> 28.06 dB, SSIM 0.950 -> 0.959
    assert grain_s < 0.92 * grain_p, f"grain (residual std on flat tissue) {grain_s:.4f} vs plain fit {grain_p:.4f}"
    assert edge_s > 0.95 * edge_p, f"edge gradient ratio {edge_s:.3f} vs plain fit {edge_p:.3f}"
    assert p_s > p_p + 0.5 and s_s > s_p, f"PSNR/SSIM {p_s:.2f}/{s_s:.4f} vs plain {p_p:.2f}/{s_p:.4f}"
