"""Image I/O: NIfTI / NRRD round trips, RAS/LPS agreement with nibabel and SimpleITK, errors,
slice thickness sources and atomic writes (:mod:`gaussian_mri.image`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from _cases import rotation

from gaussian_mri.image import Image, ImageFormatError, read_image, write_image


def oblique_affine(spacing=(0.7, 0.9, 3.5), origin=(-40.3, 12.7, 55.1), flip: bool = False) -> np.ndarray:
    """An oblique, anisotropic IJK-to-RAS matrix (``flip``: left-handed, as for LAS files)."""
    rot = rotation(0.3, -0.5, 1.1)
    if flip:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(spacing, dtype=np.float64)[None, :]
    a[:3, 3] = origin
    return a


def _random_data(dtype, shape=(6, 7, 8), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -30000), min(info.max, 30000), size=shape, endpoint=True).astype(dtype)


def _assert_affine_close(got: np.ndarray, want: np.ndarray) -> None:
    # NIfTI stores the sform as float32 (relative precision 2**-24 ~ 6e-8 of each entry), so the
    # geometry can only round-trip to ~1e-7 of the largest number in the matrix; 1e-6 leaves margin.
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32, np.int64, np.uint16])
@pytest.mark.parametrize("flip", [False, True])
def test_round_trip_oblique_anisotropic(tmp_path, suffix, dtype, flip):
    affine = oblique_affine(flip=flip)
    data = _random_data(dtype)
    src = Image(data, affine, slice_thickness=4.25)
    out = write_image(src, tmp_path / f"vol{suffix}")
    back = read_image(out)
    assert back.data.dtype == data.dtype
    assert back.shape == data.shape
    np.testing.assert_array_equal(back.data, data)  # bit-exact
    _assert_affine_close(back.affine, affine)
    if suffix != ".mha":  # MetaImage has no thickness field
        assert back.slice_thickness == pytest.approx(4.25)
    assert back.meta["path"] == str(out)


def test_round_trip_nrrd_geometry_is_exact(tmp_path):
    # NRRD stores the geometry with 17 significant digits: it must round-trip to float64 rounding.
    affine = oblique_affine()
    write_image(Image(_random_data(np.float32), affine), tmp_path / "a.nrrd")
    np.testing.assert_allclose(read_image(tmp_path / "a.nrrd").affine, affine, rtol=0, atol=1e-12)


def test_boolean_mask_is_written_as_uint8(tmp_path):
    mask = _random_data(np.float32) > 0
    for suffix in (".nii.gz", ".nrrd"):
        back = read_image(write_image(Image(mask, oblique_affine()), tmp_path / f"m{suffix}"))
        assert back.data.dtype == np.uint8
        np.testing.assert_array_equal(back.data, mask.astype(np.uint8))


def test_big_endian_nifti_is_read_in_native_order(tmp_path):
    data = _random_data(np.float32)
    img = nib.Nifti1Image(data.transpose(2, 1, 0).astype(">f4"), oblique_affine())
    nib.save(img, tmp_path / "be.nii")
    back = read_image(tmp_path / "be.nii")
    assert back.data.dtype.isnative
    np.testing.assert_array_equal(back.data, data)


# --------------------------------------------------------------------------------------------
# Agreement between nibabel (RAS) and SimpleITK (LPS)
# --------------------------------------------------------------------------------------------


def _sitk_ras_affine(img: sitk.Image) -> np.ndarray:
    """Independent LPS -> RAS conversion: negate the x and y rows of ITK's index-to-LPS matrix."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())[None, :]
    lps[:3, 3] = img.GetOrigin()
    lps[:2] *= -1.0
    return lps


