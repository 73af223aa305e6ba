"""The compiled CPU rasteriser (gaussian_mri/render/native) against the dense float64 reference.

The dense reference evaluates every splat on every pixel (``_reference.dense_splats``); the C kernels
visit only each splat's ellipse, solved row by row, so the tests include splats whose ellipse is
thin and rotated, partly or wholly outside the image, huge, culled by a negative per-splat cut-off
(the slice projector's ``q_max``), and several channels. Gradients: against the dense reference's
autograd and ``gradcheck``. Building: a fresh cache, two processes compiling at once, and a machine
without a compiler (the PyTorch path is used, with the reason).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from _cases import random_splats
from gaussian_mri.render import native
from gaussian_mri.render._reference import dense_splats
from gaussian_mri.render.backends import resolve_kernel_backend
from gaussian_mri.render.splat2d import cholesky_to_conic, rasterize_splats

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no C compiler here: {native.unavailable_reason()}")

K = 3.0


def _hard_splats(dtype=torch.float64):
    """Random splats plus the awkward ones: thin rotated, outside, straddling an edge, huge."""
    torch.manual_seed(3)
    means, conics, amps, bidx = random_splats(300, 3, 21, 34, n_chan=3, dtype=dtype, scale=4.0)
    chol = torch.tensor([[8.0, 7.9, 0.3], [0.3, -2.0, 9.0], [30.0, 0.0, 25.0], [1.0, 0.5, 1.0], [2.0, 0.0, 2.0],
                         [0.2, 0.0, 0.2]], dtype=dtype)
    extra_m = torch.tensor([[10.0, 10.0], [33.5, 2.0], [-20.0, 40.0], [-6.0, -6.0], [-1.2, 20.5], [5.0, 5.0]], dtype=dtype)
    means = torch.cat([means, extra_m])
    conics = torch.cat([conics, cholesky_to_conic(chol)])
    amps = torch.cat([amps, torch.randn(6, 3, dtype=dtype)])
    bidx = torch.cat([bidx, torch.tensor([0, 1, 2, 0, 1, 2])])
    return means, conics, amps, bidx


def test_forward_matches_dense_reference_float64():
    means, conics, amps, bidx = _hard_splats()
    out = rasterize_splats(means, conics, amps, bidx, n_batch=3, height=21, width=34, k_sigma=K, backend="native")
    ref = dense_splats(means, conics, amps, bidx, n_batch=3, height=21, width=34, k_sigma=K)
    assert out.shape == ref.shape == (3, 3, 21, 34)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    assert float(ref.abs().sum()) > 0


def test_per_splat_cutoff_and_culled_splats():
    means, conics, amps, bidx = _hard_splats()
    q_max = torch.rand(len(means), dtype=torch.float64) * 16 - 2  # some negative: nothing rendered
    out = native.rasterize_splats_native(means, conics, amps, bidx, q_max, n_batch=3, height=21, width=34)
    keep = q_max > 0
    ref = torch.zeros_like(out)
    for i in torch.nonzero(keep).squeeze(1).tolist():  # each splat with its own cut-off
        ref += dense_splats(means[i : i + 1], conics[i : i + 1], amps[i : i + 1], bidx[i : i + 1], n_batch=3,
                            height=21, width=34, k_sigma=float(q_max[i]) ** 0.5)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_gradients_match_dense_reference_and_gradcheck():
    means, conics, amps, bidx = _hard_splats()
    weights = torch.randn(3, 3, 21, 34, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in ("native", "dense"):
        m, c, a = (t.clone().requires_grad_(True) for t in (means, conics, amps))
        if fn == "native":
            out = rasterize_splats(m, c, a, bidx, n_batch=3, height=21, width=34, k_sigma=K, backend="native")
        else:
            out = dense_splats(m, c, a, bidx, n_batch=3, height=21, width=34, k_sigma=K)
        grads.append(torch.autograd.grad((out * weights).sum(), (m, c, a)))
    for g_nat, g_ref in zip(*grads):
        assert torch.allclose(g_nat, g_ref, rtol=0, atol=1e-10 * float(g_ref.abs().max()))
    # finite differences on a few splats (the cut-off edge is not differentiable: keep it far away)
    small = slice(0, 6)
    m, c, a = (t[small].clone().requires_grad_(True) for t in (means, conics, amps))
    q = torch.full((6,), 1e6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda m_, c_, a_: native.rasterize_splats_native(m_, c_, a_, bidx[small], q, n_batch=3, height=21, width=34),
        (m, c, a), eps=1e-6, atol=1e-6)


def test_float32_threads_and_reproducibility():
    means, conics, amps, bidx = _hard_splats()

    def render(threads, dtype=torch.float64):
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            return rasterize_splats(means.to(dtype), conics.to(dtype), amps.to(dtype), bidx, n_batch=3, height=21,
                                    width=34, k_sigma=K, backend="native")
        finally:
            torch.set_num_threads(old)

    ref = render(1)
    out32 = render(1, torch.float32)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    for threads in (2, 4):  # one canvas per thread, summed: the same sums to rounding
        assert torch.allclose(render(threads), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
        # and bitwise the same result every call for a given thread count (a seeded fit is reproducible)
        runs = [render(threads, torch.float32) for _ in range(4)]
        assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_bad_inputs_are_refused_or_render_nothing():
    means, conics, amps, bidx = _hard_splats()
    q = torch.full((len(means),), K * K, dtype=torch.float64)
    with pytest.raises(ValueError, match="at most 64 channels"):
        native.rasterize_splats_native(means, conics, torch.ones(len(means), 65, dtype=torch.float64), bidx, q,
                                       n_batch=3, height=21, width=34)
    # more channels than the C kernels take: rasterize_splats renders them with PyTorch instead
    many = rasterize_splats(means, conics, torch.ones(len(means), 65, dtype=torch.float64), bidx, n_batch=3,
                            height=21, width=34, k_sigma=K)
    assert many.shape == (3, 65, 21, 34)
    with pytest.raises(ValueError, match="CPU tensors"):
        native.rasterize_splats_native(means, conics, amps, bidx, q.to("meta"), n_batch=3, height=21, width=34)
    with pytest.raises(TypeError, match="float32 or float64"):
        native.rasterize_splats_native(means, conics, amps.float(), bidx, q, n_batch=3, height=21, width=34)
    # huge, infinite and NaN centres and a conic with det <= 0 (no bounded ellipse) render nothing,
    # promptly (an int64 overflow of the window bounds once looped ~1e19 times)
    m = torch.tensor([[1e20, 4.0], [4.0, -1e20], [float("inf"), 3.0], [float("nan"), 3.0], [4.0, 4.0]],
                     dtype=torch.float64)
    c = torch.tensor([[1.0, 0.0, 1.0]] * 4 + [[1.0, 2.0, 1.0]], dtype=torch.float64)
    out = native.rasterize_splats_native(m, c, torch.ones(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long),
                                         torch.full((5,), 9.0, dtype=torch.float64), n_batch=1, height=8, width=8)
    assert float(out.abs().sum()) == 0.0


def test_auto_picks_native_on_cpu_and_env_overrides(monkeypatch):
    monkeypatch.delenv("GAUSSIAN_MRI_KERNELS", raising=False)
    assert resolve_kernel_backend("auto", "cpu") == "native"
    assert resolve_kernel_backend("torch", "cpu") == "torch"
    monkeypatch.setenv("GAUSSIAN_MRI_KERNELS", "torch")
    assert resolve_kernel_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="CPU"):
        resolve_kernel_backend("native", "meta")


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_fresh_cache_two_processes_compile_at_once(tmp_path):
    code = """
        import torch
        from gaussian_mri.render import native
        from gaussian_mri.render.splat2d import rasterize_splats
        assert native.available(), native.unavailable_reason()
        m = torch.tensor([[3.0, 4.0]]); c = torch.tensor([[1.0, 0.0, 1.0]]); a = torch.ones(1, 1)
        out = rasterize_splats(m, c, a, torch.zeros(1, dtype=torch.long), n_batch=1, height=8, width=8)
        print(native.library_path(), float(out[0, 0, 4, 3]))
    """
    env = {"GAUSSIAN_MRI_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.split()[1] == "1.0" and out.startswith(str(tmp_path))
    libs = list((tmp_path / "native").iterdir())
    assert [f.suffix for f in libs] == [".so"], libs  # one library, no temporary leftovers


def test_without_a_compiler_the_torch_path_renders(tmp_path):
    code = """
        import torch
        from gaussian_mri.render import native
        from gaussian_mri.render.backends import resolve_kernel_backend
        from gaussian_mri.render.splat2d import rasterize_splats
        assert not native.available()
        print(native.unavailable_reason())
        assert resolve_kernel_backend("auto", "cpu") == "torch"
        try:
            resolve_kernel_backend("native", "cpu")
        except ValueError as exc:
            print("refused:", exc)
        m = torch.tensor([[3.0, 4.0]]); c = torch.tensor([[1.0, 0.0, 1.0]]); a = torch.ones(1, 1)
        out = rasterize_splats(m, c, a, torch.zeros(1, dtype=torch.long), n_batch=1, height=8, width=8)
        print(float(out[0, 0, 4, 3]))
    """
    empty = tmp_path / "bin"
    empty.mkdir()
    res = _run(code, {"GAUSSIAN_MRI_CACHE": str(tmp_path / "cache"), "PATH": str(empty), "CC": ""})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "no C compiler found" in lines[0]
    assert lines[1].startswith("refused:") and "torch backend" in lines[1]
    assert lines[2] == "1.0"
