"""World-coordinate resampling and rigid registration (:mod:`gaussian_mri.resample`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _cases import rotation

from gaussian_mri.image import Image, read_image
from gaussian_mri.resample import resample_to_reference, rigid_align, rotation_angle_deg

ATLAS = Path(__file__).resolve().parent / "data" / "fidon-atlas-GA21"  # bundled CC0 atlas crop (tests/data/SOURCE.md)

_rng = np.random.default_rng(0)
_CENTRES = _rng.uniform(-22, 22, (12, 3))
_WIDTHS = _rng.uniform(4, 9, 12)
_AMPS = _rng.uniform(0.5, 2.0, 12)


def blobs(p: np.ndarray) -> np.ndarray:
    """Smooth, asymmetric test function of RAS points ``p`` (..., 3) in mm."""
    out = np.zeros(p.shape[:-1])
    for c, w, a in zip(_CENTRES, _WIDTHS, _AMPS):
        out += a * np.exp(-0.5 * np.sum((p - c) ** 2, -1) / w**2)
    return out


def axis_angle(axis, degrees: float, translation) -> np.ndarray:
    """4x4 rigid matrix: rotation about the world origin, then translation (mm)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(degrees)
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx
    m[:3, 3] = translation
    return m


def grid(shape, spacing, rot=None, centre=(0.0, 0.0, 0.0), dtype=np.float32) -> Image:
    """Empty image ``(K, J, I)`` whose grid centre is at ``centre`` (RAS mm)."""
    rot = np.eye(3) if rot is None else rot
    a = np.eye(4)
    a[:3, :3] = rot * np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))[None, :]
    a[:3, 3] = np.asarray(centre) - a[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2.0)
    return Image(np.zeros(shape, dtype), a)


def sample(image: Image, fn, transform: np.ndarray | None = None) -> Image:
    """``image``'s grid filled with ``fn(transform @ p)`` at each voxel centre ``p`` (analytic)."""
    p = image.world_coordinates()
    if transform is not None:
        p = p @ transform[:3, :3].T + transform[:3, 3]
    return image.with_data(fn(p).astype(image.data.dtype))


# --------------------------------------------------------------------------------------------
# resample_to_reference
# --------------------------------------------------------------------------------------------


def test_same_grid_is_exact_copy():
    image = sample(grid((12, 14, 16), (0.9, 1.1, 2.5), rotation(0.3, -0.2, 0.7), (5, -3, 8)), blobs)
    for order in (0, 1, 3):
        out = resample_to_reference(image, image, order=order)
        np.testing.assert_array_equal(out.data, image.data)
        assert out.meta["coverage"] == 1.0
    assert resample_to_reference(image, image, order=0).data.dtype == np.float32


def test_integer_voxel_shift_is_exact():
    image = sample(grid((10, 12, 14), (0.9, 1.1, 2.5), rotation(0.3, -0.2, 0.7)), blobs)
    ref = Image(np.zeros(image.shape, np.float32), image.affine.copy())
    ref.affine[:3, 3] += 2 * image.affine[:3, 0] - 1 * image.affine[:3, 2]  # +2 along i, -1 along k
    out = resample_to_reference(image, ref, fill=-7.0)
    np.testing.assert_array_equal(out.data[1:, :, :-2], image.data[:-1, :, 2:])
    assert np.all(out.data[:, :, -2:] == -7.0) and np.all(out.data[0] == -7.0)  # outside the image
    inside = (image.shape[0] - 1) * image.shape[1] * (image.shape[2] - 2)
    assert out.meta["coverage"] == pytest.approx(inside / out.data.size)


def test_transform_by_one_voxel_equals_shifted_grid():
    image = sample(grid((10, 12, 14), (0.9, 1.1, 2.5), rotation(0.3, -0.2, 0.7)), blobs)
    t = np.eye(4)
    t[:3, 3] = image.affine[:3, 1]  # one voxel along j, in mm
    out = resample_to_reference(image, image, transform=t)
    np.testing.assert_array_equal(out.data[:, :-1, :], image.data[:, 1:, :])


