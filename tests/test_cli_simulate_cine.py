"""``gaussian-mri simulate-cine``: the written files read back (ISMRMRD k-space, NIfTI, npz, PNG)."""

from __future__ import annotations

import json

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from gaussian_mri.cine.phantom import simulate_cine
from gaussian_mri.cli import main
from gaussian_mri.mri.ismrmrd_io import read_cine_ismrmrd
from gaussian_mri.mri.kspace_io import cine_from_image

ARGS = dict(frames=4, coils=3, ny=64, nx=80, seed=7, noise=0.01)


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "cine_out"  # created by the command
    argv = ["simulate-cine", "--output-dir", str(out)]
    for k, v in ARGS.items():
        argv += [f"--{k}", str(v)]
    assert main(argv) == 0
    return out


def test_writes_all_files_atomically(outdir):
    names = sorted(p.name for p in outdir.iterdir())
    assert names == sorted(
        ["cine.h5", "reference.nii.gz", "reference.npz", "myocardium_mask.nii.gz", "montage.png", "simulation.json"]
    )
    params = json.loads((outdir / "simulation.json").read_text())
    assert params["readout_oversampling"] == 2 and params["asymmetric_echo"] == ARGS["nx"] // 8
    png = matplotlib.image.imread(outdir / "montage.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png[..., :3].std() > 0.1


def test_ismrmrd_reads_back_to_the_phantom_kspace(outdir):
    sim = simulate_cine(
        n_frames=ARGS["frames"], ny=ARGS["ny"], nx=ARGS["nx"], n_coils=ARGS["coils"], noise=ARGS["noise"], seed=ARGS["seed"]
    )
    cine = read_cine_ismrmrd(outdir / "cine.h5")
    asym = ARGS["nx"] // 8
    assert cine.kspace.shape == sim.kspace.shape and cine.mask.all()
    assert cine.kx_first_acquired == asym and np.all(cine.kspace[..., :asym] == 0)
    truth = sim.kspace[..., asym:]
    rel = np.linalg.norm(cine.kspace[..., asym:] - truth) / np.linalg.norm(truth)
    assert rel < 1e-2, rel  # oversampling crop after the zero-filled echo (see test_ismrmrd_io)
    centre = slice(ARGS["nx"] // 4, 3 * ARGS["nx"] // 4)
    rel_c = np.linalg.norm(cine.kspace[..., centre] - sim.kspace[..., centre]) / np.linalg.norm(sim.kspace[..., centre])
    assert rel_c < 3e-3, rel_c
    assert cine.fov_mm == pytest.approx((80 * 1.8, 64 * 1.8, 8.0))
    np.testing.assert_allclose(cine.frame_times_ms, sim.frame_times_ms)
    assert cine.noise is not None and cine.noise.shape[0] == ARGS["coils"]
    assert np.std(cine.noise) == pytest.approx(sim.noise_std, rel=0.2)


def test_reference_images_and_masks(outdir):
    sim = simulate_cine(
        n_frames=ARGS["frames"], ny=ARGS["ny"], nx=ARGS["nx"], n_coils=ARGS["coils"], noise=ARGS["noise"], seed=ARGS["seed"]
    )
    ref = cine_from_image(outdir / "reference.nii.gz")
    np.testing.assert_allclose(ref.frames.real, np.abs(sim.images), atol=1e-6)
    assert ref.pixel_spacing_mm == pytest.approx((1.8, 1.8))
    assert ref.frame_duration_ms == pytest.approx(sim.frame_duration_ms)
    img = nib.load(outdir / "reference.nii.gz")
    assert img.shape == (ARGS["nx"], ARGS["ny"], 1, ARGS["frames"])
    assert img.header.get_zooms()[2] == pytest.approx(8.0)
    with np.load(outdir / "reference.npz") as z:
        np.testing.assert_array_equal(z["images"], sim.images)
        np.testing.assert_array_equal(z["coil_maps"], sim.coil_maps)
        np.testing.assert_array_equal(z["myocardium_mask"], sim.myocardium_mask)
        np.testing.assert_array_equal(z["static_mask"], sim.static_mask)
        np.testing.assert_array_equal(z["body_mask"], sim.body_mask)
        assert float(z["pixel_spacing_mm"]) == 1.8
    myo = np.asarray(nib.load(outdir / "myocardium_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(myo[:, :, 0, :].transpose(2, 1, 0), sim.myocardium_mask)


def test_bad_arguments_exit_with_code_2(tmp_path, capsys):
    assert main(["simulate-cine", "--output-dir", str(tmp_path / "x"), "--frames", "1"]) == 2
    assert "--frames must be >= 2" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["simulate-cine", "--output-dir", str(tmp_path / "file")]) == 2
    assert not (tmp_path / "x").exists()
