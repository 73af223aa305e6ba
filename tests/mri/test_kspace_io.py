"""load_kspace for every format (real files round-tripped), cine_from_image and simulate_coil_maps."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import SimpleITK as sitk
import torch

from gaussian_mri.mri.cfl import to_bart_dims, write_cfl
from gaussian_mri.mri.fft import fft2c
from gaussian_mri.mri.ismrmrd_io import write_cine_ismrmrd
from gaussian_mri.mri.kspace_io import (
    KSpaceFormatError,
    cine_from_image,
    load_kspace,
    simulate_coil_maps,
)

F, C, NY, NX = 3, 2, 12, 10


@pytest.fixture
def kspace() -> np.ndarray:
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((F, C, NY, NX)) + 1j * rng.standard_normal((F, C, NY, NX))).astype(np.complex64)
    k[:, :, 1::3] = 0  # some lines not acquired
    return k


def test_npy_default_and_permuted_axes(tmp_path, kspace):
    np.save(tmp_path / "k.npy", kspace)
    cine = load_kspace(tmp_path / "k.npy")
    np.testing.assert_array_equal(cine.kspace, kspace)
    np.testing.assert_array_equal(cine.mask, np.any(kspace != 0, axis=(1, 3)))  # mask from non-zero lines
    assert not cine.mask[:, 1].any() and cine.mask[:, 0].all()
    # stored as (kx, ky, coils, frames) plus a singleton axis
    np.save(tmp_path / "t.npy", kspace.transpose(3, 2, 1, 0)[:, :, None])
    cine = load_kspace(tmp_path / "t.npy", axes="kx,ky,_,coils,frames")
    np.testing.assert_array_equal(cine.kspace, kspace)
    # single-coil, single-frame data get singleton axes
    np.save(tmp_path / "s.npy", kspace[0, 0])
    assert load_kspace(tmp_path / "s.npy", axes="ky,kx").kspace.shape == (1, 1, NY, NX)


def test_axis_count_mismatch_suggests_axes(tmp_path, kspace):
    np.save(tmp_path / "k.npy", kspace[0])
    with pytest.raises(KSpaceFormatError, match="has 3 axes.*axes="):
        load_kspace(tmp_path / "k.npy")
    with pytest.raises(KSpaceFormatError, match="unknown names"):
        load_kspace(tmp_path / "k.npy", axes="coils,y,x")
    with pytest.raises(KSpaceFormatError, match="only singleton axes"):
        load_kspace(tmp_path / "k.npy", axes="_,ky,kx")


def test_npz_with_mask_coil_maps_and_fov(tmp_path, kspace):
    mask = np.zeros((F, NY), bool)
    mask[:, ::2] = True
    maps = np.ones((C, NY, NX), np.complex64) / np.sqrt(C)
    np.savez(tmp_path / "k.npz", kspace=kspace, mask=mask, coil_maps=maps, fov_mm=[20.0, 24.0, 8.0])
    cine = load_kspace(tmp_path / "k.npz")
    np.testing.assert_array_equal(cine.kspace, kspace)
    np.testing.assert_array_equal(cine.mask, mask)
    np.testing.assert_allclose(cine.coil_maps, maps, rtol=1e-6)
    assert cine.fov_mm == (20.0, 24.0, 8.0)
    np.savez(tmp_path / "bad.npz", kspace=kspace, coil_maps=maps[:, :-1])
    with pytest.raises(KSpaceFormatError, match="coil_maps has shape.*axes"):
        load_kspace(tmp_path / "bad.npz")
    np.savez(tmp_path / "m3.npz", kspace=kspace, mask=np.repeat(mask[:, :, None], NX, axis=2))
    np.testing.assert_array_equal(load_kspace(tmp_path / "m3.npz").mask, mask)


def _write_matlab_v73(path, variables: dict) -> None:
    """Write a file the way MATLAB's ``save -v7.3`` does: HDF5 behind a 512-byte text user block, arrays
    column-major (h5py sees the axes reversed), complex as a compound {real, imag}."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            value = np.asarray(value)
            data = np.transpose(value)  # MATLAB column-major -> HDF5 row-major: reversed axes
            if np.iscomplexobj(data):
                comp = np.empty(data.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
                comp["real"], comp["imag"] = data.real, data.imag
                data = comp
                cls = "double"
            elif data.dtype == bool:
                data = data.astype(np.uint8)
                cls = "logical"
            else:
                cls = "double"
            f.create_dataset(name, data=data)
            f[name].attrs["MATLAB_class"] = np.bytes_(cls)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_matlab_v73_complex_compound_and_column_major(tmp_path, kspace):
    matlab_k = kspace.transpose(3, 2, 1, 0)  # size(kspace) in MATLAB = [kx ky coils frames]
    mask = np.any(kspace != 0, axis=(1, 3))
    _write_matlab_v73(tmp_path / "k.mat", {"kData": matlab_k, "mask": mask.T})
    with h5py.File(tmp_path / "k.mat", "r") as f:  # the file really is reversed + compound
        assert f["kData"].shape == (F, C, NY, NX) and f["kData"].dtype.names == ("real", "imag")
    cine = load_kspace(tmp_path / "k.mat")  # only complex variable -> chosen; default MATLAB axes
    np.testing.assert_allclose(cine.kspace, kspace, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cine.mask, mask)
    assert cine.meta["format"] == "mat v7.3" and cine.meta["key"] == "kData"
    # another MATLAB order, named explicitly
    _write_matlab_v73(tmp_path / "k2.mat", {"kspace": kspace.transpose(2, 3, 0, 1)})  # [ky kx frames coils]
    cine = load_kspace(tmp_path / "k2.mat", axes="ky,kx,frames,coils")
    np.testing.assert_allclose(cine.kspace, kspace, atol=1e-6)
    with pytest.raises(KSpaceFormatError, match="axes"):
        load_kspace(tmp_path / "k2.mat", axes="kx,ky,coils")


def test_matlab_v5(tmp_path, kspace):
    scipy.io.savemat(tmp_path / "k5.mat", {"kspace": kspace.transpose(3, 2, 1, 0), "other": np.arange(3)})
    cine = load_kspace(tmp_path / "k5.mat")
    np.testing.assert_array_equal(cine.kspace, kspace)
    assert cine.meta["format"] == "mat v5"
    scipy.io.savemat(tmp_path / "amb.mat", {"a": kspace, "b": kspace})
    with pytest.raises(KSpaceFormatError, match="key="):
        load_kspace(tmp_path / "amb.mat")


def test_bart_cfl(tmp_path, kspace):
    write_cfl(tmp_path / "ksp", to_bart_dims(kspace, ("frames", "coils", "ky", "kx")))
    cine = load_kspace(tmp_path / "ksp.cfl")
    np.testing.assert_array_equal(cine.kspace, kspace)
    # a hand-written pair (BART order READ, PHS1, PHS2, COIL; no TIME) read with explicit axes
    one = kspace[0]  # (coils, ky, kx)
    bart = one.transpose(2, 1, 0)[:, :, None, :]  # (kx, ky, 1, coils)
    (tmp_path / "hand.hdr").write_text("# Dimensions\n" + " ".join(map(str, bart.shape)) + " 1 1\n")
    bart.ravel(order="F").astype("<c8").tofile(tmp_path / "hand.cfl")
    cine = load_kspace(tmp_path / "hand.hdr")  # default: BART dimension meanings
    np.testing.assert_array_equal(cine.kspace[0], one)
    cine = load_kspace(tmp_path / "hand", axes="kx,ky,_,coils")
    np.testing.assert_array_equal(cine.kspace[0], one)
    with pytest.raises(FileNotFoundError, match="BART file not found"):
        load_kspace(tmp_path / "missing.cfl")


def test_ismrmrd_and_plain_hdf5(tmp_path, kspace):
    full = kspace.copy()
    full[:, :, 1::3] = 1  # make all lines non-zero; written only where the mask says
    mask = np.any(kspace != 0, axis=(1, 3))
    write_cine_ismrmrd(tmp_path / "raw.h5", full, mask=mask, readout_oversampling=2)
    cine = load_kspace(tmp_path / "raw.h5")
    np.testing.assert_array_equal(cine.mask, mask)
    assert np.abs(cine.kspace - kspace).max() < 1e-5 * np.abs(kspace).max()
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["kspace"] = kspace.transpose(0, 1, 3, 2)
    cine = load_kspace(tmp_path / "plain.h5", axes="frames,coils,kx,ky")
    np.testing.assert_array_equal(cine.kspace, kspace)


def test_bad_inputs(tmp_path, kspace):
    with pytest.raises(FileNotFoundError):
        load_kspace(tmp_path / "none.npy")
    (tmp_path / "k.txt").write_text("1 2 3")
    with pytest.raises(KSpaceFormatError, match="unknown k-space format"):
        load_kspace(tmp_path / "k.txt")
    np.save(tmp_path / "real.npy", np.abs(kspace))
    with pytest.raises(KSpaceFormatError, match="real.*complex"):
        load_kspace(tmp_path / "real.npy")


def _cine_frames(nt=5, ny=14, nx=11) -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.random((nt, ny, nx)).astype(np.float32)


def test_cine_from_4d_nifti(tmp_path):
    frames = _cine_frames()
    vol = frames.transpose(2, 1, 0)[:, :, None, :]  # (x, y, 1, t)
    img = nib.Nifti1Image(vol, np.diag([1.5, 2.0, 8.0, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((1.5, 2.0, 8.0, 40.0))
    nib.save(img, tmp_path / "c.nii.gz")
    cine = cine_from_image(tmp_path / "c.nii.gz")
    np.testing.assert_array_equal(cine.frames.real, frames)
    assert cine.frames.dtype == np.complex64 and not cine.frames.imag.any()
    assert cine.pixel_spacing_mm == (2.0, 1.5)  # (row = y, column = x)
    assert cine.frame_duration_ms == pytest.approx(40.0)
    # seconds are converted
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((1.5, 2.0, 8.0, 0.04))
    nib.save(img, tmp_path / "s.nii.gz")
    assert cine_from_image(tmp_path / "s.nii.gz").frame_duration_ms == pytest.approx(40.0)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 3), np.float32), np.eye(4)), tmp_path / "two.nii.gz")
    with pytest.raises(KSpaceFormatError, match="2 slices"):
        cine_from_image(tmp_path / "two.nii.gz")


