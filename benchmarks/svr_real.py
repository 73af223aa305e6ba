"""SVR on the real fetal subject (mialsrtk-sub01, 6 stacks + manual masks).

1. Full reconstruction from all 6 stacks: wall time, peak memory (CPU RSS or CUDA), PNG of three
   orthogonal views next to the shipped reference reconstruction (MIALSRTK TV super-resolution).
2. Leave-one-stack-out consistency: reconstruct from the 5 other stacks, rigidly align the volume
   to the held-out stack, simulate the held-out stack through its PSF (numerical PSF integration of
   the voxel volume, the same for both methods), and compute the NCC with the acquired stack inside
   its mask (best of four registrations, the same for both). The reference reconstruction goes
   through exactly the same procedure. Note that the
   reference was computed from runs 6, 3 and 1 (see SOURCE.md): for those held-out stacks it has
   seen the data it is compared with.

Usage::

    python benchmarks/svr_real.py --holdout 1 2 3 4 5 6 --preset fast
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from gaussian_mri.geometry import stack_geometry
from gaussian_mri.image import Image, read_image
from gaussian_mri.metrics import ncc
from gaussian_mri.plotting import save_orthogonal_views
from gaussian_mri.resample import resample_to_reference, rigid_align
from gaussian_mri.svr import preset, reconstruct
from gaussian_mri.svr.baseline import output_grid
from gaussian_mri.svr.register import stack_on_grid
from gaussian_mri.svr.simulate import render_slices

HERE = Path(__file__).resolve().parent
SUB = HERE.parent.parent / "shared" / "data" / "fetal" / "mialsrtk-sub01"


def load_subject():
    stacks = [read_image(SUB / f"sub-01/anat/sub-01_run-{r}_T2w.nii.gz") for r in range(1, 7)]
    masks = [read_image(SUB / f"derivatives/manual_masks/sub-01/anat/sub-01_run-{r}_T2w_desc-brain_mask.nii.gz") for r in range(1, 7)]
    reference = read_image(SUB / "reference_recon/sub-01_rec-SR_id-1_T2w.nii.gz")
    return stacks, masks, reference


def _iso_start(volume, stack, mask) -> np.ndarray:
    """Rigid start from registering the volume to the stack resampled on a 1.5 mm grid inside its mask
    (robust to large rotations, which a start at the identity on the thick-slice stack is not)."""
    shape, affine = output_grid([stack], [mask], resolution_mm=1.5, margin_mm=10.0)
    m = np.asarray(mask.data) > 0
    iso, iso_mask = stack_on_grid(stack.with_data(np.asarray(stack.data, np.float32) * m), m, Image(np.zeros(shape, np.float32), affine))
    return rigid_align(volume, iso, fixed_mask=iso.with_data(iso_mask.astype(np.uint8)), metric="correlation")


def align_volume(moving, fixed, fixed_mask) -> np.ndarray:
    """Rigid fixed -> moving matrix, best NCC inside the mask over starts at the identity and at
    +-20 degrees about each world axis (the volumes may sit in frames rotated by ~20 degrees)."""
    from gaussian_mri.transforms import axis_angle_to_matrix

    m = np.asarray(resample_to_reference(fixed_mask, fixed, order=0).data) > 0
    best, best_t = -2.0, np.eye(4)
    centre = fixed.world_coordinates()[m].mean(0)
    for axis in (None, 0, 1, 2):
        for sign in ((1,) if axis is None else (-1, 1)):
            start = np.eye(4)
            if axis is not None:
                rotvec = torch.zeros(3, dtype=torch.float64)
                rotvec[axis] = sign * np.radians(20.0)
                start[:3, :3] = axis_angle_to_matrix(rotvec).numpy()
                start[:3, 3] = centre - start[:3, :3] @ centre
            t = rigid_align(moving, fixed, fixed_mask=fixed_mask, metric="correlation", initial=start)
            score = float(ncc(np.asarray(resample_to_reference(moving, fixed, transform=t).data), np.asarray(fixed.data), mask=m))
            if score > best:
                best, best_t = score, t
    return best_t


def heldout_ncc(volume, stack, mask) -> float:
    """NCC between the held-out stack and the volume simulated through the stack's PSF.

    The volume is aligned rigidly to the stack from two starts (the world identity, and a
    registration of the volume to the stack resampled isotropically), each refined on the stack
    with mutual information and with correlation; the best NCC of the four is kept, so that one
    failed registration of a volume to a thick-slice stack does not decide the comparison. Both
    volumes get the same procedure. (A start at the identity alone fails when the volume sits in a
    frame rotated by ~20 degrees from the stack, e.g. that of another stack.)
    """
    geom, _ = stack_geometry(stack, dtype=torch.float32)
    m = np.asarray(mask.data) > 0
    target = np.asarray(stack.data, dtype=np.float32)
    best = -1.0
    for initial in ("identity", _iso_start(volume, stack, mask)):
        for metric in ("mattes", "correlation"):
            align = rigid_align(volume, stack, fixed_mask=mask, initial=initial, metric=metric)  # stack -> volume points
            moved = geom.moved(torch.as_tensor(np.repeat(align[None], geom.n_slices, 0), dtype=torch.float32))
            sim = render_slices(volume, moved)
            best = max(best, float(ncc(sim, target, mask=m)))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--save-volumes", type=Path, help="folder for the leave-one-out volumes (not kept by default)")
    ap.add_argument("--results-name", default=None, help="results JSON name (default svr_real_<device>.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stacks, masks, reference = load_subject()
    overrides = {"device": args.device}
    if args.iterations:
        overrides["iterations"] = args.iterations
    cfg = preset(args.preset, **overrides)
    out: dict = {"preset": args.preset, "config": {"n_gaussians": cfg.n_gaussians, "iterations": cfg.iterations},
                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "device": "cuda" if (args.device != "cpu" and torch.cuda.is_available()) else "cpu"}
    (HERE / "results").mkdir(exist_ok=True)
    if not args.skip_full:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = reconstruct(stacks, masks, config=cfg)
        wall = time.perf_counter() - t0
        out["full"] = {
            "wall_s": wall,
            "timings": res.timings,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "shape": res.volume.shape,
        }
        ref_on_ours = resample_to_reference(reference, res.volume, transform=align_volume(reference, res.volume, res.mask), order=1)
        save_orthogonal_views(res.volume, HERE / "results" / "svr_real_views.png", mask=res.mask,
                              title="GaussianSVR (ours)", others={"MIALSRTK reference (aligned)": ref_on_ours})
        print("full", out["full"], flush=True)
    rows = []
    for h in args.holdout:
        idx = [i for i in range(6) if i != h - 1]
        res = reconstruct([stacks[i] for i in idx], [masks[i] for i in idx], config=cfg)
        if args.save_volumes:
            from gaussian_mri.image import write_image

            args.save_volumes.mkdir(parents=True, exist_ok=True)
            write_image(res.volume, args.save_volumes / f"loo_without_run-{h}.nii.gz")
        ours = heldout_ncc(res.volume, stacks[h - 1], masks[h - 1])
        ref = heldout_ncc(reference, stacks[h - 1], masks[h - 1])
        rows.append({"heldout_run": h, "ncc_ours": ours, "ncc_reference": ref, "reference_saw_it": h in (1, 3, 6)})
        print(rows[-1], flush=True)
    out["leave_one_out"] = rows
    if rows:
        out["mean_ncc_ours"] = float(np.mean([r["ncc_ours"] for r in rows]))
        out["mean_ncc_reference"] = float(np.mean([r["ncc_reference"] for r in rows]))
    name = args.results_name or f"svr_real_{out['device']}.json"
    (HERE / "results" / name).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
