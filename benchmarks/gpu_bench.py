"""GPU benchmark in one run: SVR real subject end to end, cine fit of the default phantom, render time per
cine frame and peak GPU memory, each with ``kernels=triton`` and ``kernels=torch`` and their ratio.

* SVR: the six bundled stacks + masks (``gaussian_mri/data/``, as ``gaussian-mri demo``) with the
  default preset (``fast``: 0.8 mm, 15,000 Gaussians, 300 iterations); wall time of ``reconstruct``
  (stack alignment, fit, render, maps) and its ``timings``.
* Cine: ``simulate_cine`` defaults (24 frames, 160 x 192, 12 coils), GRO R = 8, ESPIRiT maps computed
  once beforehand (as ``benchmarks/cine_speed.py``), default ``CineConfig`` (1000 steps of 4 frames).
* Render: the fitted cine model, one frame per call (``--renders`` calls, after a warm-up), and all
  frames in one call; ``torch.cuda.synchronize`` around every timed call on CUDA.
* Peak memory: ``torch.cuda.max_memory_allocated`` per stage (reset before each); on the CPU the
  process's ``ru_maxrss`` instead (not per stage).

The kernel choice is passed twice, so that it takes effect whichever way the engine exposes it: the
``kernels`` field of ``SVRConfig`` / ``CineConfig`` where it exists (the GPU issue's option) and the
environment variable ``GAUSSIAN_MRI_KERNELS`` that ``backend="auto"`` honours
(:mod:`gaussian_mri.render.backends`). On a CPU without ``TRITON_INTERPRET=1`` the Triton kernels
cannot run: those rows are recorded as skipped.

``--quick`` shrinks everything (rehearsal: seconds to a minute on a CPU). The JSON is rewritten after
every measurement, so a run stopped by a timeout still leaves what it measured.

Usage::

    python benchmarks/gpu_bench.py --device cuda --out gpu_bench.json
    python benchmarks/gpu_bench.py --device cpu --quick --out /tmp/gpu_bench_rehearsal.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gaussian_mri.render.backends import resolve_kernel_backend  # noqa: E402

TARGETS = {"svr_real_end_to_end_s": 10.0, "cine_fit_s": 20.0, "render_per_frame_ms": 0.2}  # H100/H200 targets


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> dict:
    out = {"ru_maxrss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if dev.type == "cuda":
        out["cuda_max_allocated_MiB"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["cuda_max_reserved_MiB"] = torch.cuda.max_memory_reserved(dev) / 2**20
    return out


def _with_kernels(cfg, kernels: str):
    names = {f.name for f in dataclasses.fields(cfg)}
    if "kernels" in names:
        return dataclasses.replace(cfg, kernels=kernels), True
    return cfg, False


def bench_svr(dev: torch.device, kernels: str, quick: bool) -> dict:
    from gaussian_mri.commands.demo import demo_inputs
    from gaussian_mri.image import read_image
    from gaussian_mri.svr import preset, reconstruct

    stack_paths, mask_paths = demo_inputs()
    stacks = [read_image(p) for p in stack_paths]
    masks = [read_image(p) for p in mask_paths]
    overrides = {"device": str(dev)}
    if quick:
        overrides.update(resolution_mm=2.0, n_gaussians=1000, iterations=10, maps=False)
    cfg, has_field = _with_kernels(preset("fast", **overrides), kernels)
    _reset_peak(dev)
    t0 = time.perf_counter()
    res = reconstruct(stacks, masks, config=cfg)
    _sync(dev)
    wall = time.perf_counter() - t0
    return {
        "end_to_end_s": wall,
        "timings_s": res.timings,
        "config": {"preset": "fast", "n_gaussians": cfg.n_gaussians, "iterations": cfg.iterations,
                   "resolution_mm": cfg.resolution_mm, "maps": cfg.maps},
        "kernels_config_field": has_field,
        "volume_shape": list(res.volume.shape),
        "final_loss": res.losses[-1] if res.losses else None,
        "peak_memory": _peak(dev),
    }


def _cine_data(quick: bool):
    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.cine.recon import CineConfig, check_inputs, estimate_coil_maps
    from gaussian_mri.mri.sampling import gro_mask

    sim = simulate_cine(n_frames=8, ny=64, nx=64, n_coils=4) if quick else simulate_cine(n_coils=12)
    full = torch.from_numpy(np.asarray(sim.kspace))
    mask = gro_mask(full.shape[2], full.shape[0], 8)
    k = full * mask[:, None, :, None]
    kk, w, _ = check_inputs(k, mask, None)
    cfg = CineConfig()
    if quick:
        cfg = dataclasses.replace(cfg, espirit_calib=12, espirit_kernel=4)
    maps = estimate_coil_maps(kk, w, cfg)
    return sim, k, mask, maps


def bench_cine(dev: torch.device, kernels: str, quick: bool, data, renders: int) -> dict:
    from gaussian_mri.cine.recon import CineConfig, reconstruct

    sim, k, mask, maps = data
    cfg = CineConfig(n_gaussians=500, steps=20, prune_every=10) if quick else CineConfig()
    cfg, has_field = _with_kernels(cfg, kernels)
    _reset_peak(dev)
    t0 = time.perf_counter()
    res = reconstruct(k, mask, maps, config=cfg, device=dev, spacing_mm=(sim.pixel_spacing_mm,) * 2)
    _sync(dev)
    wall = time.perf_counter() - t0
    fit = {
        "fit_s": res.timings["fit"],
        "reconstruct_total_s": res.timings["total"],
        "wall_s": wall,
        "per_step_ms": 1e3 * res.timings["fit"] / cfg.steps,
        "timings_s": res.timings,
        "config": {"n_gaussians": cfg.n_gaussians, "steps": cfg.steps, "frames_per_step": cfg.frames_per_step},
        "n_gaussians_final": res.n_gaussians[-1],
        "kernels_config_field": has_field,
        "peak_memory": _peak(dev),
    }

    model = res.model.to(dev)
    n_t = model.n_frames
    _reset_peak(dev)
    with torch.no_grad():
        for _ in range(5):  # warm-up (Triton compilation, allocator)
            model.render([0], k_sigma=cfg.k_sigma)
            model.render(list(range(n_t)), k_sigma=cfg.k_sigma)
        single = []
        for i in range(renders):
            _sync(dev)
            t0 = time.perf_counter()
            model.render([i % n_t], k_sigma=cfg.k_sigma)
            _sync(dev)
            single.append(time.perf_counter() - t0)
        n_all = max(renders // n_t, 5)
        every = []
        for _ in range(n_all):
            _sync(dev)
            t0 = time.perf_counter()
            model.render(list(range(n_t)), k_sigma=cfg.k_sigma)
            _sync(dev)
            every.append((time.perf_counter() - t0) / n_t)
    s, e = np.asarray(single) * 1e3, np.asarray(every) * 1e3
    render = {
        "image": f"{model.height} x {model.width}",
        "n_gaussians": int(model.means.shape[0]),
        "single_frame_ms": {"median": float(np.median(s)), "min": float(s.min()), "p90": float(np.percentile(s, 90)), "n": len(s)},
        "all_frames_per_frame_ms": {"median": float(np.median(e)), "min": float(e.min()), "n_calls": len(e), "frames_per_call": n_t},
        "peak_memory": _peak(dev),
    }
    return {"fit": fit, "render": render}


def _get(d: dict, path: str):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


ROWS = {
    "svr_real_end_to_end_s": "svr.end_to_end_s",
    "svr_real_fit_s": "svr.timings_s.fit_s",
    "svr_peak_cuda_MiB": "svr.peak_memory.cuda_max_allocated_MiB",
    "cine_fit_s": "cine.fit.fit_s",
    "cine_peak_cuda_MiB": "cine.fit.peak_memory.cuda_max_allocated_MiB",
    "render_per_frame_ms": "cine.render.single_frame_ms.median",
    "render_all_frames_per_frame_ms": "cine.render.all_frames_per_frame_ms.median",
    "render_peak_cuda_MiB": "cine.render.peak_memory.cuda_max_allocated_MiB",
}


def summarise(out: dict) -> dict:
    runs = out["runs"]
    table = {}
    for row, path in ROWS.items():
        vals = {k: _get(runs.get(k, {}), path) for k in ("triton", "torch")}
        ratio = vals["triton"] / vals["torch"] if vals["triton"] is not None and vals["torch"] else None
        entry = {**vals, "triton_over_torch": ratio}
        if row in TARGETS:
            best = min((v for v in vals.values() if v is not None), default=None)
            entry["target"] = TARGETS[row]
            entry["meets_target"] = None if best is None or out["quick"] else bool(best < TARGETS[row])
        table[row] = entry
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (rehearsal)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_bench.json")
    ap.add_argument("--kernels", nargs="+", choices=["triton", "torch"], default=["triton", "torch"])
    ap.add_argument("--skip", nargs="*", choices=["svr", "cine"], default=[])
    ap.add_argument("--renders", type=int, default=None, help="timed single-frame renders (default 500, quick 20)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    renders = args.renders or (20 if args.quick else 500)
    out = {
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "quick": args.quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "command": " ".join(["python", "benchmarks/gpu_bench.py", *sys.argv[1:]]),
        "targets": TARGETS,
        "runs": {},
        "errors": {},
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        out["triton"] = f"not importable: {exc}"
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out["table"] = summarise(out)
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")

    cine_data = None
    saved_env = os.environ.get("GAUSSIAN_MRI_KERNELS")
    for kernels in args.kernels:
        run = out["runs"].setdefault(kernels, {})
        try:
            resolve_kernel_backend(kernels, dev)
        except ValueError as exc:
            run["skipped"] = str(exc)
            print(f"[{kernels}] skipped: {exc}", flush=True)
            save()
            continue
        os.environ["GAUSSIAN_MRI_KERNELS"] = kernels
        try:
            if "svr" not in args.skip:
                try:
                    run["svr"] = bench_svr(dev, kernels, args.quick)
                    print(f"[{kernels}] svr end to end {run['svr']['end_to_end_s']:.2f} s", flush=True)
                except Exception:  # noqa: BLE001
                    out["errors"][f"{kernels}.svr"] = traceback.format_exc()
                    print(out["errors"][f"{kernels}.svr"], file=sys.stderr, flush=True)
                save()
            if "cine" not in args.skip:
                try:
                    if cine_data is None:
                        t0 = time.perf_counter()
                        cine_data = _cine_data(args.quick)
                        out["cine_data"] = {"shape": list(cine_data[1].shape), "R": 8, "prepare_s": time.perf_counter() - t0}
                    run["cine"] = bench_cine(dev, kernels, args.quick, cine_data, renders)
                    print(f"[{kernels}] cine fit {run['cine']['fit']['fit_s']:.2f} s, render "
                          f"{run['cine']['render']['single_frame_ms']['median']:.3f} ms/frame", flush=True)
                except Exception:  # noqa: BLE001
                    out["errors"][f"{kernels}.cine"] = traceback.format_exc()
                    print(out["errors"][f"{kernels}.cine"], file=sys.stderr, flush=True)
                save()
        finally:
            if saved_env is None:
                os.environ.pop("GAUSSIAN_MRI_KERNELS", None)
            else:
                os.environ["GAUSSIAN_MRI_KERNELS"] = saved_env
    save()
    print(json.dumps(out["table"], indent=2))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
