"""The engine creates every tensor on its inputs' device, and its fit loops do not read back to the host.

Device: the engine runs under ``torch.set_default_device("meta")`` with every input explicitly on
the CPU. A tensor created without ``device=`` then lands on the meta device, and the first op that
mixes it with a CPU tensor raises (on a GPU the same tensor would sit on the CPU: a device mismatch,
or a silent host round trip). :func:`test_meta_default_catches_a_tensor_created_without_a_device`
shows that the technique catches such a tensor on the installed torch.

Host synchronisation: during a short fit with no progress reporting, every Python-level read-back of
a tensor (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool()``, ``int()``, ``float()``, ``index()``)
made by engine code outside the renderer (:mod:`gaussian_mri.render`, whose PyTorch path plans its
work on the host by design) is counted; the count must not grow with the number of iterations.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from gaussian_mri.image import Image
from gaussian_mri.render.backends import resolve_kernel_backend

# what "auto" resolves to on this CPU: the compiled C kernels when a compiler builds them (and
# GAUSSIAN_MRI_KERNELS does not say otherwise)
CPU_KERNELS = resolve_kernel_backend("auto", "cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@contextmanager
def meta_default_device():
    """Tensors created without ``device=`` land on "meta" inside the block."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)
    assert torch.empty(0).device.type == "cpu"


# --------------------------------------------------------------------------------------------------
# inputs (built on the CPU, outside the meta block)
# --------------------------------------------------------------------------------------------------
def _phantom(world: np.ndarray) -> np.ndarray:
    r2 = (world**2).sum(-1)
    off = ((world - np.array([5.0, -3.0, 2.0])) ** 2).sum(-1)
    return (np.exp(-r2 / (2 * 9.0**2)) + 0.6 * np.exp(-off / (2 * 3.0**2))).astype(np.float32)


def _tiny_stacks() -> tuple[list[Image], list[Image]]:
    """Three orthogonal thick-slice stacks (2 mm in-plane, 4 mm slices) of a smooth blob, with masks."""
    stacks, masks = [], []
    for perm in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        rot = np.eye(3)[:, perm]
        shape = (7, 14, 14)  # (K, J, I)
        affine = np.eye(4)
        affine[:3, :3] = rot @ np.diag([2.0, 2.0, 4.0])
        affine[:3, 3] = -affine[:3, :3] @ np.array([(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2])
        k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
        ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).astype(np.float64)
        world = (ijk1 @ affine.T)[..., :3]
        data = _phantom(world)
        stacks.append(Image(data, affine, 4.0))
        masks.append(Image((data > 0.15).astype(np.uint8), affine, 4.0))
    return stacks, masks


def _svr_config(**kw):
    from gaussian_mri.svr.recon import SVRConfig

    base = dict(resolution_mm=3.0, margin_mm=2.0, n_gaussians=120, iterations=4, slices_per_batch=6, device="cpu",
                kernels="torch", maps=True, seed=0, motion="slice", robust=True, bias_field=True, reweight_every=2)
    base.update(kw)
    return SVRConfig(**base)


@pytest.fixture(scope="module")
def cine_case():
    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.mri.fft import fft2c
    from gaussian_mri.mri.sampling import gro_mask

    sim = simulate_cine(n_frames=6, ny=64, nx=64, n_coils=4, pixel_spacing_mm=4.0, noise=0.0)
    crop = (slice(None), slice(16, 48), slice(16, 48))  # 32 x 32
    images, maps = np.ascontiguousarray(sim.images[crop]), np.ascontiguousarray(sim.coil_maps[crop])
    full = fft2c(torch.from_numpy(maps)[None] * torch.from_numpy(images)[:, None])
    mask = torch.as_tensor(gro_mask(32, 6, 3), device="cpu")
    return {"kspace": (full * mask[:, None, :, None]).to("cpu"), "mask": mask, "images": images}


def _cine_config(**kw):
    from gaussian_mri.cine.recon import CineConfig

    base = dict(n_gaussians=60, steps=4, frames_per_step=2, prune_every=2, espirit_calib=12, espirit_kernel=4,
                kernels="torch", callback_every=1000)
    base.update(kw)
    return CineConfig(**base)


# --------------------------------------------------------------------------------------------------
# the technique itself
# --------------------------------------------------------------------------------------------------
def _adds_a_constant(x: torch.Tensor, *, with_device: bool) -> torch.Tensor:
    c = torch.zeros(x.shape, device=x.device) if with_device else torch.zeros(x.shape)
    return x + c


