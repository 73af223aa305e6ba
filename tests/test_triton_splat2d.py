"""Triton 2D splat rasteriser (``backend="triton"``) against the PyTorch reference and the dense oracle.

Runs on a CPU in Triton's interpreter: ``TRITON_INTERPRET=1`` is set before triton is imported (Triton
reads it when the kernels are decorated). Forward values and gradients of a random linear functional of
the output are compared norm-wise per tensor, ``||a - b|| / ||b|| < 1e-5`` in float32.
"""

from __future__ import annotations

import math
import os

import torch  # noqa: E402

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # pragma: no cover
    # Triton decides at decoration time whether kernels are interpreted: setting TRITON_INTERPRET here
    # would make every kernel of this pytest run interpreted, the GPU tests' included. On a GPU the
    # compiled kernels are compared in tests/test_cuda_parity.py (pytest -m cuda); these interpreter
    # checks run there in a pytest of their own with TRITON_INTERPRET=1 (benchmarks/gpu_check.sh).
    import pytest

    pytest.skip("interpreter checks of the Triton kernels: run them with TRITON_INTERPRET=1 in a separate "
                "pytest on a GPU machine (tests/test_cuda_parity.py checks the compiled kernels)", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: run the kernels on the CPU

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    import triton  # noqa: F401,E402
    import triton.language  # noqa: F401,E402
except Exception:  # pragma: no cover - triton is a required test dependency
    pytest.skip("triton cannot be installed here: pip install triton", allow_module_level=True)

from gaussian_mri.render import triton_splat2d  # noqa: E402
from _cases import random_splats  # noqa: E402
from gaussian_mri.render._reference import dense_splats  # noqa: E402
from gaussian_mri.render.splat2d import cholesky_to_conic, rasterize_splats  # noqa: E402

F32 = torch.float32
TOL = 1e-5


def _random_splats(n, n_batch, h, w, n_chan=2, scale=3.0, dtype=F32):
    return random_splats(n, n_batch, h, w, n_chan, dtype=dtype, scale=scale)


def _conic(sig_major, sig_minor, angle):
    """Conic of a covariance with principal std devs (sig_major, sig_minor) rotated by angle."""
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    prec = rot @ torch.diag(torch.tensor([sig_major**-2, sig_minor**-2], dtype=torch.float64)) @ rot.T
    return torch.stack([prec[0, 0], prec[0, 1], prec[1, 1]])


def _render_and_grad(backend, means, conics, amps, bidx, cot, **kw):
    leaves = [t.clone().requires_grad_() for t in (means, conics, amps)]
    out = rasterize_splats(*leaves, bidx, backend=backend, **kw)
    grads = torch.autograd.grad((out * cot).sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, grads)]
    return [out.detach()] + list(grads)


def _rel(a, b):
    a, b = a.double(), b.double()
    nb = b.norm()
    return float((a - b).norm() / nb) if nb > 0 else float((a - b).norm())


def _compare(means, conics, amps, bidx, *, n_batch, height, width, cot=None, **kw):
    """Per-tensor norm-wise relative errors (out, d_means, d_conics, d_amps) triton vs torch, for the
    gradients of the random linear functional ``sum(out * cot)``."""
    if cot is None:
        cot = torch.randn(n_batch, amps.shape[1], height, width, dtype=means.dtype)
    kw = dict(n_batch=n_batch, height=height, width=width, **kw)
    tri = _render_and_grad("triton", means, conics, amps, bidx, cot, **kw)
    ref = _render_and_grad("torch", means, conics, amps, bidx, cot, **kw)
    for t, r in zip(tri, ref):
        assert t.shape == r.shape and t.dtype == r.dtype
        assert torch.isfinite(t).all()
    errs = {name: _rel(t, r) for name, t, r in zip(("out", "means", "conics", "amps"), tri, ref)}
    print("rel errors:", {k: f"{v:.2e}" for k, v in errs.items()})
    return errs, tri, ref


def _assert_close(errs):
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("n_chan", [1, 2])
def test_random_splats(n_chan):
    means, conics, amps, bidx = _random_splats(50, 3, 40, 40, n_chan)
    errs, tri, _ = _compare(means, conics, amps, bidx, n_batch=3, height=40, width=40)
    _assert_close(errs)
    assert tri[0].abs().max() > 0.1  # something was rendered