def test_nibabel_written_file_agrees_with_simpleitk(tmp_path):
    affine = oblique_affine(flip=True)
    data = np.zeros((6, 7, 8), np.float32)  # [k, j, i]
    data[4, 3, 2] = 1.0  # one bright voxel at (i, j, k) = (2, 3, 4)
    nib.save(nib.Nifti1Image(data.transpose(2, 1, 0), affine), tmp_path / "nib.nii.gz")

    itk = sitk.ReadImage(str(tmp_path / "nib.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), data)
    _assert_affine_close(_sitk_ras_affine(itk), affine)
    # The bright voxel is at the same world point for both libraries (ITK gives LPS).
    lps = np.asarray(itk.TransformIndexToPhysicalPoint((2, 3, 4)))
    ras = (affine @ [2, 3, 4, 1])[:3]
    np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-4)

    # SimpleITK re-saves it as NRRD (LPS); our reader converts back to RAS.
    sitk.WriteImage(itk, str(tmp_path / "itk.nrrd"))
    ours = read_image(tmp_path / "itk.nrrd")
    np.testing.assert_array_equal(ours.data, data)
    _assert_affine_close(ours.affine, affine)
    _assert_affine_close(read_image(tmp_path / "nib.nii.gz").affine, affine)


def test_simpleitk_written_file_agrees_with_nibabel(tmp_path):
    data = _random_data(np.float32)
    itk = sitk.GetImageFromArray(data)
    itk.SetSpacing((0.6, 1.1, 4.0))
    itk.SetOrigin((12.5, -30.0, 7.25))  # LPS
    itk.SetDirection(rotation(-0.2, 0.4, 0.9).ravel().tolist())
    sitk.WriteImage(itk, str(tmp_path / "itk.nii.gz"))
    sitk.WriteImage(itk, str(tmp_path / "itk.nrrd"))

    expected = _sitk_ras_affine(itk)
    by_nib = nib.load(tmp_path / "itk.nii.gz")
    _assert_affine_close(by_nib.affine, expected)
    np.testing.assert_array_equal(np.asanyarray(by_nib.dataobj).transpose(2, 1, 0), data)
    for name in ("itk.nii.gz", "itk.nrrd"):
        ours = read_image(tmp_path / name)
        _assert_affine_close(ours.affine, expected)
        np.testing.assert_array_equal(ours.data, data)


def test_written_nrrd_is_lps_in_header(tmp_path):
    # A RAS +x axis must appear as -x in the LPS NRRD header: checks the conversion direction.
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    write_image(Image(np.zeros((2, 2, 2), np.float32), affine), tmp_path / "a.nrrd")
    itk = sitk.ReadImage(str(tmp_path / "a.nrrd"))
    np.testing.assert_allclose(itk.GetOrigin(), (-10.0, -20.0, 30.0))
    np.testing.assert_allclose(np.asarray(itk.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(itk.GetSpacing(), (2.0, 3.0, 4.0))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_4d_nifti_is_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 7, 6, 3), np.float32), np.eye(4)), tmp_path / "cine.nii.gz")
    with pytest.raises(ImageFormatError, match=r"4D image of shape \(8, 7, 6, 3\); a 3D volume was expected"):
        read_image(tmp_path / "cine.nii.gz")


def test_4d_nrrd_is_rejected(tmp_path):
    vols = [sitk.GetImageFromArray(np.zeros((6, 7, 8), np.float32)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "cine.nrrd"))
    with pytest.raises(ImageFormatError, match="4D image.*a 3D volume was expected"):
        read_image(tmp_path / "cine.nrrd")


def test_4d_with_single_volume_is_read_as_3d(tmp_path):
    data = _random_data(np.float32)
    nib.save(nib.Nifti1Image(data.transpose(2, 1, 0)[..., None], oblique_affine()), tmp_path / "one.nii.gz")
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(data)]), str(tmp_path / "one.nrrd"))
    for name in ("one.nii.gz", "one.nrrd"):
        back = read_image(tmp_path / name)
        assert back.shape == data.shape
        np.testing.assert_array_equal(back.data, data)


def test_2d_files_are_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 7), np.float32), np.eye(4)), tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 8), np.float32)), str(tmp_path / "slice.nrrd"))
    for name in ("slice.nii.gz", "slice.nrrd"):
        with pytest.raises(ImageFormatError, match="2D image.*a 3D volume was expected"):
            read_image(tmp_path / name)


