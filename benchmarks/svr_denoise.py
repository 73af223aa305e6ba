"""Clean images: the noise-aware SVR fit (edge-preserving prior scaled by the stacks' noise) against the plain fit.

Simulated cases: the moderate motion of ``svr_simulated.py`` (3 orthogonal stacks, 3 mm, 1 mm in-plane, seed 1)
with Rician noise of ``--noise`` x the atlas's intensity range (0.015 gives 0.033 of the median intensity in the
stacks, what :func:`gaussian_mri.svr.noise.noise_sigma` measures on the real subject's stacks: 0.029-0.032).
Real case: the bundled subject (6 stacks, manual masks), run 2 held out (see below).

Metrics, on the ground truth's grid after rigid alignment and a least-squares intensity scale (as ``svr_simulated``):

* PSNR / SSIM inside the brain mask;
* grain: standard deviation inside the white matter (parcellation label 1 eroded by 2 voxels) and the mean local
  standard deviation over 3 x 3 x 3 neighbourhoods there, next to the same numbers of the ground truth;
* the standard deviation of the residual (reconstruction - ground truth) there: the grain the noise adds;
* edge sharpness: mean gradient magnitude of the reconstruction at the ground truth's strongest edges (the 10 % of
  brain voxels with the largest ground-truth gradient), divided by the ground truth's there (1 = as sharp).

On the real subject (no ground truth) run 2 is held out: fidelity is the held-out NCC of ``svr_real.py`` (the
held-out stack simulated from the volume through its PSF), grain and edges are measured on the volumes' own
grid against the plain fit (:func:`score_real`).

``--factors`` sets ``SMOOTHNESS_PER_NOISE`` for the runs with ``smoothness="auto"`` (calibration; 0 = plain fit).

Usage::

    python benchmarks/svr_denoise.py --cases GA21 --factors 0 0.3 1 3          # calibration
    python benchmarks/svr_denoise.py --cases GA21 GA29 GA21-noisy real --factors 0 0.3

Writes ``benchmarks/results/svr_denoise.json`` (``--out``) and a PNG beside it (one plane per case, same grey scale).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from svr_simulated import ATLASES, MOTION, SHARED  # noqa: E402

from gaussian_mri.image import read_image  # noqa: E402
from gaussian_mri.metrics import psnr, ssim  # noqa: E402
from gaussian_mri.resample import resample_to_reference, rigid_align  # noqa: E402
from gaussian_mri.svr import preset, reconstruct  # noqa: E402
from gaussian_mri.svr import recon as recon_module  # noqa: E402
from gaussian_mri.svr.simulate import simulate_stacks  # noqa: E402


def local_std(x: np.ndarray) -> np.ndarray:
    """Standard deviation over each voxel's 3 x 3 x 3 neighbourhood."""
    m = ndimage.uniform_filter(x, 3)
    return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 3) - m * m, 0))


def grad(x: np.ndarray) -> np.ndarray:
    """Gradient magnitude per voxel (central differences, voxel units)."""
    return np.sqrt(sum(g * g for g in np.gradient(x)))


def grain_and_edges(est: np.ndarray, ref: np.ndarray, brain: np.ndarray, flat: np.ndarray) -> dict:
    """Grain in ``flat`` and edge sharpness at ``ref``'s strongest edges inside ``brain`` (both images on one grid)."""
    g_ref, g_est = grad(ref), grad(est)
    edges = brain & (g_ref >= np.quantile(g_ref[brain], 0.9))
    return {
        "flat_std": float(est[flat].std()), "flat_std_ref": float(ref[flat].std()),
        "local_std": float(local_std(est)[flat].mean()), "local_std_ref": float(local_std(ref)[flat].mean()),
        "flat_residual_std": float((est - ref)[flat].std()),
        "edge_ratio": float(g_est[edges].mean() / g_ref[edges].mean()),
    }


def score(volume, ref_img, brain_img, flat: np.ndarray) -> dict:
    brain = np.asarray(brain_img.data) > 0
    transform = rigid_align(volume, ref_img, fixed_mask=brain_img, initial="identity")
    est = np.asarray(resample_to_reference(volume, ref_img, transform=transform, order=1).data, dtype=np.float64)
    ref = np.asarray(ref_img.data, dtype=np.float64)
    est = est * float((est[brain] * ref[brain]).sum() / max((est[brain] ** 2).sum(), 1e-12))
    rng = float(ref[brain].max() - ref[brain].min())
    out = {"psnr": psnr(est, ref, mask=brain, data_range=rng), "ssim": ssim(est, ref, mask=brain, data_range=rng)}
    out.update(grain_and_edges(est, ref, brain, flat))
    return out, est


