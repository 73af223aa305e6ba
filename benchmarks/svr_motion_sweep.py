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

Writes ``benchmarks/results/svr_motion_sweep.json`` and ``svr_motion_sweep.png``. With ``--severe-motion`` the
reconstruction registers every slice to the current volume in rounds during the fit (``SEVERE_MOTION_ROUNDS``,
:mod:`gaussian_mri.svr.slice_register`); ``--compare`` draws a previous run (e.g. the fit alone) dashed::

    python benchmarks/svr_motion_sweep.py --severe-motion --compare benchmarks/results/svr_motion_sweep.json \
        --out benchmarks/results/svr_motion_sweep_severe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy as np  # noqa: E402
from svr_simulated import ATLASES, SHARED, _corners, evaluate, pose_error_mm, pose_error_procrustes_mm  # noqa: E402

from gaussian_mri.image import read_image  # noqa: E402
from gaussian_mri.svr import SEVERE_MOTION_ROUNDS, preset, reconstruct  # noqa: E402
from gaussian_mri.svr.baseline import naive_average  # noqa: E402
from gaussian_mri.svr.simulate import MotionSpec, simulate_stacks  # noqa: E402


def slice_pose_errors(res, sims, align) -> tuple[float, str]:
    """Median over slices of the mean corner displacement (mm), and how many slices are off by > 2 mm."""
    true, est = _corners(res, sims)
    inv = np.linalg.inv(align)
    est = est @ inv[:3, :3].T + inv[:3, 3]
    err = np.linalg.norm(true - est, axis=2).mean(1)
    return float(np.median(err)), f"{int((err > 2).sum())}/{len(err)}"


def plot(rows: list[dict], path: Path, compare: list[dict] | None = None, labels: tuple[str, str] = ("", "")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for atlas, colour in zip(sorted({r["atlas"] for r in rows}), ("tab:blue", "tab:red", "tab:green")):
        kw = {"color": colour}
        rs = sorted((r for r in rows if r["atlas"] == atlas), key=lambda r: r["scale"])
        x = [r["rotation_deg"] for r in rs]
        ax[0].plot(x, [r["gaussian"]["ssim"] for r in rs], "o-", label=f"{atlas} GaussianSVR{labels[0]}", **kw)
        ax[0].plot(x, [r["naive"]["ssim"] for r in rs], "x--", alpha=0.4, label=f"{atlas} naive average", **kw)
        ax[1].plot(x, [r["gaussian"]["psnr"] for r in rs], "o-", label=atlas + labels[0], **kw)
        ax[2].plot(x, [r["pose_error_mm"] for r in rs], "o-", label=atlas + labels[0], **kw)
        if "pose_error_median_mm" in rs[0]:
            ax[2].plot(x, [r["pose_error_median_mm"] for r in rs], "^:", label=f"{atlas}{labels[0]} (median slice)", **kw)
        for r0 in [r for r in (compare or []) if r["atlas"] == atlas][:1]:
            cs = sorted((r for r in compare if r["atlas"] == atlas), key=lambda r: r["scale"])
            xc = [r["rotation_deg"] for r in cs]
            ax[0].plot(xc, [r["gaussian"]["ssim"] for r in cs], "s--", alpha=0.6, label=f"{atlas}{labels[1]}", **kw)
            ax[1].plot(xc, [r["gaussian"]["psnr"] for r in cs], "s--", alpha=0.6, label=f"{atlas}{labels[1]}", **kw)
            ax[2].plot(xc, [r["pose_error_mm"] for r in cs], "s--", alpha=0.6, label=f"{atlas}{labels[1]}", **kw)
    ax[0].axhline(0.92, color="grey", lw=0.8, ls=":")
    ax[2].axhline(1.0, color="grey", lw=0.8, ls=":")
    for a, t in zip(ax, ("SSIM (brain mask)", "PSNR (dB)", "slice pose error (mm)")):
        a.set_xlabel("peak rotation per stack (deg); translation = deg / 2 mm")
        a.set_title(t)
        a.grid(alpha=0.3)
    for a in ax:
        a.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atlas", nargs="+", default=["GA21", "GA29"], choices=sorted(ATLASES))
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 1, 2, 3, 4])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                    help="SVRConfig overrides, e.g. registration_rounds=[0.15,0.3] (JSON values)")
    ap.add_argument("--severe-motion", action="store_true", help="reconstruct with registration_rounds=SEVERE_MOTION_ROUNDS")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot of --out (and --compare) without running")
    ap.add_argument("--compare", type=Path, help="a previous run's JSON, drawn dashed in the plot")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "svr_motion_sweep.json")
    args = ap.parse_args()
    compare = json.loads(args.compare.read_text())["rows"] if args.compare else None
    labels = (" +registration" if args.severe_motion else "", " fit only")
    if args.plot_only:
        plot(json.loads(args.out.read_text())["rows"], args.out.with_suffix(".png"), compare, labels)
        return
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        value = json.loads(value)
        overrides[key] = tuple(value) if isinstance(value, list) else value
    if args.severe_motion:
        overrides["registration_rounds"] = SEVERE_MOTION_ROUNDS
    rows: list[dict] = []
    for atlas in args.atlas:
        folder = SHARED / ATLASES[atlas]
        gt, mask = read_image(folder / "srr.nii.gz"), read_image(folder / "mask.nii.gz")
        for scale in args.scales:
            motion = MotionSpec(rotation_deg=4.0 * scale, translation_mm=2.0 * scale, smoothness_slices=4.0, interleave=2)
            sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=motion, seed=1)
            t0 = time.perf_counter()
            res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=preset(args.preset, motion="slice", **overrides))
            wall = time.perf_counter() - t0
            scores, align = evaluate(res.volume, gt, mask)
            median_err, over_2mm = slice_pose_errors(res, sims, align)
            naive, _ = evaluate(naive_average([s.image for s in sims], res.volume), gt, mask)
            row = {"atlas": atlas, "scale": scale, "rotation_deg": 4.0 * scale, "translation_mm": 2.0 * scale,
                   "gaussian": scores, "naive": naive, "pose_error_mm": pose_error_mm(res, sims, align),
                   "pose_error_procrustes_mm": pose_error_procrustes_mm(res, sims),
                   "pose_error_median_mm": median_err, "slices_over_2mm": over_2mm, "seconds": wall,
                   "motion": motion.as_dict()}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("atlas", "scale", "gaussian", "naive", "pose_error_mm", "pose_error_median_mm", "seconds")}),
                  flush=True)
            args.out.write_text(json.dumps({"preset": args.preset, "overrides": args.set, "severe_motion": args.severe_motion, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"), compare, labels)


if __name__ == "__main__":
    main()
