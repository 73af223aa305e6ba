"""Cartesian 2D+t (cine) k-space in ISMRMRD HDF5 files, laid out as the OCMR data set does.

Layout written by :func:`write_cine_ismrmrd` and expected by :func:`read_cine_ismrmrd`
---------------------------------------------------------------------------------------
* HDF5 group ``/dataset`` with ``xml`` (the ISMRMRD XML header, one variable-length string) and
  ``data`` (one record per readout, the compound type of :mod:`ismrmrd.hdf5`). Files open with
  ``ismrmrd.Dataset(path)`` and the official readers (OCMR's ``read_ocmr``, Gadgetron, BART's
  ``ismrmrd`` converter).
* XML header: one ``encoding`` with ``trajectory = cartesian``; ``encodedSpace.matrixSize.x`` is the
  *oversampled* readout length ``eNx = readout_oversampling * nx`` with field of view
  ``readout_oversampling * fov_x``; ``reconSpace`` is ``(nx, ny, 1)`` with the true field of view
  ``(fov_x, fov_y, thickness)`` mm; ``encodingLimits`` give ``kspace_encoding_step_1`` (centre
  ``ny // 2``), ``phase`` (cardiac frames) and ``slice``.
* One acquisition per acquired ``(slice, phase, ky line)``: ``idx.kspace_encode_step_1`` = ky index
  (0..ny-1, k-space centre at ``ny // 2``), ``idx.phase`` = frame, ``idx.slice``; flags
  ``ACQ_FIRST/LAST_IN_ENCODE_STEP1``, ``ACQ_FIRST/LAST_IN_PHASE``, ``ACQ_FIRST/LAST_IN_SLICE`` and
  ``ACQ_LAST_IN_MEASUREMENT``; ``physiology_time_stamp[0]`` = time since the R wave and
  ``acquisition_time_stamp`` = scan time, both in ticks of 2.5 ms (Siemens convention).
* Readout oversampling: the stored readout is the k-space of the image zero-padded to
  ``readout_oversampling`` times its width in x (what an oversampled ADC measures for an object that
  lies inside the field of view), computed with the centred unitary FFT of :mod:`gaussian_mri.mri.fft`.
* Asymmetric echo (partial echo): the first ``A = asymmetric_echo * readout_oversampling``
  oversampled samples are not acquired. As in OCMR (Siemens raw data converted by siemens_to_ismrmrd)
  they are *not stored*: ``number_of_samples = eNx - A`` and ``center_sample = eNx // 2 - A``.
  Optional noise-calibration readouts (``ACQ_IS_NOISE_MEASUREMENT``) come first, as in OCMR.
* Geometry: every readout carries ``position`` (the slice centre) and ``read_dir`` / ``phase_dir`` /
  ``slice_dir`` in patient coordinates LPS (writer options ``position_mm``, ``read_dir``, ``phase_dir``;
  default an axial slice at the isocentre).

Reading (:func:`read_cine_ismrmrd`)
-----------------------------------
Readouts are placed into an ``(frames, coils, eNy, eNx)`` array (left zero-filled by
``eNx // 2 - center_sample``, OCMR's ``kx_prezp``), averaged over ``idx.average``, then the readout
oversampling is removed as scanners do (inverse FFT along kx, crop the central ``reconSpace.x``
columns, FFT back). Native kx columns that map onto the zero-filled part of the oversampled readout
are set to exactly zero ("asymmetric echo zero-filled"); ``CineKSpace.kx_first_acquired`` says how
many. The frames are the cardiac phases (``idx.phase``), or the repetitions of a file with a single
phase (a dynamic series, e.g. ISMRMRD's ``ismrmrd_generate_cartesian_shepp_logan --acceleration R``).
The acquisition geometry becomes ``CineKSpace.affine``, the IJK-to-RAS of the reconstructed image
(:func:`acquisition_affine`: pixel ``(nx // 2, ny // 2)`` at ``position``, LPS converted to RAS).
Checked against ISMRMRD's own C++ tools in ``tests/mri/test_ismrmrd_reference.py``: the
root-sum-of-squares image of what this reader returns equals ``ismrmrd_recon_cartesian_2d``'s to 1e-7.

Exactness. Without an asymmetric echo the round trip write -> read reproduces the input k-space on
every acquired line to float32 round-off (max error below ``1e-5`` of the largest |k|). With an
asymmetric echo the crop after zero-filling is *not* an exact inverse: cropping the field of view
convolves the zero-filled step in kx with a sinc, so the acquired columns near the missing ones pick
up an error that decays with the distance to them. It is physics, not round-off (a real scanner's data
behave the same) and is measured in ``tests/mri/test_ismrmrd_io.py``: with 1/8 of the readout
missing, the relative L2 error on the acquired columns of the cardiac phantom's k-space is 0.3 %
(160 x 192) to 0.6 % (64 x 80), below 0.1 % on the central half of kx; the tests require < 1 % and
< 0.3 %.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from .._optional import require

__all__ = [
    "CineKSpace",
    "acquisition_affine",
    "IsmrmrdFormatError",
    "UnsupportedDataError",
    "TIME_TICK_MS",
    "read_cine_ismrmrd",
    "write_cine_ismrmrd",
]

log = logging.getLogger(__name__)

TIME_TICK_MS = 2.5
"""Duration of one ISMRMRD time-stamp tick in ms (Siemens scanners, hence OCMR, use 2.5 ms)."""

# ISMRMRD acquisition flags (1-based bit numbers, ``ismrmrd.constants``); repeated here so the
# module imports without ismrmrd, and checked against the package in the tests.
_FLAG = {
    "FIRST_IN_ENCODE_STEP1": 1,
    "LAST_IN_ENCODE_STEP1": 2,
    "FIRST_IN_SLICE": 7,
    "LAST_IN_SLICE": 8,
    "FIRST_IN_PHASE": 11,
    "LAST_IN_PHASE": 12,
    "FIRST_IN_REPETITION": 13,
    "LAST_IN_REPETITION": 14,
    "LAST_IN_MEASUREMENT": 25,
    "IS_NOISE_MEASUREMENT": 19,
    "IS_PARALLEL_CALIBRATION": 20,
    "IS_PARALLEL_CALIBRATION_AND_IMAGING": 21,
    "IS_REVERSE": 22,
    "IS_NAVIGATION_DATA": 23,
    "IS_PHASECORR_DATA": 24,
    "IS_HPFEEDBACK_DATA": 26,
    "IS_DUMMYSCAN_DATA": 27,
    "IS_RTFEEDBACK_DATA": 28,
    "IS_SURFACECOILCORRECTIONSCAN_DATA": 29,
    "IS_PHASE_STABILIZATION_REFERENCE": 30,
    "IS_PHASE_STABILIZATION": 31,
}
# Readouts that are not image data of the cine (skipped by the reader).
_SKIP_FLAGS = (
    "IS_NOISE_MEASUREMENT",
    "IS_PARALLEL_CALIBRATION",
    "IS_NAVIGATION_DATA",
    "IS_PHASECORR_DATA",
    "IS_HPFEEDBACK_DATA",
    "IS_DUMMYSCAN_DATA",
    "IS_RTFEEDBACK_DATA",
    "IS_SURFACECOILCORRECTIONSCAN_DATA",
    "IS_PHASE_STABILIZATION_REFERENCE",
    "IS_PHASE_STABILIZATION",
)


def _bit(name: str) -> int:
    return 1 << (_FLAG[name] - 1)


class IsmrmrdFormatError(ValueError):
    """The file is missing pieces of the ISMRMRD layout, or is not an ISMRMRD file at all."""


class UnsupportedDataError(IsmrmrdFormatError):
    """The file is valid ISMRMRD but holds data this reader does not handle (non-Cartesian, EPI...)."""


@dataclass
class CineKSpace:
    """Cartesian cine k-space of one slice, ready for reconstruction.

    Attributes
    ----------
    kspace : ndarray, shape (frames, coils, ky, kx), complex64
        K-space on the reconstruction readout grid (readout oversampling removed), centred
        (k = 0 at ``ky // 2``, ``kx // 2``), unitary FFT convention of :mod:`gaussian_mri.mri.fft`.
        Lines that were not acquired and zero-filled echo columns are exactly 0.
    mask : ndarray, shape (frames, ky), bool
        True where the ky line was acquired in that frame.
    fov_mm : tuple of 3 floats or None
        Reconstruction field of view ``(x, y, slice thickness)`` in mm (``reconSpace``).
    frame_times_ms : ndarray, shape (frames,), float64, or None
        Time of each frame after the R wave (``physiology_time_stamp[0]``), or from the start of
        the scan (``acquisition_time_stamp``) when no physiology stamps are present, in ms; ``None``
        when the file has neither.
    encoded_matrix, recon_matrix : tuple of 3 ints or None
        ``encodedSpace`` / ``reconSpace`` matrix sizes ``(x, y, z)`` from the header. ``kspace`` has
        ``ky = encoded_matrix[1]`` lines and ``kx = recon_matrix[0]`` columns.
    kx_first_acquired : int
        Number of leading kx columns that were not acquired (asymmetric echo) and are zero.
    coil_maps : ndarray, shape (coils, ny, nx), complex64, or None
        Coil sensitivities when the source file stores them (not ISMRMRD).
    noise : ndarray, shape (coils, samples), complex64, or None
        Noise-calibration readouts (``ACQ_IS_NOISE_MEASUREMENT``), for pre-whitening.
    source : str
        Path of the file read.
    meta : dict
        Anything else worth keeping (vendor, field strength, slice index, ``frames``: which index the
        frames are, ``geometry``: where :attr:`affine` came from or why it is missing...).
    encoded_fov_mm : tuple of 3 floats or None
        ``encodedSpace`` field of view ``(x, y, z)`` in mm (sets :attr:`pixel_spacing_mm`).
    affine : ndarray, shape (4, 4), or None
        Voxel ``(i = column = kx/readout, j = row = ky/phase, k = 0, 1)`` to RAS mm of the slice, from
        the acquisition headers (:func:`acquisition_affine`); ``None`` when the file has no usable
        geometry (zero or non-orthonormal directions, e.g. ``ismrmrd_generate_cartesian_shepp_logan``).
    """

    kspace: np.ndarray
    mask: np.ndarray
    fov_mm: tuple[float, float, float] | None = None
    frame_times_ms: np.ndarray | None = None
    encoded_matrix: tuple[int, int, int] | None = None
    recon_matrix: tuple[int, int, int] | None = None
    kx_first_acquired: int = 0
    coil_maps: np.ndarray | None = None
    noise: np.ndarray | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    encoded_fov_mm: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(frames, coils, ky, kx)``."""
        return tuple(self.kspace.shape)  # type: ignore[return-value]

    @property
    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """Pixel size ``(row = y, column = x)`` in mm of an image reconstructed at ``(ky, kx)``.

        From the encoded field of view and matrix when known (``encodedSpace``: the image of the ``ky``
        encoded lines spans the encoded y field of view, and removing the readout oversampling keeps
        the x pixel size ``fov_x / matrix_x`` of the oversampled readout), else ``fov_mm / (ky, kx)``.
        """
        if self.encoded_fov_mm is not None and self.encoded_matrix is not None:
            return (self.encoded_fov_mm[1] / self.kspace.shape[2], self.encoded_fov_mm[0] / self.encoded_matrix[0])
        if self.fov_mm is None:
            return None
        return (self.fov_mm[1] / self.kspace.shape[2], self.fov_mm[0] / self.kspace.shape[3])

    def as_tensors(self) -> tuple[Any, Any]:
        """``(kspace, mask)`` as torch tensors (complex64, bool), sharing memory with the arrays."""
        import torch

        return torch.from_numpy(self.kspace), torch.from_numpy(self.mask)

    def __repr__(self) -> str:
        f, c, ky, kx = self.shape
        acc = self.mask.size / max(int(self.mask.sum()), 1)
        return (
            f"CineKSpace(frames={f}, coils={c}, ky={ky}, kx={kx}, acceleration={acc:.2f}, "
            f"fov_mm={self.fov_mm}, kx_first_acquired={self.kx_first_acquired})"
        )


# --------------------------------------------------------------------------------------------------
# 1D centred unitary FFT along the last axis (same convention as gaussian_mri.mri.fft)
# --------------------------------------------------------------------------------------------------
def _fft1c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)


