"""Exact PSF convolution vs the normalised kernel regression of the published Gaussian SVR code.

Same data, same seeds, same Gaussians and iterations; only ``SVRConfig.psf_mode`` differs.
Ground truth: the GA21 atlas resampled to ``--resolution`` mm; 3 orthogonal stacks with
in-plane = resolution, thickness = 2 x resolution, no motion, 1 % noise. Metrics inside the brain
mask after rigid alignment (see ``svr_simulated.evaluate``).

    python benchmarks/svr_psf_mode.py --resolution 1.6 --iterations 200
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svr_simulated import ATLASES, SHARED, evaluate  # noqa: E402

from gaussian_mri.image import Image, read_image  # noqa: E402
from gaussian_mri.resample import resample_to_reference  # noqa: E402
from gaussian_mri.svr import SVRConfig, reconstruct  # noqa: E402
from gaussian_mri.svr.model import grid_for_box  # noqa: E402
from gaussian_mri.svr.simulate import simulate_stacks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--resolution", type=float, default=1.6)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--n-gaussians", type=int, default=6000)
    ap.add_argument("--modes", nargs="+", default=["exact", "normalised"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = SHARED / ATLASES["GA21"]
    gt_full, mask_full = read_image(folder / "srr.nii.gz"), read_image(folder / "mask.nii.gz")
    lo = gt_full.affine[:3, 3]
    hi = lo + (np.array(gt_full.shape[::-1]) - 1) * gt_full.spacing
    shape, affine = grid_for_box(lo, hi, args.resolution)
    grid = Image(np.zeros(shape, np.float32), affine)
    gt = resample_to_reference(gt_full, grid, order=1)
    mask = resample_to_reference(mask_full, grid, order=0)
    sims = simulate_stacks(gt, mask, thickness_mm=2 * args.resolution, inplane_mm=args.resolution,
                           noise_sigma=0.01, seed=0)
    out = Path(__file__).resolve().parent / "results" / "svr_psf_mode.json"
    rows = json.loads(out.read_text())["results"] if out.is_file() else {}
    for mode in args.modes:
        cfg = SVRConfig(resolution_mm=args.resolution, n_gaussians=args.n_gaussians, iterations=args.iterations,
                        motion="none", psf_mode=mode, maps=False, seed=0)
        t0 = time.perf_counter()
        res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=cfg)
        m, _ = evaluate(res.volume, gt, mask)
        rows[mode] = {**m, "seconds": time.perf_counter() - t0, "final_loss": res.losses[-1]}
        print(mode, rows[mode], flush=True)
    out.write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
