"""The README's first command runs `gaussian-mri demo` on the bundled stacks: check it end to end (tiny settings)."""

from __future__ import annotations

import json

import numpy as np

from gaussian_mri.cli import main
from gaussian_mri.image import read_image
from gaussian_mri.svr.model import load_gaussians


def test_demo_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--output-dir", str(out), "--iterations", "3", "--n-gaussians", "500", "--resolution", "2.0", "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("volume", "mask", "slices", "gaussians", "scale", "anisotropy", "tensor", "report", "views_png"):
        assert (out / report["outputs"][name].split("/")[-1]).is_file(), name
    vol = read_image(out / "recon.nii.gz")
    assert np.allclose(vol.spacing, 2.0, atol=1e-4) and np.isfinite(vol.data).all() and vol.data.max() > 0
    assert load_gaussians(out / "gaussians.npz").n == 500
    rows = (out / "slices.tsv").read_text().strip().splitlines()
    assert rows[0].startswith("stack\tslice\tweight") and len(rows) > 50  # 6 stacks x ~20 brain slices
    assert not list(out.glob(".tmp_*"))  # no half-written files left
