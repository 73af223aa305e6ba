"""2D rasteriser against the dense float64 reference: forward, gradients, chunking, SR grid."""

from __future__ import annotations

import pytest
import torch

from gaussian_mri.render import cholesky_to_conic, rasterize_gaussians_2d, rasterize_splats
from _cases import random_splats
from gaussian_mri.render._reference import dense_splats

F64 = torch.float64


def _random_splats(n, n_batch, h, w, n_chan=2, scale=3.0, dtype=F64):
    return random_splats(n, n_batch, h, w, n_chan, dtype=dtype, scale=scale)


@pytest.mark.parametrize("n_chan", [1, 2])
def test_forward_matches_dense_reference(n_chan):
    means, conics, amps, bidx = _random_splats(300, 3, 40, 52, n_chan)
    # k = 7: exp(-49/2) ~ 2e-11 relative truncation, so the window covers the support.
    out = rasterize_splats(means, conics, amps, bidx, n_batch=3, height=40, width=52, k_sigma=7.0)
    ref = dense_splats(means, conics, amps, bidx, n_batch=3, height=40, width=52)
    rel = (out - ref).abs().max() / ref.abs().max()
    assert rel < 1e-6


def test_truncated_window_equals_dense_with_same_cutoff():
    means, conics, amps, bidx = _random_splats(200, 2, 30, 30)
    out = rasterize_splats(means, conics, amps, bidx, n_batch=2, height=30, width=30, k_sigma=2.0)
    ref = dense_splats(means, conics, amps, bidx, n_batch=2, height=30, width=30, k_sigma=2.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    full = dense_splats(means, conics, amps, bidx, n_batch=2, height=30, width=30)
    assert (out - full).abs().max() > 1e-3  # the cut-off really cuts at k = 2


def test_gradcheck_float64():
    means, conics, amps, bidx = _random_splats(6, 2, 11, 13, scale=1.5)
    means = (means * 0.6 + 2.0).requires_grad_()
    conics = conics.requires_grad_()
    amps = amps.requires_grad_()

    def f(m, c, a):
        return rasterize_splats(m, c, a, bidx, n_batch=2, height=11, width=13, k_sigma=9.0)

    assert torch.autograd.gradcheck(f, (means, conics, amps), eps=1e-6, atol=1e-6)


def test_gradients_match_dense_reference_autograd():
    means, conics, amps, bidx = _random_splats(120, 2, 32, 36)
    leaves = [t.clone().requires_grad_() for t in (means, conics, amps)]
    leaves_ref = [t.clone().requires_grad_() for t in (means, conics, amps)]
    cot = torch.randn(2, 2, 32, 36, dtype=F64)
    (rasterize_splats(*leaves, bidx, n_batch=2, height=32, width=36, k_sigma=8.0) * cot).sum().backward()
    (dense_splats(*leaves_ref, bidx, n_batch=2, height=32, width=36) * cot).sum().backward()
    for a, b in zip(leaves, leaves_ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-9)


def test_chunked_equals_unchunked_forward_and_backward():
    means, conics, amps, bidx = _random_splats(400, 4, 48, 48, dtype=torch.float32)
    cot = torch.randn(4, 2, 48, 48)
    results = []
    for chunk in (1 << 24, 500):  # 500 pairs: many tiny chunks
        leaves = [t.clone().requires_grad_() for t in (means, conics, amps)]
        out = rasterize_splats(*leaves, bidx, n_batch=4, height=48, width=48, chunk_pairs=chunk)
        (out * cot).sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        # float32 sums in a different order: a few ulps of the largest value
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backward_same_with_kept_partly_kept_and_recomputed_windows():
    # cache_pairs: the forward's window weights kept for the backward (all / the first chunks / none)
    means, conics, amps, bidx = _random_splats(400, 4, 48, 48)
    cot = torch.randn(4, 2, 48, 48, dtype=F64)
    results = []
    for cache in (1 << 24, 3000, 0):
        leaves = [t.clone().requires_grad_() for t in (means, conics, amps)]
        out = rasterize_splats(*leaves, bidx, n_batch=4, height=48, width=48, chunk_pairs=2000, cache_pairs=cache)
        (out * cot).sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_batched_frames_and_complex_amplitudes():
    m, h, w = 50, 20, 24
    means = torch.rand(m, 2, dtype=F64) * torch.tensor([w, h], dtype=F64)
    chol = torch.rand(m, 3, dtype=F64) + 0.5
    amps = torch.randn(m, dtype=torch.complex128)
    dmu = torch.randn(5, m, 2, dtype=F64) * 0.5
    out = rasterize_gaussians_2d(means[None] + dmu, chol, amps, height=h, width=w, k_sigma=7.0)
    assert out.shape == (5, h, w) and out.is_complex()
    for t in (0, 4):
        ref = dense_splats(
            means + dmu[t], cholesky_to_conic(chol), torch.view_as_real(amps), torch.zeros(m, dtype=torch.long),
            n_batch=1, height=h, width=w,
        )[0]
        torch.testing.assert_close(torch.view_as_real(out[t]).permute(2, 0, 1), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_render_downsamples_to_1x(factor):
    # Smooth splats (sigma >= 1.5 px): block-averaging the fine render equals the 1x render
    # up to the sampling error of a Gaussian evaluated at pixel centres (< 2 % of the peak here).
    m, h, w = 40, 24, 20
    means = torch.rand(m, 2, dtype=F64) * torch.tensor([w - 4, h - 4], dtype=F64) + 2
    chol = torch.stack([torch.rand(m) + 1.5, torch.randn(m) * 0.3, torch.rand(m) + 1.5], -1).to(F64)
    amps = torch.rand(m, 1, dtype=F64)
    one = rasterize_gaussians_2d(means, chol, amps, height=h, width=w)
    fine = rasterize_gaussians_2d(means, chol, amps, height=h, width=w, factor=factor)
    assert fine.shape == (1, h * factor, w * factor)
    down = fine.reshape(1, h, factor, w, factor).mean((2, 4))
    err = (down - one).abs().max() / one.abs().max()
    assert err < 0.02


def test_bad_inputs_are_reported():
    means, conics, amps, bidx = _random_splats(5, 1, 8, 8)
    with pytest.raises(ValueError, match="batch_index must lie"):
        rasterize_splats(means, conics, amps, bidx + 3, n_batch=1, height=8, width=8)
    with pytest.raises(ValueError, match="packed splats"):
        rasterize_splats(means, conics[:4], amps, bidx, n_batch=1, height=8, width=8)
    with pytest.raises(TypeError, match="share one float dtype"):
        rasterize_splats(means.float(), conics, amps, bidx, n_batch=1, height=8, width=8)


@pytest.mark.parametrize("centre", [(-30.0, 12.0), (10.0, 60.0), (-40.0, -35.0), (23.4, -0.6)])
def test_large_splat_centred_outside_the_image_matches_dense(centre):
    """A splat bigger than the image with its centre outside it: the window is clamped into the image
    (was: all zeros, or an index error in index_add_)."""
    from gaussian_mri.render._reference import dense_splats

    h, w = 20, 24
    means = torch.tensor([centre], dtype=torch.float64, requires_grad=True)
    conics = torch.tensor([[1 / 900.0, 1 / 4000.0, 1 / 700.0]], dtype=torch.float64, requires_grad=True)
    amps = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    bidx = torch.zeros(1, dtype=torch.int64)
    out = rasterize_splats(means, conics, amps, bidx, n_batch=1, height=h, width=w, k_sigma=3.0, backend="torch")
    ref = dense_splats(means, conics, amps, bidx, n_batch=1, height=h, width=w, k_sigma=3.0)
    assert ref.abs().max() > 1e-3  # the splat does reach the image
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(out)
    g = torch.autograd.grad((out * weights).sum(), (means, conics, amps))
    g_ref = torch.autograd.grad((ref * weights).sum(), (means, conics, amps))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
