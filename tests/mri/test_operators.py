"""Property tests for gaussian_mri.mri.operators: adjointness, linearity, vjp == adjoint, shape checks."""

from __future__ import annotations

import pytest
import torch

from gaussian_mri.mri.fft import fft2c
from gaussian_mri.mri.operators import CoilOp, FourierOp, LinearOperator, SamplingOp, SenseOp
from gaussian_mri.mri.sampling import expand_line_mask, gro_mask

FRAMES, COILS, NY, NX = 4, 3, 12, 10


def _crandn(*shape: int, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def _maps(dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    return _crandn(COILS, NY, NX, dtype=dtype)


def _line_mask() -> torch.Tensor:
    return gro_mask(NY, FRAMES, 3)


OpCase = tuple[LinearOperator, tuple[int, ...], tuple[int, ...]]


def _operators(dtype: torch.dtype = torch.complex128) -> dict[str, OpCase]:
    maps = _maps(dtype)
    lines = _line_mask()
    return {
        "sense_lines": (SenseOp(maps, lines), (FRAMES, NY, NX), (FRAMES, COILS, NY, NX)),
        "sense_full_mask": (
            SenseOp(maps, expand_line_mask(lines, NX)),
            (FRAMES, NY, NX),
            (FRAMES, COILS, NY, NX),
        ),
        "sense_no_mask": (SenseOp(maps), (FRAMES, NY, NX), (FRAMES, COILS, NY, NX)),
        "coil": (CoilOp(maps), (FRAMES, NY, NX), (FRAMES, COILS, NY, NX)),
        "fourier": (FourierOp(), (FRAMES, COILS, NY, NX), (FRAMES, COILS, NY, NX)),
        "sampling": (SamplingOp(lines, n_kx=NX), (FRAMES, COILS, NY, NX), (FRAMES, COILS, NY, NX)),
        "composed": (
            SamplingOp(lines, n_kx=NX) @ FourierOp() @ CoilOp(maps),
            (FRAMES, NY, NX),
            (FRAMES, COILS, NY, NX),
        ),
    }


OP_NAMES = list(_operators())


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_dot_product_adjointness(name: str, dtype: torch.dtype) -> None:
    op, in_shape, out_shape = _operators(dtype)[name]
    u = _crandn(*in_shape, dtype=dtype)
    v = _crandn(*out_shape, dtype=dtype)
    au = op(u)
    ahv = op.H(v)
    # shapes first: a flattened vdot would not notice a wrong layout
    assert au.shape == out_shape
    assert ahv.shape == in_shape
    lhs = torch.vdot(au.flatten(), v.flatten())
    rhs = torch.vdot(u.flatten(), ahv.flatten())
    # float32 sums over ~500 terms: 1e-4 relative is ~10x the observed round-off
    rtol = 1e-4 if dtype == torch.complex64 else 1e-10
    assert abs(lhs - rhs) <= rtol * abs(lhs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_linearity(name: str) -> None:
    op, in_shape, _ = _operators()[name]
    x, y = _crandn(*in_shape), _crandn(*in_shape)
    a = complex(0.7, -1.3)
    torch.testing.assert_close(op(a * x + y), a * op(x) + op(y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", OP_NAMES)
def test_vjp_equals_adjoint(name: str) -> None:
    op, in_shape, out_shape = _operators()[name]
    x = _crandn(*in_shape)
    v = _crandn(*out_shape)
    _, vjp_fn = torch.func.vjp(op.forward, x)
    (grad,) = vjp_fn(v)
    torch.testing.assert_close(grad, op.adjoint(v), rtol=1e-10, atol=1e-10)
    # and the other way round: the vjp of the adjoint is the forward
    _, vjp_adj = torch.func.vjp(op.adjoint, v)
    (grad_adj,) = vjp_adj(x)
    torch.testing.assert_close(grad_adj, op.forward(x), rtol=1e-10, atol=1e-10)


def test_double_adjoint_is_operator() -> None:
    op = SenseOp(_maps(), _line_mask())
    assert op.H.H is op
    x = _crandn(FRAMES, NY, NX)
    torch.testing.assert_close(op.H.H(x), op(x))


def test_sense_matches_dense_reference() -> None:
    """SenseOp against an explicit loop: per frame, per coil, mask rows of fft2c(c * x)."""
    maps, lines = _maps(), _line_mask()
    x = _crandn(FRAMES, NY, NX)
    ref = torch.zeros(FRAMES, COILS, NY, NX, dtype=torch.complex128)
    for t in range(FRAMES):
        for c in range(COILS):
            k = fft2c(maps[c] * x[t])
            ref[t, c] = k * lines[t][:, None]
    torch.testing.assert_close(SenseOp(maps, lines)(x), ref)
    # unsampled lines are exactly zero
    assert bool((SenseOp(maps, lines)(x)[~lines[:, None, :, None].expand(-1, COILS, -1, NX)] == 0).all())


def test_sense_normalised_maps_full_sampling_is_isometry() -> None:
    maps = _maps()
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    x = _crandn(FRAMES, NY, NX)
    torch.testing.assert_close(SenseOp(maps).gram(x), x)


def test_complex64_default_dtype() -> None:
    op = SenseOp(_maps(torch.complex64), _line_mask())
    assert op(torch.randn(FRAMES, NY, NX)).dtype == torch.complex64
    assert op.H(_crandn(FRAMES, COILS, NY, NX, dtype=torch.complex64)).dtype == torch.complex64


def test_bad_inputs_raise_clear_errors() -> None:
    maps = _maps()
    with pytest.raises(ValueError, match=r"coil_maps must have shape \(coils, ny, nx\)"):
        SenseOp(maps[0])
    with pytest.raises(TypeError, match="coil_maps must be complex"):
        SenseOp(maps.real)
    with pytest.raises(TypeError, match="coil_maps must be a torch.Tensor"):
        SenseOp(maps.numpy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mask must have shape \(frames, 12\) or \(frames, 12, 10\)"):
        SenseOp(maps, torch.ones(FRAMES, NY + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool or real"):
        SenseOp(maps, torch.ones(FRAMES, NY, dtype=torch.complex64))
    op = SenseOp(maps, _line_mask())
    with pytest.raises(ValueError, match=r"x must be an image series \(4, 12, 10\).*got \(4, 10, 12\)"):
        op(_crandn(FRAMES, NX, NY))
    pattern = r"\(4, 12, 10\) matching coil_maps .* and the mask, got \(5, 12, 10\)"
    with pytest.raises(ValueError, match=pattern):
        op(_crandn(FRAMES + 1, NY, NX))
    with pytest.raises(ValueError, match=r"y must be multi-coil data \(4, 3, 12, 10\).*got \(4, 2, 12, 10\)"):
        op.H(_crandn(FRAMES, COILS - 1, NY, NX))
    with pytest.raises(ValueError, match="to match the mask"):
        SamplingOp(_line_mask(), n_kx=NX)(_crandn(FRAMES, COILS, NY, NX + 2))