def test_meta_default_catches_a_tensor_created_without_a_device():
    x = torch.ones(4, device="cpu")
    with meta_default_device():
        assert _adds_a_constant(x, with_device=True).device.type == "cpu"
        with pytest.raises(RuntimeError, match="meta"):
            _adds_a_constant(x, with_device=False)
        with pytest.raises((RuntimeError, NotImplementedError)):  # a 0-d tensor too (CUDA would accept a CPU one)
            x + torch.tensor(2.0)
        with pytest.raises((RuntimeError, NotImplementedError)):
            x + torch.as_tensor(np.ones(4, np.float32))  # as_tensor(ndarray) without device


# --------------------------------------------------------------------------------------------------
# the engine under a meta default device
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", sorted({"torch", CPU_KERNELS}))
def test_svr_fit_outputs_and_maps_are_device_clean(kernels):
    from gaussian_mri.svr.recon import reconstruct

    stacks, masks = _tiny_stacks()
    with meta_default_device():
        res = reconstruct(stacks, masks, config=_svr_config(kernels=kernels), callback=lambda s: None)
    assert np.isfinite(res.volume.data).all() and len(res.losses) == 4
    assert res.kernels == kernels and set(res.maps) == {"scale", "anisotropy"} and res.tensor is not None


def test_svr_normalised_mode_and_preview_are_device_clean():
    from gaussian_mri.svr.recon import reconstruct

    stacks, masks = _tiny_stacks()
    seen = []
    with meta_default_device():
        reconstruct(stacks, masks, config=_svr_config(psf_mode="normalised", preview_every_s=0.0, maps=False, bias_field=False),
                    callback=seen.append)
    assert any("preview" in s for s in seen)


def test_voxelise_render_volume_and_covariance_maps_are_device_clean():
    from gaussian_mri.render.slices import voxelise
    from gaussian_mri.svr.model import GaussianModel3D, covariance_maps, render_volume

    g = torch.Generator(device="cpu").manual_seed(0)
    model = GaussianModel3D(
        means=torch.randn(20, 3, generator=g, device="cpu") * 3,
        log_scales=torch.full((20, 3), 0.5, device="cpu"),
        quats=torch.nn.functional.normalize(torch.randn(20, 4, generator=g, device="cpu"), dim=-1),
        amplitudes=torch.rand(20, generator=g, device="cpu"),
    )
    affine = np.eye(4) * 1.5
    affine[3, 3] = 1.0
    affine[:3, 3] = -9.0
    with meta_default_device():
        vol = voxelise(model.means, model.covariances(), model.amplitudes, (12, 12, 12), affine, psf_sigma_mm=0.5, backend="torch")
        aa = render_volume(model, (12, 12, 12), affine, antialias=True, backend="torch")
        maps = covariance_maps(model, (12, 12, 12), affine, backend="torch")
    assert vol.device.type == aa.device.type == maps["tensor"].device.type == "cpu"


@pytest.mark.parametrize("kernels", sorted({"torch", CPU_KERNELS}))
def test_cine_fit_espirit_sr_and_maps_are_device_clean(cine_case, kernels):
    from gaussian_mri import metrics
    from gaussian_mri.cine.recon import covariance_maps, reconstruct, render_sr

    with meta_default_device():
        res = reconstruct(cine_case["kspace"], cine_case["mask"], None, config=_cine_config(kernels=kernels), device="cpu",
                          callback=lambda s: None)
        sr = render_sr(res, 2.0)
        eig, det, disp = covariance_maps(res, 1.5)
        img = res.recon.abs()
        ref = torch.as_tensor(np.abs(cine_case["images"]), device="cpu")
        scores = metrics.all_metrics(img, ref, time_axis=0)
    assert res.kernels == kernels and res.device == "cpu" and len(res.losses) == 4
    assert sr.shape == (6, 64, 64) and eig.shape == det.shape == (6, 48, 48) and disp.shape == (6, 48, 48, 2)
    assert np.isfinite(scores["ssim"])


def test_espirit_is_device_clean(cine_case):
    from gaussian_mri.mri.espirit import espirit_maps

    with meta_default_device():
        maps, lam = espirit_maps(cine_case["kspace"], cine_case["mask"], calib=12, kernel=4, return_eigenvalues=True)
    assert maps.device.type == lam.device.type == "cpu" and maps.shape == (4, 32, 32)


