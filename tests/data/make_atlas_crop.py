"""Maintainer tool: regenerate ``tests/data/fidon-atlas-GA21/{srr,mask}.nii.gz`` (see SOURCE.md).

Reads the CC0 Fidon et al. 2021 fetal brain atlas, time point GA21 (not operated), from a copy of
``data/fetal_brain_atlases/SpinaBifida_Fidon2021/fetal_SB_atlas_GA21_notoperated/`` of
github.com/LucasFidon/trustworthy-ai-fetal-brain-segmentation (commit 38cf1fb7) and writes a crop of
it: the smallest box holding every non-zero voxel of the atlas and of its brain mask, plus
``MARGIN`` voxels on every side. Voxel values, dtypes, voxel size and orientation are unchanged (the
atlas is zero outside that box, so every resampling of the crop equals that of the full volume);
only the origin moves with the crop. The tests never read the source; only this script does.

    python tests/data/make_atlas_crop.py [SOURCE_DIR]

SOURCE_DIR defaults to ``../shared/data/fetal/fidon-atlas/fetal_SB_atlas_GA21_notoperated`` next to
the repository (the project's shared data checkout).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "fetal" / "fidon-atlas" / "fetal_SB_atlas_GA21_notoperated"
OUT = HERE / "fidon-atlas-GA21"
MARGIN = 8  # voxels (6.4 mm): more than the 4-sigma support of the tests' anti-alias filter


def main(source: Path) -> None:
    srr, mask = nib.load(source / "srr.nii.gz"), nib.load(source / "mask.nii.gz")
    assert srr.shape == mask.shape and np.allclose(srr.affine, mask.affine)
    data = np.asanyarray(srr.dataobj)
    nonzero = np.argwhere((data != 0) | (np.asanyarray(mask.dataobj) != 0))
    lo = np.maximum(nonzero.min(0) - MARGIN, 0)
    hi = np.minimum(nonzero.max(0) + 1 + MARGIN, srr.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    OUT.mkdir(exist_ok=True)
    nib.openers.Opener.default_compresslevel = 9
    for name, img in (("srr", srr), ("mask", mask)):
        crop = img.slicer[box]
        # Same values and dtype as the source (the atlas has no intensity scaling).
        assert crop.get_data_dtype() == img.get_data_dtype()
        assert np.array_equal(np.asanyarray(crop.dataobj), np.asanyarray(img.dataobj)[box])
        nib.save(crop, OUT / f"{name}.nii.gz")
        print(f"{OUT / f'{name}.nii.gz'}: {crop.shape} voxels {crop.get_data_dtype()}, box {lo.tolist()}..{hi.tolist()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
