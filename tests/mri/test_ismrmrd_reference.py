"""The ISMRMRD reader against an independent implementation: ISMRMRD's own command-line tools.

``ismrmrd_generate_cartesian_shepp_logan`` (C++, ISMRMRD 1.8, Debian ``ismrmrd-tools``) writes
multi-coil Cartesian k-space of a Shepp-Logan phantom with readout oversampling ``-O``, complex noise
``-n``, an optional noise-calibration readout ``-C``, and acceleration ``-a R``: R repetitions, each with
every R-th line (repetition ``a`` has lines ``i = a mod R``), repeated ``-r`` times. It also stores the
coil images it started from (``/dataset/coil_images``, oversampled readout). ``ismrmrd_recon_cartesian_2d``
reconstructs a file: every readout is copied into one (kx, ky, coil) buffer by ``kspace_encode_step_1``
(later readouts overwrite earlier ones, the noise readout included, which line 0 then overwrites),
unnormalised inverse FFT (FFTW_BACKWARD, fftshift before and after), the central ``reconSpace.x``
columns of the oversampled readout, root-sum-of-squares over coils; it appends the image to the file as
``/dataset/cpp`` (utilities/recon_cartesian_2d.cpp, github.com/ismrmrd/ismrmrd v1.8.0).

Our path: :func:`read_cine_ismrmrd` (noise readout excluded, oversampling removed by inverse FFT along
x, central crop, FFT back; repetitions are the frames), ``ifft2c`` (unitary), root-sum-of-squares. The
reference's unnormalised FFT over the encoded matrix is ``sqrt(enx * eny)`` times our unitary one.
Measured: relative L2 difference 1e-7 (float32 round-off), see ``benchmarks/README.md``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from gaussian_mri.mri.ismrmrd_io import read_cine_ismrmrd

GENERATE = "ismrmrd_generate_cartesian_shepp_logan"
RECON = "ismrmrd_recon_cartesian_2d"

pytestmark = pytest.mark.skipif(
    shutil.which(GENERATE) is None or shutil.which(RECON) is None,
    reason=f"optional peer: ISMRMRD's command-line tools ({GENERATE}, {RECON}) are not installed "
    "(apt-get install ismrmrd-tools on Debian/Ubuntu)",
)


def generate(folder: Path, name: str, *, matrix=64, coils=4, oversampling=2, acceleration=1, repetitions=1,
             noise=0.05, noise_calibration=False) -> Path:
    path = folder / name
    cmd = [GENERATE, "-m", str(matrix), "-c", str(coils), "-O", str(oversampling), "-a", str(acceleration),
           "-r", str(repetitions), "-n", str(noise), "-o", str(path)]
    if noise_calibration:
        cmd.append("-C")
    subprocess.run(cmd, cwd=folder, check=True, capture_output=True, timeout=60)
    return path


def reference_recon(path: Path) -> np.ndarray:
    """Run the ISMRMRD reference reconstruction on ``path``; its image (ny, nx) float32."""
    subprocess.run([RECON, str(path)], cwd=path.parent, check=True, capture_output=True, timeout=60)
    dset = ismrmrd.Dataset(str(path), "dataset", False)
    try:
        image = dset.read_image("cpp", dset.number_of_images("cpp") - 1)
        return np.asarray(image.data)[0, 0]  # (channels, z, y, x) -> (y, x)
    finally:
        dset.close()


def our_recon(path: Path) -> tuple[np.ndarray, object]:
    """Root-sum-of-squares of the unitary inverse FFT of what the reader returns, scaled to the
    reference's unnormalised FFT; frames merged as the reference does (the last frame acquiring a line)."""
    data = read_cine_ismrmrd(path)
    k = np.zeros(data.kspace.shape[1:], dtype=np.complex64)
    for f in range(data.kspace.shape[0]):
        k[:, data.mask[f]] = data.kspace[f][:, data.mask[f]]
    coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    enx, eny, _ = data.encoded_matrix
    return np.sqrt((np.abs(coil_images) ** 2).sum(0)) * np.sqrt(enx * eny), data


CASES = {
    "oversampling 2, noise, noise scan": {"oversampling": 2, "noise": 0.05, "noise_calibration": True},
    "oversampling 4, 8 coils, 96 lines": {"matrix": 96, "coils": 8, "oversampling": 4, "noise": 0.02},
    "acceleration 4 (4 frames)": {"acceleration": 4, "noise": 0.05},
    "no oversampling, acceleration 2 x 2 repetitions": {"oversampling": 1, "acceleration": 2, "repetitions": 2, "noise": 0.01},
}


@pytest.mark.parametrize("case", list(CASES))
def test_coil_combined_image_matches_ismrmrd_recon_cartesian_2d(tmp_path, case):
    opts = CASES[case]
    path = generate(tmp_path, "shepp.h5", **opts)
    ours, data = our_recon(path)
    reference = reference_recon(path)
    assert ours.shape == reference.shape
    rel = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert rel < 1e-5, rel  # float32 storage and FFTs: measured 1e-7
    assert np.abs(ours - reference).max() < 1e-4 * reference.max()
    acc, reps = opts.get("acceleration", 1), opts.get("repetitions", 1)
    assert data.kspace.shape[0] == acc * reps and data.meta["frames"] == ("repetition" if acc * reps > 1 else "phase")
    if opts.get("noise_calibration"):
        assert data.noise is not None and data.noise.shape == (opts.get("coils", 4), 2 * opts.get("matrix", 64))


def test_accelerated_frames_hold_the_right_lines(tmp_path):
    """Noise-free files (``-n 0``): repetition ``a`` of ``-a 4`` becomes frame ``a`` with exactly the
    lines ``a, a + 4, ...``, equal to those lines of the fully sampled file and zero elsewhere; and the
    fully sampled k-space is the stored coil images' (``/dataset/coil_images``, readout crop)."""
    full = read_cine_ismrmrd(generate(tmp_path, "full.h5", noise=0.0))
    acc = read_cine_ismrmrd(generate(tmp_path, "acc.h5", acceleration=4, noise=0.0))
    assert full.kspace.shape == (1, 4, 64, 64) and acc.kspace.shape == (4, 4, 64, 64)
    for a in range(4):
        lines = np.arange(a, 64, 4)
        np.testing.assert_array_equal(np.nonzero(acc.mask[a])[0], lines)
        np.testing.assert_array_equal(acc.kspace[a][:, lines], full.kspace[0][:, lines])
        others = np.setdiff1d(np.arange(64), lines)
        assert not np.any(acc.kspace[a][:, others])
    with ismrmrd.Dataset(str(tmp_path / "full.h5"), "dataset", False) as dset:
        truth = np.asarray(dset.read_array("coil_images", 0))  # (1, coils, y, oversampled x)
    truth = truth.reshape(truth.shape[-3:])[:, :, 32:96]
    images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(full.kspace[0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.linalg.norm(images - truth) / np.linalg.norm(truth) < 1e-5
    assert full.affine is None and "zero" in full.meta["geometry"]  # the generator writes no geometry