def score_real(volume, plain, held_stack, held_mask) -> dict:
    """The real subject (no ground truth): held-out NCC (``svr_real.heldout_ncc``: the held-out stack
    simulated from the volume through its PSF) and, on the volume's own grid (both runs share it), grain and
    edges against the plain fit: the flat region is the 20 % of the eroded mask where the plain fit smoothed by
    1.5 mm has the smallest gradient, the edges its 10 % largest; grain = mean local (3 x 3 x 3) standard
    deviation there, edge = mean gradient magnitude there relative to the plain fit's (1 = as sharp)."""
    from svr_real import heldout_ncc

    v, p = np.asarray(volume.data, np.float64), np.asarray(plain.data, np.float64)
    brain = p > 0.1 * np.percentile(p, 99)
    inner = ndimage.binary_erosion(brain, iterations=3)
    spacing = float(np.linalg.norm(volume.affine[:3, :3], axis=0).mean())
    smooth = ndimage.gaussian_filter(p, 1.5 / spacing)
    g_s = grad(smooth)
    flat = inner & (g_s <= np.quantile(g_s[inner], 0.2))
    edges = inner & (g_s >= np.quantile(g_s[inner], 0.9))
    scale = float(np.median(p[flat]) / max(np.median(v[flat]), 1e-12))  # same intensity units as the plain fit
    return {"heldout_ncc": heldout_ncc(volume, held_stack, held_mask),
            "local_std": float(local_std(v * scale)[flat].mean()), "local_std_plain": float(local_std(p)[flat].mean()),
            "edge_ratio_vs_plain": float(grad(v * scale)[edges].mean() / grad(p)[edges].mean())}


def plot(panels: list[tuple[str, np.ndarray, np.ndarray, list]], path: Path) -> None:
    """One row per case: the reference (ground truth or MIALSRTK) and each run, the same plane through the
    brain's centre, the same grey scale (0 - 99.5th percentile of the reference in the brain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + max(len(runs) for *_, runs in panels)
    fig, axes = plt.subplots(len(panels), cols, figsize=(3.2 * cols, 3.2 * len(panels)), squeeze=False)
    for row, (name, ref, brain, runs) in zip(axes, panels):
        k = int(np.round(np.nonzero(brain.any(axis=(1, 2)))[0].mean()))
        jj, ii = np.nonzero(brain[k])
        crop = (slice(jj.min(), jj.max() + 1), slice(ii.min(), ii.max() + 1))
        vmax = float(np.percentile(ref[brain], 99.5))
        first = f"{name}: reference" if name != "real" else "real: no ground truth (plain fit)"
        for ax, (title, img) in zip(row, [(first, ref)] + runs):
            ax.imshow(img[k][crop], cmap="gray", vmin=0, vmax=vmax, origin="lower")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        for ax in row[1 + len(runs):]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def case_data(name: str, noise: float):
    if name == "real":
        from svr_real import load_subject

        stacks, masks, reference = load_subject()
        return stacks, masks, reference, None, None, None
    atlas, _, noisy = name.partition("-")
    folder = SHARED / ATLASES[atlas]
    gt, mask = read_image(folder / "srr.nii.gz"), read_image(folder / "mask.nii.gz")
    parc = np.asarray(read_image(folder / "parcellation.nii.gz").data)
    flat = ndimage.binary_erosion(parc == 1, iterations=2)
    level = 2 * noise if noisy else noise
    sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=MOTION, noise_sigma=level, noise_type="rician", seed=1)
    return [s.image for s in sims], [s.mask for s in sims], gt, mask, flat, level


REAL_HELDOUT = 1  # run 2 of the real subject is held out (reconstructions from the 5 others)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["GA21", "GA29", "GA21-noisy", "real"],
                    help="GA21 | GA29 (noise --noise), GA21-noisy (2 x --noise), real")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.0, recon_module.SMOOTHNESS_PER_NOISE])
    ap.add_argument("--noise", type=float, default=0.015, help="Rician noise sigma / intensity range of the atlas")
    ap.add_argument("--preset", default="fast")

    ap.add_argument("--out", type=Path, default=HERE / "results" / "svr_denoise.json")
    args = ap.parse_args()
    rows, panels = [], []
    for name in args.cases:
        stacks, masks, ref, brain, flat, level = case_data(name, args.noise)
        runs = []
        plain = None
        for f in args.factors:
            recon_module.SMOOTHNESS_PER_NOISE = f
            cfg = preset(args.preset, smoothness="auto" if f > 0 else 0.0)
            use = [i for i in range(len(stacks)) if name != "real" or i != REAL_HELDOUT]
            t0 = time.perf_counter()
            res = reconstruct([stacks[i] for i in use], [masks[i] for i in use], config=cfg)
            wall = time.perf_counter() - t0
            row = {"case": name, "noise_sigma_range": level, "factor": f, "weight": res.smoothness_weight,
                   "noise_estimate": res.noise_level, "seconds": wall}
            label = "plain fit" if f == 0 else f"noise-aware x{f:g}"
            if name == "real":
                plain = res.volume if f == 0 or plain is None else plain
                row.update(score_real(res.volume, plain, stacks[REAL_HELDOUT], masks[REAL_HELDOUT]))
                runs.append((f"{label}: held-out NCC {row['heldout_ncc']:.3f}", np.asarray(res.volume.data, np.float64)))
            else:
                scores, est = score(res.volume, ref, brain, flat)
                row.update(scores)
                runs.append((f"{label}: PSNR {scores['psnr']:.2f}", est))
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1) + "\n")
        if name == "real":  # the runs on their own grid; the MIALSRTK reference is not on it (not shown)
            first = runs[0][1]
            panels.append((name, first, first > 0.1 * np.percentile(first, 99), runs))
        else:
            panels.append((name, np.asarray(ref.data, dtype=np.float64), np.asarray(brain.data) > 0, runs))
        plot(panels, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
