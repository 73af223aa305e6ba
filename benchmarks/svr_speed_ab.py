"""Before/after of an SVR engine change in one script: time of the fit and quality against the atlas.

Each engine is a folder holding a ``gaussian_mri`` package (e.g. a copy of the tree before the change,
or a ``git worktree``); every run is a fresh child process with ``PYTHONPATH`` set to that folder, and
the runs of the engines are interleaved (old, new, old, new, ...) so that the load of a shared machine
falls on both alike. Cases:

* ``demo``: the bundled real subject (6 stacks + masks), ``--demo-iterations`` steps, no stack
  alignment (it is not what changes), time of the fit;
* ``ga21``: 3 stacks simulated from the GA21 atlas (3 mm, 1 mm in-plane, the moderate motion of
  ``svr_simulated.py`` + 10 % signal voids/drop-outs), the full preset; PSNR/SSIM inside the brain mask
  after rigid alignment to the ground truth (``svr_simulated.evaluate``), and the fit's time.

Usage::

    python benchmarks/svr_speed_ab.py --old /tmp/base --new . --repeats 2 --out benchmarks/results/svr_speed_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(case: str, iterations: int | None, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    import gaussian_mri
    from gaussian_mri.image import read_image
    from gaussian_mri.svr import preset, reconstruct

    out: dict = {"engine": str(Path(gaussian_mri.__file__).parent.parent)}
    if case == "demo":
        data = Path(gaussian_mri.__file__).parent / "data"
        stacks = [read_image(data / f"sub-01_run-{i}_T2w.nii.gz") for i in range(1, 7)]
        masks = [read_image(data / f"sub-01_run-{i}_T2w_mask.nii.gz") for i in range(1, 7)]
        cfg = preset("fast", iterations=iterations or 300, maps=False, stack_alignment=False)
        t0 = time.perf_counter()
        res = reconstruct(stacks, masks, config=cfg)
    else:
        sys.path.insert(0, str(HERE))
        from svr_simulated import ATLASES, MOTION, SHARED, evaluate

        from gaussian_mri.svr.simulate import simulate_stacks

        gt = read_image(SHARED / ATLASES["GA21"] / "srr.nii.gz")
        mask = read_image(SHARED / ATLASES["GA21"] / "mask.nii.gz")
        sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=MOTION, void_fraction=0.1, seed=2)
        cfg = preset("fast", maps=False, **({"iterations": iterations} if iterations else {}))
        t0 = time.perf_counter()
        res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=cfg)
        metrics, _ = evaluate(res.volume, gt, mask)
        out.update(metrics)
    out.update(fit_s=res.timings["fit_s"], total_s=time.perf_counter() - t0, loss=res.losses[-1],
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", help="folder holding the old gaussian_mri package (required)")
    ap.add_argument("--new", default=str(HERE.parent), help="folder holding the new gaussian_mri package")
    ap.add_argument("--cases", nargs="+", default=["demo", "ga21"], choices=["demo", "ga21"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--demo-iterations", type=int, default=60)
    ap.add_argument("--ga21-iterations", type=int, help="default: the preset's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "svr_speed_ab.json"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, it, th = args.child
        print(json.dumps(child(case, int(it) or None, int(th))), flush=True)
        return
    if not args.old:
        ap.error("--old is required")
    engines = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    runs: dict = {case: {"old": [], "new": []} for case in args.cases}
    for case in args.cases:
        it = args.demo_iterations if case == "demo" else (args.ga21_iterations or 0)
        for rep in range(args.repeats):
            for name in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                env = {**os.environ, "PYTHONPATH": engines[name], "OMP_NUM_THREADS": str(args.threads)}
                load = Path("/proc/loadavg").read_text().split()[:3]
                proc = subprocess.run([sys.executable, __file__, "--child", case, str(it), str(args.threads)],
                                      env=env, capture_output=True, text=True, cwd="/", check=False)
                row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-3000:]}
                row["loadavg_before"] = load
                runs[case][name].append(row)
                print(case, name, row, flush=True)
    summary = {}
    for case, by in runs.items():
        s = {}
        for key in ("fit_s", "total_s", "psnr", "ssim"):
            old = [r[key] for r in by["old"] if key in r]
            new = [r[key] for r in by["new"] if key in r]
            if old and new:
                s[key] = {"old_median": statistics.median(old), "new_median": statistics.median(new),
                          "new_over_old": statistics.median(new) / statistics.median(old)}
        summary[case] = s
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"engines": engines, "argv": sys.argv[1:], "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