def _ifft1c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)


def _oversample_readout(kspace: np.ndarray, enx: int) -> np.ndarray:
    """K-space (..., nx) -> k-space of the image zero-padded to ``enx`` columns (..., enx)."""
    nx = kspace.shape[-1]
    img = _ifft1c(kspace.astype(np.complex128))
    left = enx // 2 - nx // 2
    pad = [(0, 0)] * (img.ndim - 1) + [(left, enx - nx - left)]
    return _fft1c(np.pad(img, pad))


def _remove_readout_oversampling(kspace: np.ndarray, rnx: int) -> np.ndarray:
    """Inverse FFT along kx, keep the central ``rnx`` columns, FFT back."""
    enx = kspace.shape[-1]
    img = _ifft1c(kspace)
    start = enx // 2 - rnx // 2
    return _fft1c(img[..., start : start + rnx])


def _native_first_acquired(prezp: int, enx: int, rnx: int) -> int:
    """First native kx column whose oversampled position ``enx//2 + (j - rnx//2) enx/rnx`` >= prezp."""
    if prezp <= 0:
        return 0
    j = rnx // 2 - (enx // 2 - prezp) * rnx / enx
    return max(0, min(rnx, math.ceil(j - 1e-9)))


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _as_numpy(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor without importing torch
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}") from exc
    return value


