"""The published Gaussian-SVR code (GSVR, Dannecker et al., MIDL 2026) on the CPU, beside GaussianSVR.

GSVR (https://github.com/m-dannecker/Gaussian-Primitives-for-Fast-SVR, Apache-2.0) targets a CUDA GPU:
a FAISS GPU index and mixed precision. This script runs an unmodified checkout of it after two edits,
applied to a temporary copy (nothing of it is part of this project):

1. ``train.py``: ``faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 3, faiss.GpuIndexFlatConfig())``
   -> ``faiss.IndexFlatL2(3)`` (the same exact L2 search, on the CPU; ``pip install faiss-cpu``);
2. ``train.py``: ``torch.amp.autocast(device_type=device.type)`` -> ``..., enabled=False`` (float32 on
   the CPU, as our engine; CPU autocast would use bfloat16).

Its own dependencies (``faiss-cpu antspyx nibabel scipy scikit-image matplotlib pyyaml`` beside a CPU
torch) go in a separate virtual environment, given by ``--python``. The configuration is its
``configs/config_subjects_real.yaml`` (30,000 Gaussians, K = 64 neighbours, 500 epochs, motion
correction, slice scaling and weighting on) with: the six bundled stacks and masks of
``gaussian_mri/data`` (slice thickness 3.0 mm from their ``descrip``), output spacing 0.8 mm (our
``fast`` preset), full-batch (its 500,000-voxel mini-batch is larger than these 225,546 voxels).

Usage::

    python3 -m venv /tmp/gsvr_venv && /tmp/gsvr_venv/bin/pip install torch==2.13.0 faiss-cpu antspyx nibabel \
        scipy scikit-image matplotlib pyyaml
    git clone https://github.com/m-dannecker/Gaussian-Primitives-for-Fast-SVR /tmp/gsvr_src
    python benchmarks/svr_peer_gsvr.py --gsvr /tmp/gsvr_src --python /tmp/gsvr_venv/bin/python [--epochs 500]
    python benchmarks/svr_peer_gsvr.py --gsvr /tmp/gsvr_src --python /tmp/gsvr_venv/bin/python --case ga21-motion

``--case ga21-motion`` runs GSVR's ``config_subjects_simulated.yaml`` (its settings for simulated data:
no slice scaling or weighting) on the GA21 "motion" stacks of ``svr_simulated.py`` (ground truth known,
``../shared/data`` beside the checkout) and scores it as ``svr_simulated.py`` scores ours (rigid alignment
to the truth, PSNR/SSIM in the brain mask).

Writes ``benchmarks/results/svr_peer_gsvr.json`` (wall time, the peer's own log lines, the output
path) and ``svr_peer_gsvr.png`` (the peer's and our reconstruction, three orthogonal planes through
the centre, our demo output given by ``--ours``); the peer's volume is copied to the temporary folder.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE.parent / "gaussian_mri" / "data"
EDITS = [
    ("faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 3, faiss.GpuIndexFlatConfig())", "faiss.IndexFlatL2(3)"),
    ("torch.amp.autocast(device_type=device.type)", "torch.amp.autocast(device_type=device.type, enabled=False)"),
]


def simulated_inputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """The GA21 "motion" case of ``svr_simulated.py`` (3 orthogonal stacks, 3 mm, 1 mm in-plane, the moderate
    motion, seed 1) written as NIfTI stacks and masks."""
    from svr_simulated import ATLASES, MOTION, SHARED

    from gaussian_mri.image import read_image, write_image
    from gaussian_mri.svr.simulate import simulate_stacks

    atlas = SHARED / ATLASES["GA21"]
    sims = simulate_stacks(read_image(atlas / "srr.nii.gz"), read_image(atlas / "mask.nii.gz"), thickness_mm=3.0,
                           inplane_mm=1.0, motion=MOTION, seed=1)
    stacks, masks = [], []
    for i, sim in enumerate(sims):
        stacks.append(write_image(sim.image, folder / f"stack-{i}.nii.gz"))
        masks.append(write_image(sim.mask, folder / f"stack-{i}_mask.nii.gz"))
    return stacks, masks


def prepare_simulated(src: Path, work: Path, epochs: int, out_root: Path) -> Path:
    """GSVR's ``config_subjects_simulated.yaml`` on the GA21 motion case, output 0.8 mm as ours."""
    stacks, masks = simulated_inputs(work)
    cfg = (src / "configs" / "config_subjects_simulated.yaml").read_text()
    cfg = cfg.replace('output_root: "output"', f'output_root: "{out_root}"')
    cfg = re.sub(r"max_epochs: \d+", f"max_epochs: {epochs}", cfg)
    cfg = re.sub(r"mini_batch_size: \d+", "mini_batch_size: null", cfg)
    cfg = cfg.replace("spacing: [0.7, 0.7, 0.7]     # Output", "spacing: [0.8, 0.8, 0.8]     # Output", 1)
    for view, stack, mask in zip(("axial", "coronal", "sagittal"), stacks, masks):
        cfg = cfg.replace(f"/path/to/your/simulated/LR_{view}.nii.gz", str(stack))
        cfg = cfg.replace(f"/path/to/your/simulated/LR_{view}_mask.nii.gz", str(mask))
    return _write_config(cfg, work)