def test_cine_from_3d_needs_the_time_flag(tmp_path):
    frames = _cine_frames()
    nib.save(nib.Nifti1Image(frames.transpose(2, 1, 0), np.diag([1.2, 1.2, 1.0, 1.0])), tmp_path / "v.nii")
    with pytest.raises(KSpaceFormatError, match="time_axis_is_third"):
        cine_from_image(tmp_path / "v.nii")
    cine = cine_from_image(tmp_path / "v.nii", time_axis_is_third=True)
    np.testing.assert_array_equal(cine.frames.real, frames)
    itk = sitk.GetImageFromArray(frames)  # (t, y, x) array -> 3D image (x, y, t)
    itk.SetSpacing((0.9, 1.1, 30.0))
    sitk.WriteImage(itk, str(tmp_path / "v.nrrd"))
    cine = cine_from_image(tmp_path / "v.nrrd", time_axis_is_third=True)
    np.testing.assert_array_equal(cine.frames.real, frames)
    assert cine.pixel_spacing_mm == pytest.approx((1.1, 0.9))


def test_simulate_coil_maps_properties():
    maps = simulate_coil_maps(8, 48, 40, seed=1)
    assert maps.shape == (8, 48, 40) and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, rtol=1e-5)
    # smooth: almost all energy in the central 12 x 12 of the 48 x 40 k-space
    k = fft2c(torch.from_numpy(maps)).abs().pow(2).numpy()
    centre = k[:, 24 - 6 : 24 + 6, 20 - 6 : 20 + 6].sum()
    assert centre / k.sum() > 0.95
    # coils see different regions: each map peaks in a different place
    peaks = {int(np.argmax(np.abs(m))) for m in maps}
    assert len(peaks) == 8
    assert np.abs(maps).max() / np.abs(maps).min() > 3  # not flat
    np.testing.assert_array_equal(maps, simulate_coil_maps(8, 48, 40, seed=1))
    assert not np.array_equal(maps, simulate_coil_maps(8, 48, 40, seed=2))
    with pytest.raises(ValueError, match="n_coils"):
        simulate_coil_maps(0, 8, 8)


