"""Rigid transforms in torch: axis-angle / quaternion + translation about a centre, 4x4 matrices.

A rigid transform maps a world point ``x`` (RAS mm) to ``x' = R (x - c) + c + t`` where ``R`` is a
rotation, ``c`` the centre of rotation and ``t`` the translation. As a 4x4 homogeneous matrix this
is ``[[R, t + c - R c], [0, 1]]``. All functions are batched over leading dimensions and
differentiable (Rodrigues' formula uses a Taylor expansion near zero angle so gradients stay finite
at the identity, where per-slice motion is initialised).

Quaternions are ``(w, x, y, z)`` with ``w`` the scalar part.
"""

from __future__ import annotations

import torch

from ._checks import require_last_dim, require_tensor

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "rigid_matrix",
    "rigid_params_from_matrix",
    "compose",
    "invert_rigid",
    "apply_rigid",
]


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x`` of ``v``: (..., 3) -> (..., 3, 3)."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -z, y], -1),
            torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1),
        ],
        -2,
    )


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrix from a rotation vector (axis * angle in radians).

    Parameters
    ----------
    rotvec : (..., 3) tensor

    Returns
    -------
    (..., 3, 3) tensor, ``R = I + a [v]_x + b [v]_x^2`` with ``a = sin(t)/t``, ``b = (1-cos t)/t^2``.
    """
    require_tensor("rotvec", rotvec)
    require_last_dim("rotvec", rotvec, 3)
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-8
    # Safe angle: avoid sqrt(0) in the gradient path of the Taylor branch.
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    k = _skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def quaternion_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrix from a quaternion ``(w, x, y, z)``; the quaternion is normalised first."""
    require_tensor("quat", quat)
    require_last_dim("quat", quat, 4)
    q = quat / quat.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Quaternion ``(w, x, y, z)`` with ``w >= 0`` from a rotation matrix (Shepperd's method)."""
    require_tensor("matrix", matrix)
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    m = matrix
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate formulas; pick the numerically best-conditioned per element.
    cands = torch.stack(
        [
            torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - tr], -1),
        ],
        -2,
    )  # (..., 4 candidates, 4)
    diag = torch.stack([1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation vector (axis * angle, angle in [0, pi]) from a rotation matrix."""
    q = matrix_to_quaternion(matrix)
    w = q[..., 0].clamp(-1.0, 1.0)
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1)
    angle = 2.0 * torch.atan2(s, w)
    small = s < 1e-7
    scale = torch.where(small, 2.0 / w.clamp_min(1e-12), angle / torch.where(small, torch.ones_like(s), s))
    return xyz * scale[..., None]


def rigid_matrix(
    rotvec: torch.Tensor, translation: torch.Tensor, centre: torch.Tensor | None = None
) -> torch.Tensor:
    """4x4 matrix of ``x' = R(rotvec) (x - centre) + centre + translation``.

    Parameters
    ----------
    rotvec : (..., 3) rotation vector, radians.
    translation : (..., 3) mm.
    centre : (..., 3) mm, optional (default: origin).

    Returns
    -------
    (..., 4, 4) tensor.
    """
    require_last_dim("translation", translation, 3)
    rot = axis_angle_to_matrix(rotvec)
    t = translation
    if centre is not None:
        require_last_dim("centre", centre, 3)
        t = t + centre - (rot @ centre[..., None])[..., 0]
    top = torch.cat([rot, t[..., None]], -1)
    bottom = torch.zeros(*top.shape[:-2], 1, 4, dtype=top.dtype, device=top.device)
    bottom.select(-1, 3).fill_(1.0)  # fill_ with a Python number: no host-to-device copy
    return torch.cat([top, bottom], -2)


def rigid_params_from_matrix(
    matrix: torch.Tensor, centre: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`rigid_matrix`: ``(rotvec, translation)`` about ``centre``."""
    if matrix.shape[-2:] != (4, 4):
        raise ValueError(f"matrix must have shape (..., 4, 4), got {tuple(matrix.shape)}")
    rot = matrix[..., :3, :3]
    t = matrix[..., :3, 3]
    if centre is not None:
        t = t - centre + (rot @ centre[..., None])[..., 0]
    return matrix_to_axis_angle(rot), t


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a o b`` (apply ``b`` first), for (..., 4, 4) matrices."""
    return a @ b


def invert_rigid(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid (..., 4, 4) matrix without a general matrix inverse."""
    if matrix.shape[-2:] != (4, 4):
        raise ValueError(f"matrix must have shape (..., 4, 4), got {tuple(matrix.shape)}")
    rt = matrix[..., :3, :3].transpose(-1, -2)
    t = -(rt @ matrix[..., :3, 3:4])
    out = torch.zeros_like(matrix)
    out[..., :3, :3] = rt
    out[..., :3, 3:4] = t
    out[..., 3, 3] = 1.0
    return out


def apply_rigid(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (..., 4, 4) matrices to (..., N, 3) points."""
    return points @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., None, :3, 3]