def test_vector_image_is_rejected(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True), str(tmp_path / "v.nrrd"))
    with pytest.raises(ImageFormatError, match="3 components per voxel"):
        read_image(tmp_path / "v.nrrd")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Image file not found: .*nothere.nii.gz"):
        read_image(tmp_path / "nothere.nii.gz")


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nrrd"])
def test_corrupt_file_gives_format_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not an image\n" * 10)
    with pytest.raises(ImageFormatError, match="could not be read"):
        read_image(tmp_path / name)


def test_unknown_suffix(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ImageFormatError, match=r"unknown image format '\.png'"):
        read_image(tmp_path / "a.png")
    with pytest.raises(ImageFormatError, match=r"cannot write '\.png'"):
        write_image(Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "b.png")


def test_image_rejects_bad_data_and_affine():
    with pytest.raises(ValueError, match=r"Image data must be 3D \(K, J, I\), got shape \(2, 2\)"):
        Image(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="affine must be 4x4"):
        Image(np.zeros((2, 2, 2)), np.eye(3))
    bad = np.eye(4)
    bad[3, 0] = 1.0
    with pytest.raises(ValueError, match="affine last row must be"):
        Image(np.zeros((2, 2, 2)), bad)


# --------------------------------------------------------------------------------------------
# Slice thickness
# --------------------------------------------------------------------------------------------


def test_thickness_from_nrrd_thicknesses_field(tmp_path):
    # A NRRD whose header carries 'thicknesses' (as Slicer or teem write it), made without our writer.
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)), str(tmp_path / "s.nrrd"))
    raw = (tmp_path / "s.nrrd").read_bytes()
    raw = raw.replace(b"\nkinds:", b"\nthicknesses: nan nan 4.5\nkinds:", 1)
    (tmp_path / "s.nrrd").write_bytes(raw)
    assert read_image(tmp_path / "s.nrrd").slice_thickness == 4.5
    # ... and our writer stores it so that teem-style readers see it.
    write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4), slice_thickness=3.2), tmp_path / "w.nrrd")
    assert b"\nthicknesses: nan nan 3.2" in (tmp_path / "w.nrrd").read_bytes()[:1000]
    assert read_image(tmp_path / "w.nrrd").slice_thickness == 3.2


def test_nrrd_without_thickness_is_none(tmp_path):
    write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / "s.nrrd")
    assert read_image(tmp_path / "s.nrrd").slice_thickness is None


def test_thickness_from_nifti_descrip(tmp_path):
    img = nib.Nifti1Image(np.zeros((5, 4, 3), np.float32), np.eye(4))
    img.header["descrip"] = b"slice_thickness=3.3"
    nib.save(img, tmp_path / "s.nii.gz")
    assert read_image(tmp_path / "s.nii.gz").slice_thickness == pytest.approx(3.3)
    img.header["descrip"] = b"FSL5.0"
    nib.save(img, tmp_path / "t.nii.gz")
    assert read_image(tmp_path / "t.nii.gz").slice_thickness is None


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_thickness_from_bids_sidecar(tmp_path, suffix):
    write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / f"sub-01_T2w{suffix}")
    (tmp_path / "sub-01_T2w.json").write_text(json.dumps({"SliceThickness": 2.5, "EchoTime": 0.08}))
    assert read_image(tmp_path / f"sub-01_T2w{suffix}").slice_thickness == 2.5