def test_non_square_image_and_custom_q_max():
    means, conics, amps, bidx = _random_splats(30, 2, 20, 24)
    q_max = torch.rand(30) * 16.0
    q_max[:3] = 0.0  # a zero cut-off renders nothing, in both backends
    q_max[3] = -1.0
    errs, _, _ = _compare(means, conics, amps, bidx, n_batch=2, height=20, width=24, q_max=q_max)
    _assert_close(errs)


def test_splats_across_tile_and_image_borders():
    # Centres on and around the 16-pixel tile borders (15.5, 16, 31.5, 32) and beyond the image edges.
    xs = torch.tensor([15.5, 16.0, 15.9, 31.5, 32.2, -1.5, 39.7, 41.0, 0.0, 20.0, 16.0, 31.9])
    ys = torch.tensor([15.5, 7.0, 31.5, 16.0, 31.6, 20.0, 10.0, 39.5, -2.0, 40.8, 16.0, 0.3])
    n = len(xs)
    means = torch.stack([xs, ys], -1)
    chol = torch.rand(n, 3) * torch.tensor([3.0, 1.0, 3.0]) + torch.tensor([1.0, -0.5, 1.0])
    amps = torch.randn(n, 2)
    bidx = torch.tensor([0, 1] * (n // 2))
    errs, _, _ = _compare(means, cholesky_to_conic(chol), amps, bidx, n_batch=2, height=40, width=40)
    _assert_close(errs)


def test_huge_splat_covering_everything():
    means, conics, amps, bidx = _random_splats(20, 2, 36, 33)
    means = torch.cat([means, torch.tensor([[14.3, 20.6], [30.0, 2.0]])])
    big = torch.stack([_conic(200.0, 80.0, 0.3), _conic(60.0, 45.0, -1.0)]).float()
    conics = torch.cat([conics, big])
    amps = torch.cat([amps, torch.randn(2, 2)])
    bidx = torch.cat([bidx, torch.tensor([0, 1])])
    errs, tri, _ = _compare(means, conics, amps, bidx, n_batch=2, height=36, width=33)
    _assert_close(errs)
    assert (tri[0][0] != 0).all()  # the huge splat reaches every pixel of its image


def test_huge_splat_centred_off_image_matches_dense_oracle():
    # Window far larger than the image with the centre outside it: the Triton box covers the whole
    # image (the torch reference clamps its window radius to max(H, W) and truncates here).
    means = torch.tensor([[-30.0, 12.0], [10.0, 60.0]])
    conics = torch.stack([_conic(40.0, 25.0, 0.4), _conic(30.0, 50.0, 0.0)]).float()
    amps = torch.randn(2, 1)
    bidx = torch.tensor([0, 0])
    out = rasterize_splats(means, conics, amps, bidx, n_batch=1, height=20, width=24, backend="triton")
    ref = dense_splats(means.double(), conics.double(), amps.double(), bidx, n_batch=1, height=20, width=24, k_sigma=3.5)
    assert _rel(out, ref) < TOL
    assert (out != 0).all()


def _thin_splats(sig_minor, extra=()):
    angles = torch.linspace(0, math.pi, 9)[:-1].tolist()
    conics = torch.stack([_conic(4.0 + i, sig_minor, ang) for i, ang in enumerate(angles)] + list(extra)).float()
    n = conics.shape[0]
    means = torch.rand(n, 2) * torch.tensor([30.0, 26.0]) + 2.0
    return means, conics, torch.randn(n, 2), torch.randint(0, 2, (n,))


def test_near_degenerate_conics():
    # Thin splats: std 0.25 px across, 4-11 px along (condition number up to ~2000), at 8 angles incl.
    # axis-aligned, plus a needle thinner than a pixel and a dot that falls between pixel centres.
    means, conics, amps, bidx = _thin_splats(0.25, [_conic(6.0, 0.03, 0.0), _conic(0.05, 0.05, 0.0)])
    means[-1] = torch.tensor([10.5, 10.5])  # renders nothing: no pixel centre inside its ellipse
    errs, _, _ = _compare(means, conics, amps, bidx, n_batch=2, height=30, width=34)
    _assert_close(errs)


def test_extremely_thin_splats_as_accurate_as_torch_path():
    # std 0.08 px across, 4-11 px along (condition number up to ~2e4). float32 itself is the limit
    # here: the torch path's d/dmeans is ~3e-5 away from the float64 result, so the two float32
    # backends can only be asked to agree to that level and to be equally close to float64.
    means, conics, amps, bidx = _thin_splats(0.08)
    cot = torch.randn(2, 2, 30, 34)
    errs, tri, ref = _compare(means, conics, amps, bidx, n_batch=2, height=30, width=34, cot=cot)
    assert max(errs["out"], errs["conics"], errs["amps"]) < TOL, errs
    assert errs["means"] < 3e-5, errs
    f64 = _render_and_grad("torch", means.double(), conics.double(), amps.double(), bidx, cot.double(),
                           n_batch=2, height=30, width=34)
    for t, r, e in zip(tri, ref, f64):
        assert _rel(t, e) < 2.0 * _rel(r, e) + 1e-6


def test_empty_image_among_others():
    means, conics, amps, bidx = _random_splats(40, 4, 24, 20)
    bidx = torch.where(bidx == 2, torch.zeros_like(bidx), bidx)  # image 2 gets no splat
    bidx[0] = 3
    errs, tri, _ = _compare(means, conics, amps, bidx, n_batch=4, height=24, width=20)
    _assert_close(errs)
    assert (tri[0][2] == 0).all()


def test_unsorted_batch_index_many_splats_one_image():
    means, conics, amps, bidx = _random_splats(50, 3, 28, 28, scale=1.5)
    bidx = torch.where(torch.rand(50) < 0.8, torch.ones_like(bidx), bidx)  # most on image 1, shuffled
    errs, _, _ = _compare(means, conics, amps, bidx, n_batch=3, height=28, width=28)
    _assert_close(errs)


def test_no_splats():
    means, conics, amps = torch.zeros(0, 2), torch.zeros(0, 3), torch.zeros(0, 2)
    bidx = torch.zeros(0, dtype=torch.int64)
    leaves = [t.clone().requires_grad_() for t in (means, conics, amps)]
    out = rasterize_splats(*leaves, bidx, n_batch=2, height=20, width=24, backend="triton")
    assert out.shape == (2, 2, 20, 24) and (out == 0).all()
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), leaves, allow_unused=True)
    for g, l in zip(grads, leaves):
        assert g is None or (g.shape == l.shape and g.numel() == 0)