# --------------------------------------------------------------------------------------------------
# host synchronisations per iteration
# --------------------------------------------------------------------------------------------------
_READBACKS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def count_readbacks(skip_prefixes=("gaussian_mri.render.",)):
    """Count tensor read-backs whose direct caller is engine code (``gaussian_mri.*``), outside ``skip_prefixes``."""
    counts: Counter = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in _READBACKS}

    def wrap(name, orig):
        def counted(self, *args, **kwargs):
            mod = sys._getframe(1).f_globals.get("__name__", "")
            if mod.startswith("gaussian_mri.") and not mod.startswith(skip_prefixes):
                counts[f"{mod}:{sys._getframe(1).f_lineno}:{name}"] += 1
            return orig(self, *args, **kwargs)

        return counted

    for name, orig in saved.items():
        setattr(torch.Tensor, name, wrap(name, orig))
    try:
        yield counts
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)


def test_readback_counter_sees_a_sync_in_engine_code():
    """The counter catches a read-back made by an engine module (here: the cine fit's status line)."""
    from gaussian_mri.cine import recon

    t = torch.ones(3, device="cpu")
    with count_readbacks() as counts:
        float(t.sum())  # this test module: not engine code, not counted
        exec(compile("float(t.sum()); t.tolist()", "<engine>", "exec"), {"__name__": recon.__name__, "t": t})
    assert sum(counts.values()) == 2, counts


def _svr_readbacks(iterations: int) -> Counter:
    from gaussian_mri.svr.recon import reconstruct

    stacks, masks = _tiny_stacks()
    # reweight_every > iterations: the periodic robust-weight refresh runs once (iteration 0) in both runs
    cfg = _svr_config(iterations=iterations, reweight_every=100, maps=False)
    with count_readbacks() as counts:
        reconstruct(stacks, masks, config=cfg, callback=None)
    return counts


def _cine_readbacks(case, steps: int) -> Counter:
    from gaussian_mri.cine.recon import reconstruct

    cfg = _cine_config(steps=steps, prune_every=0)
    with count_readbacks() as counts:
        reconstruct(case["kspace"], case["mask"], None, config=cfg, device="cpu", callback=None)
    return counts


def _growth(a: Counter, b: Counter) -> dict:
    return {k: (a.get(k, 0), b.get(k, 0)) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}


def test_svr_fit_loop_has_no_per_iteration_host_sync(request):
    logger = logging.getLogger("gaussian_mri")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the INFO log line is a reporting point
    request.addfinalizer(lambda: logger.setLevel(level))
    three, six = _svr_readbacks(3), _svr_readbacks(6)
    assert sum(three.values()) > 0  # the counter is live (setup and output read back)
    assert not _growth(three, six), f"read-backs that grow with the iterations (3 vs 6): {_growth(three, six)}"


def test_cine_fit_loop_has_no_per_iteration_host_sync(cine_case):
    three, six = _cine_readbacks(cine_case, 3), _cine_readbacks(cine_case, 6)
    assert sum(three.values()) > 0
    assert not _growth(three, six), f"read-backs that grow with the steps (3 vs 6): {_growth(three, six)}"


# --------------------------------------------------------------------------------------------------
# the kernels option
# --------------------------------------------------------------------------------------------------
def test_kernels_option_is_validated_resolved_and_reported(tmp_path, cine_case, monkeypatch):
    import json

    from gaussian_mri.cine.recon import CineConfig, CineInputError
    from gaussian_mri.cine.recon import reconstruct as cine_reconstruct
    from gaussian_mri.svr.io import save_result
    from gaussian_mri.svr.recon import reconstruct

    monkeypatch.delenv("GAUSSIAN_MRI_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="kernels"):
        _svr_config(kernels="cuda").validated()
    with pytest.raises(ValueError, match="kernels"):
        CineConfig(kernels="fast")
    stacks, masks = _tiny_stacks()
    with pytest.raises(ValueError, match="CUDA|triton"):  # a CPU run cannot use the Triton kernels
        reconstruct(stacks, masks, config=_svr_config(kernels="triton", iterations=1))
    with pytest.raises(CineInputError, match="CUDA|triton"):
        cine_reconstruct(cine_case["kspace"], cine_case["mask"], None, config=_cine_config(kernels="triton"), device="cpu")
    res = reconstruct(stacks, masks, config=_svr_config(kernels="auto", iterations=2, maps=False))
    assert res.kernels == CPU_KERNELS and res.config.kernels == "auto"
    save_result(res, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text()) if (tmp_path / "report.json").is_file() else json.loads(
        next(tmp_path.glob("*.json")).read_text())
    assert report["kernels"] == CPU_KERNELS and report["config"]["kernels"] == "auto"
    cres = cine_reconstruct(cine_case["kspace"], cine_case["mask"], None, config=_cine_config(kernels="auto"), device="cpu")
    assert cres.kernels == CPU_KERNELS and cres.summary()["kernels"] == CPU_KERNELS
