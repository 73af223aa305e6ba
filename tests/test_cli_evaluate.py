"""``gaussian-mri evaluate`` through :func:`gaussian_mri.cli.main`."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from gaussian_mri.cli import main
from gaussian_mri.image import Image, write_image
from gaussian_mri.metrics import psnr, ssim
from gaussian_mri.resample import rotation_angle_deg

_rng = np.random.default_rng(0)
_CENTRES = _rng.uniform(-20, 20, (12, 3))
_WIDTHS = _rng.uniform(4, 8, 12)
_AMPS = _rng.uniform(50, 200, 12)


def blobs(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape[:-1])
    for c, w, a in zip(_CENTRES, _WIDTHS, _AMPS):
        out += a * np.exp(-0.5 * np.sum((p - c) ** 2, -1) / w**2)
    return out


def rigid(axis, degrees, translation) -> np.ndarray:
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(degrees)
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx
    m[:3, 3] = translation
    return m


def volume(shape=(32, 32, 32), spacing=2.0, rot=None, transform=None) -> Image:
    """``blobs`` sampled on a grid centred on the origin, at ``transform @ p`` when given."""
    a = np.eye(4)
    a[:3, :3] = (np.eye(3) if rot is None else rot) * spacing
    a[:3, 3] = -a[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2.0)
    img = Image(np.zeros(shape, np.float32), a)
    p = img.world_coordinates()
    if transform is not None:
        p = p @ transform[:3, :3].T + transform[:3, 3]
    return img.with_data(blobs(p).astype(np.float32))


def evaluate(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.fixture()
def reference(tmp_path):
    path = tmp_path / "ref.nii.gz"
    write_image(volume(), path)
    return path


def test_perfect_copy(tmp_path, capsys, reference):
    write_image(volume(), tmp_path / "same.nrrd")
    code, out, _ = evaluate(capsys, "--reference", str(reference), "--image", str(tmp_path / "same.nrrd"))
    assert code == 0
    assert out["psnr"] == math.inf  # printed as JSON Infinity
    assert out["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert out["nrmse"] == 0.0
    assert out["ncc"] == pytest.approx(1.0, abs=1e-12)
    assert out["resampled"] is False and out["aligned"] is False and out["coverage"] == 1.0
    assert "sigma 1.5" in out["ssim_window"] and "11x11x11" in out["ssim_window"]
    assert out["n_voxels"] == 32**3
    ref_data = volume().data
    assert out["data_range"] == pytest.approx(float(ref_data.max() - ref_data.min()), rel=1e-6)


def test_different_grid_is_resampled_in_world_coordinates(tmp_path, capsys, reference):
    # Same object sampled on a finer, rotated grid that covers the reference.
    rot = rigid([0, 1, 1], 20.0, [0, 0, 0])[:3, :3]
    write_image(volume(shape=(60, 60, 60), spacing=1.3, rot=rot), tmp_path / "fine.nrrd")
    code, out, _ = evaluate(capsys, "--reference", str(reference), "--image", str(tmp_path / "fine.nrrd"))
    assert code == 0 and out["resampled"] is True
    # Only interpolation error remains (linear, 1.3 mm grid, smooth blobs).
    assert out["ssim"] > 0.99 and out["ncc"] > 0.999 and out["nrmse"] < 0.02 and out["psnr"] > 40


def test_mask_on_another_grid_and_data_range(tmp_path, capsys, reference):
    noisy = volume()
    noisy = noisy.with_data(noisy.data + np.random.default_rng(1).normal(0, 5, noisy.shape).astype(np.float32))
    write_image(noisy, tmp_path / "noisy.nii.gz")
    mask_img = Image(np.zeros((16, 16, 16), np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    mask_img.affine[:3, 3] = -30.0
    mask_img.data[4:12, 4:12, 4:12] = 1  # the central 32 mm cube, on a 4 mm grid
    write_image(mask_img, tmp_path / "mask.nrrd")
    code, out, _ = evaluate(
        capsys,
        *("--reference", str(reference), "--image", str(tmp_path / "noisy.nii.gz")),
        *("--mask", str(tmp_path / "mask.nrrd"), "--data-range", "300"),
    )
    assert code == 0
    # Mask voxel centres -14..14 mm (4 mm voxels), so nearest-neighbour covers [-16, 16) mm on
    # each axis; the reference voxel centres (odd mm) inside that cube are the evaluated ones.
    ref = volume()
    world = ref.world_coordinates()
    inside = np.all((world >= -16.0) & (world < 16.0), -1)
    assert out["n_voxels"] == int(inside.sum())
    assert out["data_range"] == 300.0
    assert out["psnr"] == pytest.approx(psnr(noisy.data, ref.data, mask=inside, data_range=300.0), rel=1e-9)
    assert out["ssim"] == pytest.approx(ssim(noisy.data, ref.data, mask=inside, data_range=300.0), rel=1e-9)


def test_align_improves_shifted_copy(tmp_path, capsys, reference):
    truth = rigid([1, 2, 3], 5.0, [2.0, -1.5, 1.8])
    write_image(volume(transform=np.linalg.inv(truth)), tmp_path / "moved.nii.gz")
    args = ("--reference", str(reference), "--image", str(tmp_path / "moved.nii.gz"))
    code, plain, _ = evaluate(capsys, *args)
    assert code == 0
    code, aligned, _ = evaluate(capsys, *args, "--align")
    assert code == 0 and aligned["aligned"] is True
    assert aligned["psnr"] > plain["psnr"] + 10
    assert aligned["ssim"] > plain["ssim"] and aligned["ssim"] > 0.98
    assert aligned["nrmse"] < plain["nrmse"] / 3
    found = np.asarray(aligned["transform_ras"])
    assert rotation_angle_deg(found @ np.linalg.inv(truth)) < 0.5
    assert np.linalg.norm(found[:3, 3] - truth[:3, 3]) < 0.5  # at the world origin = grid centre, mm


def test_missing_file(tmp_path, capsys, reference):
    code, _, err = evaluate(capsys, "--reference", str(reference), "--image", str(tmp_path / "nope.nii.gz"))
    assert code == 2
    assert "gaussian-mri evaluate: error: Image file not found:" in err and "nope.nii.gz" in err


def test_4d_image(tmp_path, capsys, reference):
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 32, 4), np.float32), np.eye(4)), tmp_path / "cine.nii.gz")
    code, _, err = evaluate(capsys, "--reference", str(reference), "--image", str(tmp_path / "cine.nii.gz"))
    assert code == 2
    assert "4D image of shape (32, 32, 32, 4); a 3D volume was expected" in err
    assert "Traceback" not in err


def test_bad_data_range_and_empty_mask(tmp_path, capsys, reference):
    code, _, err = evaluate(capsys, "--reference", str(reference), "--image", str(reference), "--data-range", "-1")
    assert code == 2 and "--data-range must be a finite number > 0, got -1.0" in err
    write_image(Image(np.zeros((32, 32, 32), np.uint8), volume().affine), tmp_path / "empty.nii.gz")
    code, _, err = evaluate(
        capsys, "--reference", str(reference), "--image", str(reference), "--mask", str(tmp_path / "empty.nii.gz")
    )
    assert code == 2 and "has no nonzero voxel on the reference grid" in err


def test_too_small_for_ssim(tmp_path, capsys):
    write_image(volume(shape=(6, 32, 32)), tmp_path / "thin.nii.gz")
    code, _, err = evaluate(capsys, "--reference", str(tmp_path / "thin.nii.gz"), "--image", str(tmp_path / "thin.nii.gz"))
    assert code == 2 and "SSIM needs at least 11 voxels along every spatial axis" in err


def test_listed_in_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "evaluate" in capsys.readouterr().out