@pytest.mark.parametrize("order, tol", [(1, 2e-2), (3, 2e-3)])
def test_oblique_grid_matches_analytic_values(order, tol):
    # Image on a fine oblique grid; reference on a coarser grid rotated differently: resampled
    # values must equal the analytic function at the reference voxel centres up to the
    # interpolation error (linear: h^2/8 |f''|, here < 2% of the peak; cubic much smaller).
    image = sample(grid((44, 48, 46), 1.2, rotation(0.2, 0.3, -0.4), (1, 2, 0), dtype=np.float64), blobs)
    ref = grid((14, 16, 15), (1.9, 1.7, 2.1), rotation(-0.5, 0.1, 0.9), (0.5, 1, -1), dtype=np.float64)
    out = resample_to_reference(image, ref, order=order)
    want = sample(ref, blobs).data
    assert out.data.dtype == np.float64
    assert out.meta["coverage"] == 1.0  # reference lies inside the image
    assert np.abs(out.data - want).max() < tol * np.abs(want).max()


def test_transform_resampling_matches_analytic_values():
    image = sample(grid((44, 44, 44), 1.5, rotation(0.1, 0.0, 0.2), dtype=np.float64), blobs)
    ref = grid((16, 16, 16), 2.0, dtype=np.float64)  # T maps it inside the image
    t = axis_angle([1, -2, 0.5], 10.0, [3.0, -2.0, 1.0])
    out = resample_to_reference(image, ref, transform=t, order=3)
    assert out.meta["coverage"] == 1.0
    want = sample(ref, blobs, transform=t).data  # out(p) = image(T p) = blobs(T p)
    assert np.abs(out.data - want).max() < 2e-3 * np.abs(want).max()


def test_nearest_keeps_labels_and_dtype():
    labels = Image(np.random.default_rng(1).integers(0, 5, (8, 9, 10)).astype(np.uint8), np.diag([1.0, 1, 1, 1]))
    ref = grid((6, 7, 8), 1.3, rotation(0.0, 0.0, 0.3), (4.5, 4, 3.5))
    out = resample_to_reference(labels, ref, order=0)
    assert out.data.dtype == np.uint8
    assert set(np.unique(out.data)) <= set(range(5))
    # each output voxel equals the input voxel nearest to its world point (when inside)
    ijk = np.rint(ref.world_coordinates()).astype(int)  # input affine is the identity
    ok = np.all((ijk >= 0) & (ijk < np.array(labels.shape[::-1])), -1)
    np.testing.assert_array_equal(out.data[ok], labels.data[ijk[ok][:, 2], ijk[ok][:, 1], ijk[ok][:, 0]])
    boolean = resample_to_reference(labels.with_data(labels.data > 2), ref, order=0)
    assert boolean.data.dtype == np.uint8


def test_resample_bad_input():
    image = grid((4, 4, 4), 1.0)
    with pytest.raises(ValueError, match=r"transform must be a 4x4 world \(RAS\) matrix, got shape \(3, 3\)"):
        resample_to_reference(image, image, transform=np.eye(3))
    with pytest.raises(ValueError, match="transform contains NaN"):
        resample_to_reference(image, image, transform=np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="transform is singular"):
        resample_to_reference(image, image, transform=np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="order must be an integer spline order 0..5"):
        resample_to_reference(image, image, order=7)
    with pytest.raises(TypeError, match="image and reference must be gaussian_mri.image.Image"):
        resample_to_reference(np.zeros((4, 4, 4)), image)


# --------------------------------------------------------------------------------------------
# rigid_align
# --------------------------------------------------------------------------------------------


