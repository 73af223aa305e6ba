"""3D Gaussians on slice planes (analytic PSF) against Monte-Carlo PSF integration; voxeliser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussian_mri.geometry import SliceGeometry
from gaussian_mri.render._reference import dense_gaussians_3d_on_points
from gaussian_mri.render.slices import project_to_slices, render_slices, voxelise
from gaussian_mri.transforms import axis_angle_to_matrix

F64 = torch.float64


def _model(g=30, seed=1):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(g, 3, generator=gen, dtype=F64) * 4
    a = torch.randn(g, 3, 3, generator=gen, dtype=F64)
    covs = a @ a.transpose(1, 2) + 0.5 * torch.eye(3, dtype=F64)
    amps = torch.rand(g, generator=gen, dtype=F64) + 0.5
    return means, covs, amps


def _oblique_slices(h=24, w=24):
    rot = axis_angle_to_matrix(torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.4, -0.3], [0.0, 0.0, 0.0]], dtype=F64))
    spacing = torch.tensor([[1.1, 0.9], [1.0, 1.2], [1.0, 1.0]], dtype=F64)
    centre = torch.tensor([[0.5, 0.2, 1.0], [-0.5, 0.3, -1.0], [0.0, 0.0, 2.5]], dtype=F64)
    origin = centre - rot[:, :, 0] * (w - 1) / 2 * spacing[:, :1] - rot[:, :, 1] * (h - 1) / 2 * spacing[:, 1:]
    psf = torch.tensor([[0.5, 0.4, 1.6], [0.45, 0.6, 1.3], [0.26, 0.26, 1.62]], dtype=F64)
    return SliceGeometry(rot, origin, spacing, psf, h, w)


def test_slices_match_monte_carlo_psf_integration():
    means, covs, amps = _model()
    geom = _oblique_slices()
    img = render_slices(means, covs, amps, geom, k_sigma=6.0)
    pts = geom.pixel_to_world()
    gen = torch.Generator().manual_seed(0)
    n = 1_000_000
    checked = 0
    for s in range(geom.n_slices):
        for r, c in [(12, 12), (8, 15)]:
            z = torch.randn(n, 3, generator=gen, dtype=F64) * geom.psf_var[s].sqrt()
            x = pts[s, r, c] + z @ geom.rotation[s].T
            mc = dense_gaussians_3d_on_points(means, covs, amps, x).mean()
            if mc < 0.05 * img.max():
                continue  # MC relative noise is large where the signal is faint
            assert abs(float(img[s, r, c] - mc)) / float(mc) < 5e-3
            checked += 1
    assert checked >= 4


def test_culling_does_not_change_the_image():
    means, covs, amps = _model()
    means = means * 4  # spread out so that some Gaussians miss some slices
    geom = _oblique_slices()
    culled = render_slices(means, covs, amps, geom, k_sigma=7.0)
    packed = project_to_slices(means, covs, amps, geom, k_sigma=7.0)
    n_all = means.shape[0] * geom.n_slices
    # all pairs, no culling, dense evaluation of every splat
    g_idx = torch.arange(means.shape[0]).repeat(geom.n_slices)
    s_idx = torch.arange(geom.n_slices).repeat_interleave(means.shape[0])
    full = project_to_slices(means, covs, amps, geom, pairs=(g_idx, s_idx))
    from gaussian_mri.render._reference import dense_splats

    ref = dense_splats(full.means, full.conics, full.amplitudes, full.batch_index, n_batch=geom.n_slices, height=24, width=24)[:, 0]
    assert len(packed) < n_all
    torch.testing.assert_close(culled, ref, rtol=0, atol=1e-8 * float(ref.abs().max()))


def test_gradients_wrt_gaussians_and_slice_pose_finite_differences():
    means, covs, amps = _model(g=6, seed=3)
    geom = _oblique_slices(h=10, w=10)
    rotvec = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    shift = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    m = means.clone().requires_grad_()

    def f(m, rotvec, shift):
        motion = torch.eye(4, dtype=F64).repeat(3, 1, 1)
        motion = motion.clone()
        motion[:, :3, :3] = axis_angle_to_matrix(rotvec)
        motion[:, :3, 3] = shift
        return render_slices(m * 0.5, covs, amps, geom.moved(motion), k_sigma=10.0)

    assert torch.autograd.gradcheck(f, (m, rotvec, shift), eps=1e-6, atol=1e-5)


def test_voxeliser_matches_dense_evaluation_oblique_grid():
    means, covs, amps = _model(g=20)
    rot = axis_angle_to_matrix(torch.tensor([0.2, 0.1, -0.3], dtype=F64)).numpy()
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array([0.9, 1.1, 1.3])[None, :]
    affine[:3, 3] = [-8.0, -9.0, -7.0]
    shape = (13, 16, 18)
    vol = voxelise(means, covs, amps, shape, affine, k_sigma=7.0, planes_per_chunk=5)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    pts = np.stack([i, j, k, np.ones_like(i)], -1) @ affine.T
    ref = dense_gaussians_3d_on_points(means, covs, amps, torch.as_tensor(pts[..., :3]))
    assert (vol - ref).abs().max() / ref.abs().max() < 1e-6
    # Anti-aliasing PSF: equals the exact convolution (covariance addition, sqrt(det) peak factor).
    sig = 0.7
    vol_aa = voxelise(means, covs, amps, shape, affine, psf_sigma_mm=sig, k_sigma=7.0)
    covs_b = covs + sig**2 * torch.eye(3, dtype=F64)
    amps_b = amps * torch.sqrt(torch.linalg.det(covs) / torch.linalg.det(covs_b))
    ref_aa = dense_gaussians_3d_on_points(means, covs_b, amps_b, torch.as_tensor(pts[..., :3]))
    assert (vol_aa - ref_aa).abs().max() / ref_aa.abs().max() < 1e-6


def test_normalised_mode_is_a_weighted_average():
    means, covs, amps = _model()
    geom = _oblique_slices()
    const = render_slices(means, covs, torch.full_like(amps, 3.0), geom, mode="normalised", eps=1e-12)
    covered = render_slices(means, covs, torch.ones_like(amps), geom) > 1e-3
    # A kernel regression of a constant is that constant wherever any kernel reaches.
    torch.testing.assert_close(const[covered], torch.full_like(const[covered], 3.0), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        render_slices(means, covs, amps, geom, mode="fast")


def test_render_volume_uses_the_fitted_forward_model():
    """A normalised (kernel-regression) model renders as sum c w / sum w: a constant stays constant;
    the exact model renders as the plain sum of Gaussians."""
    from gaussian_mri.svr.model import GaussianModel3D, render_volume

    means, covs, amps = _model(g=40)
    scales = torch.full((40, 3), 2.0, dtype=torch.float32)
    quats = torch.zeros(40, 4)
    quats[:, 0] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -6.0
    model = GaussianModel3D(means.float() * 0.3, torch.log(scales), quats, torch.full((40,), 2.5), psf_mode="normalised")
    vol = render_volume(model, (13, 13, 13), affine)
    model.psf_mode = "exact"
    covered = render_volume(GaussianModel3D(model.means, model.log_scales, quats, torch.ones(40)), (13, 13, 13), affine) > 1e-2
    assert covered.float().mean() > 0.8
    torch.testing.assert_close(vol[covered], torch.full_like(vol[covered], 2.5), rtol=1e-3, atol=1e-3)
    assert float(render_volume(model, (13, 13, 13), affine).max()) > 2.5 * 1.5  # overlapping Gaussians add up


def test_work_per_slice_follows_the_gaussians_that_touch_it():
    """Cost that grows gently (small version): on one slice, the splats made (the rasteriser's work) depend on
    the Gaussians near the plane, not on all of them: a brain 4x thicker at the same density has 4x the
    Gaussians and about the same splats on the central slice. (A projector that kept every pair fails.)"""
    from gaussian_mri.geometry import SliceGeometry
    from gaussian_mri.render.slices import project_to_slices

    gen = torch.Generator().manual_seed(0)
    geom = SliceGeometry(torch.eye(3)[None], torch.tensor([[-20.0, -20.0, 0.0]]), torch.ones(1, 2),
                         torch.tensor([[0.3, 0.3, 1.6]]), 41, 41)
    counts = []
    for half in (8.0, 32.0):
        n = int(400 * half)  # same density in both boxes
        means = (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor([20.0, 20.0, half])
        covs = torch.eye(3).expand(n, 3, 3) * 0.8
        splats = project_to_slices(means, covs, torch.ones(n), geom, backend="torch")
        counts.append((n, len(splats)))
    (n1, s1), (n2, s2) = counts
    assert n2 == 4 * n1
    assert 0.8 < s2 / s1 < 1.25, counts
    assert s2 < 0.3 * n2, counts  # 17 % of the Gaussians of the thick brain reach the slice