def _build_header(
    *,
    nx: int,
    ny: int,
    enx: int,
    n_coils: int,
    n_frames: int,
    n_slices: int,
    fov_mm: tuple[float, float, float],
    oversampling: int,
    field_strength_t: float,
    h1_frequency_hz: int,
    frame_duration_ms: float | None,
) -> bytes:
    from ismrmrd import xsd

    def lim(maximum: int, center: int) -> Any:
        return xsd.limitType(minimum=0, maximum=int(maximum), center=int(center))

    fx, fy, fz = (float(v) for v in fov_mm)
    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=enx, y=ny, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fx * oversampling, y=fy, z=fz),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fx, y=fy, z=fz),
        ),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_0=lim(enx - 1, enx // 2),
            kspace_encoding_step_1=lim(ny - 1, ny // 2),
            kspace_encoding_step_2=lim(0, 0),
            average=lim(0, 0),
            slice=lim(n_slices - 1, 0),
            contrast=lim(0, 0),
            phase=lim(n_frames - 1, 0),
            repetition=lim(0, 0),
            set=lim(0, 0),
            segment=lim(0, 0),
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    header = xsd.ismrmrdHeader(
        version=1,
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="GaussianMRI",
            systemModel="synthetic (gaussian_mri.mri.ismrmrd_io)",
            systemFieldStrength_T=float(field_strength_t),
            receiverChannels=int(n_coils),
        ),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(h1_frequency_hz)),
        encoding=[enc],
    )
    if frame_duration_ms is not None:
        header.userParameters = xsd.userParametersType(
            userParameterDouble=[
                xsd.userParameterDoubleType(name="frame_duration_ms", value=float(frame_duration_ms))
            ]
        )
    xml = xsd.ToXML(header)
    return xml.encode("utf-8") if isinstance(xml, str) else xml


