"""The ISMRMRD acquisition geometry (position, read_dir, phase_dir, slice_dir) is read and carried to the
outputs: the reader's IJK-to-RAS, ``gaussian-mri cine``'s NIfTI affine and ``result.npz``.

Ground truth from first principles: the k-space of blobs at known patient positions is computed from the
MR signal equation of an oblique, off-centre slice, ``s(k) = sum_b rho_b(k) exp(-2 pi i (kx x_b + ky y_b))``
with ``x_b = (q_b - position) . read_dir``, ``y_b = (q_b - position) . phase_dir`` (the encoding's origin
is the slice centre ``position``) and ``kx = (n - nx // 2) / FOV_x`` for sample ``n``; the reconstructed
blobs must land, through the affine, on the RAS points ``diag(-1, -1, 1) q_b`` (ISMRMRD positions are
LPS, DICOM's patient coordinates).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest

from gaussian_mri.mri.ismrmrd_io import acquisition_affine, read_cine_ismrmrd, write_cine_ismrmrd

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


#: an oblique (double-angulated), off-centre slice: read, phase, slice directions (LPS) and its centre
AXES = rotation(0.5, -0.35, 0.8)
READ, PHASE, NORMAL = AXES[:, 0], AXES[:, 1], AXES[:, 2]
POSITION = np.array([12.5, -30.0, 41.0])
NY, NX, DY, DX, THICKNESS = 40, 48, 2.0, 1.5, 6.0  # rows (phase) x columns (read), mm


def blob_kspace(points_lps: np.ndarray, sigma_mm: float = 2.0, n_frames: int = 2) -> np.ndarray:
    """(frames, 1 coil, ny, nx) k-space of Gaussian blobs at ``points_lps`` (in the slice plane)."""
    ky = (np.arange(NY) - NY // 2) / (NY * DY)  # cycles / mm
    kx = (np.arange(NX) - NX // 2) / (NX * DX)
    k = np.zeros((NY, NX), dtype=np.complex128)
    for q in points_lps:
        x, y = (q - POSITION) @ READ, (q - POSITION) @ PHASE
        envelope = np.exp(-2 * np.pi**2 * sigma_mm**2 * (ky[:, None] ** 2 + kx[None, :] ** 2))
        k += envelope * np.exp(-2j * np.pi * (kx[None, :] * x + ky[:, None] * y))
    return np.broadcast_to(k, (n_frames, 1, NY, NX)).astype(np.complex64)


# in-plane offsets (mm) of the blobs from the slice centre: deliberately not on pixel centres
OFFSETS = np.array([[-18.3, -21.1], [16.7, -6.4], [-3.1, 19.2]])
POINTS = POSITION + OFFSETS[:, :1] * READ + OFFSETS[:, 1:] * PHASE


def write_oblique(path, kspace=None, **kwargs):
    kspace = blob_kspace(POINTS) if kspace is None else kspace
    geometry = {"position_mm": POSITION, "read_dir": READ, "phase_dir": PHASE, **kwargs}
    return write_cine_ismrmrd(path, kspace, fov_mm=(NX * DX, NY * DY, THICKNESS), **geometry)


def centroids(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS centroid of each blob: |image|-weighted mean pixel position in a window, through ``affine``."""
    out = []
    mag = np.abs(image)
    expected_ij = [np.linalg.solve(affine, np.r_[LPS_TO_RAS @ q, 1.0])[:2] for q in POINTS]
    for i0, j0 in expected_ij:  # +-7 px around where the blob should be: 5 sigma, far more than any error
        ii, jj = np.meshgrid(np.arange(NX), np.arange(NY))
        w = mag * ((abs(ii - round(i0)) <= 7) & (abs(jj - round(j0)) <= 7))
        ij = np.array([(w * ii).sum(), (w * jj).sum()]) / w.sum()
        out.append((affine @ np.r_[ij, 0.0, 1.0])[:3])
    return np.array(out)


def test_reader_affine_puts_blobs_where_the_signal_equation_put_them(tmp_path):
    path = write_oblique(tmp_path / "oblique.h5", readout_oversampling=2, n_noise_scans=2, noise_std=1e-3)
    data = read_cine_ismrmrd(path)
    assert data.affine is not None and data.meta["geometry"].startswith("acquisition headers")
    assert data.pixel_spacing_mm == pytest.approx((DY, DX))
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(data.kspace[0, 0]), norm="ortho"))  # 2-D: all axes
    found = centroids(image, data.affine)
    expected = POINTS @ LPS_TO_RAS.T
    np.testing.assert_allclose(found, expected, atol=0.02)  # mm; the half-pixel conventions differ by >= 0.75
    # columns: readout direction x dx, phase direction x dy, slice normal x thickness (in RAS)
    np.testing.assert_allclose(data.affine[:3, 0], LPS_TO_RAS @ READ * DX, atol=1e-6)
    np.testing.assert_allclose(data.affine[:3, 1], LPS_TO_RAS @ PHASE * DY, atol=1e-6)
    np.testing.assert_allclose(data.affine[:3, 2], LPS_TO_RAS @ NORMAL * THICKNESS, atol=1e-6)
    # the first pixel is Gadgetron's DICOM ImagePositionPatient: position - fov_x/2 read - fov_y/2 phase
    corner = POSITION - NX * DX / 2 * READ - NY * DY / 2 * PHASE
    np.testing.assert_allclose(data.affine[:3, 3], LPS_TO_RAS @ corner, atol=1e-4)


