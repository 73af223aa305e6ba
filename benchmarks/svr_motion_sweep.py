"""GaussianSVR against motion magnitude: image quality and slice pose error from 0.5x to 4x the moderate motion.

The moderate scenario of ``svr_simulated.py`` (smooth per-stack paths reaching 4 deg and 2 mm) scaled by
``--scales`` (rotation and translation both), acquired interleaved (2 passes: neighbouring slices are
half a stack apart in time, as in fetal single-shot stacks), 3 orthogonal stacks of 3 mm, 1 mm in-plane,
seed 1, for each atlas age in ``--atlas``; reconstruction with ``--preset`` (default ``fast``). Metrics as in
``svr_simulated.py``: PSNR/SSIM inside the brain mask after rigid alignment to the truth, slice pose error =
mean displacement of the slice corners after that alignment (and after a Procrustes fit of the estimated to
the true slice frames), and the naive average for scale.

Usage::

    python benchmarks/svr_motion_sweep.py [--atlas GA21 GA29] [--scales 0.5 1 2 3 4] [--preset fast]

Writes ``benchmarks/results/svr_motion_sweep.json`` and ``svr_motion_sweep.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from svr_simulated import ATLASES, SHARED, evaluate, pose_error_mm, pose_error_procrustes_mm  # noqa: E402

from gaussian_mri.image import read_image  # noqa: E402
from gaussian_mri.svr import preset, reconstruct  # noqa: E402
from gaussian_mri.svr.baseline import naive_average  # noqa: E402
from gaussian_mri.svr.simulate import MotionSpec, simulate_stacks  # noqa: E402


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for atlas in sorted({r["atlas"] for r in rows}):
        rs = sorted((r for r in rows if r["atlas"] == atlas), key=lambda r: r["scale"])
        x = [r["rotation_deg"] for r in rs]
        ax[0].plot(x, [r["gaussian"]["ssim"] for r in rs], "o-", label=f"{atlas} GaussianSVR")
        ax[0].plot(x, [r["naive"]["ssim"] for r in rs], "x--", label=f"{atlas} naive average")
        ax[1].plot(x, [r["gaussian"]["psnr"] for r in rs], "o-", label=atlas)
        ax[2].plot(x, [r["pose_error_mm"] for r in rs], "o-", label=atlas)
    ax[0].axhline(0.92, color="grey", lw=0.8, ls=":")
    ax[2].axhline(1.0, color="grey", lw=0.8, ls=":")
    for a, t in zip(ax, ("SSIM (brain mask)", "PSNR (dB)", "slice pose error (mm)")):
        a.set_xlabel("peak rotation per stack (deg); translation = deg / 2 mm")
        a.set_title(t)
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atlas", nargs="+", default=["GA21", "GA29"], choices=sorted(ATLASES))
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 1, 2, 3, 4])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "svr_motion_sweep.json")
    args = ap.parse_args()
    rows: list[dict] = []
    for atlas in args.atlas:
        folder = SHARED / ATLASES[atlas]
        gt, mask = read_image(folder / "srr.nii.gz"), read_image(folder / "mask.nii.gz")
        for scale in args.scales:
            motion = MotionSpec(rotation_deg=4.0 * scale, translation_mm=2.0 * scale, smoothness_slices=4.0, interleave=2)
            sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=motion, seed=1)
            t0 = time.perf_counter()
            res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=preset(args.preset, motion="slice"))
            wall = time.perf_counter() - t0
            scores, align = evaluate(res.volume, gt, mask)
            naive, _ = evaluate(naive_average([s.image for s in sims], res.volume), gt, mask)
            row = {"atlas": atlas, "scale": scale, "rotation_deg": 4.0 * scale, "translation_mm": 2.0 * scale,
                   "gaussian": scores, "naive": naive, "pose_error_mm": pose_error_mm(res, sims, align),
                   "pose_error_procrustes_mm": pose_error_procrustes_mm(res, sims), "seconds": wall,
                   "motion": motion.as_dict()}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("atlas", "scale", "gaussian", "naive", "pose_error_mm", "seconds")}),
                  flush=True)
            args.out.write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