def _write_config(cfg: str, work: Path) -> Path:
    if any("/path/to/" in ln for ln in cfg.splitlines() if not ln.lstrip().startswith("#")):
        raise SystemExit("the GSVR example configuration has changed: input paths not replaced")
    path = work / "peer.yaml"
    path.write_text(cfg)
    return path


def copy_edited(src: Path, work: Path) -> None:
    for name in ("gsvr.py", "train.py", "utils.py", "data_inputs.py"):
        shutil.copy2(src / name, work / name)
    text = (work / "train.py").read_text()
    for old, new in EDITS:
        if old not in text:
            raise SystemExit(f"the GSVR checkout has changed: {old!r} not found in train.py")
        text = text.replace(old, new)
    (work / "train.py").write_text(text)


def prepare(src: Path, work: Path, epochs: int, out_root: Path) -> Path:
    """GSVR's ``config_subjects_real.yaml`` on the bundled subject."""
    cfg = (src / "configs" / "config_subjects_real.yaml").read_text()
    cfg = cfg.replace('output_root: "output"', f'output_root: "{out_root}"')
    cfg = re.sub(r"max_epochs: \d+", f"max_epochs: {epochs}", cfg)
    cfg = re.sub(r"mini_batch_size: \d+", "mini_batch_size: null", cfg)
    cfg = cfg.replace("spacing: [0.5, 0.5, 0.5]      # Output", "spacing: [0.8, 0.8, 0.8]      # Output", 1)
    cfg = cfg.replace("slice_thickness: [2.2, 2.2, 2.2, 2.2, 2.2, 2.2]", "slice_thickness: [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]")
    for r in range(1, 7):
        cfg = cfg.replace(f"/path/to/your/data/stack_run-0{r}.nii.gz", str(DATA / f"sub-01_run-{r}_T2w.nii.gz"))
        cfg = cfg.replace(f"/path/to/your/data/stack_run-0{r}_mask.nii.gz", str(DATA / f"sub-01_run-{r}_T2w_mask.nii.gz"))
    return _write_config(cfg, work)


def figure(peer: Path, ours: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gaussian_mri.image import read_image

    fig, ax = plt.subplots(2, 3, figsize=(9, 6))
    for row, (title, path) in enumerate((("GSVR (published code, CPU)", peer), ("GaussianSVR demo", ours))):
        img = read_image(path)
        d = np.asarray(img.data, dtype=np.float32)
        c = [s // 2 for s in d.shape]
        vmax = float(np.percentile(d[d > 0], 99.5)) if (d > 0).any() else 1.0
        for col, sl in enumerate((d[c[0]], d[:, c[1]], d[:, :, c[2]])):
            ax[row, col].imshow(sl, cmap="gray", vmin=0, vmax=vmax)
            ax[row, col].axis("off")
        ax[row, 0].set_title(title, loc="left")
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsvr", type=Path, required=True, help="checkout of Gaussian-Primitives-for-Fast-SVR")
    ap.add_argument("--python", default="python3", help="interpreter of the environment with GSVR's dependencies")
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours", type=Path, default=Path("demo_output/recon.nii.gz"), help="our demo reconstruction")
    ap.add_argument("--case", choices=["real", "ga21-motion"], default="real",
                    help="real: the bundled subject; ga21-motion: the simulated case of svr_simulated.py, scored")
    args = ap.parse_args()
    results = HERE / "results"
    stem = "svr_peer_gsvr" if args.case == "real" else "svr_peer_gsvr_ga21"
    with tempfile.TemporaryDirectory(prefix="gsvr_cpu_") as tmp:
        work, out_root = Path(tmp), Path(tmp) / "out"
        copy_edited(args.gsvr, work)
        cfg = (prepare if args.case == "real" else prepare_simulated)(args.gsvr, work, args.epochs, out_root)
        env = {"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin"}
        t0 = time.perf_counter()
        proc = subprocess.run([args.python, "train.py", "--config", str(cfg)], cwd=work, capture_output=True, text=True,
                              env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"GSVR failed:\n{proc.stderr[-3000:]}")
        outputs = sorted(out_root.rglob("*.nii.gz"))
        kept = Path(tempfile.gettempdir()) / "svr_peer_gsvr_recon.nii.gz"  # not kept in the repository
        if outputs:
            shutil.copy2(outputs[-1], kept)
        epochs = [ln for ln in proc.stdout.splitlines() if ln.startswith("Epoch")]
        info = {"case": args.case, "wall_s": wall, "epochs": args.epochs, "threads": args.threads, "edits": EDITS,
                "log_epochs": epochs, "outputs": [str(p.relative_to(out_root)) for p in outputs]}
    if args.case == "ga21-motion" and outputs:
        from svr_simulated import ATLASES, SHARED, evaluate

        from gaussian_mri.image import read_image

        atlas = SHARED / ATLASES["GA21"]
        scores, _ = evaluate(read_image(kept), read_image(atlas / "srr.nii.gz"), read_image(atlas / "mask.nii.gz"))
        info["scores"] = scores
    (results / f"{stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "log_epochs"}, indent=2))
    if outputs and args.case == "real" and args.ours.is_file():
        figure(kept, args.ours, results / f"{stem}.png")


if __name__ == "__main__":
    main()
