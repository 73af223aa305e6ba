"""How the SVR cost grows: time and peak memory against brain size, stacks, in-plane and output resolution.

Every configuration runs in its own child process (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of
that process is its peak resident memory, torch's allocations included; the parent only collects
results). The stacks are simulated from the fetal atlas (``../shared/data/fetal/fidon-atlas``) with
moderate slice motion (``MOTION_PRESETS["moderate"]``), 3 mm slices; only ``reconstruct`` is timed.

Axes (one varied at a time around the base case: GA29, 3 stacks, 1.0 mm in-plane, 0.8 mm output):

* ``age``: GA21, GA29, and "GA33": the GA29 atlas with its voxels scaled by 1.12 (x1.4 in volume,
  about the growth from 29 to 33 weeks of gestation); there is no 33-week volume in the shared data;
* ``stacks``: 3, 6, 9, 12 (axial, coronal, sagittal, then the same three tilted by 15, 30, 45 degrees);
* ``inplane``: 1.0, 0.7, 0.5 mm pixels;
* ``output``: 0.8, 0.5 mm output voxels.

``--iterations N`` runs N optimisation steps instead of the preset's (the fit's time per step is
constant after the first steps, so ``fit_s / iterations`` times the preset's iterations estimates a
full run: ``est_total_s`` in the JSON); ``--plot`` writes a PNG. Usage::

    python benchmarks/svr_scaling.py --iterations 30                  # all axes, a reduced run
    python benchmarks/svr_scaling.py --axes stacks --iterations 300   # one axis, full runs
    python benchmarks/svr_scaling.py --child '{"age": "GA29", ...}'   # (internal: one configuration)

Writes ``benchmarks/results/svr_scaling.json`` (``--out``) and ``svr_scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ATLAS = HERE.parent.parent / "shared" / "data" / "fetal" / "fidon-atlas"
ATLASES = {"GA21": ("fetal_SB_atlas_GA21_notoperated", 1.0), "GA29": ("fetal_SB_atlas_GA29_operated", 1.0),
           "GA33": ("fetal_SB_atlas_GA29_operated", 1.12)}
BASE = {"age": "GA29", "stacks": 3, "inplane": 1.0, "output": 0.8}
AXES = {"age": ["GA21", "GA29", "GA33"], "stacks": [3, 6, 9, 12], "inplane": [1.0, 0.7, 0.5], "output": [0.8, 0.5]}


def _orientations(n: int):
    import numpy as np

    from gaussian_mri.svr.simulate import ORIENTATIONS

    names = ["axial", "coronal", "sagittal"]
    out = []
    for k in range(n):
        base = ORIENTATIONS[names[k % 3]]
        angle = np.deg2rad(15.0 * (k // 3))
        c, s = np.cos(angle), np.sin(angle)
        tilt = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) if k % 3 != 1 else np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        out.append(tilt @ base)
    return out


def child(spec: dict) -> dict:
    """One configuration, in this process: simulate, reconstruct, measure."""
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from gaussian_mri.image import Image, read_image
    from gaussian_mri.svr import preset, reconstruct
    from gaussian_mri.svr.simulate import simulate_stacks

    folder, scale = ATLASES[spec["age"]]
    gt = read_image(ATLAS / folder / "srr.nii.gz")
    mask = read_image(ATLAS / folder / "mask.nii.gz")
    if scale != 1.0:
        aff = gt.affine.copy()
        aff[:3, :3] *= scale
        gt, mask = Image(gt.data, aff), Image(mask.data, aff.copy())
    brain_ml = float((np.asarray(mask.data) > 0).sum() * abs(np.linalg.det(mask.affine[:3, :3])) / 1000)
    t0 = time.perf_counter()
    sims = simulate_stacks(gt, mask, orientations=_orientations(spec["stacks"]), thickness_mm=3.0,
                           inplane_mm=spec["inplane"], motion="moderate", seed=0)
    sim_s = time.perf_counter() - t0
    stacks, masks = [s.image for s in sims], [s.mask for s in sims]
    del sims, gt, mask
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    overrides = {"resolution_mm": spec["output"]}
    if spec.get("iterations"):
        overrides["iterations"] = spec["iterations"]
    for key in ("n_gaussians", "slices_per_batch"):
        if spec.get(key):
            overrides[key] = spec[key]
    cfg = preset(spec["preset"], **overrides)
    t0 = time.perf_counter()
    res = reconstruct(stacks, masks, config=cfg)
    total = time.perf_counter() - t0
    full_iters = preset(spec["preset"]).iterations
    tm = res.timings
    fit_full = tm["fit_s"] / tm["iterations"] * full_iters
    return {
        **spec,
        "brain_ml": brain_ml,
        "n_slices": int(sum(s.shape[0] for s in stacks)),
        "pixels": int(sum(np.prod(s.shape) for s in stacks)),
        "mask_pixels": int(sum((np.asarray(m.data) > 0).sum() for m in masks)),
        "n_gaussians": cfg.n_gaussians,
        "iterations_run": tm["iterations"],
        "simulate_s": sim_s,
        "total_s": total,
        "timings": tm,
        "fit_per_iteration_s": tm["fit_s"] / tm["iterations"],
        "est_total_s": total - tm["fit_s"] + fit_full,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_reconstruct_mib": rss_before,
        "output_shape": list(res.volume.shape),
    }


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for col, axis in enumerate(AXES):
        sel = [r for r in rows if r.get("axis") == axis and "error" not in r]
        xs = [str(r[axis]) for r in sel]
        axes[0, col].bar(xs, [r["est_total_s"] for r in sel], color="tab:blue", label="estimated full run")
        axes[0, col].bar(xs, [r["total_s"] for r in sel], color="tab:orange", alpha=0.8, label="measured (reduced)")
        axes[0, col].set_title(f"time vs {axis}")
        axes[0, col].set_ylabel("s")
        axes[1, col].bar(xs, [r["peak_rss_mib"] / 1024 for r in sel], color="tab:green")
        axes[1, col].axhline(4.0, color="red", lw=0.8, ls="--")
        axes[1, col].set_ylabel("peak RSS (GiB)")
        axes[1, col].set_xlabel(axis)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("GaussianSVR on CPU: time and peak memory (base GA29, 3 stacks, 1.0 mm in-plane, 0.8 mm output)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--axes", nargs="+", default=list(AXES), choices=list(AXES))
    ap.add_argument("--iterations", type=int, help="optimisation steps per run (default: the preset's)")
    ap.add_argument("--n-gaussians", type=int)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--out", default=str(HERE / "results" / "svr_scaling.json"))
    ap.add_argument("--plot", default=str(HERE / "results" / "svr_scaling.png"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    rows: list[dict] = []
    seen: dict[str, dict] = {}
    for axis in args.axes:
        for value in AXES[axis]:
            spec = {**BASE, axis: value, "iterations": args.iterations, "n_gaussians": args.n_gaussians,
                    "preset": args.preset, "threads": args.threads}
            key = json.dumps(spec, sort_keys=True)
            if key in seen:  # the base case is on every axis: run it once
                rows.append({**seen[key], "axis": axis})
                continue
            load0 = _loadavg()
            proc = subprocess.run([sys.executable, __file__, "--child", key], capture_output=True, text=True,
                                  timeout=args.timeout, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, check=False)
            try:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                row = {**spec, "error": proc.stderr[-2000:]}
            row["loadavg_before"], row["loadavg_after"] = load0, _loadavg()
            seen[key] = row
            rows.append({**row, "axis": axis})
            print(axis, value, {k: row.get(k) for k in ("total_s", "est_total_s", "fit_per_iteration_s", "peak_rss_mib", "n_slices", "error")}, flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"rows": rows, "argv": sys.argv[1:]}, indent=1))
    if args.plot:
        plot(rows, Path(args.plot))
    print("wrote", args.out, args.plot)


if __name__ == "__main__":
    main()