def write_cine_ismrmrd(
    path: str | os.PathLike[str],
    kspace: Any,
    *,
    readout_oversampling: int = 2,
    asymmetric_echo: int = 0,
    mask: Any = None,
    fov_mm: tuple[float, float, float] | None = None,
    frame_times_ms: Any = None,
    n_noise_scans: int = 0,
    noise_std: float = 0.0,
    field_strength_t: float = 1.5,
    seed: int = 0,
    position_mm: Any = (0.0, 0.0, 0.0),
    read_dir: Any = (1.0, 0.0, 0.0),
    phase_dir: Any = (0.0, 1.0, 0.0),
) -> Path:
    """Write Cartesian cine k-space as an OCMR-style ISMRMRD HDF5 file (atomically).

    Parameters
    ----------
    path : path-like
        Output file (``.h5`` recommended). Written to a temporary file in the same folder, then
        renamed, so a failure never leaves a partial file.
    kspace : array or tensor, complex, shape (frames, coils, ky, kx) or (slices, frames, coils, ky, kx)
        Fully sampled (or zero-filled) k-space on the reconstruction grid, centred, unitary FFT
        convention (:func:`gaussian_mri.mri.fft.fft2c` of the coil images).
    readout_oversampling : int
        Readout oversampling factor (1 = none, OCMR: 2). The stored readout has
        ``readout_oversampling * kx`` samples: the k-space of the image zero-padded in x.
    asymmetric_echo : int
        Number of leading kx samples *of the reconstruction grid* that are not acquired (partial
        echo); the first ``asymmetric_echo * readout_oversampling`` oversampled samples are omitted
        from every readout, ``center_sample`` tells readers where k = 0 is. Must leave the echo
        centre acquired: ``0 <= asymmetric_echo < kx // 2``.
    mask : array, bool, shape (frames, ky) or (slices, frames, ky), optional
        Lines to write (prospective undersampling); default all lines.
    fov_mm : (x, y, thickness) in mm, optional
        Field of view of the reconstruction grid and the slice thickness. Default: 1 mm pixels and an
        8 mm slice.
    frame_times_ms : array, shape (frames,), optional
        Trigger time of each frame (ms after the R wave); stored in ``physiology_time_stamp[0]`` in
        2.5 ms ticks (rounded to the nearest tick). Default: none (stamps are 0).
    n_noise_scans : int
        Number of noise-calibration readouts written first (``ACQ_IS_NOISE_MEASUREMENT``), as on
        Siemens/OCMR data; they hold complex Gaussian noise of standard deviation ``noise_std``.
    noise_std : float
        Standard deviation of the noise readouts (complex, per sample).
    field_strength_t : float
        Main field in tesla (header only; sets the H1 frequency, 42.577 MHz/T).
    seed : int
        Seed of the noise readouts.
    position_mm, read_dir, phase_dir : 3 floats each
        Acquisition geometry in patient coordinates LPS (mm, direction cosines): the centre of the
        (first) slice, the readout (kx, image columns) and phase-encoding (ky, image rows) directions;
        ``slice_dir = read_dir x phase_dir``, and slice ``s`` is centred at ``position + s * thickness
        * slice_dir``. :func:`acquisition_affine` gives the resulting image geometry.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        Wrong shapes, non-complex or non-finite k-space, bad oversampling or echo asymmetry.
    FileNotFoundError
        If the output folder does not exist.
    """
    path = Path(path)
    h5py = require("h5py", f"writing the ISMRMRD file {path}")
    acquisition_dtype = require("ismrmrd.hdf5", f"writing the ISMRMRD file {path}", "ismrmrd").acquisition_dtype
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {path.parent}; create it first")
    k = _as_numpy("kspace", kspace)
    if k.ndim == 4:
        k = k[None]
        single_slice = True
    elif k.ndim == 5:
        single_slice = False
    else:
        raise ValueError(
            f"kspace must have shape (frames, coils, ky, kx) or (slices, frames, coils, ky, kx), got {k.shape}"
        )
    if not np.iscomplexobj(k):
        raise ValueError(f"kspace must be complex (got dtype {k.dtype}); pass the k-space, not an image")
    if not np.all(np.isfinite(k)):
        raise ValueError("kspace contains NaN or infinite values; clean the input first")
    n_slices, n_frames, n_coils, ny, nx = k.shape
    if min(k.shape) < 1 or nx < 2 or ny < 1:
        raise ValueError(f"kspace has an empty or too small axis: {k.shape}")
    os_factor = int(readout_oversampling)
    if os_factor != readout_oversampling or os_factor < 1:
        raise ValueError(f"readout_oversampling must be an integer >= 1, got {readout_oversampling}")
    asym = int(asymmetric_echo)
    if asym != asymmetric_echo or not 0 <= asym < nx // 2:
        raise ValueError(
            f"asymmetric_echo must be an integer in [0, kx // 2 = {nx // 2}) so that the echo centre is "
            f"acquired, got {asymmetric_echo}"
        )
    if mask is None:
        m = np.ones((n_slices, n_frames, ny), dtype=bool)
    else:
        m = _as_numpy("mask", mask).astype(bool)
        if m.shape == (n_frames, ny):
            m = np.broadcast_to(m, (n_slices, n_frames, ny))
        if m.shape != (n_slices, n_frames, ny):
            raise ValueError(
                f"mask must have shape (frames, ky) = {(n_frames, ny)}"
                + ("" if single_slice else f" or (slices, frames, ky) = {(n_slices, n_frames, ny)}")
                + f", got {m.shape}"
            )
    if not m.any():
        raise ValueError("mask selects no ky line at all; nothing to write")
    if fov_mm is None:
        fov_mm = (float(nx), float(ny), 8.0)
    if len(fov_mm) != 3 or not all(float(v) > 0 for v in fov_mm):
        raise ValueError(f"fov_mm must be three positive numbers (x, y, thickness) in mm, got {fov_mm}")
    times = None
    if frame_times_ms is not None:
        times = _as_numpy("frame_times_ms", frame_times_ms).astype(np.float64).ravel()
        if times.shape != (n_frames,) or not np.all(np.isfinite(times)) or np.any(times < 0):
            raise ValueError(f"frame_times_ms must be {n_frames} finite times >= 0 in ms, got {times}")
    frame_duration = float(np.median(np.diff(times))) if times is not None and n_frames > 1 else None
    pos = np.asarray(position_mm, dtype=np.float64).reshape(-1)
    rdir = np.asarray(read_dir, dtype=np.float64).reshape(-1)
    pdir = np.asarray(phase_dir, dtype=np.float64).reshape(-1)
    if pos.shape != (3,) or not np.all(np.isfinite(pos)):
        raise ValueError(f"position_mm must be 3 finite numbers (LPS mm), got {position_mm}")
    if (rdir.shape != (3,) or pdir.shape != (3,) or abs(np.linalg.norm(rdir) - 1) > 1e-6
            or abs(np.linalg.norm(pdir) - 1) > 1e-6 or abs(float(rdir @ pdir)) > 1e-6):
        raise ValueError(f"read_dir {read_dir} and phase_dir {phase_dir} must be orthonormal 3-vectors")
    sdir = np.cross(rdir, pdir)

    enx = os_factor * nx
    prezp = asym * os_factor
    n_samples = enx - prezp
    center_sample = enx // 2 - prezp

    # oversample the readout (float64 internally), drop the asymmetric-echo samples
    ks_os = _oversample_readout(k, enx)[..., prezp:].astype(np.complex64)  # (S, F, C, ny, n_samples)

    s_idx, f_idx, y_idx = np.nonzero(m)  # ordered slice, phase, line
    n_img = s_idx.size
    n_total = n_img + int(n_noise_scans)
    records = np.zeros(n_total, dtype=acquisition_dtype)
    head = records["head"]
    head["version"] = 1
    head["available_channels"] = n_coils
    head["active_channels"] = n_coils
    head["channel_mask"][:, 0] = (1 << min(n_coils, 64)) - 1 if n_coils < 64 else np.iinfo(np.uint64).max
    head["read_dir"] = rdir
    head["phase_dir"] = pdir
    head["slice_dir"] = sdir
    head["sample_time_us"] = 1e6 / (enx * 1000.0)  # nominal 1 kHz/pixel bandwidth
    head["scan_counter"] = np.arange(1, n_total + 1)
    empty_traj = np.zeros(0, dtype=np.float32)

    rng = np.random.default_rng(seed)
    n_noise = int(n_noise_scans)
    for i in range(n_noise):
        noise = (rng.standard_normal((n_coils, enx)) + 1j * rng.standard_normal((n_coils, enx))) * (
            noise_std / math.sqrt(2)
        )
        records["data"][i] = noise.astype(np.complex64).view(np.float32).ravel()
        records["traj"][i] = empty_traj
    if n_noise:
        head["flags"][:n_noise] = _bit("IS_NOISE_MEASUREMENT")
        head["number_of_samples"][:n_noise] = enx
        head["center_sample"][:n_noise] = 0

    img = slice(n_noise, n_total)
    h = head[img]
    h["number_of_samples"] = n_samples
    h["center_sample"] = center_sample
    idx = h["idx"]
    idx["kspace_encode_step_1"] = y_idx
    idx["phase"] = f_idx
    idx["slice"] = s_idx
    h["position"] = pos[None, :] + (s_idx * float(fov_mm[2]))[:, None] * sdir[None, :]

    flags = np.zeros(n_img, dtype=np.uint64)
    key = s_idx * n_frames + f_idx  # runs of equal (slice, phase) are contiguous
    first_in_run = np.r_[True, key[1:] != key[:-1]]
    last_in_run = np.r_[key[1:] != key[:-1], True]
    flags[first_in_run] |= np.uint64(_bit("FIRST_IN_PHASE") | _bit("FIRST_IN_ENCODE_STEP1"))
    flags[last_in_run] |= np.uint64(_bit("LAST_IN_PHASE") | _bit("LAST_IN_ENCODE_STEP1"))
    first_slice = np.r_[True, s_idx[1:] != s_idx[:-1]]
    last_slice = np.r_[s_idx[1:] != s_idx[:-1], True]
    flags[first_slice] |= np.uint64(_bit("FIRST_IN_SLICE") | _bit("FIRST_IN_REPETITION"))
    flags[last_slice] |= np.uint64(_bit("LAST_IN_SLICE") | _bit("LAST_IN_REPETITION"))
    flags[-1] |= np.uint64(_bit("LAST_IN_MEASUREMENT"))
    h["flags"] = flags

    if times is not None:
        ticks = np.rint(times / TIME_TICK_MS).astype(np.uint32)
        h["physiology_time_stamp"][:, 0] = ticks[f_idx]
        # one "heart beat" per slice, beats of (last trigger time + one frame) length
        beat = int(ticks[-1]) + (int(np.rint(frame_duration / TIME_TICK_MS)) if frame_duration else 1)
        h["acquisition_time_stamp"] = 1000 + s_idx * beat + ticks[f_idx]
    head[img] = h

    for r, (s, f, y) in enumerate(zip(s_idx, f_idx, y_idx)):
        records["data"][n_noise + r] = np.ascontiguousarray(ks_os[s, f, :, y, :]).view(np.float32).ravel()
        records["traj"][n_noise + r] = empty_traj

    xml = _build_header(
        nx=nx,
        ny=ny,
        enx=enx,
        n_coils=n_coils,
        n_frames=n_frames,
        n_slices=n_slices,
        fov_mm=tuple(float(v) for v in fov_mm),  # type: ignore[arg-type]
        oversampling=os_factor,
        field_strength_t=field_strength_t,
        h1_frequency_hz=int(round(42.577478e6 * field_strength_t)),
        frame_duration_ms=frame_duration,
    )

    with atomic_path(path, ".h5") as tmp, h5py.File(tmp, "w") as f5:
        grp = f5.create_group("dataset")
        xml_ds = grp.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
        xml_ds[0] = xml
        grp.create_dataset("data", data=records, maxshape=(None,), chunks=True)
    log.info(
        "wrote %s: %d readouts (%d noise), %d slice(s) x %d frames x %d coils, readout %d -> %d samples",
        path,
        n_total,
        n_noise,
        n_slices,
        n_frames,
        n_coils,
        enx,
        n_samples,
    )
    return path


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def acquisition_affine(
    position: Any,
    read_dir: Any,
    phase_dir: Any,
    slice_dir: Any,
    spacing_mm: tuple[float, float],
    thickness_mm: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """IJK-to-RAS (4, 4) of a 2D image reconstructed from Cartesian k-space with this acquisition geometry.

    Parameters
    ----------
    position : 3 floats
        ISMRMRD ``position``: the centre of the excited volume in mm, patient coordinates LPS (DICOM's
        patient coordinate system: +x left, +y posterior, +z superior) relative to the isocentre.
    read_dir, phase_dir, slice_dir : 3 floats each
        Direction cosines (LPS) of the readout (kx, image columns ``i``), phase encoding (ky, image
        rows ``j``) and slice normal. ``slice_dir`` may be zero (then ``read_dir x phase_dir``).
    spacing_mm : (row, column) pixel size in mm.
    thickness_mm : slice thickness in mm (the length of the ``k`` column).
    shape : (rows, columns) = (ny, nx) of the image.

    Convention (half pixel): the k-space centre of the centred FFT (:mod:`gaussian_mri.mri.fft`) is
    index ``N // 2``, so pixel ``N // 2`` is the point ``x = 0`` of the encoding, the centre of the
    field of view given by ``position``::

        LPS(i, j) = position + (i - nx // 2) dx read_dir + (j - ny // 2) dy phase_dir

    For even ``N`` this is what Gadgetron writes as DICOM ImagePositionPatient (the first pixel,
    ``position - fov_x / 2 read_dir - fov_y / 2 phase_dir``, ``gadgets/dicom/dicom_ismrmrd_utility.cpp``);
    for odd ``N`` Gadgetron's formula puts the centre half a pixel off the FFT origin, we keep
    ``N // 2``. RAS = ``diag(-1, -1, 1)`` LPS (Slicer and NIfTI world coordinates).

    References: Inati SJ et al., ISMRM raw data format: a proposed standard for MRI raw datasets,
    Magn Reson Med 77:411-421, 2017; the MRD documentation (``doc/mrd_raw_data.md`` of
    github.com/ismrmrd/ismrmrd: "position: center of the excited volume, in (left, posterior, superior)
    (LPS) coordinates relative to isocenter in millimeters").

    Raises
    ------
    ValueError
        If ``read_dir`` / ``phase_dir`` are not orthonormal (zero vectors included).
    """
    pos = np.asarray(position, dtype=np.float64).reshape(3)
    r = np.asarray(read_dir, dtype=np.float64).reshape(3)
    p = np.asarray(phase_dir, dtype=np.float64).reshape(3)
    n = np.asarray(slice_dir, dtype=np.float64).reshape(3)
    tol = 1e-3  # the headers are float32
    if abs(np.linalg.norm(r) - 1) > tol or abs(np.linalg.norm(p) - 1) > tol or abs(float(r @ p)) > tol:
        raise ValueError(
            f"read_dir {r.tolist()} and phase_dir {p.tolist()} are not orthonormal direction cosines"
        )
    if abs(np.linalg.norm(n) - 1) > tol or abs(float(n @ r)) > tol or abs(float(n @ p)) > tol:
        n = np.cross(r, p)
    r, p, n = r / np.linalg.norm(r), p / np.linalg.norm(p), n / np.linalg.norm(n)
    dy, dx = (float(v) for v in spacing_mm)
    ny, nx = (int(v) for v in shape)
    lps = np.eye(4)
    lps[:3, 0] = r * dx
    lps[:3, 1] = p * dy
    lps[:3, 2] = n * float(thickness_mm)
    lps[:3, 3] = pos - (nx // 2) * dx * r - (ny // 2) * dy * p
    out = np.eye(4)
    out[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    return out


def _header_geometry(head: np.ndarray, path: Path) -> tuple[dict[str, np.ndarray] | None, str]:
    """Position and directions of the readouts ``head`` (median), or ``None`` and the reason."""
    geo = {k: np.asarray(head[k], dtype=np.float64).reshape(-1, 3) for k in ("position", "read_dir", "phase_dir", "slice_dir")}
    if not np.any(geo["read_dir"]) and not np.any(geo["phase_dir"]):
        return None, "no acquisition geometry in the file (read_dir and phase_dir are zero)"
    med = {k: np.median(v, axis=0) for k, v in geo.items()}
    spread = float(np.abs(geo["position"] - med["position"]).max())
    turn = max(float(np.abs(geo[k] - med[k]).max()) for k in ("read_dir", "phase_dir"))
    if spread > 0.01 or turn > 1e-4:
        log.warning(
            "%s: the imaging readouts of this slice have different positions (up to %.3g mm) or directions "
            "(up to %.3g); the output uses their median", path, spread, turn,
        )
    return med, "acquisition headers (position, read_dir, phase_dir, slice_dir)"


def _open_ismrmrd(path: Path, dataset: str | None) -> tuple[Any, str]:
    h5py = require("h5py", f"reading the ISMRMRD file {path}")
    require("ismrmrd.xsd", f"reading the ISMRMRD file {path}", "ismrmrd")  # for the header, checked up front
    if not path.exists():
        raise FileNotFoundError(f"ISMRMRD file not found: {path}")
    if not path.is_file():
        raise IsmrmrdFormatError(f"{path} is not a file")
    try:
        f5 = h5py.File(path, "r")
    except OSError as exc:
        raise IsmrmrdFormatError(
            f"{path} is not an HDF5 file, so not an ISMRMRD file ({exc}). Convert raw scanner data with "
            "siemens_to_ismrmrd / ismrmrd converters first, or use load_kspace for .npy/.mat/.cfl."
        ) from exc
    if dataset is None:
        names = [n for n in f5 if isinstance(f5[n], h5py.Group) and "xml" in f5[n]]
        if "dataset" in names:
            dataset = "dataset"
        elif len(names) == 1:
            dataset = names[0]
        else:
            f5.close()
            raise IsmrmrdFormatError(
                f"{path} is HDF5 but not ISMRMRD: no group holding an 'xml' header was found "
                f"(top-level entries: {sorted(names) or 'none with xml'}). "
                + ("Pass dataset= to choose one." if names else "")
            )
    if dataset not in f5 or "xml" not in f5[dataset]:
        f5.close()
        raise IsmrmrdFormatError(f"{path} has no ISMRMRD header '/{dataset}/xml'; is it an ISMRMRD file?")
    if "data" not in f5[dataset]:
        f5.close()
        raise IsmrmrdFormatError(f"{path} has an ISMRMRD header but no acquisitions ('/{dataset}/data')")
    return f5, dataset


def _parse_header(xml: Any, path: Path) -> Any:
    xsd = require("ismrmrd.xsd", f"reading the ISMRMRD file {path}", "ismrmrd")

    if isinstance(xml, np.ndarray):
        xml = xml.item()
    try:
        return xsd.CreateFromDocument(xml)
    except Exception as exc:
        raise IsmrmrdFormatError(f"{path}: the ISMRMRD XML header cannot be parsed: {exc}") from exc


def _pick(name: str, values: np.ndarray, chosen: int | None, argname: str) -> int:
    present = np.unique(values)
    if chosen is None:
        if present.size > 1:
            raise IsmrmrdFormatError(
                f"the file holds {present.size} {name}s (indices {present.tolist()}); choose one with "
                f"{argname}=<index>"
            )
        return int(present[0])
    if int(chosen) not in present:
        raise IsmrmrdFormatError(f"{argname}={chosen} is not in the file; {name} indices present: {present.tolist()}")
    return int(chosen)


def read_cine_ismrmrd(
    path: str | os.PathLike[str],
    *,
    slice: int | None = None,  # noqa: A002 - the ISMRMRD name
    repetition: int | None = None,
    dataset: str | None = None,
    time_tick_ms: float = TIME_TICK_MS,
    frames: str = "auto",
) -> CineKSpace:
    """Read Cartesian cine k-space from an ISMRMRD HDF5 file (OCMR layout, or any Cartesian 2D file).

    Parameters
    ----------
    path : path-like
        ISMRMRD HDF5 file.
    slice : int, optional
        ``idx.slice`` to read; required when the file holds several slices.
    repetition : int, optional
        ``idx.repetition`` to read; required when the frames are cardiac phases and the file holds
        several repetitions.
    frames : {"auto", "phase", "repetition"}
        Which index numbers the frames: ``"phase"`` (``idx.phase``, cardiac phases, as OCMR),
        ``"repetition"`` (``idx.repetition``: a dynamic series, e.g. the interleaved undersampled
        repetitions that ``ismrmrd_generate_cartesian_shepp_logan --acceleration R`` writes, one
        repetition per set of lines), or ``"auto"``: repetitions when the slice has one phase and
        several repetitions (and ``repetition`` is not given), else phases.
    dataset : str, optional
        HDF5 group of the data set (default ``"dataset"``, or the only group with an ``xml`` header).
    time_tick_ms : float
        Duration of one time-stamp tick (2.5 ms on Siemens scanners).

    Returns
    -------
    CineKSpace
        ``kspace (frames, coils, ky, kx)`` complex64 with readout oversampling removed and the
        asymmetric echo zero-filled, ``mask (frames, ky)``, field of view, frame times, matrices and
        the noise readouts. Readouts repeated with different ``idx.average`` are averaged.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    IsmrmrdFormatError
        Not an HDF5/ISMRMRD file, missing header pieces, several slices/repetitions without choosing,
        readouts that do not fit the encoded matrix.
    UnsupportedDataError
        Non-Cartesian trajectory (radial, spiral, EPI...), several sets/contrasts, 3D encoding,
        several phases read as repetitions.

    Notes
    -----
    Readouts flagged as noise, calibration-only (``ACQ_IS_PARALLEL_CALIBRATION``), navigator, phase
    correction, feedback or dummy scans are not frame data. The acquisition geometry (``position``,
    ``read_dir``, ``phase_dir``, ``slice_dir`` of the frame readouts, their median) becomes
    :attr:`CineKSpace.affine` (:func:`acquisition_affine`); files without it (zero directions) give
    ``None``. Checked against an independent implementation: ISMRMRD's own
    ``ismrmrd_generate_cartesian_shepp_logan`` files reconstruct to the image of its
    ``ismrmrd_recon_cartesian_2d`` (``tests/mri/test_ismrmrd_reference.py``).
    """
    if frames not in ("auto", "phase", "repetition"):
        raise ValueError(f"frames must be 'auto', 'phase' or 'repetition', got {frames!r}")
    path = Path(path)
    f5, dataset = _open_ismrmrd(path, dataset)
    try:
        header = _parse_header(f5[dataset]["xml"][0], path)
        records = f5[dataset]["data"][:]
    finally:
        f5.close()
    if not header.encoding:
        raise IsmrmrdFormatError(f"{path}: the ISMRMRD header has no <encoding> section")
    enc = header.encoding[0]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    if str(traj) != "cartesian":
        raise UnsupportedDataError(
            f"{path}: trajectory '{traj}' is not supported; only Cartesian cine k-space can be read "
            "(grid non-Cartesian data onto a Cartesian grid first, e.g. with BART or Gadgetron)"
        )
    ems, rms = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
    enx, eny, enz = int(ems.x), int(ems.y), int(ems.z)
    rnx, rny, rnz = int(rms.x), int(rms.y), int(rms.z)
    if enz > 1:
        raise UnsupportedDataError(
            f"{path}: 3D encoding (encodedSpace z = {enz}) is not supported; a 2D cine is expected"
        )
    if rnx < 1 or rnx > enx:
        raise IsmrmrdFormatError(f"{path}: reconSpace x = {rnx} must be in [1, encodedSpace x = {enx}]")
    rfov = enc.reconSpace.fieldOfView_mm
    fov_mm = (float(rfov.x), float(rfov.y), float(rfov.z))
    efov = enc.encodedSpace.fieldOfView_mm
    encoded_fov = (float(efov.x), float(efov.y), float(efov.z)) if efov is not None else None
    if encoded_fov is not None and not all(math.isfinite(v) and v > 0 for v in encoded_fov[:2]):
        encoded_fov = None

    head = records["head"]
    flags = head["flags"].astype(np.uint64)
    skip = np.zeros(flags.shape, dtype=bool)
    for name in _SKIP_FLAGS:
        skip |= (flags & np.uint64(_bit(name))) != 0
    is_noise = (flags & np.uint64(_bit("IS_NOISE_MEASUREMENT"))) != 0
    enc_ref = head["encoding_space_ref"]
    use = ~skip & (enc_ref == 0)
    if not use.any():
        raise IsmrmrdFormatError(f"{path} holds no imaging readouts (only noise/calibration/navigator data)")
    if np.any(head["trajectory_dimensions"][use] > 0):
        raise UnsupportedDataError(
            f"{path}: readouts carry a k-space trajectory (trajectory_dimensions > 0); only Cartesian data "
            "are supported"
        )
    if np.any((flags[use] & np.uint64(_bit("IS_REVERSE"))) != 0):
        raise UnsupportedDataError(f"{path}: reversed readouts (EPI-like) are not supported")

    idx = head["idx"]
    sel = use.copy()
    slice_id = _pick("slice", idx["slice"][sel], slice, "slice")
    sel &= idx["slice"] == slice_id
    n_phases = np.unique(idx["phase"][sel]).size
    n_reps = np.unique(idx["repetition"][sel]).size
    mode = frames
    if mode == "auto":
        mode = "repetition" if n_phases == 1 and n_reps > 1 and repetition is None else "phase"
    if mode == "phase":
        rep_id: int | None = _pick("repetition", idx["repetition"][sel], repetition, "repetition")
        sel &= idx["repetition"] == rep_id
    else:
        if repetition is not None:
            raise ValueError("repetition= selects one repetition; it cannot be combined with frames='repetition'")
        if n_phases > 1:
            raise UnsupportedDataError(
                f"{path}: the slice has {n_phases} phases and {n_reps} repetitions; read the phases of one "
                "repetition (frames='phase', repetition=<index>) instead"
            )
        rep_id = None
    frame_key = "phase" if mode == "phase" else "repetition"
    for name in ("set", "contrast"):
        if np.unique(idx[name][sel]).size > 1:
            raise UnsupportedDataError(
                f"{path}: several {name}s (idx.{name}) in one slice are not supported; split the file first"
            )
    if np.any(idx["kspace_encode_step_2"][sel] > 0):
        raise UnsupportedDataError(f"{path}: kspace_encode_step_2 > 0 (3D encoding) is not supported")

    coils = np.unique(head["active_channels"][sel])
    if coils.size != 1:
        raise IsmrmrdFormatError(f"{path}: readouts have different numbers of coils {coils.tolist()}")
    n_coils = int(coils[0])

    limits = enc.encodingLimits
    n_frames = int(idx[frame_key][sel].max()) + 1
    limit = None if limits is None else getattr(limits, frame_key)
    if limit is not None:
        n_frames = max(n_frames, int(limit.maximum) + 1)
    ky_shift = 0
    step1 = None if limits is None else limits.kspace_encoding_step_1
    if step1 is not None and int(step1.center) > 0:
        ky_shift = eny // 2 - int(step1.center)

    k_os = np.zeros((n_frames, n_coils, eny, enx), dtype=np.complex64)
    counts = np.zeros((n_frames, eny), dtype=np.int32)
    prezp_min = enx
    for r in np.nonzero(sel)[0]:
        h = head[r]
        ns = int(h["number_of_samples"])
        data = records["data"][r].view(np.complex64).reshape(n_coils, ns)
        pre, post = int(h["discard_pre"]), int(h["discard_post"])
        if pre or post:
            data = data[:, pre : ns - post]
        ns_kept = data.shape[1]
        cs = int(h["center_sample"]) - pre
        if int(h["center_sample"]) == 0:
            offset = enx - ns_kept  # OCMR rule: missing samples are at the start
        else:
            offset = enx // 2 - cs
        if offset < 0 or offset + ns_kept > enx:
            raise IsmrmrdFormatError(
                f"{path}: readout {r} ({ns_kept} samples, centre {cs}) does not fit the encoded matrix x = {enx}"
            )
        y = int(h["idx"]["kspace_encode_step_1"]) + ky_shift
        f = int(h["idx"][frame_key])
        if not 0 <= y < eny:
            raise IsmrmrdFormatError(
                f"{path}: readout {r} has ky index {y} outside the encoded matrix y = {eny}"
            )
        k_os[f, :, y, offset : offset + ns_kept] += data
        counts[f, y] += 1
        prezp_min = min(prezp_min, offset)
    mask = counts > 0
    if np.any(counts > 1):  # several averages of a line: their mean
        k_os /= np.maximum(counts, 1)[:, None, :, None].astype(np.float32)

    if rnx < enx:
        kspace = np.empty((n_frames, n_coils, eny, rnx), dtype=np.complex64)
        for f in range(n_frames):  # frame by frame to bound memory
            kspace[f] = _remove_readout_oversampling(k_os[f], rnx)
    else:
        kspace = k_os
    first = _native_first_acquired(prezp_min, enx, rnx)
    if first:
        kspace[..., :first] = 0

    frame_times = _frame_times(head[sel], n_frames, time_tick_ms, frame_key)
    noise = None
    if is_noise.any():
        noise = np.concatenate(
            [
                records["data"][r].view(np.complex64).reshape(int(head["active_channels"][r]), -1)
                for r in np.nonzero(is_noise)[0]
            ],
            axis=1,
        )
    meta: dict[str, Any] = {"slice": slice_id, "repetition": rep_id, "readout_oversampling": enx / rnx, "frames": frame_key}
    sysinfo = header.acquisitionSystemInformation
    if sysinfo is not None:
        meta["vendor"] = sysinfo.systemVendor
        meta["field_strength_t"] = sysinfo.systemFieldStrength_T
    if header.userParameters is not None:
        for p in header.userParameters.userParameterDouble:
            meta[p.name] = float(p.value)
    log.info(
        "read %s: %d frames (%s) x %d coils x %d ky x %d kx, %d of %d lines",
        path, n_frames, frame_key, n_coils, eny, rnx, mask.sum(), mask.size,
    )
    out = CineKSpace(
        kspace=kspace,
        mask=mask,
        fov_mm=fov_mm,
        frame_times_ms=frame_times,
        encoded_matrix=(enx, eny, enz),
        recon_matrix=(rnx, rny, rnz),
        kx_first_acquired=first,
        noise=noise,
        source=str(path),
        meta=meta,
        encoded_fov_mm=encoded_fov,
    )
    geometry, note = _header_geometry(head[sel], path)
    if geometry is not None:
        spacing = out.pixel_spacing_mm
        try:
            out.affine = acquisition_affine(
                geometry["position"], geometry["read_dir"], geometry["phase_dir"], geometry["slice_dir"],
                spacing if spacing is not None else (1.0, 1.0), fov_mm[2] if fov_mm[2] > 0 else 1.0, (eny, rnx),
            )
        except ValueError as exc:
            note = f"unusable acquisition geometry: {exc}"
    meta["geometry"] = note
    if out.affine is None:
        log.info("%s: %s; the outputs get a default axis-aligned pose", path, note)
    return out


def _frame_times(head: np.ndarray, n_frames: int, tick_ms: float, frame_key: str = "phase") -> np.ndarray | None:
    """Median trigger time per frame (physiology stamp 0), else acquisition stamp from the first."""
    phase = head["idx"][frame_key].astype(np.int64)
    physio = head["physiology_time_stamp"][:, 0].astype(np.float64)
    acq = head["acquisition_time_stamp"].astype(np.float64)
    if np.any(physio > 0):
        stamps = physio
    elif np.any(acq > 0):
        stamps = acq - acq.min()
    else:
        return None
    times = np.full(n_frames, np.nan)
    for f in range(n_frames):
        sel = phase == f
        if sel.any():
            times[f] = np.median(stamps[sel]) * tick_ms
    return times
