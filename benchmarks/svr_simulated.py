"""SVR acceptance benchmark on simulated stacks of the fetal atlas volumes (ground truth known).

Scenarios (3 orthogonal stacks, 3 mm thickness, 1.0 mm in-plane, fixed seeds, metrics inside the
brain mask after rigid alignment of the reconstruction to the ground truth):

* ``static``   : no motion; Gaussian SVR vs the naive baseline (stacks resampled and averaged);
* ``motion``   : moderate motion (rotations up to 4 deg, translations up to 2 mm per stack path),
                 motion correction on vs off, slice pose error (mean corner displacement);
* ``voids``    : moderate motion + 10 % corrupted slices (signal voids / drop-outs), robust weights,
                 vs the same reconstruction with the corrupted slices removed from the masks
                 ("oracle": the best any slice weighting can do) and without robust weights;
* ``stackmotion``: the moderate motion plus motion between the stacks (each stack rotated by 10 deg
                 and shifted by 5 mm as a whole), with and without the stack pre-alignment.

Usage::

    python benchmarks/svr_simulated.py --atlas GA21 --scenario static motion voids stackmotion
    python benchmarks/svr_simulated.py --atlas both --preset standard

Writes ``benchmarks/results/svr_simulated_<atlas>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from gaussian_mri.image import Image, read_image
from gaussian_mri.metrics import psnr, ssim
from gaussian_mri.resample import resample_to_reference, rigid_align
from gaussian_mri.svr import preset, reconstruct
from gaussian_mri.svr.baseline import naive_average
from gaussian_mri.svr.simulate import MotionSpec, simulate_stacks

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "fetal" / "fidon-atlas"
ATLASES = {"GA21": "fetal_SB_atlas_GA21_notoperated", "GA29": "fetal_SB_atlas_GA29_operated"}
MOTION = MotionSpec(rotation_deg=4.0, translation_mm=2.0, jump_probability=0.0, smoothness_slices=4.0)
# The same per-slice motion plus motion between the stacks (minutes apart in a real examination).
STACK_MOTION = MotionSpec(rotation_deg=4.0, translation_mm=2.0, jump_probability=0.0, smoothness_slices=4.0,
                          stack_rotation_deg=10.0, stack_translation_mm=5.0)


def evaluate(img: Image, gt: Image, mask: Image, *, align: bool = True, start: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """PSNR/SSIM of ``img`` vs ``gt`` inside ``mask`` on the ground-truth grid, after rigid alignment
    (started at ``start``, ground truth -> reconstruction points, default the identity)."""
    m_gt = np.asarray(mask.data) > 0
    transform = np.eye(4)
    if align:
        transform = rigid_align(img, gt, fixed_mask=mask, initial="identity" if start is None else start)
    on_gt = resample_to_reference(img, gt, transform=transform, order=1)
    ref = np.asarray(gt.data, dtype=np.float64)
    est = np.asarray(on_gt.data, dtype=np.float64)
    # Intensity scale: least squares inside the mask (the reconstruction's units are the stacks').
    scale = float((est[m_gt] * ref[m_gt]).sum() / max((est[m_gt] ** 2).sum(), 1e-12))
    est = est * scale
    rng = float(ref[m_gt].max() - ref[m_gt].min())
    return {"psnr": psnr(est, ref, mask=m_gt, data_range=rng), "ssim": ssim(est, ref, mask=m_gt, data_range=rng)}, transform


def _corners(result, sims, skip_corrupted: bool = False):
    """True and recovered world positions of the 4 corners of every slice: (N, 4, 3) each."""
    from gaussian_mri.geometry import stack_geometry

    by_key = {(r["stack"], r["slice"]): np.asarray(r["transform"]) for r in result.slices}
    true, est = [], []
    for s_idx, sim in enumerate(sims):
        geom, _ = stack_geometry(sim.image, dtype=torch.float64)
        world = geom.pixel_to_world().numpy()  # (K, H, W, 3)
        bad = {int(k) for k in sim.corrupted} if skip_corrupted else set()
        for k in range(world.shape[0]):
            if (s_idx, k) not in by_key or k in bad:
                continue
            c1 = np.c_[np.stack([world[k, 0, 0], world[k, 0, -1], world[k, -1, 0], world[k, -1, -1]]), np.ones(4)]
            true.append((c1 @ sim.transforms[k].T)[:, :3])
            est.append((c1 @ by_key[(s_idx, k)].T)[:, :3])
    return np.array(true), np.array(est)


def pose_error_mm(result, sims, align: np.ndarray, skip_corrupted: bool = False) -> float:
    """Mean displacement of slice corners between true and recovered slice poses (mm).

    ``align`` maps ground-truth world points to reconstruction world points (from rigid_align), so
    a recovered transform ``T_est`` corresponds to ``align^-1 T_est`` in the ground-truth frame.
    """
    true, est = _corners(result, sims, skip_corrupted)
    inv = np.linalg.inv(align)
    est = est @ inv[:3, :3].T + inv[:3, 3]
    return float(np.linalg.norm(true - est, axis=2).mean())


def procrustes_frame(result, sims, skip_corrupted: bool = False) -> np.ndarray:
    """Ground truth -> reconstruction world transform from the least-squares rigid fit of the
    recovered slice corners onto the true ones (a registration start for a reconstruction that
    sits in the frame of a moved stack)."""
    true, est = _corners(result, sims, skip_corrupted)
    p, q = est.reshape(-1, 3), true.reshape(-1, 3)
    pm, qm = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pm).T @ (q - qm))
    rot = vt.T @ np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))]) @ u.T
    m = np.eye(4)  # reconstruction -> ground truth
    m[:3, :3], m[:3, 3] = rot, qm - rot @ pm
    return np.linalg.inv(m)


def pose_error_procrustes_mm(result, sims, skip_corrupted: bool = False) -> float:
    """As :func:`pose_error_mm`, with the global frame fixed by the least-squares rigid fit of all
    recovered corners onto the true ones (the reconstruction's frame is only defined up to a rigid
    transform; this removes it without going through an image registration)."""
    return pose_error_mm(result, sims, procrustes_frame(result, sims, skip_corrupted), skip_corrupted)


def run_atlas(name: str, scenarios: list[str], cfg_name: str, overrides: dict, skip_nonrobust: bool = False) -> dict:
    folder = SHARED / ATLASES[name]
    gt = read_image(folder / "srr.nii.gz")
    mask = read_image(folder / "mask.nii.gz")
    out: dict = {"atlas": name, "preset": cfg_name, "overrides": overrides, "results": {}}

    def recon(sims, **kw):
        cfg = preset(cfg_name, **{**overrides, **kw})
        t0 = time.perf_counter()
        res = reconstruct([s.image for s in sims], [s.mask for s in sims], config=cfg)
        return res, time.perf_counter() - t0

    if "static" in scenarios:
        sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, seed=0)
        res, t = recon(sims, motion="none")
        m_g, _ = evaluate(res.volume, gt, mask)
        naive = naive_average([s.image for s in sims], res.volume)
        m_n, _ = evaluate(naive, gt, mask)
        out["results"]["static"] = {"gaussian": m_g, "naive": m_n, "seconds": t}
        print(name, "static", out["results"]["static"], flush=True)
    if "motion" in scenarios:
        sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=MOTION, seed=1)
        res_on, t_on = recon(sims, motion="slice")
        m_on, align = evaluate(res_on.volume, gt, mask)
        res_off, t_off = recon(sims, motion="none")
        m_off, _ = evaluate(res_off.volume, gt, mask)
        naive = naive_average([s.image for s in sims], res_on.volume)
        m_n, _ = evaluate(naive, gt, mask)
        err = pose_error_mm(res_on, sims, align)
        err_identity = pose_error_mm(res_off, sims, np.eye(4))
        out["results"]["motion"] = {
            "motion_on": m_on, "motion_off": m_off, "naive": m_n, "pose_error_mm": err,
            "pose_error_procrustes_mm": pose_error_procrustes_mm(res_on, sims),
            "pose_error_identity_mm": err_identity, "seconds_on": t_on, "seconds_off": t_off,
        }
        print(name, "motion", out["results"]["motion"], flush=True)
    if "stackmotion" in scenarios:
        sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=STACK_MOTION, seed=1)
        res_on, t_on = recon(sims, motion="slice")
        m_on, align = evaluate(res_on.volume, gt, mask, start=procrustes_frame(res_on, sims))
        res_na, t_na = recon(sims, motion="slice", stack_alignment=False)
        m_na, align_na = evaluate(res_na.volume, gt, mask, start=procrustes_frame(res_na, sims))
        out["results"]["stackmotion"] = {
            "aligned": m_on, "not_aligned": m_na,
            "pose_error_mm": pose_error_mm(res_on, sims, align), "pose_error_procrustes_mm": pose_error_procrustes_mm(res_on, sims),
            "pose_error_not_aligned_mm": pose_error_mm(res_na, sims, align_na),
            "seconds": t_on, "seconds_not_aligned": t_na, "align_s": res_on.timings.get("align_s"),
        }
        print(name, "stackmotion", out["results"]["stackmotion"], flush=True)
    if "voids" in scenarios:
        sims = simulate_stacks(gt, mask, thickness_mm=3.0, inplane_mm=1.0, motion=MOTION, void_fraction=0.1, seed=1)
        res, t = recon(sims, motion="slice")
        m_v, align_v = evaluate(res.volume, gt, mask)
        weights = {(r["stack"], r["slice"]): r["weight"] for r in res.slices}
        corrupted = {(s, int(k)) for s, sim in enumerate(sims) for k in sim.corrupted}
        w_all = np.array(list(weights.values()))
        w_bad = np.array([weights[k] for k in corrupted if k in weights])
        w_good = np.array([w for k, w in weights.items() if k not in corrupted])
        rank = np.argsort(np.argsort(w_all))
        keys = list(weights)
        bad_ranks = [int(rank[keys.index(k)]) for k in corrupted if k in weights]
        # Oracle: the corrupted slices removed from the masks (the best any slice weighting can do).
        oracle_masks = []
        for sim in sims:
            m_o = np.asarray(sim.mask.data).copy()
            m_o[list(sim.corrupted)] = 0
            oracle_masks.append(sim.mask.with_data(m_o))
        res_o = reconstruct([s.image for s in sims], oracle_masks, config=preset(cfg_name, **{**overrides, "motion": "slice"}))
        m_o, _ = evaluate(res_o.volume, gt, mask)
        if skip_nonrobust:
            m_nr, t_nr = None, None
        else:
            res_nr, t_nr = recon(sims, motion="slice", robust=False)
            m_nr, _ = evaluate(res_nr.volume, gt, mask)
        out["results"]["voids"] = {
            "robust": m_v, "not_robust": m_nr, "oracle_excluded": m_o, "n_corrupted": len(corrupted),
            "n_corrupted_in_mask": len(w_bad),
            "max_weight_corrupted": float(w_bad.max()) if len(w_bad) else None,
            "min_weight_clean": float(w_good.min()), "median_weight_clean": float(np.median(w_good)),
            "corrupted_all_lowest": bool(max(bad_ranks) < len(bad_ranks)) if bad_ranks else None,
            "pose_error_clean_slices_mm": pose_error_mm(res, sims, align_v, skip_corrupted=True),
            "seconds": t, "seconds_not_robust": t_nr,
        }
        print(name, "voids", out["results"]["voids"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atlas", default="GA21", choices=["GA21", "GA29", "both"])
    ap.add_argument("--scenario", nargs="+", default=["static", "motion", "voids"])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--n-gaussians", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-nonrobust", action="store_true", help="voids: skip the run without robust weights")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {"device": args.device, "maps": False}
    if args.iterations:
        overrides["iterations"] = args.iterations
    if args.n_gaussians:
        overrides["n_gaussians"] = args.n_gaussians
    names = list(ATLASES) if args.atlas == "both" else [args.atlas]
    (HERE / "results").mkdir(exist_ok=True)
    for name in names:
        res = run_atlas(name, args.scenario, args.preset, overrides, args.skip_nonrobust)
        res["torch"] = torch.__version__
        res["threads"] = torch.get_num_threads()
        path = HERE / "results" / f"svr_simulated_{name}_{'-'.join(args.scenario)}.json"
        path.write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
