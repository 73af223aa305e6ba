"""CPU regression check: is the engine of the working tree slower on the CPU than that of a base revision?

The base revision (default ``f5da2e4``, before the GPU work) is checked out with ``git worktree add``
into a temporary folder; each timed run is a fresh subprocess that imports ``gaussian_mri`` from
either that folder or the working tree through ``PYTHONPATH`` (checked: the imported package must
come from that folder). Runs are interleaved (old, new, new, old, old, new, ...) so that drifts of
the machine's load hit both alike; every run uses the same inputs, read from the working tree, the
same seed and the same number of torch threads, and asks for the PyTorch kernels (``kernels="torch"``
where the config has the field, and ``GAUSSIAN_MRI_KERNELS=torch``). ``--kernels auto`` instead lets
each engine pick its CPU default, which measures what the compiled C kernels of the new engine buy
against an old engine that only has the PyTorch rasteriser.

* SVR: the six bundled real stacks + masks (``gaussian_mri/data/``) at 2 mm, ``--svr-gaussians``
  Gaussians, ``--svr-iterations`` iterations, slice motion and robust weights on, stack alignment off
  (SimpleITK registration, untouched by the GPU work, 8 s of noise), no maps; the fit time
  (``timings["fit_s"]``) and the whole ``reconstruct`` are reported.
* Cine: the small phantom of ``tests/test_cine_recon.py`` (10 frames, 48 x 40, 6 coils, GRO R = 8,
  given coil maps), ``--cine-gaussians`` Gaussians, ``--cine-steps`` steps; ``timings["fit"]``.

Reported: per metric the medians of old and new and ``new / old`` (median over runs, and the median
of the per-repeat ratios). A ratio above 1 means the working tree is slower.

Usage::

    python benchmarks/cpu_regression.py --repeats 3 --out benchmarks/results/cpu_regression.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKER = r'''
import dataclasses, json, os, sys, time
import numpy as np
import torch
torch.set_num_threads(int(os.environ["REG_THREADS"]))
import gaussian_mri
expected = os.path.realpath(os.environ["REG_ENGINE_ROOT"])
got = os.path.realpath(os.path.dirname(os.path.dirname(gaussian_mri.__file__)))
if got != expected:
    sys.exit(f"imported gaussian_mri from {got}, expected {expected}")
cfgin = json.loads(os.environ["REG_CONFIG"])
data = os.environ["REG_DATA"]

def with_kernels(cfg):
    if "kernels" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, kernels=cfgin["kernels"])
    return cfg

out = {"engine": got}
if cfgin["what"] == "svr":
    from gaussian_mri.image import read_image
    from gaussian_mri.svr.recon import SVRConfig, reconstruct
    stacks = [read_image(f"{data}/sub-01_run-{r}_T2w.nii.gz") for r in range(1, 7)]
    masks = [read_image(f"{data}/sub-01_run-{r}_T2w_mask.nii.gz") for r in range(1, 7)]
    cfg = with_kernels(SVRConfig(resolution_mm=2.0, n_gaussians=cfgin["n"], iterations=cfgin["iterations"],
                                 stack_alignment=False, maps=False, device="cpu", seed=0))
    t0 = time.perf_counter()
    res = reconstruct(stacks, masks, config=cfg)
    out.update(total_s=time.perf_counter() - t0, fit_s=res.timings["fit_s"], final_loss=res.losses[-1])
else:
    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.cine.recon import CineConfig, reconstruct
    from gaussian_mri.mri.fft import fft2c
    from gaussian_mri.mri.sampling import gro_mask
    rows, cols = slice(8, 56), slice(12, 52)
    sim = simulate_cine(n_frames=10, ny=64, nx=64, n_coils=6, pixel_spacing_mm=4.0, noise=0.0)
    images, maps = sim.images[:, rows, cols], sim.coil_maps[:, rows, cols]
    full = fft2c(torch.from_numpy(maps)[None] * torch.from_numpy(images)[:, None])
    mask = gro_mask(images.shape[1], images.shape[0], 8)
    cfg = with_kernels(CineConfig(n_gaussians=cfgin["n"], steps=cfgin["iterations"], frames_per_step=2, prune_every=100))
    t0 = time.perf_counter()
    res = reconstruct(full * mask[:, None, :, None], mask, torch.from_numpy(maps), config=cfg, device="cpu")
    out.update(total_s=time.perf_counter() - t0, fit_s=res.timings["fit"], final_loss=res.losses[-1])
print("REG_RESULT " + json.dumps(out))
'''


def run_one(engine_root: Path, what: str, n: int, iterations: int, threads: int, timeout: float,
            kernels: str = "torch") -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(engine_root), REG_ENGINE_ROOT=str(engine_root), REG_THREADS=str(threads),
               REG_DATA=str(ROOT / "gaussian_mri" / "data"), GAUSSIAN_MRI_KERNELS=kernels if kernels != "auto" else "",
               OMP_NUM_THREADS=str(threads),
               REG_CONFIG=json.dumps({"what": what, "n": n, "iterations": iterations, "kernels": kernels}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REG_RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{what} run with {engine_root} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(line[-1][len("REG_RESULT "):])
    res["process_s"] = wall
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="f5da2e4", help="git revision of the old engine (default f5da2e4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--svr-gaussians", type=int, default=1500)
    ap.add_argument("--svr-iterations", type=int, default=40)
    ap.add_argument("--cine-gaussians", type=int, default=600)
    ap.add_argument("--cine-steps", type=int, default=60)
    ap.add_argument("--skip", nargs="*", choices=["svr", "cine"], default=[])
    ap.add_argument("--timeout", type=float, default=600, help="per run, s")
    ap.add_argument("--kernels", default="torch", choices=["torch", "auto"],
                    help="torch: both engines on the PyTorch rasteriser (a regression check); auto: each engine's "
                         "CPU default (the compiled C kernels where the new engine has them)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cpu_regression.json")
    args = ap.parse_args()

    base_sha = subprocess.run(["git", "rev-parse", "--verify", f"{args.base}^{{commit}}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gaussian_mri"], cwd=ROOT, capture_output=True,
                           text=True).stdout.splitlines()
    tmp = Path(tempfile.mkdtemp(prefix="gaussian_mri_base_"))
    wt = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(wt), base_sha], cwd=ROOT, check=True, capture_output=True)
    cases = [(w, n, it) for w, n, it in (("svr", args.svr_gaussians, args.svr_iterations),
                                           ("cine", args.cine_gaussians, args.cine_steps)) if w not in args.skip]
    runs: dict[str, dict[str, list[dict]]] = {w: {"old": [], "new": []} for w, _, _ in cases}
    out = {
        "base": {"rev": args.base, "sha": base_sha},
        "new": {"head": head_sha, "working_tree_changes_in_gaussian_mri": dirty},
        "settings": {k: getattr(args, k) for k in ("repeats", "threads", "svr_gaussians", "svr_iterations",
                                                   "cine_gaussians", "cine_steps", "kernels")},
        "python": sys.executable,
        "load_avg_start": os.getloadavg(),
        "command": " ".join(["python", "benchmarks/cpu_regression.py", *sys.argv[1:]]),
    }
    try:
        for r in range(args.repeats):
            order = [("old", wt), ("new", ROOT)] if r % 2 == 0 else [("new", ROOT), ("old", wt)]
            for what, n, it in cases:
                for tag, root in order:
                    res = run_one(root, what, n, it, args.threads, args.timeout, args.kernels)
                    runs[what][tag].append(res)
                    print(f"repeat {r} {what} {tag}: fit {res['fit_s']:.2f} s, total {res['total_s']:.2f} s", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    summary = {}
    for what in runs:
        for metric in ("fit_s", "total_s"):
            old = np.array([x[metric] for x in runs[what]["old"]])
            new = np.array([x[metric] for x in runs[what]["new"]])
            summary[f"{what}_{metric}"] = {
                "old_median": float(np.median(old)), "new_median": float(np.median(new)),
                "new_over_old": float(np.median(new) / np.median(old)),
                "median_of_paired_ratios": float(np.median(new / old)),
                "old": old.tolist(), "new": new.tolist(),
            }
        summary[f"{what}_final_loss"] = {"old": [x["final_loss"] for x in runs[what]["old"]],
                                         "new": [x["final_loss"] for x in runs[what]["new"]]}
    out["summary"] = summary
    out["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: {m: v[m] for m in ("old_median", "new_median", "new_over_old", "median_of_paired_ratios")}
                      for k, v in summary.items() if "new_over_old" in v}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