# --------------------------------------------------------------------------------------------------
# DICOM cine series (real files written with pydicom)
# --------------------------------------------------------------------------------------------------
DT, DY, DX = 8, 32, 24
_SLOPE, _INTERCEPT = 0.5, -10.0
_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # along a row (columns) +y (posterior), down a column -z (feet)
_IPP = (12.5, -40.0, 30.0)


def _disc_cine() -> np.ndarray:
    """Stored integer values (frames, rows, cols) of a disc moving right along the columns."""
    yy, xx = np.mgrid[:DY, :DX]
    out = np.full((DT, DY, DX), 20, dtype=np.uint16)
    for t in range(DT):
        out[t][(yy - 16) ** 2 + (xx - 6 - 1.5 * t) ** 2 <= 25] = 1000 + 10 * t
    return out


def _write_dicom(path, pixels, *, series_uid, instance, trigger=None, ipp=_IPP, iop=_IOP, extra=None):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Phantom^Cine"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 3
    ds.SeriesDescription = "cine_bssfp"
    ds.InstanceNumber = instance
    if trigger is not None:
        ds.TriggerTime = trigger
    ds.ImagePositionPatient = list(ipp)
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [1.25, 1.5]  # (between rows, between columns)
    ds.SliceThickness = 8.0
    ds.RescaleSlope = _SLOPE
    ds.RescaleIntercept = _INTERCEPT
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    try:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def _write_cine_folder(folder, *, triggers=True, extra=None, series_uid="1.2.826.0.1.3680043.8.498.2"):
    folder.mkdir(parents=True, exist_ok=True)
    pix = _disc_cine()
    # file names in shuffled order, instance numbers not in trigger order either
    names = np.random.default_rng(3).permutation(DT)
    for t in range(DT):
        _write_dicom(
            folder / f"IM{names[t]:04d}",
            pix[t],
            series_uid=series_uid,
            instance=(t * 3) % DT + 1 if triggers else t + 1,
            trigger=17.0 + 35.5 * t if triggers else None,
            extra=extra,
        )
    return pix


