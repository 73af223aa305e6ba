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
