"""Default GaussianCine vs BART pics temporal TV (weight sweep) vs L+S on phantoms without the inverse crime.

Cases: every phantom of :mod:`cine_phantoms` (the project's heart drawn at 4x, BART's NIST phantom with
analytic k-space and BART coils, phantominator's dynamic rings with BART coils) x R (8, 16) x sampling
(GRO, variable-density random), 20 frames, 8 coils, complex k-space noise. Coil maps: ESPIRiT
(``CineConfig`` defaults), the same maps for every method: with GRO from the time-averaged
undersampled k-space (GRO covers the centre over the frames); with random VD, which leaves central
lines unsampled in every frame (at R = 16 only 55 of 128 lines are ever sampled), from a separate
calibration scan (the central 24 lines of the time-averaged, fully sampled noisy k-space).

Methods per case, all in this process on the same thread count (``--threads``, also BART's
``OMP_NUM_THREADS``), so wall-time ratios are measured in one run:

* zero-filled SENSE (density-compensated);
* BART ``pics -i 100 -R T:1024:0:lambda`` for every ``--tv-lams`` (default 5 weights);
* L+S (Otazo et al. 2015) for every ``--lps`` pair;
* the Gaussian model with ``CineConfig()`` defaults (``--gaussian-steps`` overrides the steps only).

Metrics: magnitudes inside the phantom's body mask after a least-squares gain (``magnitude_metrics``).

Usage::

    python benchmarks/cine_vs_bart.py [--phantoms heart bart-nist rings] [--R 8 16] [--masks gro vd] \
        [--skip-gaussian | --only-gaussian] [--tag TAG]
    python benchmarks/cine_vs_bart.py --summary results/cine_vs_bart_a.jsonl results/cine_vs_bart_b.jsonl

Rows go to ``benchmarks/results/cine_vs_bart[_TAG].jsonl`` as they are measured (a stopped run keeps
them); ``--summary`` merges row files into ``cine_vs_bart.md`` with one table per case and the verdict
(Gaussian vs the best TV weight on SSIM and on NRMSE, time ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cine_phantoms  # noqa: E402
from cine_simulated import machine_meta  # noqa: E402

from gaussian_mri.cine.recon import CineConfig, check_inputs, estimate_coil_maps, reconstruct  # noqa: E402
from gaussian_mri.commands.cine import magnitude_metrics  # noqa: E402
from gaussian_mri.mri.bart import bart_pics  # noqa: E402
from gaussian_mri.mri.baselines import lplus_s, zero_filled_sense  # noqa: E402
from gaussian_mri.mri.sampling import gro_mask, random_vd_mask  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TV_LAMS = [0.001, 0.003, 0.01, 0.03, 0.1]
LPS = [0.01, 0.0025, 0.05, 0.03]  # the METHODS default and the best of the earlier sweep (pairs)
CALIBRATION_LINES = 24


def sampling(kind: str, n_ky: int, n_frames: int, R: float) -> torch.Tensor:  # noqa: N803
    if kind == "gro":
        return gro_mask(n_ky, n_frames, R)
    if kind == "vd":
        return random_vd_mask(n_ky, n_frames, R, seed=1)
    raise ValueError(f"unknown sampling {kind!r} (gro, vd)")


def calibration_maps(full: torch.Tensor, lines: int = CALIBRATION_LINES) -> torch.Tensor:
    """ESPIRiT maps from a separate low-resolution calibration scan: the central ``lines`` ky lines of
    the time-averaged, fully sampled noisy k-space (a reference scan, as SENSE protocols acquire)."""
    n_ky = full.shape[2]
    mask = torch.zeros(1, n_ky, dtype=torch.bool)
    mask[0, n_ky // 2 - lines // 2 : n_ky // 2 + lines // 2] = True
    calib = full.mean(0, keepdim=True) * mask[:, None, :, None]
    kk, w, _ = check_inputs(calib, mask, None)
    return estimate_coil_maps(kk, w, CineConfig())


def run_case(ph, R, kind, args, emit) -> None:  # noqa: N803
    full = torch.from_numpy(ph.kspace)
    mask = sampling(kind, full.shape[2], full.shape[0], R)
    k = full * mask[:, None, :, None]
    t0 = time.perf_counter()
    if kind == "gro":  # GRO fills the k-space centre over time: maps from the time-averaged data
        kk, w, _ = check_inputs(k, mask, None)
        maps = estimate_coil_maps(kk, w, CineConfig())
    else:  # random VD leaves central lines unsampled in every frame: maps from a calibration scan
        maps = calibration_maps(full)
    t_maps = time.perf_counter() - t0

    def row(method, img, wall, **extra):
        m = magnitude_metrics(np.asarray(img), ph.reference, ph.body)
        emit({"phantom": ph.name, "R": R, "mask": kind, "method": method,
              **{q: m[q] for q in ("ssim", "psnr", "nrmse")}, "wall_s": wall, "espirit_s": t_maps, **extra})

    if not args.only_gaussian:
        t0 = time.perf_counter()
        row("zero-filled", zero_filled_sense(k, mask, maps, density_compensation=True), time.perf_counter() - t0)
        for lam in args.tv_lams:
            t0 = time.perf_counter()
            img = bart_pics(k, mask, maps, regularizer="tv", lam=lam, iterations=args.iterations, threads=args.threads)
            row(f"BART TV {lam:g}", img, time.perf_counter() - t0, kind="tv", lam=lam)
        for ll, ls in zip(args.lps[0::2], args.lps[1::2]):
            t0 = time.perf_counter()
            img = lplus_s(k, mask, maps, lambda_l=ll, lambda_s=ls)
            row(f"L+S {ll:g}/{ls:g}", img, time.perf_counter() - t0, kind="lps")
    if not args.skip_gaussian:
        cfg = CineConfig() if args.gaussian_steps is None else CineConfig(steps=args.gaussian_steps)
        res = reconstruct(k, mask, maps, config=cfg, device="cpu", spacing_mm=(ph.pixel_mm,) * 2)
        row("Gaussian (defaults)" if args.gaussian_steps is None else f"Gaussian steps={cfg.steps}",
            res.recon, res.timings["total"], kind="gaussian", timings=res.timings,
            steps_run=len(res.losses), n_final=res.n_gaussians[-1])


def summary(files: list[str]) -> str:
    latest: dict = {}  # a re-run of a case replaces its earlier rows
    for f in files:
        for line in Path(f).read_text().splitlines():
            r = json.loads(line) if line.startswith("{") else {}
            if "method" in r:
                latest[(r["phantom"], r["R"], r["mask"], r["method"])] = r
    rows = list(latest.values())
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        cases.setdefault((r["phantom"], r["R"], r["mask"]), []).append(r)
    out = ["| phantom | R | mask | best TV (SSIM) | best TV (NRMSE) | best L+S | Gaussian | SSIM | NRMSE | time G / TV |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    detail = []
    for (ph, R, kind), rs in sorted(cases.items()):
        tv = [r for r in rs if r.get("kind") == "tv"]
        lps = [r for r in rs if r.get("kind") == "lps"]
        gs = [r for r in rs if r.get("kind") == "gaussian"]
        detail += [f"\n**{ph}, R = {R:g}, {kind}**\n", "| method | SSIM | PSNR (dB) | NRMSE | wall (s) |", "|---|---|---|---|---|"]
        detail += [f"| {r['method']} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['nrmse']:.4f} | {r['wall_s']:.1f} |" for r in rs]
        if not (tv and gs):
            continue
        bs, bn = max(tv, key=lambda r: r["ssim"]), min(tv, key=lambda r: r["nrmse"])
        bl = max(lps, key=lambda r: r["ssim"]) if lps else None
        g = gs[-1]
        ws = "win" if g["ssim"] > bs["ssim"] else f"loss {g['ssim'] - bs['ssim']:+.4f}"
        wn = "win" if g["nrmse"] < bn["nrmse"] else f"loss {g['nrmse'] - bn['nrmse']:+.4f}"
        lp = f"{bl['ssim']:.4f} / {bl['nrmse']:.4f}" if bl else "-"
        out.append(f"| {ph} | {R:g} | {kind} | {bs['ssim']:.4f} ({bs['lam']:g}) | {bn['nrmse']:.4f} ({bn['lam']:g}) | {lp} "
                   f"| {g['ssim']:.4f} / {g['nrmse']:.4f} | {ws} | {wn} | {g['wall_s'] / bs['wall_s']:.1f} |")
    head = [f"Rows merged from {', '.join(Path(f).name for f in files)} (a later file's row replaces an earlier "
            "one of the same case and method). Verdict columns: the Gaussian against the best TV weight by "
            "SSIM and by NRMSE; time: Gaussian wall / wall of the best-SSIM TV weight.", ""]
    text = "\n".join(head + out + detail) + "\n"
    (RESULTS / "cine_vs_bart.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phantoms", nargs="+", default=list(cine_phantoms.PHANTOMS))
    ap.add_argument("--R", type=float, nargs="+", default=[8, 16])
    ap.add_argument("--masks", nargs="+", default=["gro", "vd"])
    ap.add_argument("--tv-lams", type=float, nargs="*", default=TV_LAMS)
    ap.add_argument("--lps", type=float, nargs="*", default=LPS, help="L+S pairs lambda_L lambda_S ...")
    ap.add_argument("--iterations", type=int, default=100, help="BART pics -i")
    ap.add_argument("--gaussian-steps", type=int, default=None)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-gaussian", action="store_true")
    ap.add_argument("--only-gaussian", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--summary", nargs="+", metavar="JSONL")
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("cine_vs_bart" + (f"_{args.tag}" if args.tag else "") + ".jsonl")
    with path.open("a") as fh:
        def emit(r: dict) -> None:
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            print(json.dumps({q: r[q] for q in ("phantom", "R", "mask", "method", "ssim", "nrmse", "wall_s") if q in r} or r), flush=True)

        emit({"meta": {**machine_meta(args.threads), "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M")}})
        for name in args.phantoms:
            ph = cine_phantoms.make(name, n_frames=args.frames, n_coils=args.coils)
            emit({"phantom": name, "description": ph.description, "noise_std": ph.noise_std})
            for R in args.R:
                for kind in args.masks:
                    run_case(ph, R, kind, args, emit)


if __name__ == "__main__":
    main()