def test_cine_from_dicom_folder(tmp_path):
    from gaussian_mri.mri.kspace_io import cine_from_dicom

    pix = _write_cine_folder(tmp_path / "cine")
    (tmp_path / "cine" / "README.txt").write_text("not DICOM")  # skipped
    cine = cine_from_dicom(tmp_path / "cine")
    assert cine.frames.shape == (DT, DY, DX) and cine.frames.dtype == np.complex64
    assert not cine.frames.imag.any()
    np.testing.assert_allclose(cine.frames.real, pix * _SLOPE + _INTERCEPT)  # trigger order, rescaled
    assert cine.pixel_spacing_mm == pytest.approx((1.25, 1.5))
    assert cine.frame_duration_ms == pytest.approx(35.5)
    # geometry: (col, row) index -> RAS mm; LPS row direction (0,1,0) -> RAS (0,-1,0) etc.
    np.testing.assert_allclose(cine.affine[:3, 3], [-12.5, 40.0, 30.0])
    np.testing.assert_allclose(cine.affine[:3, 0], [0.0, -1.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(cine.affine[:3, 1], [0.0, 0.0, -1.25], atol=1e-12)
    assert abs(cine.affine[0, 2]) == pytest.approx(8.0)
    # dispatch: a folder, or one .dcm file of it, through cine_from_image
    np.testing.assert_array_equal(cine_from_image(tmp_path / "cine").frames, cine.frames)
    first = sorted((tmp_path / "cine").glob("IM*"))[0]
    first.rename(first.with_suffix(".dcm"))
    np.testing.assert_array_equal(cine_from_image(first.with_suffix(".dcm")).frames, cine.frames)


def test_cine_from_dicom_without_trigger_time(tmp_path):
    from gaussian_mri.mri.kspace_io import cine_from_dicom

    pix = _write_cine_folder(
        tmp_path / "c", triggers=False, extra={"NominalInterval": 800.0, "CardiacNumberOfImages": DT}
    )
    cine = cine_from_dicom(tmp_path / "c")
    np.testing.assert_allclose(cine.frames.real, pix * _SLOPE + _INTERCEPT)  # InstanceNumber order
    assert cine.frame_duration_ms == pytest.approx(100.0)
    _write_cine_folder(tmp_path / "d", triggers=False)
    assert cine_from_dicom(tmp_path / "d").frame_duration_ms is None


def test_cine_from_dicom_errors(tmp_path):
    from gaussian_mri.mri.kspace_io import cine_from_dicom

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(KSpaceFormatError, match="no DICOM image"):
        cine_from_dicom(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        cine_from_dicom(tmp_path / "missing")

    two = tmp_path / "two"
    _write_cine_folder(two)
    other = "1.2.826.0.1.3680043.8.498.99"
    _write_dicom(two / "other", _disc_cine()[0], series_uid=other, instance=1, trigger=0.0)
    with pytest.raises(KSpaceFormatError, match="2 DICOM series") as err:
        cine_from_dicom(two)
    assert other in str(err.value) and "1.2.826.0.1.3680043.8.498.2" in str(err.value)
    assert "one series" in str(err.value)

    mixed = tmp_path / "mixed"
    _write_cine_folder(mixed)
    uid = "1.2.826.0.1.3680043.8.498.2"
    _write_dicom(
        mixed / "slice2", _disc_cine()[0], series_uid=uid, instance=9, trigger=5.0, ipp=(12.5, -40.0, 38.0)
    )
    with pytest.raises(KSpaceFormatError, match="not a single-slice cine"):
        cine_from_dicom(mixed)


def test_cli_cine_from_dicom_folder(tmp_path):
    import json
    import subprocess
    import sys

    _write_cine_folder(tmp_path / "dicom")
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "gaussian_mri", "cine", "--image-cine", str(tmp_path / "dicom"),
        "--mask-type", "gro", "--acceleration", "4", "--coils", "4", "--steps", "3", "--n-gaussians", "50",
        "--threads", "1", "--output-dir", str(out), "--progress-json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events[-1]["event"] == "done"
    with np.load(out / "result.npz") as r:
        assert r["recon"].shape == (DT, DY, DX)
        np.testing.assert_allclose(r["reference"].real, _disc_cine() * _SLOPE + _INTERCEPT)
        np.testing.assert_allclose(r["spacing_mm"], [1.25, 1.5])
        assert float(r["frame_ms"]) == pytest.approx(35.5)


@pytest.mark.parametrize("key, value, match", [("NumberOfFrames", 2, "multi-frame"), ("SamplesPerPixel", 3, "colour")])
def test_cine_from_dicom_refuses_multiframe_and_colour(tmp_path, key, value, match):
    """The cine reader and the stack reader share one check (dicom_io.require_single_frame_greyscale)."""
    from gaussian_mri.mri.kspace_io import cine_from_dicom

    folder = tmp_path / "cine"
    _write_cine_folder(folder)
    _write_dicom(folder / "odd", _disc_cine()[0], series_uid="1.2.826.0.1.3680043.8.498.2", instance=99, trigger=1.0,
                 extra={key: value})
    with pytest.raises(KSpaceFormatError, match=match):
        cine_from_dicom(folder)
