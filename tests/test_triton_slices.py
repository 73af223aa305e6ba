"""Triton projection of 3D Gaussians onto slices (``project_to_slices(..., backend="triton")``) against
the PyTorch reference, forward and gradients, in Triton's CPU interpreter.

The reference is evaluated in float64 on the very float32 inputs the kernel gets (then compared in
float64): the float32 PyTorch reference itself is off by more than 1e-5 for large and needle-like
covariances (cancellation in ``det Sigma`` and the Schur complement), which the kernel avoids by doing
its 3x3 algebra in float64 registers. Tolerance: norm-wise relative error ``||a - b|| / ||b|| < 1e-5``.
"""

from __future__ import annotations

import importlib.util
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

import pytest
import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401  (must be visible to the test's @triton.jit function)
except Exception:  # ImportError, or a broken install
    pytest.skip("triton cannot be installed here: pip install triton", allow_module_level=True)

from gaussian_mri.geometry import SliceGeometry  # noqa: E402
from gaussian_mri.render import triton_slices  # noqa: E402
from gaussian_mri.render.slices import _candidate_pairs, project_to_slices, render_slices  # noqa: E402
from gaussian_mri.transforms import axis_angle_to_matrix  # noqa: E402

F32, F64 = torch.float32, torch.float64
TOL = 1e-5
FIELDS = ("means", "conics", "amplitudes", "weight_peak")
INPUTS = ("means", "covs", "amps", "rotation", "origin", "spacing", "psf_var")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to(F64), b.detach().to(F64)
    den = float(b.norm())
    return float((a - b).norm()) / den if den > 0 else float(a.norm())


def _covs(gen, g, scale_lo, scale_hi, needle=False):
    q = axis_angle_to_matrix(torch.randn(g, 3, generator=gen, dtype=F64) * 2.0)
    sc = scale_lo + (scale_hi - scale_lo) * torch.rand(g, 3, generator=gen, dtype=F64)
    if needle:  # one long axis, two very thin ones
        sc[:, 1:] = 0.01 + 0.03 * torch.rand(g, 2, generator=gen, dtype=F64)
    return (q @ torch.diag_embed(sc * sc) @ q.transpose(1, 2)).to(F32)


def _slices(gen, n_oblique=4, h=20, w=24, far_slice=False):
    """Axial, sagittal, coronal and ``n_oblique`` oblique slices (+ one far away, that sees nothing)."""
    eye = torch.eye(3, dtype=F64)
    sag = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    cor = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=F64)
    obl = axis_angle_to_matrix(torch.randn(n_oblique, 3, generator=gen, dtype=F64))
    rot = torch.cat([eye[None], sag[None], cor[None], obl], 0)
    s = rot.shape[0]
    centre = torch.randn(s, 3, generator=gen, dtype=F64) * 1.5
    if far_slice:
        rot = torch.cat([rot, eye[None]], 0)
        centre = torch.cat([centre, torch.tensor([[0.0, 0.0, 500.0]], dtype=F64)], 0)
        s += 1
    spacing = 0.8 + 0.6 * torch.rand(s, 2, generator=gen, dtype=F64)
    half = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=F64) * spacing
    origin = centre - rot[:, :, 0] * half[:, :1] - rot[:, :, 1] * half[:, 1:]
    psf = torch.stack([0.2 + 0.3 * torch.rand(s, generator=gen, dtype=F64),
                       0.2 + 0.3 * torch.rand(s, generator=gen, dtype=F64),
                       0.8 + 1.0 * torch.rand(s, generator=gen, dtype=F64)], -1)
    return [t.to(F32) for t in (rot, origin, spacing, psf)], h, w


def _case(kind: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g = 40
    far_slice = False
    if kind == "ordinary":
        means = torch.randn(g, 3, generator=gen, dtype=F64) * 5
        covs = _covs(gen, g, 0.5, 3.0)
    elif kind == "large":
        means = torch.randn(g, 3, generator=gen, dtype=F64) * 20
        covs = _covs(gen, g, 8.0, 40.0)
    elif kind == "needle":
        means = torch.randn(g, 3, generator=gen, dtype=F64) * 4
        covs = _covs(gen, g, 4.0, 15.0, needle=True)
    elif kind == "culled":  # half the Gaussians far from every (infinite) slice plane, one slice far from all
        means = torch.randn(g, 3, generator=gen, dtype=F64) * 4
        means[g // 2 :] += torch.tensor([200.0, -150.0, 300.0], dtype=F64)
        covs = _covs(gen, g, 0.5, 2.0)
        far_slice = True
    else:
        raise ValueError(kind)
    amps = (0.5 + torch.rand(g, 3, generator=gen, dtype=F64)).to(F32)
    geo, h, w = _slices(gen, far_slice=far_slice)
    return [means.to(F32), covs, amps, *geo], h, w


def _grad(loss, leaves):
    """Gradients as tensors (zeros for leaves the loss does not reach, e.g. amps of a means-only loss)."""
    grads = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, leaves)]