def test_geometry_of_a_patched_generator_file(tmp_path):
    """A file of ISMRMRD's own generator with oblique headers patched in: same affine as the formula."""
    tool = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
    if tool is None:
        pytest.skip("optional peer: ismrmrd_generate_cartesian_shepp_logan is not installed (apt-get install ismrmrd-tools)")
    path = tmp_path / "shepp.h5"
    subprocess.run([tool, "-m", "32", "-c", "2", "-n", "0", "-o", str(path)], cwd=tmp_path, check=True, capture_output=True)
    with h5py.File(path, "r+") as f:
        records = f["dataset/data"][:]
        for key, value in (("position", POSITION), ("read_dir", READ), ("phase_dir", PHASE), ("slice_dir", NORMAL)):
            records["head"][key] = value
        f["dataset/data"][:] = records
    data = read_cine_ismrmrd(path)
    spacing = 300.0 / 32  # the generator's field of view (300 mm) over 32 pixels, x and y
    expected = np.eye(4)
    expected[:3, 0], expected[:3, 1], expected[:3, 2] = READ * spacing, PHASE * spacing, NORMAL * 6.0
    expected[:3, 3] = POSITION - 16 * spacing * READ - 16 * spacing * PHASE
    expected[:3] = LPS_TO_RAS @ expected[:3]
    np.testing.assert_allclose(data.affine, expected, atol=1e-4)


def test_bad_directions_give_no_affine_and_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="orthonormal"):
        acquisition_affine(POSITION, READ, READ, NORMAL, (1.0, 1.0), 1.0, (4, 4))
    with pytest.raises(ValueError, match="orthonormal"):
        write_oblique(tmp_path / "bad.h5", read_dir=(1.0, 1.0, 0.0))
    assert not (tmp_path / "bad.h5").exists()


def test_cine_command_writes_the_acquisition_geometry(tmp_path):
    """``gaussian-mri cine`` on the oblique file: ``result.npz``'s ``ijk_to_ras`` is the reader's affine,
    and ``cine.nii.gz`` at ``--sr-factor 2`` puts each fine pixel where it is in the 1x grid."""
    from gaussian_mri.mri.kspace_io import simulate_coil_maps

    maps = simulate_coil_maps(4, NY, NX, seed=1).astype(np.complex64)
    ax = (-2, -1)
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(blob_kspace(POINTS, n_frames=3)[:, 0], axes=ax), norm="ortho"), axes=ax)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps[None] * image[:, None], axes=ax), norm="ortho"), axes=ax)
    lines = np.zeros((3, NY), bool)
    lines[:, ::2] = True  # undersampled, with coil maps given: no reference, no baselines (a quick run)
    path = write_oblique(tmp_path / "cine.h5", kspace=kspace.astype(np.complex64), mask=lines)
    np.save(tmp_path / "maps.npy", maps)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gaussian_mri", "cine", "--kspace", str(path), "--coil-maps", str(tmp_path / "maps.npy"),
           "--output-dir", str(out), "--n-gaussians", "100", "--steps", "2", "--sr-factor", "2", "--threads", "1",
           "--device", "cpu", "--progress-json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = read_cine_ismrmrd(path).affine
    with np.load(out / "result.npz") as r:
        np.testing.assert_allclose(r["ijk_to_ras"], read, atol=1e-9)
        assert str(r["geometry_source"]) == "ismrmrd"
    nii = nib.load(out / "cine.nii.gz")
    assert nii.shape == (2 * NX, 2 * NY, 1, 3)
    fine = nii.affine
    for i, j in ((0, 0), (NX - 1, 0), (5, NY - 1), (NX // 2, NY // 2)):
        # the four fine pixels of coarse pixel (i, j) are centred around it: fine (2i + 1/2, 2j + 1/2)
        np.testing.assert_allclose(fine @ [2 * i + 0.5, 2 * j + 0.5, 0, 1], read @ [i, j, 0, 1], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(fine[:3, :3], axis=0), [DX / 2, DY / 2, THICKNESS], atol=1e-5)
