"""GaussianCine vs BART ``pics`` (temporal TV, LLR) on the simulated cine, read through ISMRMRD.

Data path: ``simulate_cine(n_coils=12)`` -> ``write_cine_ismrmrd`` (fully sampled, readout
oversampling 2, 4 noise scans, as ``gaussian-mri simulate-cine`` writes it) -> ``read_cine_ismrmrd``
-> retrospective GRO undersampling at each R -> ESPIRiT maps from the time-averaged undersampled
k-space (the same maps for every method) -> zero-filled, BART ``pics`` sweeps and the Gaussian model.

Usage::

    python benchmarks/cine_bart.py --R 8 16 [--tv-lams ... --llr-lams ... --iterations 100 \
        --steps 600 --threads 1 --skip-gaussian]

Writes ``benchmarks/results/cine_bart[_TAG].json`` and ``.md``. Metrics, wall-time caveats and the
Gaussian config are those of ``benchmarks/cine_simulated.py`` (its functions are reused). BART runs
with ``OMP_NUM_THREADS = --threads`` on data normalised by ``max |E^H y|`` with ``-w 1``
(:func:`gaussian_mri.mri.bart.bart_pics`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cine_simulated import gaussian_config, machine_meta, metric_row, undersample, write_results  # noqa: E402

from gaussian_mri.cine.phantom import simulate_cine  # noqa: E402
from gaussian_mri.cine.recon import reconstruct  # noqa: E402
from gaussian_mri.mri.bart import bart_executable, bart_pics  # noqa: E402
from gaussian_mri.mri.baselines import zero_filled_sense  # noqa: E402
from gaussian_mri.mri.ismrmrd_io import read_cine_ismrmrd, write_cine_ismrmrd  # noqa: E402

TV_LAMS = [0.001, 0.003, 0.01, 0.03]
LLR_LAMS = [0.001, 0.003, 0.01, 0.03]


def ismrmrd_roundtrip(sim, folder: Path):
    """Write ``sim`` fully sampled to ISMRMRD and read it back; return ``(kspace, info)``."""
    path = write_cine_ismrmrd(
        folder / "cine.h5", sim.kspace, readout_oversampling=2, fov_mm=sim.fov_mm,
        frame_times_ms=sim.frame_times_ms, n_noise_scans=4, noise_std=max(sim.noise_std, 1e-12), seed=3,
    )
    cine = read_cine_ismrmrd(path)
    ref = np.asarray(sim.kspace)
    err = float(np.linalg.norm(cine.kspace - ref) / np.linalg.norm(ref))
    info = {
        "file": "cine.h5 (readout oversampling 2, 4 noise scans)",
        "shape": list(cine.shape),
        "all_lines_read": bool(cine.mask.all()),
        "rel_l2_diff_to_simulated_kspace": err,
        "bit_identical_to_simulated_kspace": bool(np.array_equal(cine.kspace, ref)),
    }
    print(info, flush=True)
    return cine.kspace, info


def merge(files: list[str], stem: str) -> None:
    """Combine rows of partial runs (result ``.json`` files or logs with one JSON row a line) into ``stem``.

    Rows are de-duplicated on ``(R, method)`` (first kept) and sorted by R; meta comes from the first
    ``.json`` file, with the list of sources and the load averages of every partial run.
    """
    rows, seen, meta, loads = [], set(), None, []
    for f in files:
        text = Path(f).read_text()
        if f.endswith(".json"):
            d = json.loads(text)
            meta = meta or dict(d["meta"])
            loads.append(d["meta"].get("load_avg"))
            new = d["rows"]
        else:
            new = [json.loads(line) for line in text.splitlines() if line.startswith('{"R"')]
        for r in new:
            if (r["R"], r["method"]) not in seen:
                seen.add((r["R"], r["method"]))
                rows.append(r)
    rows.sort(key=lambda r: r["R"])
    meta = {**(meta or {}), "merged_from": [Path(f).name for f in files], "load_avg_partial_runs": loads}
    print(write_results(stem, meta, rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--R", type=float, nargs="+", default=[8, 16])
    ap.add_argument("--tv-lams", type=float, nargs="*", default=TV_LAMS)
    ap.add_argument("--llr-lams", type=float, nargs="*", default=LLR_LAMS)
    ap.add_argument("--iterations", type=int, default=100, help="BART pics -i")
    ap.add_argument("--llr-block", type=int, default=8)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--n-gaussians", type=int, default=6000)
    ap.add_argument("--frames-per-step", type=int, default=4)
    ap.add_argument("--lambda", dest="lam", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-gaussian", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", nargs="+", metavar="FILE",
                    help="only combine partial results (.json) / logs into cine_bart[_TAG] and exit")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, "cine_bart" + (f"_{args.tag}" if args.tag else ""))
        return
    torch.set_num_threads(args.threads)
    sim = simulate_cine(n_coils=12)
    ref, body = sim.images, sim.body_mask
    with tempfile.TemporaryDirectory(prefix="cine_bart_") as tmp:
        full, io_info = ismrmrd_roundtrip(sim, Path(tmp))
    rows: list[dict] = []
    for R in args.R:
        k, mask, maps, t_maps = undersample(sim, R, kspace=full)
        print(f"R={R:g}: {int(mask.sum())} of {mask.numel()} lines, ESPIRiT {t_maps:.1f} s", flush=True)

        def add(method, img, wall, **extra):
            rows.append(metric_row(R, method, img, ref, body, wall, **extra))

        t0 = time.perf_counter()
        zf = zero_filled_sense(k, mask, maps, density_compensation=True).numpy()
        add("zero-filled (density-compensated)", zf, time.perf_counter() - t0)
        for reg, lams in (("tv", args.tv_lams), ("llr", args.llr_lams)):
            for lam in lams:
                t0 = time.perf_counter()
                img = bart_pics(k, mask, maps, regularizer=reg, lam=lam, iterations=args.iterations,
                                llr_block=args.llr_block, threads=args.threads).numpy()
                name = "BART pics temporal TV (-R T:1024:0:" if reg == "tv" else "BART pics LLR (-R L:7:7:"
                add(f"{name}{lam:g}) -i {args.iterations}", img, time.perf_counter() - t0, regularizer=reg, lam=lam)
        if not args.skip_gaussian:
            cfg = gaussian_config(args.steps, args.n_gaussians, args.frames_per_step, args.lam)
            res = reconstruct(k, mask, maps, config=cfg, device="cpu", spacing_mm=(sim.pixel_spacing_mm,) * 2)
            add(f"Gaussian M={args.n_gaussians} steps={args.steps} B={args.frames_per_step} lambda={args.lam:g}",
                res.recon.numpy(), res.timings["total"], n_final=res.n_gaussians[-1], timings=res.timings)
        rows[-1]["espirit_s"] = t_maps
    bart_version = subprocess.run([bart_executable(), "version"], capture_output=True, text=True).stdout.strip()
    meta = {
        "phantom": "simulate_cine defaults (24 frames, 160x192, 1.8 mm, noise 0.02), 12 coils",
        "data_path": "simulate -> write_cine_ismrmrd (fully sampled) -> read_cine_ismrmrd -> retrospective GRO",
        "ismrmrd": io_info,
        "sampling": "GRO (s=2.2, alpha=3)",
        "coil_maps": "ESPIRiT (calib 16, kernel 6) from the time-averaged undersampled k-space, shared",
        "bart": f"{bart_version}; pics -i {args.iterations} -w 1 on k-space / max|E^H y|; LLR -b {args.llr_block}",
        "metrics": "magnitude, inside sim.body_mask, least-squares gain per method; SSIM gaussian 11x11 sigma 1.5",
        **machine_meta(args.threads),
    }
    print(write_results("cine_bart" + (f"_{args.tag}" if args.tag else ""), meta, rows))


if __name__ == "__main__":
    main()