def test_header_thickness_wins_over_sidecar_and_bad_sidecar_is_ignored(tmp_path):
    write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4), slice_thickness=4.0), tmp_path / "a.nii.gz")
    (tmp_path / "a.json").write_text(json.dumps({"SliceThickness": 2.5}))
    assert read_image(tmp_path / "a.nii.gz").slice_thickness == 4.0
    write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / "b.nii.gz")
    (tmp_path / "b.json").write_text(json.dumps({"SliceThickness": "thick"}))
    assert read_image(tmp_path / "b.nii.gz").slice_thickness is None
    write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / "c.nii.gz")
    (tmp_path / "c.json").write_text("{not json")
    assert read_image(tmp_path / "c.nii.gz").slice_thickness is None


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _failing_writer(target_arg: int):
    def fail(*args, **kwargs):
        Path(args[target_arg]).write_bytes(b"partial")  # a half-written file, then a crash
        raise OSError("disk full (simulated)")

    return fail


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nhdr", ".mha"])
def test_failing_write_leaves_no_file(tmp_path, monkeypatch, suffix):
    import nrrd

    monkeypatch.setattr(nib, "save", _failing_writer(1))
    monkeypatch.setattr(sitk, "WriteImage", _failing_writer(1))
    monkeypatch.setattr(nrrd, "write", _failing_writer(0))  # pynrrd: nrrd.write(file, data, header, ...)
    with pytest.raises(OSError, match="disk full"):
        write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / f"out{suffix}")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file/folder


def test_failing_write_keeps_previous_file(tmp_path, monkeypatch):
    old = Image(np.ones((3, 4, 5), np.float32), np.eye(4))
    write_image(old, tmp_path / "out.nii.gz")
    before = (tmp_path / "out.nii.gz").read_bytes()
    monkeypatch.setattr(nib, "save", _failing_writer(1))
    with pytest.raises(OSError, match="disk full"):
        write_image(Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / "out.nii.gz")
    assert (tmp_path / "out.nii.gz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_unwritable_dtype_and_missing_folder(tmp_path):
    with pytest.raises(ImageFormatError, match="cannot write voxels of dtype complex128"):
        write_image(Image(np.zeros((2, 2, 2), np.complex128), np.eye(4)), tmp_path / "c.nii.gz")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="Output folder does not exist"):
        write_image(Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "no" / "c.nii.gz")


def test_written_file_has_normal_permissions(tmp_path):
    # Files are created by the writers (not mkstemp, which would give mode 0600).
    previous = os.umask(0o022)
    try:
        path = write_image(Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "p.nii.gz")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------------------------
# SimpleITK conversion helpers
# --------------------------------------------------------------------------------------------


def test_to_sitk_from_sitk_round_trip():
    from gaussian_mri.image import from_sitk, to_sitk

    affine = oblique_affine(flip=True)
    data = _random_data(np.int16)
    itk = to_sitk(Image(data, affine))
    np.testing.assert_allclose(_sitk_ras_affine(itk), affine, atol=1e-12)  # independent LPS check
    back = from_sitk(itk, slice_thickness=2.0)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-12)
    assert back.slice_thickness == 2.0
    with pytest.raises(ImageFormatError, match="a 3D scalar SimpleITK image was expected, got dimension 2"):
        from_sitk(sitk.Image(4, 5, sitk.sitkFloat32))


# --------------------------------------------------------------------------------------------
# NRRD through pynrrd (gaussian_mri.nrrd_io): header fields, frames, tensors
# --------------------------------------------------------------------------------------------


def test_pynrrd_header_carries_lps_geometry_and_thickness(tmp_path):
    import nrrd

    affine = oblique_affine()
    write_image(Image(_random_data(np.float32), affine, slice_thickness=4.25), tmp_path / "a.nrrd")
    header = nrrd.read_header(str(tmp_path / "a.nrrd"))
    assert header["space"] == "left-posterior-superior" and header["kinds"] == ["domain"] * 3
    np.testing.assert_allclose(header["space directions"], (np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]).T, atol=1e-12)
    np.testing.assert_allclose(header["space origin"], affine[:3, 3] * [-1, -1, 1], atol=1e-12)
    assert np.isnan(header["thicknesses"][:2]).all() and header["thicknesses"][2] == 4.25
    assert read_image(tmp_path / "a.nrrd").slice_thickness == 4.25


