"""Frozen vs moving undrawn frames in the cine fit (``CineConfig.freeze_undrawn_frames``), at equal steps.

Usage::

    python benchmarks/cine_frozen_frames.py [--runs frozen:1e-3:300 plain:1e-3:300 ...] [--size 96]
        [--frames 24] [--R 8] [--gaussians 2000] [--threads 1] [--out results/cine_frozen_frames.json]

Each run is ``MODE:LAMBDA:STEPS``: ``frozen`` (per-frame parameters of undrawn frames keep their values
and Adam state, the default) or ``plain`` (plain Adam on every frame every step, the behaviour before),
``lambda_mu = lambda_c = LAMBDA``, ``STEPS`` Adam steps of 4 frames. Data: ``simulate_cine`` (``--frames``
frames of ``--size`` x ``--size``, 8 coils, noise 0.02, seed 0), GRO at ``--R``, the phantom's true coil
maps (no ESPIRiT, so only the fit differs). Metrics as ``cine_simulated.py``: magnitudes in the body mask
after a least-squares gain, SSIM / PSNR / NRMSE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gaussian_mri.cine.phantom import simulate_cine
from gaussian_mri.cine.recon import CineConfig, reconstruct
from gaussian_mri.metrics import nrmse, psnr, ssim
from gaussian_mri.mri.sampling import gro_mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["plain:1e-3:300", "frozen:1e-3:300", "frozen:6e-3:300"])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--R", type=float, default=8.0)
    ap.add_argument("--gaussians", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sim = simulate_cine(n_frames=args.frames, ny=args.size, nx=args.size, n_coils=8, noise=0.02, seed=0)
    mask = gro_mask(args.size, args.frames, args.R)
    kspace = torch.from_numpy(sim.kspace).to(torch.complex64) * mask[:, None, :, None]
    maps = torch.from_numpy(sim.coil_maps).to(torch.complex64)
    ref, body = np.abs(sim.images), sim.body_mask
    rows = []
    for spec in args.runs:
        mode, lam, steps = spec.split(":")
        if mode not in ("frozen", "plain"):
            sys.exit(f"run mode must be 'frozen' or 'plain', got {mode!r}")
        cfg = CineConfig(n_gaussians=args.gaussians, steps=int(steps), frames_per_step=4, prune_every=200,
                         lambda_mu=float(lam), lambda_c=float(lam), freeze_undrawn_frames=mode == "frozen")
        t0 = time.perf_counter()
        res = reconstruct(kspace, mask, maps, config=cfg, device="cpu", spacing_mm=(sim.pixel_spacing_mm,) * 2)
        wall = time.perf_counter() - t0
        x = np.abs(res.recon.numpy())
        x = x * float((x[:, body] * ref[:, body]).sum() / (x[:, body] ** 2).sum())
        row = {"mode": mode, "lambda": float(lam), "steps": int(steps), "wall_s": round(wall, 1),
               "ssim": ssim(x, ref, mask=body, time_axis=0), "psnr": psnr(x, ref, mask=body, time_axis=0),
               "nrmse": nrmse(x, ref, mask=body, time_axis=0)}
        rows.append(row)
        print(f"{mode:6s} lambda {float(lam):.0e} steps {steps:>5s}: SSIM {row['ssim']:.4f} PSNR {row['psnr']:.2f} "
              f"NRMSE {row['nrmse']:.4f} ({wall:.0f} s)", flush=True)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / "cine_frozen_frames.json")
    out.write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