def _errors(found: np.ndarray, truth: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, displacement error in mm at ``centre``)."""
    rot_err = rotation_angle_deg(found @ np.linalg.inv(truth))
    c = np.append(centre, 1.0)
    return rot_err, float(np.linalg.norm((found - truth) @ c))


@pytest.mark.parametrize("metric", ["mattes", "correlation"])
def test_rigid_align_recovers_known_motion(metric):
    truth = axis_angle([1, 2, 3], 5.0, [2.0, -1.5, 1.8])  # 5 deg, |t| = 3.1 mm
    fixed = sample(grid((36, 36, 36), 2.0), blobs)
    # Moving on another, oblique grid; moving(q) = fixed-space content at T^-1 q, so that
    # moving(T p) = fixed(p): T maps fixed points to moving points.
    moving = sample(grid((34, 36, 38), 2.1, rotation(0.1, 0.2, -0.1), (1.0, 0.5, -1.0)), blobs, np.linalg.inv(truth))
    found = rigid_align(moving, fixed, metric=metric)
    rot_err, shift_err = _errors(found, truth, fixed.world_coordinates().reshape(-1, 3).mean(0))
    assert rot_err < 0.5 and shift_err < 0.5, (rot_err, shift_err)
    assert rotation_angle_deg(found) == pytest.approx(5.0, abs=0.5)
    # Applying it brings the moving image back onto the fixed one.
    back = resample_to_reference(moving, fixed, transform=found, order=3)
    inner = (slice(6, -6),) * 3
    assert np.abs(back.data[inner] - fixed.data[inner]).max() < 0.05 * fixed.data.max()


def test_rigid_align_from_a_matrix_start():
    truth = axis_angle([1, -1, 2], 35.0, [4.0, -2.0, 3.0])  # too far for a start at the identity
    fixed = sample(grid((36, 36, 36), 2.0), blobs)
    moving = sample(grid((36, 36, 36), 2.0, rotation(0.05, -0.1, 0.2), (0.5, 0.0, -1.0)), blobs, np.linalg.inv(truth))
    centre = fixed.world_coordinates().reshape(-1, 3).mean(0)
    # Started at the answer, one optimiser step stays there: the start is converted exactly.
    kept = rigid_align(moving, fixed, metric="correlation", initial=truth, iterations=1)
    assert max(_errors(kept, truth, centre)) < 0.3
    # Started 6 degrees / 2 mm off, it converges to the answer.
    near = axis_angle([0, 1, 0], 6.0, [2.0, 0.0, 0.0]) @ truth
    found = rigid_align(moving, fixed, metric="correlation", initial=near)
    assert max(_errors(found, truth, centre)) < 0.5
    with pytest.raises(ValueError, match="rigid 4x4"):
        rigid_align(moving, fixed, initial=np.diag([2.0, 1.0, 1.0, 1.0]))


def test_rigid_align_with_mask_and_moments_init():
    truth = axis_angle([0, 0, 1], -4.0, [-3.0, 1.0, 0.5])
    fixed = sample(grid((32, 32, 32), 2.0), blobs)
    moving = sample(grid((32, 32, 32), 2.0), blobs, np.linalg.inv(truth))
    mask = fixed.with_data((fixed.data > 0.2 * fixed.data.max()).astype(np.uint8))
    found = rigid_align(moving, fixed, fixed_mask=mask, initial="moments")
    rot_err, shift_err = _errors(found, truth, np.zeros(3))
    assert rot_err < 0.5 and shift_err < 0.5, (rot_err, shift_err)


def test_rigid_align_on_downsampled_atlas():
    atlas = read_image(ATLAS / "srr.nii.gz")  # 0.8 mm isotropic fetal brain (cropped, zero outside)
    centre = atlas.world_coordinates()[atlas.data > 0].mean(0)
    fixed = resample_to_reference(atlas, grid((40, 48, 40), 2.0, centre=centre))
    truth = axis_angle([-1, 1, 2], 5.0, [1.0, 2.5, -1.5])  # 5 deg, 3.1 mm
    moving_grid = grid((40, 48, 40), 2.0, rotation(0.05, -0.1, 0.1), centre + [1.0, 0.0, 1.0])
    moving = resample_to_reference(atlas, moving_grid, transform=np.linalg.inv(truth))
    found = rigid_align(moving, fixed)
    rot_err, shift_err = _errors(found, truth, centre)
    assert rot_err < 0.5 and shift_err < 0.5, (rot_err, shift_err)


def test_rigid_align_bad_input():
    image = sample(grid((16, 16, 16), 2.0), blobs)
    with pytest.raises(ValueError, match="metric must be 'mattes' or 'correlation', got 'mse'"):
        rigid_align(image, image, metric="mse")
    with pytest.raises(ValueError, match="initial must be"):
        rigid_align(image, image, initial="centre")
    with pytest.raises(ValueError, match="fixed_mask is empty"):
        rigid_align(image, image, fixed_mask=image.with_data(np.zeros(image.shape, np.uint8)))
    bad = image.with_data(image.data.copy())
    bad.data[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="moving contains NaN"):
        rigid_align(bad, image)
    far = Image(image.data, image.affine.copy())
    far.affine[:3, 3] += 1000.0  # no overlap at all
    with pytest.raises(ValueError, match="rigid registration failed"):
        rigid_align(far, image)