def test_simpleitk_nrrd_without_thicknesses_reads_with_no_thickness(tmp_path):
    data = _random_data(np.int16)
    itk = sitk.GetImageFromArray(data)
    itk.SetSpacing((0.6, 1.1, 4.0))
    itk.SetDirection(rotation(-0.2, 0.4, 0.9).ravel().tolist())
    sitk.WriteImage(itk, str(tmp_path / "itk.nrrd"), useCompression=True)
    assert b"thicknesses" not in (tmp_path / "itk.nrrd").read_bytes()[:2000]
    back = read_image(tmp_path / "itk.nrrd")
    assert back.slice_thickness is None
    np.testing.assert_array_equal(back.data, data)
    _assert_affine_close(back.affine, _sitk_ras_affine(itk))


@pytest.mark.parametrize("space, signs", [("right-anterior-superior", (1, 1, 1)), ("RAS", (1, 1, 1)),
                                          ("left-anterior-superior", (-1, 1, 1)), ("left-posterior-superior", (-1, -1, 1)),
                                          ("scanner-xyz", (-1, -1, 1)), (None, (-1, -1, 1))])
def test_nrrd_spaces_are_converted_to_ras(tmp_path, space, signs):
    # Files as other tools write them (pynrrd directly): the reader applies the file's space; no
    # space, or a space without anatomical meaning, is LPS as in ITK.
    import nrrd

    affine = oblique_affine()
    s = np.asarray(signs, dtype=np.float64)
    header = {"space directions": (s[:, None] * affine[:3, :3]).T, "space origin": s * affine[:3, 3], "kinds": ["domain"] * 3}
    if space is None:
        header["space dimension"] = 3
    else:
        header["space"] = space
    data = _random_data(np.float32)
    nrrd.write(str(tmp_path / "x.nrrd"), data, header, index_order="C")
    back = read_image(tmp_path / "x.nrrd")
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-12)
    itk = sitk.ReadImage(str(tmp_path / "x.nrrd"))  # ITK agrees
    _assert_affine_close(_sitk_ras_affine(itk), affine)


def test_old_style_nrrd_with_spacings_is_axis_aligned(tmp_path):
    import nrrd

    data = _random_data(np.uint8)
    nrrd.write(str(tmp_path / "old.nrrd"), data, {"spacings": [0.5, 0.75, 3.0], "kinds": ["domain"] * 3}, index_order="C")
    back = read_image(tmp_path / "old.nrrd")
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, np.diag([-0.5, -0.75, 3.0, 1.0]))  # LPS, as ITK reads it
    _assert_affine_close(_sitk_ras_affine(sitk.ReadImage(str(tmp_path / "old.nrrd"))), back.affine)


def test_tensor_nrrd_round_trip_and_refusals(tmp_path):
    from gaussian_mri.nrrd_io import read_tensor_nrrd, write_tensor_nrrd

    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 5, 6, 3, 3))
    tensor = (a + np.swapaxes(a, -1, -2)).astype(np.float32)
    tensor[0, 0, 0] = 0.0  # masked out (mask value 0), read back as zero
    write_tensor_nrrd(tmp_path / "t.nrrd", tensor, oblique_affine())
    back, affine = read_tensor_nrrd(tmp_path / "t.nrrd")
    np.testing.assert_array_equal(back, tensor)
    np.testing.assert_allclose(affine, oblique_affine(), atol=1e-12)
    with pytest.raises(ImageFormatError, match="7 components per voxel"):
        read_image(tmp_path / "t.nrrd")  # not a scalar volume
    write_image(Image(_random_data(np.float32), np.eye(4)), tmp_path / "s.nrrd")
    with pytest.raises(ImageFormatError, match="is not a 3x3 tensor volume"):
        read_tensor_nrrd(tmp_path / "s.nrrd")
    raw = (tmp_path / "t.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageFormatError, match="could not be read as NRRD"):
        read_tensor_nrrd(tmp_path / "cut.nrrd")
    with pytest.raises(ValueError, match=r"tensor must have shape \(K, J, I, 3, 3\)"):
        write_tensor_nrrd(tmp_path / "bad.nrrd", np.zeros((2, 2, 2, 3)), np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.nrrd", "s.nrrd", "t.nrrd"]
