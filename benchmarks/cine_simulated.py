"""GaussianCine vs zero-filled vs L+S on the simulated cine (simulate_cine defaults, 12 coils, GRO).

Usage::

    python benchmarks/cine_simulated.py --R 8 16 [--steps 600 --n-gaussians 6000 --lambda 1e-3 --threads 1]

Writes ``benchmarks/results/cine_simulated[_TAG].json`` and ``.md``. Metrics: SSIM (Gaussian 11x11
window, sigma 1.5), PSNR, NRMSE of magnitudes inside the phantom's body mask, each method's magnitude
scaled by its least-squares gain to the reference (``gaussian_mri.commands.cine.magnitude_metrics``).
Coil maps: ESPIRiT from the time-averaged undersampled k-space, shared by every method. Wall times
are CPU seconds of this process on the machine it ran on (note the thread count and load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from gaussian_mri.cine.phantom import simulate_cine
from gaussian_mri.cine.recon import CineConfig, check_inputs, estimate_coil_maps, reconstruct
from gaussian_mri.commands.cine import magnitude_metrics
from gaussian_mri.mri.baselines import lplus_s, zero_filled_sense
from gaussian_mri.mri.sampling import gro_mask

LPS_SWEEP = [(0.01, 0.0025), (0.01, 0.01), (0.02, 0.005), (0.005, 0.001), (0.02, 0.01)]


def undersample(sim, R: float, kspace=None):
    """GRO-undersample ``kspace`` (default ``sim.kspace``) at ``R``; return ``(k, mask, maps, espirit_s)``.

    ``maps`` are ESPIRiT maps (``CineConfig`` defaults) from the time-averaged undersampled k-space.
    """
    full = torch.from_numpy(np.asarray(sim.kspace if kspace is None else kspace))
    mask = gro_mask(full.shape[2], full.shape[0], R)
    k = full * mask[:, None, :, None]
    kk, w, _ = check_inputs(k, mask, None)
    t0 = time.perf_counter()
    maps = estimate_coil_maps(kk, w, CineConfig())
    return k, mask, maps, time.perf_counter() - t0


def metric_row(R, method, img, ref, body, wall, **extra) -> dict:
    """One result row: SSIM / PSNR / NRMSE (and LS gain) of ``|img|`` vs ``|ref|`` inside ``body``."""
    m = magnitude_metrics(img, ref, body)
    row = {"R": R, "method": method, **{k_: m[k_] for k_ in ("ssim", "psnr", "nrmse", "gain")}, "wall_s": wall, **extra}
    print(json.dumps(row), flush=True)
    return row


def gaussian_config(steps: int, n_gaussians: int, frames_per_step: int, lam: float) -> CineConfig:
    """The benchmark's Gaussian config (CineConfig defaults except these; prune every steps // 3)."""
    return CineConfig(
        n_gaussians=n_gaussians, steps=steps, frames_per_step=frames_per_step,
        lambda_mu=lam, lambda_c=lam, prune_every=min(500, max(steps // 3, 1)),
    )


def machine_meta(threads: int) -> dict:
    return {
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "n_cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def write_results(stem: str, meta: dict, rows: list[dict]) -> str:
    """Write ``results/<stem>.json`` and ``.md``; return the markdown table."""
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| R | method | SSIM | PSNR (dB) | NRMSE | wall (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['R']:g} | {r['method']} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['nrmse']:.4f} | {r['wall_s']:.1f} |")
    table = "\n".join(lines)
    (out / f"{stem}.md").write_text("\n".join([f"{k}: {v}" for k, v in meta.items()] + [""]) + "\n" + table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--R", type=float, nargs="+", default=[8, 16])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--n-gaussians", type=int, default=6000)
    ap.add_argument("--frames-per-step", type=int, default=4)
    ap.add_argument("--lambda", dest="lam", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--n-lps", type=int, default=len(LPS_SWEEP), help="how many L+S settings of the sweep to run")
    ap.add_argument("--lps", type=float, nargs="*", default=None, help="L+S settings lambda_L lambda_S ... (replaces the sweep)")
    ap.add_argument("--skip-gaussian", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sim = simulate_cine(n_coils=12)
    ref = sim.images
    body = sim.body_mask
    rows = []
    for R in args.R:
        k, mask, maps, t_maps = undersample(sim, R)

        def add(method, img, wall, **extra):
            rows.append(metric_row(R, method, img, ref, body, wall, **extra))

        t0 = time.perf_counter()
        zf = zero_filled_sense(k, mask, maps, density_compensation=True).numpy()
        add("zero_filled (density-compensated)", zf, time.perf_counter() - t0)
        sweep = LPS_SWEEP[: args.n_lps] if args.lps is None else list(zip(args.lps[0::2], args.lps[1::2]))
        if not args.skip_gaussian:
            cfg = gaussian_config(args.steps, args.n_gaussians, args.frames_per_step, args.lam)
            res = reconstruct(k, mask, maps, config=cfg, device="cpu", spacing_mm=(sim.pixel_spacing_mm,) * 2)
            add(f"Gaussian M={args.n_gaussians} steps={args.steps} B={args.frames_per_step} lambda={args.lam}",
                res.recon.numpy(), res.timings["total"], n_final=res.n_gaussians[-1], timings=res.timings)
            rows[-1]["espirit_s"] = t_maps
        for ll, ls in sweep:
            t0 = time.perf_counter()
            img = lplus_s(k, mask, maps, lambda_l=ll, lambda_s=ls).numpy()
            add(f"L+S lambda_L={ll} lambda_S={ls}" + (" (default)" if (ll, ls) == (0.01, 0.0025) else ""), img,
                time.perf_counter() - t0)
    stem = "cine_simulated" + (f"_{args.tag}" if args.tag else "")
    meta = {
        "phantom": "simulate_cine defaults (24 frames, 160x192, 1.8 mm, noise 0.02), 12 coils",
        "sampling": "GRO (s=2.2, alpha=3)",
        "coil_maps": "ESPIRiT (calib 16, kernel 6) from the time-averaged undersampled k-space, shared",
        "metrics": "magnitude, inside sim.body_mask, least-squares gain per method; SSIM gaussian 11x11 sigma 1.5",
        **machine_meta(args.threads),
    }
    print(write_results(stem, meta, rows))


if __name__ == "__main__":
    main()
