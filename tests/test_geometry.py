"""Slice geometry of thick-slice stacks and voxel grids (:mod:`gaussian_mri.geometry`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _cases import rotation

from gaussian_mri.geometry import FWHM_TO_SIGMA, SliceGeometry, grid_geometry, psf_variances, stack_geometry
from gaussian_mri.image import Image


def oblique_image(shape=(5, 7, 9), spacing=(0.8, 1.1, 4.0), thickness=None, flip=False) -> Image:
    """Oblique, anisotropic stack ``(K, J, I)`` with in-plane spacing ``(du, dv)`` and slice gap ``dw``."""
    rot = rotation(0.4, -0.3, 0.8)
    if flip:
        rot = rot @ np.diag([1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)[None, :]
    affine[:3, 3] = [-35.5, 20.25, 61.0]
    return Image(np.zeros(shape, np.float32), affine, slice_thickness=thickness)


def _ijk_to_world(affine: np.ndarray, shape) -> np.ndarray:
    """Reference: the affine applied to every (i, j, k), as an array (K, J, I, 3)."""
    out = np.zeros((*shape, 3))
    for k in range(shape[0]):
        for j in range(shape[1]):
            for i in range(shape[2]):
                out[k, j, i] = (affine @ np.array([i, j, k, 1.0]))[:3]
    return out


def _rigid(angles, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation(*angles)
    m[:3, 3] = translation
    return m


@pytest.mark.parametrize("flip", [False, True])
def test_pixel_to_world_equals_affine(flip):
    image = oblique_image(flip=flip)
    geom, _ = stack_geometry(image, dtype=torch.float64)
    assert (geom.n_slices, geom.height, geom.width) == image.shape
    got = geom.pixel_to_world().numpy()  # (S=K, H=J, W=I, 3)
    # float64 throughout; the only change is the SVD re-orthonormalisation of an exactly
    # orthonormal direction matrix (a few ulp), so 1e-9 mm is ample.
    np.testing.assert_allclose(got, _ijk_to_world(image.affine, image.shape), rtol=0, atol=1e-9)
    # Normal is the k axis direction, in-plane spacing is (di, dj).
    np.testing.assert_allclose(geom.normal.numpy(), np.repeat(image.direction[:, 2][None], 5, 0), atol=1e-12)
    np.testing.assert_allclose(geom.spacing.numpy(), np.repeat([[0.8, 1.1]], 5, 0), atol=1e-12)


def test_pixel_to_world_float32():
    image = oblique_image()
    geom, _ = stack_geometry(image)
    assert geom.origin.dtype == torch.float32
    # float32 relative precision ~6e-8 of coordinates up to ~100 mm, summed over 3 terms.
    np.testing.assert_allclose(geom.pixel_to_world().numpy(), _ijk_to_world(image.affine, image.shape), atol=5e-5)


def test_centre_is_mean_pixel_position():
    geom, _ = stack_geometry(oblique_image(), dtype=torch.float64)
    np.testing.assert_allclose(geom.centre.numpy(), geom.pixel_to_world().mean(dim=(1, 2)).numpy(), atol=1e-9)


def test_thickness_header_fallback_override():
    _, t = stack_geometry(oblique_image(thickness=5.0))
    assert t == 5.0  # header value
    _, t = stack_geometry(oblique_image(thickness=None))
    assert t == pytest.approx(4.0, abs=1e-12)  # fallback: slice spacing
    geom, t = stack_geometry(oblique_image(thickness=5.0), thickness=2.5, dtype=torch.float64)
    assert t == 2.5  # explicit override beats header
    assert geom.psf_var[0, 2].item() == pytest.approx((2.5 * FWHM_TO_SIGMA) ** 2, rel=1e-12)


def test_thickness_larger_than_fov_errors():
    image = oblique_image(shape=(5, 7, 9), spacing=(0.8, 1.1, 4.0))  # through-plane extent 20 mm
    with pytest.raises(ValueError, match=r"slice thickness 25.0 mm is larger than the stack's through-plane extent"):
        stack_geometry(image, thickness=25.0)
    with pytest.raises(ValueError, match="larger than the stack's through-plane extent"):
        stack_geometry(oblique_image(thickness=30.0))
    stack_geometry(image, thickness=20.0)  # exactly the extent is allowed
    # A single slice has no through-plane extent to compare with.
    _, t = stack_geometry(oblique_image(shape=(1, 7, 9)), thickness=6.0)
    assert t == 6.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_nonpositive_thickness_errors(bad):
    with pytest.raises(ValueError, match="slice thickness must be > 0 mm"):
        stack_geometry(oblique_image(), thickness=bad)


def test_psf_variances_convention():
    image = oblique_image(spacing=(0.8, 1.1, 4.0), thickness=3.5)
    geom, _ = stack_geometry(image, dtype=torch.float64)
    # METHODS.md s.1: sigma_xy = 1.2 * spacing / 2.3548, sigma_z = thickness / 2.3548.
    # 2.3548 is 2 sqrt(2 ln 2) = 2.35482 rounded, hence rel=1e-4.
    want = [(1.2 * 0.8 / 2.3548) ** 2, (1.2 * 1.1 / 2.3548) ** 2, (3.5 / 2.3548) ** 2]
    np.testing.assert_allclose(geom.psf_var.numpy(), np.repeat([want], 5, 0), rtol=1e-4)
    assert FWHM_TO_SIGMA == pytest.approx(1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0))), rel=1e-15)
    # Factors are parameters.
    var = psf_variances((1.0, 2.0), 3.0, inplane_fwhm_factor=1.0, through_plane_fwhm_factor=2.0)
    np.testing.assert_allclose(var, [FWHM_TO_SIGMA**2, (2 * FWHM_TO_SIGMA) ** 2, (6 * FWHM_TO_SIGMA) ** 2])


def test_moved_is_consistent_with_pixel_to_world():
    geom, _ = stack_geometry(oblique_image(), dtype=torch.float64)
    rng = np.random.default_rng(3)
    motions = np.stack([_rigid(rng.uniform(-0.3, 0.3, 3), rng.uniform(-5, 5, 3)) for _ in range(geom.n_slices)])
    moved = geom.moved(torch.as_tensor(motions))
    before = geom.pixel_to_world().numpy()
    after = moved.pixel_to_world().numpy()
    homog = np.concatenate([before, np.ones((*before.shape[:-1], 1))], -1)
    want = np.einsum("sab,shwb->shwa", motions, homog)[..., :3]
    np.testing.assert_allclose(after, want, atol=1e-9)
    # The moved frame is still orthonormal, and spacing / PSF are unchanged.
    r = moved.rotation.numpy()
    np.testing.assert_allclose(np.einsum("sba,sbc->sac", r, r), np.repeat(np.eye(3)[None], geom.n_slices, 0), atol=1e-12)
    assert torch.equal(moved.psf_var, geom.psf_var) and torch.equal(moved.spacing, geom.spacing)
    # Identity leaves everything in place.
    same = geom.moved(torch.eye(4, dtype=torch.float64).expand(geom.n_slices, 4, 4))
    np.testing.assert_allclose(same.pixel_to_world().numpy(), before, atol=1e-12)


def test_moved_is_differentiable():
    geom, _ = stack_geometry(oblique_image(), dtype=torch.float64)
    t = torch.zeros(geom.n_slices, 3, dtype=torch.float64, requires_grad=True)
    motion = torch.eye(4, dtype=torch.float64).repeat(geom.n_slices, 1, 1)
    motion[:, :3, 3] = t
    loss = geom.moved(motion).pixel_to_world()[..., 0].sum()
    loss.backward()
    # d(sum of x coordinates)/d(t_x) = number of pixels per slice.
    np.testing.assert_allclose(t.grad[:, 0].numpy(), geom.height * geom.width)
    np.testing.assert_allclose(t.grad[:, 1:].numpy(), 0.0)


def test_grid_geometry_matches_image_world_coordinates():
    image = oblique_image(shape=(4, 6, 5), spacing=(1.5, 1.5, 1.5))
    geom = grid_geometry(image.shape, image.affine, psf_var=(0.1, 0.2, 0.3), dtype=torch.float64)
    np.testing.assert_allclose(geom.pixel_to_world().numpy(), image.world_coordinates(), atol=1e-9)
    np.testing.assert_allclose(geom.psf_var.numpy(), np.repeat([[0.1, 0.2, 0.3]], 4, 0))
    # world_coordinates itself agrees with the loop reference.
    np.testing.assert_allclose(image.world_coordinates(), _ijk_to_world(image.affine, image.shape), atol=1e-12)


def test_sheared_image_is_rejected():
    affine = np.eye(4)
    affine[0, 1] = 0.5  # j axis tilted towards i: not orthogonal
    with pytest.raises(ValueError, match="image axes are not orthogonal"):
        stack_geometry(Image(np.zeros((3, 4, 5), np.float32), affine))


def test_select_and_to():
    geom, _ = stack_geometry(oblique_image(), dtype=torch.float64)
    sub = geom.select(slice(1, 3))
    assert sub.n_slices == 2
    np.testing.assert_array_equal(sub.pixel_to_world().numpy(), geom.pixel_to_world().numpy()[1:3])
    f32 = geom.to(dtype=torch.float32)
    assert f32.origin.dtype == torch.float32 and f32.height == geom.height


def test_slice_geometry_rejects_bad_shapes():
    good = dict(
        rotation=torch.eye(3).expand(2, 3, 3),
        origin=torch.zeros(2, 3),
        spacing=torch.ones(2, 2),
        psf_var=torch.zeros(2, 3),
        height=4,
        width=5,
    )
    SliceGeometry(**good)
    with pytest.raises(ValueError, match=r"origin must be \(S=2, 3\), got \(3, 3\)"):
        SliceGeometry(**{**good, "origin": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"rotation must be \(S, 3, 3\)"):
        SliceGeometry(**{**good, "rotation": torch.eye(4).expand(2, 4, 4)})
    with pytest.raises(ValueError, match="grid shape must be positive"):
        SliceGeometry(**{**good, "height": 0})
