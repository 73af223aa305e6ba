"""Slice-to-volume registration (gaussian_mri.svr.slice_register) against an analytic object.

The volume handed to the registration is the object sampled on a 1 mm grid; the slices are the
object itself integrated through the slice thickness with a fine quadrature (41 points over +-4 sigma
of the through-plane PSF, in-plane point samples of the analytic function): not the registration's
own three-point trilinear model, so the test does not grade the operator against itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaussian_mri.geometry import FWHM_TO_SIGMA, SliceGeometry
from gaussian_mri.svr.slice_register import blur_volume, register_slices_to_volume
from gaussian_mri.transforms import rigid_matrix

BLOBS = [  # centre (mm), sigma (mm), amplitude: an asymmetric "brain" of smooth blobs
    ((0.0, 0.0, 0.0), 14.0, 1.0),
    ((8.0, -5.0, 3.0), 5.0, 0.8),
    ((-9.0, 6.0, -4.0), 4.0, -0.6),
    ((3.0, 10.0, 7.0), 3.5, 0.7),
    ((-4.0, -9.0, 8.0), 3.0, 0.6),
    ((10.0, 7.0, -8.0), 4.5, -0.5),
    ((-11.0, -3.0, 6.0), 3.0, 0.5),
]


def _object(points: np.ndarray) -> np.ndarray:
    out = np.zeros(points.shape[:-1])
    for c, s, a in BLOBS:
        d2 = ((points - np.asarray(c)) ** 2).sum(-1)
        out += a * np.exp(-0.5 * d2 / s**2)
    return out


def _grid(spacing=1.0, half=30):
    n = int(2 * half / spacing) + 1
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -half
    k, j, i = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    pts = np.stack([i, j, k], -1) * spacing - half
    return torch.tensor(_object(pts), dtype=torch.float64), affine


def _slices(rotvecs, trans, thickness=3.0, size=40):
    """Slices (normal along z, through z = k * 3 mm) moved by the given rigid motions about their centres."""
    s_n = len(rotvecs)
    rot = torch.eye(3, dtype=torch.float64).expand(s_n, 3, 3).clone()
    zs = torch.linspace(-6.0, 6.0, s_n, dtype=torch.float64)
    origin = torch.stack([torch.full((s_n,), -(size - 1) / 2.0), torch.full((s_n,), -(size - 1) / 2.0), zs], 1).double()
    geom = SliceGeometry(rot, origin, torch.ones(s_n, 2, dtype=torch.float64), torch.zeros(s_n, 3, dtype=torch.float64), size, size)
    motion = rigid_matrix(torch.as_tensor(rotvecs, dtype=torch.float64), torch.as_tensor(trans, dtype=torch.float64), geom.centre)
    moved = geom.moved(motion)
    pts = moved.pixel_to_world().numpy()
    nrm = moved.normal.numpy()
    sig = thickness * FWHM_TO_SIGMA
    w = np.linspace(-4 * sig, 4 * sig, 41)
    wt = np.exp(-0.5 * (w / sig) ** 2)
    wt /= wt.sum()
    img = sum(c * _object(pts + o * nrm[:, None, None, :]) for o, c in zip(w, wt))
    return geom, motion, torch.tensor(img)


def _corner_error(geom, delta, true_motion):
    """Mean corner displacement (mm) between the recovered and the true slice poses."""
    est = geom.moved(delta).pixel_to_world()
    true = geom.moved(true_motion).pixel_to_world()
    corners = (slice(None), [0, 0, -1, -1], [0, -1, 0, -1])
    return (est[corners] - true[corners]).norm(dim=-1).mean(-1)


def test_blur_volume_matches_a_dense_convolution():
    torch.manual_seed(0)
    vol = torch.rand(9, 10, 11, dtype=torch.float64)
    out = blur_volume(vol, 1.3)
    r = math.ceil(3 * 1.3)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / 1.3) ** 2)
    k /= k.sum()
    # dense reference with replicate padding, one voxel
    pad = np.pad(vol.numpy(), r, mode="edge")
    c = (4, 5, 5)
    ref = (pad[c[0]:c[0] + 2 * r + 1, c[1]:c[1] + 2 * r + 1, c[2]:c[2] + 2 * r + 1] * k[:, None, None] * k[None, :, None] * k[None, None, :]).sum()
    assert out[c].item() == pytest.approx(ref, rel=1e-10)
    c = (0, 1, 10)  # a corner voxel: its window reaches into the replicated border
    ref = (pad[c[0]:c[0] + 2 * r + 1, c[1]:c[1] + 2 * r + 1, c[2]:c[2] + 2 * r + 1] * k[:, None, None] * k[None, :, None] * k[None, None, :]).sum()
    assert out[c].item() == pytest.approx(ref, rel=1e-10)
    assert blur_volume(vol, 0.0) is vol


def test_registration_recovers_large_slice_motion():
    volume, affine = _grid()
    rng = np.random.default_rng(3)
    # 12 degrees about in-plane axes (tilts) and 4 mm: beyond the fit's own basin
    axes = rng.normal(size=(5, 3))
    axes[:, 2] *= 0.3
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    rotvecs = axes * math.radians(12.0)
    trans = rng.normal(size=(5, 3))
    trans = trans / np.linalg.norm(trans, axis=1, keepdims=True) * 4.0
    geom, true_motion, img = _slices(rotvecs, trans)
    mask = torch.ones_like(img)
    delta, before, after = register_slices_to_volume(volume, affine, geom, img, mask, thickness=3.0)
    err_start = _corner_error(geom, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), true_motion)
    err = _corner_error(geom, delta, true_motion)
    assert (err_start > 4.5).all()  # the start is far off
    assert (err < 0.75).all(), err.tolist()  # 15 fine steps instead of 50 left 1.1-2.1 mm
    assert (after > before).all() and (after > 0.99).all()


def test_registration_keeps_a_slice_that_is_already_right():
    volume, affine = _grid()
    geom, true_motion, img = _slices(np.zeros((3, 3)), np.zeros((3, 3)))
    delta, before, after = register_slices_to_volume(volume, affine, geom, img, torch.ones_like(img), thickness=3.0)
    assert _corner_error(geom, delta, true_motion).max() < 0.2


def test_neighbour_starts_are_used():
    """A slice turned 60 deg (beyond the perturbed starts' reach) is found through a neighbour's pose."""
    volume, affine = _grid()
    rv = np.array([[math.radians(60.0), 0.0, 0.0]])
    geom, true_motion, img = _slices(rv, np.zeros((1, 3)))
    mask = torch.ones_like(img)
    eye = torch.eye(4, dtype=torch.float64)[None]
    without, _, _ = register_slices_to_volume(volume, affine, geom, img, mask, thickness=3.0)
    with_nb, _, _ = register_slices_to_volume(volume, affine, geom, img, mask, thickness=3.0,
                                              neighbour_poses=torch.stack([eye[0], true_motion[0] @ rigid_matrix(
                                                  torch.tensor([[0.05, 0.0, 0.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64), geom.centre)[0]])[None])
    assert _corner_error(geom, with_nb, true_motion).item() < 0.5
    assert _corner_error(geom, without, true_motion).item() > 2.0
