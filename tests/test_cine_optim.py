"""Cine optimisation pieces: frozen per-frame parameters of undrawn frames (masked Adam), and the Gram
nuclear norm with its defined subgradient."""

from __future__ import annotations

import math

import pytest
import torch
from _cases import small_cine

from gaussian_mri._optim import MaskedAdam
from gaussian_mri.cine.recon import CineConfig, nuclear_norm, nuclear_norm_gram, reconstruct

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------------
# masked Adam
# --------------------------------------------------------------------------------------------------
def test_masked_adam_rows_are_independent_adams_that_only_step_when_drawn():
    """Each row of a ``rows_dim`` parameter is its own Adam problem: drawn rows get exactly the update of
    a ``torch.optim.Adam`` that saw only the steps drawing them (its own step count, so its own bias
    correction); undrawn rows keep parameter, moments and step count bitwise."""
    gen = torch.Generator().manual_seed(0)
    n_rows, lr = 6, 0.05
    x0 = torch.randn(n_rows, 5, 2, generator=gen, dtype=torch.float64)
    x = x0.clone().requires_grad_()
    opt = MaskedAdam([{"params": [x], "lr": lr, "rows_dim": 0}])
    refs = [x0[r].clone().requires_grad_() for r in range(n_rows)]
    ref_opts = [torch.optim.Adam([p], lr=lr) for p in refs]
    draws = [[0, 1], [2, 3], [0, 4], [1, 2], [5, 0], [3, 4], [0, 1]]  # row 5 first drawn at step 5
    for drawn in draws:
        grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)  # every row has a gradient
        before = {k: v.clone() for k, v in opt.state[x].items()} if opt.state[x] else None
        x_before = x.detach().clone()
        x.grad = grad.clone()
        opt.step(active=torch.tensor(drawn))
        for r in drawn:
            refs[r].grad = grad[r].clone()
            ref_opts[r].step()
        undrawn = [r for r in range(n_rows) if r not in drawn]
        assert torch.equal(x.detach()[undrawn], x_before[undrawn])
        if before is not None:
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[x][key][undrawn], before[key][undrawn]), key
            assert torch.equal(opt.state[x]["step"][undrawn], before["step"][undrawn])
        for r in drawn:
            torch.testing.assert_close(x.detach()[r], refs[r].detach(), rtol=1e-12, atol=1e-14)
    assert opt.state[x]["step"].tolist() == [4, 3, 2, 2, 2, 1]


@pytest.mark.parametrize("rows", ["no rows_dim", "all rows active"])
def test_masked_adam_without_rows_is_torch_adam(rows):
    """Groups without ``rows_dim``, or steps with ``active=None``, follow ``torch.optim.Adam`` (float32)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=gen).requires_grad_()
    b = a.detach().clone().requires_grad_()
    opt_a = MaskedAdam([{"params": [a], "lr": 0.01, "rows_dim": None if rows == "no rows_dim" else 0}])
    opt_b = torch.optim.Adam([b], lr=0.01)
    for _ in range(20):
        g = torch.randn(4, 3, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step(active=torch.tensor([0]) if rows == "no rows_dim" else None)  # ignored without rows_dim
        opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)


def test_cine_fit_keeps_undrawn_frames_where_they_are():
    """Two short fits with the same seed, 1 and 2 steps of 2 frames out of 10: the per-frame parameters
    (``dmu``, ``dl``) of the frames drawn in step 1 but not in step 2 are bitwise what step 1 left,
    frames never drawn are still zero, although the temporal TV and nuclear norm give every frame a
    gradient. With plain Adam the frames of step 1 keep moving in step 2 (momentum), and this fails."""
    case = small_cine()
    cfg = {"n_gaussians": 200, "frames_per_step": 2, "prune_every": 0, "lambda_mu": 1e-2, "lambda_c": 1e-2, "seed": 3}
    runs = [
        reconstruct(case["kspace"], case["mask"], case["maps"], config=CineConfig(steps=n, **cfg), device="cpu").model
        for n in (1, 2)
    ]
    n_t = runs[0].n_frames
    for name in ("dmu", "dl"):
        one, two = getattr(runs[0], name), getattr(runs[1], name)
        zero = torch.zeros_like(one[0])
        step1 = [t for t in range(n_t) if not torch.equal(one[t], zero)]
        step2 = [t for t in range(n_t) if not torch.equal(two[t], one[t])]
        assert len(step1) == 2 and len(step2) == 2 and not set(step1) & set(step2), (name, step1, step2)
        for t in step1:
            assert torch.equal(two[t], one[t]), (name, t)
        for t in set(range(n_t)) - set(step1) - set(step2):
            assert torch.equal(two[t], zero), (name, t)


# --------------------------------------------------------------------------------------------------
# nuclear norm from the Gram matrix
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("shape", [(24, 300), (7, 40), (12, 5)])
def test_gram_nuclear_norm_value_matches_svdvals(dtype, shape):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(*shape, generator=gen, dtype=dtype)
    expected = float(torch.linalg.svdvals(a).sum())
    assert float(nuclear_norm_gram(a)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gram_nuclear_norm_gradient_matches_finite_differences(dtype):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 15, generator=gen, dtype=dtype).requires_grad_()
    assert torch.autograd.gradcheck(nuclear_norm_gram, (a,), eps=1e-6, atol=1e-7, rtol=1e-6)
    # and equals the gradient of the svdvals reference where that is defined (distinct, non-zero s)
    (g,) = torch.autograd.grad(nuclear_norm_gram(a), a)
    b = a.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(torch.linalg.svdvals(b).sum(), b)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["repeated frames", "zero frame", "rank one", "zero"])
def test_gram_nuclear_norm_subgradient_at_rank_deficient_matrices(case):
    """Singular values at zero: the gradient is finite and is the chosen subgradient ``U_r V_r^H`` (the
    minimum-norm element of the subdifferential, 0 on the null space)."""
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(8, 30, generator=gen, dtype=torch.float64)
    if case == "repeated frames":
        a[3] = a[1]
        a[6] = a[1]
    elif case == "zero frame":
        a[2] = 0
    elif case == "rank one":
        a = torch.randn(8, 1, generator=gen, dtype=torch.float64) @ torch.randn(1, 30, generator=gen, dtype=torch.float64)
    else:
        a = torch.zeros(8, 30, dtype=torch.float64)
    x = a.clone().requires_grad_()
    value = nuclear_norm_gram(x)
    (g,) = torch.autograd.grad(value, x)
    assert torch.isfinite(g).all()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    r = int((s > 1e-10 * max(float(s[0]), 1e-300)).sum()) if float(s[0]) > 0 else 0
    assert float(value.detach()) == pytest.approx(float(s[:r].sum()), rel=1e-12, abs=1e-300)
    expected = u[:, :r] @ vh[:r] if r else torch.zeros_like(a)
    torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-9)


def test_nuclear_norm_uses_the_gram_route_on_the_cpu():
    gen = torch.Generator().manual_seed(5)
    dmu = torch.randn(10, 50, 2, generator=gen)
    assert torch.equal(nuclear_norm(dmu), nuclear_norm_gram(dmu.reshape(10, 100)) / math.sqrt(50))
    assert float(nuclear_norm(dmu)) == pytest.approx(float(nuclear_norm(dmu, method="svd")), rel=1e-5)
