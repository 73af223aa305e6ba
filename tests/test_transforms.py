"""Rigid transforms: round trips between parameterisations, composition, inversion, centre."""

from __future__ import annotations

import math

import torch

from gaussian_mri.transforms import (
    apply_rigid,
    axis_angle_to_matrix,
    compose,
    invert_rigid,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rigid_matrix,
    rigid_params_from_matrix,
)

F64 = torch.float64


def _rotvecs(n=200):
    axis = torch.nn.functional.normalize(torch.randn(n, 3, dtype=F64), dim=-1)
    angle = torch.rand(n, 1, dtype=F64) * (math.pi - 1e-3)
    angle[:3] = torch.tensor([[0.0], [1e-9], [1e-5]], dtype=F64)  # near-identity branch
    return axis * angle


def test_axis_angle_round_trip_and_orthonormal():
    v = _rotvecs()
    r = axis_angle_to_matrix(v)
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=F64).expand_as(r), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(len(v), dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(matrix_to_axis_angle(r), v, atol=1e-9, rtol=0)


def test_axis_angle_matches_rotation_about_z():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=F64))
    torch.testing.assert_close(r @ torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor([0.0, 1, 0], dtype=F64))


def test_quaternion_round_trip():
    q = torch.nn.functional.normalize(torch.randn(300, 4, dtype=F64), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    r = quaternion_to_matrix(q)
    torch.testing.assert_close(matrix_to_quaternion(r), q, atol=1e-10, rtol=0)
    v = _rotvecs()
    torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(axis_angle_to_matrix(v))), axis_angle_to_matrix(v), atol=1e-10, rtol=0)


def test_rigid_about_centre_fixes_the_centre_and_round_trips():
    v = _rotvecs(20)
    t = torch.randn(20, 3, dtype=F64) * 5
    c = torch.randn(20, 3, dtype=F64) * 50
    m = rigid_matrix(v, t, c)
    # x' = R (x - c) + c + t: the centre goes to c + t
    torch.testing.assert_close(apply_rigid(m, c[:, None])[:, 0], c + t)
    v2, t2 = rigid_params_from_matrix(m, c)
    torch.testing.assert_close(v2, v, atol=1e-9, rtol=0)
    torch.testing.assert_close(t2, t, atol=1e-9, rtol=0)


def test_compose_and_invert():
    a = rigid_matrix(_rotvecs(10), torch.randn(10, 3, dtype=F64))
    b = rigid_matrix(_rotvecs(10).flip(0), torch.randn(10, 3, dtype=F64))
    x = torch.randn(10, 7, 3, dtype=F64)
    torch.testing.assert_close(apply_rigid(compose(a, b), x), apply_rigid(a, apply_rigid(b, x)))
    torch.testing.assert_close(compose(invert_rigid(a), a), torch.eye(4, dtype=F64).expand(10, 4, 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(invert_rigid(a), torch.linalg.inv(a))


def test_gradient_finite_at_identity():
    v = torch.zeros(3, dtype=F64, requires_grad=True)
    axis_angle_to_matrix(v).sum().backward()
    assert torch.isfinite(v.grad).all()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (torch.tensor([1e-5, -2e-5, 3e-6], dtype=F64, requires_grad=True),))
