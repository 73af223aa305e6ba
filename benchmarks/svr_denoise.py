"""Clean images: the noise-aware SVR fit (total-variation prior weighted from the stacks' noise) against the plain fit.

Simulated cases: the moderate motion of ``svr_simulated.py`` (3 orthogonal stacks, 3 mm, 1 mm in-plane, seed 1)
with Rician noise of ``--noise`` x the atlas's intensity range (0.015 gives 0.033 of the median intensity in the
stacks, what :func:`gaussian_mri.svr.noise.noise_sigma` measures on the real subject's stacks: 0.029-0.032).
Real case: the bundled subject (6 stacks, manual masks), compared with the shipped MIALSRTK reconstruction.

Metrics, on the ground truth's grid after rigid alignment and a least-squares intensity scale (as ``svr_simulated``):

* PSNR / SSIM inside the brain mask;
* grain: standard deviation inside the white matter (parcellation label 1 eroded by 2 voxels) and the mean local
  standard deviation over 3 x 3 x 3 neighbourhoods there, next to the same numbers of the ground truth;
* edge sharpness: mean gradient magnitude of the reconstruction at the ground truth's strongest edges (the 10 % of
  brain voxels with the largest ground-truth gradient), divided by the ground truth's there (1 = as sharp).

On the real subject the reference reconstruction stands in for the ground truth (the flat region is the 20 % of
the eroded brain with the smallest reference gradient; its "grain" is the reference's own).

``--factors`` sets ``SMOOTHNESS_PER_NOISE`` for the runs with ``smoothness="auto"`` (calibration; 0 = plain fit).

Usage::

    python benchmarks/svr_denoise.py --cases GA21 --factors 0 0.3 1 3          # calibration
    python benchmarks/svr_denoise.py --cases GA21 GA29 GA21-noisy real --factors 0 1

Writes ``benchmarks/results/svr_denoise.json`` (``--out``).
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


def grain_and_edges(est: np.ndarray, ref: np.ndarray, brain: np.ndarray, flat: np.ndarray) -> dict:
    """Grain in ``flat`` and edge sharpness at ``ref``'s strongest edges inside ``brain`` (both images on one grid)."""
    def local_std(x):
        m = ndimage.uniform_filter(x, 3)
        return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 3) - m * m, 0))

    def grad(x):
        return np.sqrt(sum(g * g for g in np.gradient(x)))

    g_ref, g_est = grad(ref), grad(est)
    edges = brain & (g_ref >= np.quantile(g_ref[brain], 0.9))
    return {
        "flat_std": float(est[flat].std()), "flat_std_ref": float(ref[flat].std()),
        "local_std": float(local_std(est)[flat].mean()), "local_std_ref": float(local_std(ref)[flat].mean()),
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
    return out


def case_data(name: str, noise: float):
    if name == "real":
        from svr_real import load_subject

        stacks, masks, reference = load_subject()
        ref = reference.with_data(np.asarray(reference.data, dtype=np.float32))
        d = np.asarray(ref.data, dtype=np.float64)
        brain = d > 0.05 * d.max()
        brain = ndimage.binary_fill_holes(ndimage.binary_opening(brain, iterations=2))
        inner = ndimage.binary_erosion(brain, iterations=4)
        g = np.sqrt(sum(x * x for x in np.gradient(ndimage.gaussian_filter(d, 1.0))))
        flat = inner & (g <= np.quantile(g[inner], 0.2))
        return stacks, masks, ref, ref.with_data(brain.astype(np.uint8)), flat, None
    atlas, _, noisy = name.partition("-")
    folder = SHARED / ATLASES[atlas]
    gt, mask = read_image(folder / "srr.nii.gz"), read_image(folder / "mask.nii.gz")
    parc = np.asarray(read_image(folder / "parcellation.nii.gz").data)
    flat = ndimage.binary_erosion(parc == 1, iterations=2)
    level = 2 * noise if noisy else noise
    sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=MOTION, noise_sigma=level, noise_type="rician", seed=1)
    return [s.image for s in sims], [s.mask for s in sims], gt, mask, flat, level


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["GA21", "GA29", "GA21-noisy", "real"],
                    help="GA21 | GA29 (noise --noise), GA21-noisy (2 x --noise), real")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.0, recon_module.SMOOTHNESS_PER_NOISE])
    ap.add_argument("--noise", type=float, default=0.015, help="Rician noise sigma / intensity range of the atlas")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "svr_denoise.json")
    args = ap.parse_args()
    rows = []
    for name in args.cases:
        stacks, masks, ref, brain, flat, level = case_data(name, args.noise)
        for f in args.factors:
            recon_module.SMOOTHNESS_PER_NOISE = f
            cfg = preset(args.preset, smoothness="auto" if f > 0 else 0.0)
            t0 = time.perf_counter()
            res = reconstruct(stacks, masks, config=cfg)
            wall = time.perf_counter() - t0
            row = {"case": name, "noise_sigma_range": level, "factor": f, "weight": res.timings.get("smoothness"),
                   "noise_estimate": res.timings.get("noise_rel"), "seconds": wall, **score(res.volume, ref, brain, flat)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
