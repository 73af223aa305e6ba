"""DICOM series folders as stacks (:mod:`gaussian_mri.dicom_io`, through :func:`gaussian_mri.image.read_image`).

The series are written here with pydicom from a known oblique volume (one MR Image Storage file per
slice, DICOM PS3.3 C.7.6.2 geometry in LPS), with a slice thickness different from the slice
spacing, shuffled file names and reversed Instance Numbers, so that the reader must place the slices
by Image Position (Patient) and take the thickness from Slice Thickness (0018,0050).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _cases import oblique_stack, rotation, write_dicom_series

from gaussian_mri.image import ImageFormatError, read_image
from gaussian_mri.resample import resample_to_reference


def test_series_folder_is_read_in_ras_with_the_dicom_thickness(tmp_path):
    source = oblique_stack()
    files = write_dicom_series(tmp_path / "series", source, thickness=4.25)
    (tmp_path / "series" / "DICOMDIR.txt").write_text("not an image")  # other files are skipped
    stack = read_image(tmp_path / "series")
    np.testing.assert_array_equal(stack.data, source.data)
    assert stack.data.dtype == np.int16
    np.testing.assert_allclose(stack.affine, source.affine, atol=1e-6)
    assert stack.slice_thickness == pytest.approx(4.25)  # not the 3.5 mm spacing
    assert np.linalg.norm(stack.affine[:3, 2]) == pytest.approx(3.5)
    assert stack.meta["files"][0] == str(files[0])  # slice order, not file-name order
    # one file of the series stands for it
    again = read_image(files[3])
    np.testing.assert_array_equal(again.data, source.data)
    np.testing.assert_allclose(again.affine, source.affine, atol=1e-6)


def test_series_matches_simpleitks_own_series_reader(tmp_path):
    """Independent reader: SimpleITK/GDCM sort the files and place the slices itself (its own IPP/IOP
    geometry); the affine and voxels must agree with ``read_image`` on the folder."""
    import SimpleITK as sitk

    from gaussian_mri.image import from_sitk

    write_dicom_series(tmp_path / "s", oblique_stack(), thickness=4.25)
    ours = read_image(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    theirs = from_sitk(reader.Execute())
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ours.data), np.asarray(theirs.data))


def test_series_stacked_against_the_normal_lands_at_the_same_world_points(tmp_path):
    source = oblique_stack(flip=True)  # k runs opposite to i x j: the reader stacks along the normal
    write_dicom_series(tmp_path / "s", source)
    stack = read_image(tmp_path / "s")
    np.testing.assert_allclose(stack.affine[:3, 2], -source.affine[:3, 2], atol=1e-6)
    np.testing.assert_array_equal(stack.data, source.data[::-1])
    back = resample_to_reference(stack, source, order=0)
    np.testing.assert_array_equal(back.data, source.data)


def test_missing_slice_thickness_falls_back_to_the_spacing_with_a_warning(tmp_path, caplog):
    write_dicom_series(tmp_path / "s", oblique_stack(), thickness=None)
    with caplog.at_level(logging.WARNING, logger="gaussian_mri.dicom_io"):
        stack = read_image(tmp_path / "s")
    assert stack.slice_thickness is None  # callers use the spacing
    assert "no Slice Thickness (0018,0050)" in caplog.text and "3.5 mm" in caplog.text


def test_folder_with_several_series_names_them_and_one_file_picks_one(tmp_path):
    a = write_dicom_series(tmp_path / "both", oblique_stack(seed=1), description="AX", series_number=3, name="A")
    write_dicom_series(tmp_path / "both", oblique_stack(seed=2), description="COR", series_number=4, name="B")
    with pytest.raises(ImageFormatError, match=r"holds 2 DICOM series: series 3 'AX' \(7 images.*series 4 'COR'.*Give one series"):
        read_image(tmp_path / "both")
    np.testing.assert_array_equal(read_image(a[0]).data, oblique_stack(seed=1).data)


def test_folder_without_dicom_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageFormatError, match="holds no DICOM images"):
        read_image(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing_folder" / "IM0001.dcm")


def test_mixed_orientations_are_refused(tmp_path):
    source = oblique_stack()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ source.affine
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    good = np.concatenate([lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]])
    tilted = np.concatenate([rotation(0.1, 0, 0) @ good[:3], rotation(0.1, 0, 0) @ good[3:]])
    write_dicom_series(tmp_path / "s", source, orientation_of=lambda k: tilted if k == 4 else good)
    with pytest.raises(ImageFormatError, match="mixes slice orientations.*one orientation per folder"):
        read_image(tmp_path / "s")


@pytest.mark.parametrize("problem, match", [
    ("duplicate", "several images at one slice position"),
    ("gap", "unevenly spaced slices"),
    ("shear", "do not follow the slice normal"),
])
def test_bad_slice_positions_are_refused(tmp_path, problem, match):
    source = oblique_stack()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ source.affine

    def position(k):
        index = {"duplicate": [0, 0, min(k, 5)], "gap": [0, 0, k + (k >= 4)], "shear": [0.5 * k, 0, k]}[problem]
        return (lps @ [*index, 1.0])[:3]

    write_dicom_series(tmp_path / "s", source, position_of=position)
    with pytest.raises(ImageFormatError, match=match):
        read_image(tmp_path / "s")


@pytest.mark.parametrize("key, value, match", [("NumberOfFrames", 2, "multi-frame"), ("SamplesPerPixel", 3, "colour")])
def test_multiframe_and_colour_images_are_refused(tmp_path, key, value, match):
    import pydicom

    files = write_dicom_series(tmp_path / "s", oblique_stack())
    ds = pydicom.dcmread(files[0])
    setattr(ds, key, value)
    ds.save_as(files[0])
    with pytest.raises(ImageFormatError, match=match):
        read_image(tmp_path / "s")