@pytest.mark.parametrize("n_chan", [3, 5])
def test_multi_channel_amplitudes(n_chan):
    means, conics, amps, bidx = _random_splats(30, 2, 22, 26, n_chan)
    errs, _, _ = _compare(means, conics, amps, bidx, n_batch=2, height=22, width=26)
    _assert_close(errs)


def test_triton_and_torch_match_dense_oracle():
    means, conics, amps, bidx = _random_splats(40, 2, 24, 30)
    kw = dict(n_batch=2, height=24, width=30, k_sigma=3.0)
    ref = dense_splats(means.double(), conics.double(), amps.double(), bidx, **kw)
    for backend in ("torch", "triton"):
        out = rasterize_splats(means, conics, amps, bidx, backend=backend, **kw)
        assert _rel(out, ref) < TOL, backend


def test_gradient_comparison_detects_a_wrong_backward(monkeypatch):
    """The gradient test can fail: a backward off by 1e-4 relative in dL/dq is caught."""
    means, conics, amps, bidx = _random_splats(30, 2, 20, 24)
    monkeypatch.setattr(triton_splat2d, "_DLDQ_SCALE", 1.0 + 1e-4)
    errs, _, _ = _compare(means, conics, amps, bidx, n_batch=2, height=20, width=24)
    assert errs["means"] > TOL and errs["conics"] > TOL
    assert errs["out"] < TOL and errs["amps"] < TOL  # untouched by the perturbation


def test_float64_falls_back_to_torch_path():
    means, conics, amps, bidx = _random_splats(20, 2, 20, 24, dtype=torch.float64)
    kw = dict(n_batch=2, height=20, width=24)
    cot = torch.randn(2, 2, 20, 24, dtype=torch.float64)
    tri = _render_and_grad("triton", means, conics, amps, bidx, cot, **kw)
    ref = _render_and_grad("torch", means, conics, amps, bidx, cot, **kw)
    for t, r in zip(tri, ref):
        assert t.dtype == torch.float64
        torch.testing.assert_close(t, r, rtol=0, atol=0)
