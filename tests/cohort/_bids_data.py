"""A small BIDS dataset for the cohort tests and benchmark (everything from the checkout).

* ``sub-01``: runs 1, 3, 5 of the bundled real demo subject (CC0, ``gaussian_mri/data/``), their brain
  masks in ``derivatives/masks`` (``*_desc-brain_mask.nii.gz``), a JSON sidecar for run 1;
* ``sub-02``: runs 2, 4, 6 of the demo subject, renamed to run 1-3, masks in ``derivatives/masks``;
* ``sub-03/ses-1``, ``sub-03/ses-2``: 3 orthogonal stacks each simulated from the CC0 atlas crop
  (``tests/data/``, at 2 mm) with mild motion (seeds 1 and 2), masks in ``derivatives/masks``;
* ``sub-04`` (``corrupt=True``): 3 demo stacks, the second truncated to half its bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "gaussian_mri" / "data"

#: fast settings: a subject takes a few seconds on one CPU thread
FAST = ["--n-gaussians", "500", "--iterations", "10", "--resolution", "2", "--no-stack-alignment", "--threads-per-job", "1"]
FAST_OPTIONS = {
    "preset": "fast",
    "overrides": {"n_gaussians": 500, "iterations": 10, "resolution_mm": 2.0, "stack_alignment": False},
    "qc": False,
    "threads": 1,
}


def _demo(dst_dir: Path, masks_dir: Path, sub: str, runs: list[int]) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for new, old in enumerate(runs, start=1):
        shutil.copyfile(DEMO / f"sub-01_run-{old}_T2w.nii.gz", dst_dir / f"sub-{sub}_run-{new}_T2w.nii.gz")
        shutil.copyfile(DEMO / f"sub-01_run-{old}_T2w_mask.nii.gz", masks_dir / f"sub-{sub}_run-{new}_desc-brain_mask.nii.gz")


def _simulated(dst_dir: Path, masks_dir: Path, prefix: str, seed: int) -> None:
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from _cases import atlas_truth

    from gaussian_mri.image import write_image
    from gaussian_mri.svr.simulate import simulate_stacks

    volume, mask = atlas_truth(2.0)
    stacks = simulate_stacks(volume, mask, orientations=("axial", "coronal", "sagittal"), thickness_mm=4.0,
                             inplane_mm=2.0, margin_mm=6.0, motion="mild", noise_sigma=0.01, seed=seed)
    dst_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for n, st in enumerate(stacks, start=1):
        image = st.image.with_data((st.image.data * 1000).astype("float32"))
        write_image(image, dst_dir / f"{prefix}_run-{n}_T2w.nii.gz")
        write_image(st.mask, masks_dir / f"{prefix}_run-{n}_desc-brain_mask.nii.gz")


def build_dataset(root: Path, *, corrupt: bool = True, sessions: bool = True, demo_subjects: int = 2) -> Path:
    """Write the dataset into ``root`` (created); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "GaussianMRI cohort test", "BIDSVersion": "1.10.0"}))
    masks = root / "derivatives" / "masks"
    (masks / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (masks / "dataset_description.json").write_text(json.dumps({"Name": "masks", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    if demo_subjects >= 1:
        _demo(root / "sub-01" / "anat", masks / "sub-01" / "anat", "01", [1, 3, 5])
        (root / "sub-01" / "anat" / "sub-01_run-1_T2w.json").write_text(json.dumps({"SliceThickness": 3.0}))
    if demo_subjects >= 2:
        _demo(root / "sub-02" / "anat", masks / "sub-02" / "anat", "02", [2, 4, 6])
    if sessions:
        for ses, seed in (("1", 1), ("2", 2)):
            _simulated(root / "sub-03" / f"ses-{ses}" / "anat", masks / "sub-03" / f"ses-{ses}" / "anat", f"sub-03_ses-{ses}", seed)
    if corrupt:
        anat = root / "sub-04" / "anat"
        anat.mkdir(parents=True)
        for n in (1, 2, 3):
            shutil.copyfile(DEMO / f"sub-01_run-{n}_T2w.nii.gz", anat / f"sub-04_run-{n}_T2w.nii.gz")
        bad = anat / "sub-04_run-2_T2w.nii.gz"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a truncated transfer
    return root
