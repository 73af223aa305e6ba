"""GaussianCine engine: reconstruction quality, covariance maps, super-resolution, model I/O, bad inputs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import math

import numpy as np
import pytest
import torch
from _cases import small_cine

from gaussian_mri.cine.model import CineGaussians
from gaussian_mri.cine.recon import CineCancelled, CineConfig, CineInputError, reconstruct, render_sr
from gaussian_mri.metrics import nrmse, ssim
from gaussian_mri.mri.baselines import zero_filled_sense



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def case():
    return small_cine()


@pytest.fixture(scope="module")
def result(case):
    torch.set_num_threads(1)
    # the default lambdas (2e-3 since the undrawn frames are frozen: with 1e-3 the determinant-ratio
    # contrast heart / static on this tiny case was 1.42 against the 1.4 required below, 2e-3 gives 1.51)
    cfg = CineConfig(n_gaussians=600, steps=300, frames_per_step=2, prune_every=100)
    return reconstruct(
        case["kspace"], case["mask"], case["maps"], config=cfg, device="cpu", spacing_mm=(case["spacing"],) * 2
    )


def test_beats_zero_filled_at_r8(case, result):
    ref = np.abs(case["images"])
    body = case["body"]
    zf = np.abs(zero_filled_sense(case["kspace"], case["mask"], case["maps"], density_compensation=True).numpy())
    gs = np.abs(result.recon.numpy())
    s_gs, s_zf = ssim(gs, ref, mask=body, time_axis=0), ssim(zf, ref, mask=body, time_axis=0)
    e_gs, e_zf = nrmse(gs, ref, mask=body, time_axis=0), nrmse(zf, ref, mask=body, time_axis=0)
    assert s_gs > s_zf + 0.1, (s_gs, s_zf)
    assert e_gs < 0.75 * e_zf, (e_gs, e_zf)
    assert s_gs > 0.7 and e_gs < 0.3, (s_gs, e_gs)
    assert result.recon.shape == (10, 48, 40) and result.recon.dtype == torch.complex64
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_covariance_maps_move_in_heart_static_elsewhere(case, result):
    eig = result.eigen_ratio.numpy()
    det = result.det_ratio.numpy()
    disp = result.displacement_mm.numpy()
    assert eig.shape == det.shape == (10, 48, 40) and disp.shape == (10, 48, 40, 2)
    np.testing.assert_allclose(eig[0], 1.0, atol=1e-4)
    np.testing.assert_allclose(det[0], 1.0, atol=1e-4)
    np.testing.assert_allclose(disp[0], 0.0, atol=1e-5)
    heart = case["myo"].any(0)
    static = case["static"]
    assert heart.sum() > 20 and static.sum() > 100
    for name, m, factor in (("eigen", eig, 1.4), ("det", det, 1.4), ("disp", np.linalg.norm(disp, axis=-1), 2.0)):
        change = m.std(0)  # variation over the cycle, per pixel
        moving, flat = float(np.median(change[heart])), float(np.median(change[static]))
        assert moving > factor * flat, (name, moving, flat)
    # frame 0 is the reference of every map; the static background stays close to it
    assert float(np.median(np.abs(det - 1)[:, static])) < 0.1


def test_super_resolution_block_average_matches_1x(result):
    base = result.recon.numpy()
    peak = np.abs(base).max()
    for f in (2, 4):
        fine = render_sr(result, f).numpy()
        assert fine.shape == (10, 48 * f, 40 * f)
        block = fine.reshape(10, 48, f, 40, f).mean(axis=(2, 4))
        # point samples of the 1x grid vs box averages of the fine grid differ only where a Gaussian is
        # narrower than a pixel (sigma >= 0.5 px after the init clamp, but the fit may shrink them)
        err = np.abs(block - base).max() / peak
        rel = np.linalg.norm(block - base) / np.linalg.norm(base)
        assert err < 0.2 and rel < 0.05, (f, err, rel)


def test_model_save_load_round_trip(tmp_path, result):
    path = result.model.save(tmp_path / "g.npz")
    back = CineGaussians.load(path)
    assert back.n_gaussians == result.model.n_gaussians and back.n_frames == 10
    assert back.spacing_mm == result.model.spacing_mm
    with torch.no_grad():
        a = result.model.render([0, 5, 9])
        b = back.render([0, 5, 9])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(a.abs().max()))
    torch.testing.assert_close(a, result.recon[[0, 5, 9]], rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    cov = back.frame_covariance([0])
    assert cov.shape == (1, back.n_gaussians, 2, 2)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    np.savez(tmp_path / "bad.npz", means=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a GaussianCine model"):
        CineGaussians.load(tmp_path / "bad.npz")


def test_bad_inputs(case):
    k, m, c = case["kspace"], case["mask"], case["maps"]
    tiny = CineConfig(n_gaussians=50, steps=2)
    with pytest.raises(CineInputError, match="axis order|swapped"):
        reconstruct(k.permute(1, 0, 2, 3), m, c, config=tiny)  # coils and frames swapped
    with pytest.raises(CineInputError, match="swapped"):  # a (coils, frames) file read as (frames, coils)
        k2 = k.permute(1, 0, 2, 3).contiguous()
        reconstruct(k2, torch.ones(6, 48, dtype=torch.bool), c[:1].expand(10, 48, 40), config=tiny)
    with pytest.raises(CineInputError, match="coil_maps"):
        reconstruct(k, m, c[:, :, :-1], config=tiny)
    with pytest.raises(CineInputError, match="4-D"):
        reconstruct(k[:, 0], m, c, config=tiny)
    with pytest.raises(CineInputError, match="all zero"):
        reconstruct(k, torch.zeros_like(m), c, config=tiny)
    bad = k.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CineInputError, match="NaN"):
        reconstruct(bad, m, c, config=tiny)
    one_line = torch.zeros_like(m)
    one_line[:, 24] = True
    with pytest.raises(CineInputError, match="at least 2"):
        reconstruct(k, one_line, c, config=tiny)
    with pytest.raises(CineInputError, match="complex"):
        reconstruct(k.real, m, c, config=tiny)
    with pytest.raises(ValueError, match="steps"):
        CineConfig(steps=0)
    with pytest.raises(CineCancelled):
        reconstruct(k, m, c, config=CineConfig(n_gaussians=50, steps=20, callback_every=5), callback=lambda s: False)
    with pytest.warns(UserWarning, match="single-coil"):
        res = reconstruct(k[:, :1], m, None, config=tiny, device="cpu")
    assert res.recon.shape == (10, 48, 40) and bool(torch.isfinite(torch.view_as_real(res.recon)).all())


def test_espirit_maps_used_when_none(case):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = reconstruct(case["kspace"], case["mask"], None, config=CineConfig(n_gaussians=100, steps=3), device="cpu")
    assert res.coil_maps.shape == (6, 48, 40)


def test_cli_end_to_end(tmp_path, case):
    import nibabel as nib

    mag = np.abs(case["images"]).astype(np.float32)
    vol = np.transpose(mag, (2, 1, 0))[:, :, None, :]
    img = nib.Nifti1Image(vol, np.diag([4.0, 4.0, 8.0, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    z = img.header.get_zooms()
    img.header.set_zooms((z[0], z[1], z[2], 40.0))
    nib.save(img, tmp_path / "cine_in.nii.gz")
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "gaussian_mri", "cine", "--image-cine", str(tmp_path / "cine_in.nii.gz"),
        "--mask-type", "gro", "--acceleration", "4", "--coils", "4", "--output-dir", str(out),
        "--n-gaussians", "150", "--steps", "20", "--sr-factor", "2", "--threads", "1", "--progress-json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    prog = [e for e in events if e["event"] == "progress" and e["stage"] == "fit" and e["iteration"] > 0]
    assert prog and set(prog[-1]) == {"event", "stage", "iteration", "total", "loss", "elapsed_s", "eta_s"}
    assert prog[-1]["iteration"] == prog[-1]["total"] == 20
    done = events[-1]
    assert done["event"] == "done"
    for name in ("result", "metrics", "cine", "gaussians", "montage"):
        assert (out / done["outputs"][name].split("/")[-1]).is_file(), name
    with np.load(out / "result.npz") as r:
        assert r["recon"].shape == (10, 96, 80) and r["recon"].dtype == np.complex64
        assert r["eigen_ratio"].shape == r["det_ratio"].shape == (10, 96, 80)
        assert r["displacement"].shape == (10, 96, 80, 2)
        np.testing.assert_allclose(r["spacing_mm"], [2.0, 2.0])
        assert float(r["frame_ms"]) == 40.0
        for key in ("reference", "lps", "zero_filled"):
            assert r[key].shape == (10, 48, 40)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"gaussian", "zero_filled", "lps"}
    assert all(set(v) >= {"ssim", "psnr", "nrmse"} for v in metrics.values())
    nii = nib.load(out / "cine.nii.gz")
    assert nii.shape == (80, 96, 1, 10)
    assert abs(float(nii.header.get_zooms()[3]) - 40.0) < 1e-6
    CineGaussians.load(out / "gaussians.npz")

    bad = subprocess.run(
        [sys.executable, "-m", "gaussian_mri", "cine", "--image-cine", str(tmp_path / "cine_in.nii.gz"),
         "--output-dir", str(tmp_path / "o2"), "--progress-json"],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode != 0
    err = json.loads(bad.stdout.strip().splitlines()[-1])
    assert err["event"] == "error" and "acceleration" in err["message"]


def test_too_small_calibration_region_gives_clear_error():
    """A mask whose fully sampled centre is too small for ESPIRiT: a clear message, not a crash."""
    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.cine.recon import CineConfig, CineInputError, estimate_coil_maps

    sim = simulate_cine(n_frames=4, ny=64, nx=64, n_coils=4, seed=0)
    kspace = torch.as_tensor(np.asarray(sim.kspace), dtype=torch.complex64)
    lines = torch.zeros(64, dtype=torch.bool)
    lines[::2] = True
    lines[28:36] = True
    weights = lines[None, None, :, None].expand(4, 1, 64, 64).to(torch.float32)
    with pytest.raises(CineInputError, match="coil maps explicitly"):
        estimate_coil_maps(kspace * weights, weights, CineConfig())
    # with a 24-line fully sampled centre the same data give usable maps
    lines[20:44] = True
    weights = lines[None, None, :, None].expand(4, 1, 64, 64).to(torch.float32)
    maps = estimate_coil_maps(kspace * weights, weights, CineConfig())
    assert float(((maps.abs() ** 2).sum(0) > 0.5).float().mean()) >= 0.05


def test_sync_free_nuclear_norm_matches_the_svd_reference():
    """The Newton-Schulz nuclear norm used on CUDA (no LAPACK error flag read back each step) against the
    svdvals reference: exact maths in float64, float32 round-off only, the minimum-norm subgradient for
    low-rank motion, and 0 with a zero (finite) gradient at zero."""
    from gaussian_mri.cine.recon import nuclear_norm

    gen = torch.Generator().manual_seed(3)

    def motion(rank):
        left = torch.randn(24, rank, generator=gen, dtype=torch.float64)
        right = torch.randn(rank, 300, 2, generator=gen, dtype=torch.float64)
        return torch.einsum("tr,rmc->tmc", left, right).contiguous()

    def value_and_grad(dmu, method):
        x = dmu.clone().requires_grad_()
        v = nuclear_norm(x, method=method)
        (g,) = torch.autograd.grad(v, x)
        return float(v.detach()), g.double()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    full = motion(24)
    v_ref, g_ref = value_and_grad(full, "svd")
    v64, g64 = value_and_grad(full, "newton_schulz")
    assert v64 == pytest.approx(v_ref, rel=1e-10) and rel(g64, g_ref) < 1e-8
    v32, g32 = value_and_grad(full.float(), "newton_schulz")
    # float32 round-off only (the reference svdvals in float32 differs from float64 by 3e-5 here): measured 5.7e-3
    assert v32 == pytest.approx(v_ref, rel=1e-5) and rel(g32, g_ref) < 1e-2
    for rank in (5, 1):
        low = motion(rank)
        u, sv, vh = torch.linalg.svd(low.reshape(24, -1), full_matrices=False)
        subgradient = (u[:, :rank] @ vh[:rank]).reshape(low.shape) / math.sqrt(low.shape[1])
        v, g = value_and_grad(low, "newton_schulz")
        assert v == pytest.approx(float(sv.sum()) / math.sqrt(low.shape[1]), rel=1e-6)
        assert rel(g, subgradient) < 1e-3, rank
    zero = torch.zeros(24, 50, 2, requires_grad=True)
    value = nuclear_norm(zero, method="newton_schulz")
    (grad,) = torch.autograd.grad(value, zero)
    assert float(value.detach()) == 0.0 and torch.isfinite(grad).all() and float(grad.abs().max()) == 0.0
    with pytest.raises(ValueError, match="method"):
        nuclear_norm(zero, method="eig")
