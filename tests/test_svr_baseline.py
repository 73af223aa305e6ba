"""Output grid and the naive-average baseline."""

from __future__ import annotations

import numpy as np
import pytest

from gaussian_mri.image import Image
from gaussian_mri.svr.baseline import naive_average, output_grid, resample_linear
from gaussian_mri.svr.simulate import ORIENTATIONS, simulate_stacks


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _volume(fn, half=30.0, voxel=1.0):
    n = int(round(2 * half / voxel)) + 1
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -half
    vol = Image(np.zeros((n, n, n), np.float32), affine)
    xyz = vol.world_coordinates()
    mask = Image((np.linalg.norm(xyz, axis=-1) <= 14.0).astype(np.uint8), affine.copy())
    return vol.with_data(fn(xyz).astype(np.float32)), mask


def _stack(rot, spacing, shape, centre):
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)[None, :]
    n = np.array(shape[::-1], float)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((n - 1) / 2)
    return Image(np.zeros(shape, np.float32), affine, slice_thickness=float(spacing[2]))


def test_output_grid_covers_union_of_masks_isotropic_and_aligned():
    tilt = _rot([1, 1, 0], 20)
    a = _stack(tilt, (1.0, 1.0, 3.0), (10, 40, 40), (0, 0, 0))
    b = _stack(ORIENTATIONS["sagittal"], (1.2, 1.2, 4.0), (8, 30, 30), (15, -5, 10))
    ma = a.with_data(np.zeros(a.shape, np.uint8))
    ma.data[2:6, 5:20, 10:30] = 1
    mb = b.with_data(np.zeros(b.shape, np.uint8))
    mb.data[1:7, 3:9, 20:28] = 1
    corners = []
    for m in (ma, mb):
        idx = np.argwhere(m.data > 0)[:, ::-1].astype(float)
        for off in np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]):
            corners.append((idx + off) @ m.affine[:3, :3].T + m.affine[:3, 3])
    corners = np.concatenate(corners)
    margin, res = 4.0, 0.8
    for ref, want_dir in ((None, tilt), (1, ORIENTATIONS["sagittal"]), ("ras", np.eye(3)), (b, ORIENTATIONS["sagittal"])):
        shape, affine = output_grid([a, b], [ma, mb], resolution_mm=res, margin_mm=margin, reference_stack=ref)
        grid = Image(np.zeros(shape, np.uint8), affine)
        np.testing.assert_allclose(grid.spacing, [res] * 3, atol=1e-12)
        np.testing.assert_allclose(grid.direction, want_dir, atol=1e-12)
        # Every mask corner is inside the grid, at least `margin` from its edges (within half a voxel).
        ijk = (corners - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
        n = np.array(shape[::-1])
        assert ijk.min() >= margin / res - 0.5 - 1e-6
        assert np.all(ijk.max(0) <= n - 1 - margin / res + 0.5 + 1e-6)
        # ...and the grid is not larger than needed.
        proj = corners @ want_dir
        need = proj.max(0) - proj.min(0) + 2 * margin
        assert np.all(n * res < need + res + 1e-9)
    # Without masks: the stacks' fields of view.
    shape_fov, _ = output_grid([a, b], None, resolution_mm=2.0, margin_mm=0.0, reference_stack="ras")
    shape_mask, _ = output_grid([a, b], [ma, mb], resolution_mm=2.0, margin_mm=0.0, reference_stack="ras")
    assert np.prod(shape_fov) > 2 * np.prod(shape_mask)


def test_output_grid_errors():
    a = _stack(np.eye(3), (1.0, 1.0, 3.0), (4, 8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match="stacks is empty"):
        output_grid([], None)
    with pytest.raises(ValueError, match="one entry per stack"):
        output_grid([a], [None, None])
    with pytest.raises(ValueError, match=r"masks\[0\] is empty"):
        output_grid([a], [a.with_data(np.zeros(a.shape, np.uint8))])
    with pytest.raises(ValueError, match="resolution_mm"):
        output_grid([a], None, resolution_mm=0.0)
    with pytest.raises(ValueError, match="reference_stack"):
        output_grid([a], None, reference_stack=3)
    with pytest.raises(ValueError, match="reference_stack"):
        output_grid([a], None, reference_stack="lps")


def test_resample_onto_own_grid_is_identity_and_coverage():
    rng = np.random.default_rng(0)
    a = _stack(_rot([0, 1, 2], 30), (1.1, 0.9, 3.0), (5, 7, 9), (3, -2, 1))
    a = a.with_data(rng.standard_normal(a.shape).astype(np.float32))
    out = naive_average([a], a)
    np.testing.assert_allclose(out.data, a.data, atol=1e-5)
    assert np.all(out.meta["coverage"] == 1)
    # A grid three times larger: voxels outside the stack are 0 and uncovered.
    big = Image(np.zeros((15, 21, 27), np.float32), a.affine.copy())
    big.affine[:3, 3] = a.affine[:3, :3] @ np.array([-9.0, -7.0, -5.0]) + a.affine[:3, 3]
    values, defined = resample_linear(a, big)
    assert defined.sum() == a.data.size
    np.testing.assert_allclose(values[5:10, 7:14, 9:18], a.data, atol=1e-5)
    out = naive_average([a], big)
    assert np.all(out.data[~defined] == 0)
    with pytest.raises(ValueError, match="stacks is empty"):
        naive_average([], big)
    with pytest.raises(ValueError, match=r"stacks\[0\].*NaN"):
        naive_average([a.with_data(np.full(a.shape, np.nan, np.float32))], big)


def test_naive_average_reproduces_linear_volume_exactly():
    # A linear volume survives the PSF (symmetric) and trilinear interpolation unchanged, so the
    # simulated stacks sample it exactly and the naive average must return it where covered.
    grad = np.array([0.3, -0.2, 0.5])
    vol, mask = _volume(lambda x: x @ grad + 20.0)
    stacks = simulate_stacks(vol, mask, orientations=("axial", "coronal", "sagittal", _rot([1, 2, 0], 35)),
                             thickness_mm=3.0, margin_mm=2.0)
    images = [s.image for s in stacks]
    shape, affine = output_grid(images, [s.mask for s in stacks], resolution_mm=1.5, margin_mm=0.0)
    out = naive_average(images, Image(np.zeros(shape, np.float32), affine))
    cov = out.meta["coverage"]
    assert cov.max() == 4 and (cov > 0).mean() > 0.5
    xyz = Image(np.zeros(shape, np.float32), affine).world_coordinates()
    truth = xyz @ grad + 20.0
    # Compare where every stack interpolates between its voxel centres (the outer half voxel of a
    # stack is edge-extended, which is not linear).
    interior = np.ones(shape, bool)
    for img in images:
        ijk = (xyz - img.affine[:3, 3]) @ np.linalg.inv(img.affine[:3, :3]).T
        interior &= np.all((ijk >= 0) & (ijk <= np.array(img.shape[::-1]) - 1), axis=-1)
    assert interior.sum() > 1000 and np.all(cov[interior] == 4)
    np.testing.assert_allclose(out.data[interior], truth[interior], atol=2e-3)
    assert np.abs(out.data[cov > 0] - truth[cov > 0]).max() < 3.0  # edge extension stays local


def test_naive_average_of_clean_stacks_is_close_to_smooth_volume():
    def blobs(x):
        return np.exp(-0.5 * (x**2).sum(-1) / 64.0) + 0.6 * np.exp(-0.5 * ((x - [5, -4, 3]) ** 2).sum(-1) / 36.0)

    vol, mask = _volume(blobs)
    stacks = simulate_stacks(vol, mask, thickness_mm=3.0, margin_mm=5.0)
    images = [s.image for s in stacks]
    shape, affine = output_grid(images, [s.mask for s in stacks], resolution_mm=0.8, margin_mm=0.0)
    grid = Image(np.zeros(shape, np.float32), affine)
    out = naive_average(images, grid)
    truth = blobs(grid.world_coordinates())
    inside = np.linalg.norm(grid.world_coordinates(), axis=-1) <= 14.0
    assert np.all(out.meta["coverage"][inside] == 3)
    err = np.abs(out.data[inside] - truth[inside])
    assert err.max() < 0.05 * truth.max()
    assert np.sqrt((err**2).mean()) < 0.015 * truth.max()