def _project(tensors, h, w, pairs, backend, k_sigma):
    means, covs, amps, rot, origin, spacing, psf = tensors
    geom = SliceGeometry(rot, origin, spacing, psf, h, w)
    return project_to_slices(means, covs, amps, geom, k_sigma=k_sigma, pairs=pairs, backend=backend)


def _compare(kind, k_sigma=3.5, seed=0):
    """Max norm-wise relative errors of the forward fields and of the gradients of random functionals."""
    tensors, h, w = _case(kind, seed)
    with torch.no_grad():
        means, covs, amps, rot, origin, spacing, psf = tensors
        pairs = _candidate_pairs(means, covs, SliceGeometry(rot, origin, spacing, psf, h, w), k_sigma)
    tri_in = [t.clone().requires_grad_() for t in tensors]
    ref_in = [t.to(F64).requires_grad_() for t in tensors]
    tri = _project(tri_in, h, w, pairs, "triton", k_sigma)
    ref = _project(ref_in, h, w, pairs, "torch", k_sigma)
    assert torch.equal(tri.batch_index, pairs[1]) and torch.equal(tri.gauss_index, pairs[0])
    assert not tri.q_max.requires_grad
    for f in (*FIELDS, "q_max"):
        assert getattr(tri, f).dtype == F32 and getattr(tri, f).shape == getattr(ref, f).shape, f
    fwd = {f: _rel(getattr(tri, f), getattr(ref, f)) for f in (*FIELDS, "q_max")}
    gen = torch.Generator().manual_seed(seed + 100)
    weights = {f: torch.randn(getattr(ref, f).shape, generator=gen, dtype=F64) for f in FIELDS}
    # each field alone, then all together with each field normalised to a comparable size
    functionals = [(f,) for f in FIELDS] + [FIELDS]
    bwd = {name: 0.0 for name in INPUTS}
    for fields in functionals:
        scale = {f: 1.0 / max(float(getattr(ref, f).detach().abs().mean()), 1e-30) for f in fields}

        def loss(p, fields=fields, scale=scale):
            return sum((getattr(p, f).to(F64) * weights[f] * scale[f]).sum() for f in fields)

        g_tri = _grad(loss(tri), tri_in)
        g_ref = _grad(loss(ref), ref_in)
        for name, a, b in zip(INPUTS, g_tri, g_ref):
            assert a.dtype == F32 and a.shape == b.shape
            bwd[name] = max(bwd[name], _rel(a, b))
    return fwd, bwd, pairs, tri, tri_in


