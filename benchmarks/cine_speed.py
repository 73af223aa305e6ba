"""Speed and memory of GaussianCine: training time, per-frame rendering time at 1x, peak memory.

Usage::

    python benchmarks/cine_speed.py [--device cpu|cuda] [--steps N] [--R 8] [--renders 200] [--threads 1]

Data: ``simulate_cine(n_coils=12)`` (24 frames, 160 x 192), GRO at ``--R``, ESPIRiT maps (as in
``benchmarks/cine_simulated.py``). Trains with the default :class:`CineConfig` (``--steps`` overrides
only the step count; default: CineConfig's), then renders the trained model at 1x:

* single frame: ``model.render([t])`` for ``t`` cycling over the frames, ``--renders`` times;
* all frames: ``model.render(range(T))``, ``max(--renders // T, 5)`` times, reported per frame (/ T).

Medians are reported (and min / p90). Peak memory: ``ru_maxrss`` of this process (whole process,
includes Python, torch and the data) after data preparation, after training and after rendering; on
CUDA also ``torch.cuda.max_memory_allocated``. Writes ``benchmarks/results/cine_speed_<device>.json``.
The CUDA path has not been run yet (no GPU where this was written).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cine_simulated import machine_meta, metric_row, undersample  # noqa: E402

from gaussian_mri.cine.phantom import simulate_cine  # noqa: E402
from gaussian_mri.cine.recon import CineConfig, reconstruct  # noqa: E402


def maxrss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, n: int, sync) -> list[float]:
    out = []
    for i in range(n):
        sync()
        t0 = time.perf_counter()
        fn(i)
        sync()
        out.append(time.perf_counter() - t0)
    return out


def summary(times: list[float], per: float = 1.0) -> dict:
    t = np.asarray(times) / per
    return {"median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(t.min()),
            "p90_ms": 1e3 * float(np.percentile(t, 90)), "n": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: CineConfig().steps)")
    ap.add_argument("--R", type=float, default=8)
    ap.add_argument("--renders", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="output JSON (default results/cine_speed_<device>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    sim = simulate_cine(n_coils=12)
    k, mask, maps, _ = undersample(sim, args.R)
    rss_data = maxrss_mib()
    cfg = CineConfig() if args.steps is None else CineConfig(steps=args.steps)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    res = reconstruct(k, mask, maps, config=cfg, device=dev, spacing_mm=(sim.pixel_spacing_mm,) * 2)
    wall_train = time.perf_counter() - t0
    rss_train = maxrss_mib()
    cuda_train = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
    quality = metric_row(args.R, "Gaussian (default CineConfig)", res.recon.numpy(), sim.images, sim.body_mask,
                         res.timings["total"])

    model = res.model.to(dev)
    n_t = model.n_frames
    with torch.no_grad():
        for _ in range(3):  # warm-up
            model.render([0])
            model.render(list(range(n_t)))
        single = timed(lambda i: model.render([i % n_t]), args.renders, sync)
        n_all = max(args.renders // n_t, 5)
        every = timed(lambda i: model.render(list(range(n_t))), n_all, sync)
    rss_render = maxrss_mib()

    out = {
        "device": str(dev),
        "config": asdict(cfg),
        "data": f"simulate_cine defaults, 12 coils, GRO R={args.R:g}, frames x ky x kx = {tuple(k.shape[i] for i in (0, 2, 3))}",
        "n_gaussians": {"initial": cfg.n_gaussians, "final": res.n_gaussians[-1]},
        "training": {
            "steps": cfg.steps,
            "frames_per_step": cfg.frames_per_step,
            "fit_s": res.timings["fit"],
            "per_step_ms": 1e3 * res.timings["fit"] / cfg.steps,
            "reconstruct_total_s": res.timings["total"],
            "wall_s": wall_train,
            "timings_s": res.timings,
        },
        "render_1x": {
            "image": f"{model.height} x {model.width}",
            "single_frame": summary(single),
            "all_frames_per_frame": {**summary(every, per=n_t), "frames_per_call": n_t},
        },
        "peak_memory": {
            "ru_maxrss_MiB_after_data": rss_data,
            "ru_maxrss_MiB_after_training": rss_train,
            "ru_maxrss_MiB_after_render": rss_render,
            "cuda_max_allocated_MiB_training": cuda_train,
        },
        "quality": {k_: quality[k_] for k_ in ("ssim", "psnr", "nrmse")},
        **machine_meta(args.threads),
        "command": " ".join(["python", "benchmarks/cine_speed.py", *sys.argv[1:]]),
    }
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(dev)
    path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"cine_speed_{dev.type}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k_: out[k_] for k_ in ("training", "render_1x", "peak_memory", "quality", "load_avg")}, indent=2))


if __name__ == "__main__":
    main()