@pytest.mark.parametrize("kind", ["ordinary", "large", "needle", "culled"])
def test_triton_projection_matches_torch(kind):
    fwd, bwd, pairs, _, _ = _compare(kind)
    assert len(pairs[0]) > 20
    print(f"\n{kind}: N={len(pairs[0])} forward max rel {max(fwd.values()):.2e}, "
          f"gradient max rel {max(bwd.values()):.2e}")
    bad = {k: v for k, v in {**fwd, **bwd}.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


def test_float32_registers_option_on_ordinary_gaussians(monkeypatch):
    """ACC64=False (all-float32 arithmetic, for GPUs with slow float64) is accurate for ordinary
    Gaussians; only needle-like ones need the float64 registers (there it is off by O(1))."""
    monkeypatch.setattr(triton_slices, "ACCUMULATE_FLOAT64", False)
    fwd, bwd, _, _, _ = _compare("ordinary")
    assert max(fwd.values()) < TOL and max(bwd.values()) < TOL, (fwd, bwd)


def test_motion_gradient_through_moved_geometry():
    """Rigid per-slice motion (axis-angle + translation) applied with SliceGeometry.moved: gradients
    reach the motion parameters through rotation and origin as in the reference."""
    tensors, h, w = _case("ordinary", seed=7)
    means, covs, amps, rot, origin, spacing, psf = tensors
    n_s = rot.shape[0]
    gen = torch.Generator().manual_seed(11)
    step = torch.tensor([0.05] * 3 + [0.5] * 3, dtype=F64)  # rad, mm
    params = (torch.randn(n_s, 6, generator=gen, dtype=F64) * step).to(F32)
    pairs = _candidate_pairs(means, covs, SliceGeometry(rot, origin, spacing, psf, h, w), 3.5)
    w_amp = None
    grads = []
    for dt, backend in ((F32, "triton"), (F64, "torch")):
        p = params.to(dt).requires_grad_()
        motion = torch.eye(4, dtype=dt).repeat(n_s, 1, 1)
        motion = torch.cat([torch.cat([axis_angle_to_matrix(p[:, :3]), p[:, 3:, None]], 2), motion[:, 3:]], 1)
        geom = SliceGeometry(rot.to(dt), origin.to(dt), spacing.to(dt), psf.to(dt), h, w).moved(motion)
        out = project_to_slices(means.to(dt), covs.to(dt), amps.to(dt), geom, pairs=pairs, backend=backend)
        if w_amp is None:
            w_amp = torch.randn(out.amplitudes.shape, generator=gen, dtype=F64)
        loss = (out.amplitudes.to(F64) * w_amp).sum() + (out.means.to(F64) ** 2).sum() * 1e-2
        grads.append(torch.autograd.grad(loss, p)[0])
    assert float(grads[1].norm()) > 0
    assert _rel(grads[0], grads[1]) < TOL


def test_culled_gaussians_and_empty_slice():
    fwd, bwd, pairs, tri, tri_in = _compare("culled")
    g_idx, s_idx = pairs
    n_slices = tri_in[3].shape[0]
    assert not bool((s_idx == n_slices - 1).any())  # the far slice sees nothing
    assert not bool((g_idx >= 20).any())  # the far Gaussians reach no slice
    loss = tri.amplitudes.sum() + tri.means.sum() + tri.conics.sum() + tri.weight_peak.sum()
    grads = torch.autograd.grad(loss, tri_in)
    assert torch.count_nonzero(grads[0][20:]) == 0 and torch.count_nonzero(grads[1][20:]) == 0
    assert torch.count_nonzero(grads[3][-1]) == 0 and torch.count_nonzero(grads[4][-1]) == 0
    assert torch.count_nonzero(grads[6][-1]) == 0


def test_zero_pairs():
    tensors, h, w = _case("ordinary")
    tri_in = [t.clone().requires_grad_() for t in tensors]
    empty = torch.zeros(0, dtype=torch.int64)
    p = _project(tri_in, h, w, (empty, empty), "triton", 3.5)
    assert len(p) == 0 and p.amplitudes.shape == (0, 3) and p.conics.shape == (0, 3) and p.q_max.shape == (0,)
    loss = p.amplitudes.sum() + p.means.sum() + p.conics.sum() + p.weight_peak.sum()
    for gr, t in zip(torch.autograd.grad(loss, tri_in), tri_in):
        assert gr.shape == t.shape and torch.count_nonzero(gr) == 0


def test_default_pairs_1d_amplitudes_and_partial_requires_grad():
    """pairs=None and (G,) amplitudes through the public dispatch; only the means and the slice origin
    (the motion fit's typical leaves) require grad."""
    tensors, h, w = _case("ordinary", seed=3)
    means, covs, amps, rot, origin, spacing, psf = tensors
    amps1 = amps[:, 0].contiguous()
    m_t, o_t = means.clone().requires_grad_(), origin.clone().requires_grad_()
    m_r, o_r = means.to(F64).requires_grad_(), origin.to(F64).requires_grad_()
    tri = project_to_slices(m_t, covs, amps1, SliceGeometry(rot, o_t, spacing, psf, h, w), backend="triton")
    ref = project_to_slices(m_r, covs.to(F64), amps1.to(F64),
                            SliceGeometry(rot.to(F64), o_r, spacing.to(F64), psf.to(F64), h, w),
                            pairs=(tri.gauss_index, tri.batch_index), backend="torch")
    # pairs=None on the Triton path: every (Gaussian, slice) pair, no host-side culling; the pairs the
    # torch path culls are exactly those with q_max < 0 (they render nothing)
    g32, s32 = _candidate_pairs(means, covs, SliceGeometry(rot, origin, spacing, psf, h, w), 3.5)
    n_g, n_s = means.shape[0], rot.shape[0]
    assert len(tri) == n_g * n_s and tri.amplitudes.shape == (n_g * n_s, 1)
    kept = set(zip(g32.tolist(), s32.tolist()))
    inside = torch.tensor([(g, s) in kept for g, s in zip(tri.gauss_index.tolist(), tri.batch_index.tolist())])
    assert inside.sum() == len(g32) and torch.equal(tri.q_max >= 0, inside)
    for f in (*FIELDS, "q_max"):
        assert _rel(getattr(tri, f), getattr(ref, f)) < TOL, f
    w_out = torch.randn(tri.amplitudes.shape, dtype=F64)
    loss_t = (tri.amplitudes.to(F64) * w_out).sum() + tri.means.to(F64).sum()
    loss_r = (ref.amplitudes * w_out).sum() + ref.means.sum()
    for a, b in zip(torch.autograd.grad(loss_t, (m_t, o_t)), torch.autograd.grad(loss_r, (m_r, o_r))):
        assert _rel(a, b) < TOL


def test_float64_falls_back_to_torch():
    tensors, h, w = _case("ordinary")
    t64 = [t.to(F64) for t in tensors]
    a = _project(t64, h, w, None, "triton", 3.5)
    b = _project(t64, h, w, None, "torch", 3.5)
    for f in (*FIELDS, "q_max"):
        assert torch.equal(getattr(a, f), getattr(b, f))


_DET3_COF = triton_slices._det3_cof
_COF_SCALE = 1.001


@triton.jit
def _det3_cof_perturbed(c00, c01, c02, c10, c11, c12, c20, c21, c22):
    """The kernel's det/cofactor helper with the cofactors (d det / d Sigma, backward only) scaled."""
    det, k00, k01, k02, k10, k11, k12, k20, k21, k22 = _DET3_COF(c00, c01, c02, c10, c11, c12, c20, c21, c22)
    f = _COF_SCALE
    return det, k00 * f, k01 * f, k02 * f, k10 * f, k11 * f, k12 * f, k20 * f, k21 * f, k22 * f


def test_gradient_check_detects_a_perturbed_backward(monkeypatch):
    """The gradient comparison can fail: scaling the det(Sigma) cofactors (used by the backward only) by
    1 + 1e-3 leaves the forward exact and pushes the covariance-gradient error above the threshold."""
    monkeypatch.setattr(triton_slices, "_det3_cof", _det3_cof_perturbed)
    fwd, bwd, _, _, _ = _compare("ordinary")
    print(f"\nperturbed backward: covs gradient rel error {bwd['covs']:.2e} (threshold {TOL})")
    assert max(fwd.values()) < TOL
    assert bwd["covs"] > 10 * TOL
    assert bwd["means"] < TOL  # the perturbation reaches only the covariance gradient


@pytest.mark.skipif(importlib.util.find_spec("gaussian_mri.render.triton_splat2d") is None,
                    reason="needs triton_splat2d")
@pytest.mark.parametrize("mode", ["exact", "normalised"])
def test_render_slices_triton_matches_torch(mode):
    tensors, h, w = _case("ordinary", seed=5)
    tensors[0] = tensors[0] * 0.6  # keep the Gaussians inside the small fields of view
    tri_in = [t.clone().requires_grad_() for t in tensors]
    ref_in = [t.to(F64).requires_grad_() for t in tensors]

    def render(ts, backend):
        means, covs, amps, rot, origin, spacing, psf = ts
        geom = SliceGeometry(rot, origin, spacing, psf, h, w)
        return render_slices(means, covs, amps, geom, mode=mode, backend=backend)

    img_t, img_r = render(tri_in, "triton"), render(ref_in, "torch")
    assert img_t.shape == img_r.shape and float(img_r.detach().abs().max()) > 0
    assert _rel(img_t, img_r) < TOL
    wgt = torch.randn(img_r.shape, dtype=F64)
    g_t = torch.autograd.grad((img_t.to(F64) * wgt).sum(), tri_in)
    g_r = torch.autograd.grad((img_r * wgt).sum(), ref_in)
    errs = {name: _rel(a, b) for name, a, b in zip(INPUTS, g_t, g_r)}
    print(f"\nrender_slices {mode}: image rel {_rel(img_t, img_r):.2e}, "
          f"gradient max rel {max(errs.values()):.2e}")
    assert max(errs.values()) < TOL, errs


def test_triton_render_path_reads_nothing_back_to_the_host(monkeypatch):
    """render_slices(backend="triton") forward + backward: no .item()/.tolist()/bool()/int()/float()/.cpu()
    /.numpy()/nonzero called from engine code (the interpreter's own host work is not counted)."""
    import sys as _sys

    counts = {}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            caller = _sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("gaussian_mri"):
                key = f"{caller}:{_sys._getframe(1).f_lineno}:{name}"
                counts[key] = counts.get(key, 0) + 1
            return original(*args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", counting("torch.nonzero", torch.nonzero))
    gen = torch.Generator().manual_seed(5)
    means = (torch.rand(30, 3, generator=gen) * 20 - 10).requires_grad_()
    scales = torch.rand(30, 3, generator=gen) * 2 + 0.5
    covs = torch.diag_embed(scales * scales)
    amps = torch.rand(30, generator=gen).requires_grad_()
    geom = SliceGeometry(torch.eye(3).repeat(4, 1, 1), torch.tensor([[0.0, 0.0, z] for z in (-6.0, -2.0, 2.0, 6.0)]),
                         torch.ones(4, 2), torch.tensor([[0.5, 0.5, 1.0]]).repeat(4, 1), 24, 24)
    before = dict(counts)
    out = render_slices(means, covs, amps, geom, backend="triton")
    out.square().sum().backward()
    assert counts == before, counts
