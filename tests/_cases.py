"""Test inputs shared by several test files (generated or bundled; nothing outside the checkout).

* :func:`atlas_truth`: the bundled CC0 fetal atlas crop (``tests/data/``, see its SOURCE.md), smoothed
  (anti-alias) and resampled to ``res`` mm on a box around the brain (+6 mm): the ground truth the SVR
  acceptance tests simulate stacks from.
* :func:`rotation`: a 3x3 rotation from Euler angles (oblique test geometries).
* :func:`small_cine`: a small simulated cine (10 frames, 48 x 40 crop of a 64 x 64 phantom, 6 coils,
  0.5 % noise, GRO R = 8) for short cine fits.
* :func:`random_splats`: random packed 2D splats for rasteriser tests.
* :func:`oblique_stack` / :func:`write_dicom_series`: an oblique int16 stack and its DICOM series (one
  MR Image Storage file per slice, written with pydicom) for the DICOM reader tests.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

ATLAS = Path(__file__).resolve().parent / "data" / "fidon-atlas-GA21"
CINE_ROWS, CINE_COLS = slice(8, 56), slice(12, 52)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation about x, then y, then z (radians): ``Rz @ Ry @ Rx``."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@functools.lru_cache(maxsize=None)
def atlas_truth(res: float = 2.0):
    """``(volume, mask)`` Images on a ``res`` mm grid; the volume is scaled to a maximum of 1."""
    from scipy import ndimage

    from gaussian_mri.image import Image, read_image
    from gaussian_mri.resample import resample_to_reference

    srr = read_image(ATLAS / "srr.nii.gz")
    msk = read_image(ATLAS / "mask.nii.gz")
    vox = float(srr.spacing.mean())
    smooth = srr.with_data(ndimage.gaussian_filter(np.asarray(srr.data, np.float32), 0.5 * res / vox))
    idx = np.argwhere(np.asarray(msk.data) > 0)[:, ::-1]  # (i, j, k)
    lo = msk.affine[:3, :3] @ idx.min(0) + msk.affine[:3, 3] - 6.0
    hi = msk.affine[:3, :3] @ idx.max(0) + msk.affine[:3, 3] + 6.0
    n = np.ceil((hi - lo) / res).astype(int) + 1
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = lo
    grid = Image(np.zeros((n[2], n[1], n[0]), np.float32), affine)
    vol = np.asarray(resample_to_reference(smooth, grid, order=1).data, np.float32)
    mask = np.asarray(resample_to_reference(msk, grid, order=0).data) > 0
    return grid.with_data(vol / vol.max()), grid.with_data(mask.astype(np.uint8))


@functools.lru_cache(maxsize=None)
def small_cine() -> dict:
    """``images`` (T, 48, 40) complex reference, ``maps`` coil maps, ``full`` / ``kspace`` (fully sampled /
    GRO R = 8 with noise), ``mask``, region masks ``body``, ``static``, ``myo`` and ``spacing`` (mm)."""
    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.mri.fft import fft2c
    from gaussian_mri.mri.sampling import gro_mask

    sim = simulate_cine(n_frames=10, ny=64, nx=64, n_coils=6, pixel_spacing_mm=4.0, noise=0.0)
    images = sim.images[:, CINE_ROWS, CINE_COLS]
    maps = sim.coil_maps[:, CINE_ROWS, CINE_COLS]
    full = fft2c(torch.from_numpy(maps)[None] * torch.from_numpy(images)[:, None])
    rng = np.random.default_rng(1)
    std = 0.005 * float(np.abs(images).max())
    noise = (rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)) * std / np.sqrt(2)
    full = full + torch.from_numpy(noise.astype(np.complex64))
    mask = gro_mask(images.shape[1], images.shape[0], 8)
    return {
        "images": images,
        "maps": torch.from_numpy(maps),
        "kspace": full * mask[:, None, :, None],
        "full": full,
        "mask": mask,
        "body": sim.body_mask[CINE_ROWS, CINE_COLS],
        "static": sim.static_mask[CINE_ROWS, CINE_COLS],
        "myo": sim.myocardium_mask[:, CINE_ROWS, CINE_COLS],
        "spacing": sim.pixel_spacing_mm,
    }


def random_splats(n: int, n_batch: int, h: int, w: int, n_chan: int = 2, dtype=torch.float64, scale: float = 3.0):
    """``n`` random packed 2D splats on ``n_batch`` images of ``h x w`` pixels: (means, conics, amplitudes,
    batch_index), conics from a random Cholesky factor (sizes up to ``scale`` pixels), for rasteriser tests."""
    from gaussian_mri.render.splat2d import cholesky_to_conic

    means = torch.rand(n, 2, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    chol = torch.rand(n, 3, dtype=dtype) * torch.tensor([scale, 1.0, scale], dtype=dtype)
    chol = chol + torch.tensor([0.4, -0.5, 0.4], dtype=dtype)
    amps = torch.randn(n, n_chan, dtype=dtype)
    bidx = torch.randint(0, n_batch, (n,))
    return means, cholesky_to_conic(chol), amps, bidx


def oblique_stack(shape=(7, 10, 12), spacing=(0.8, 0.9, 3.5), flip: bool = False, seed: int = 0):
    """An oblique anisotropic int16 stack ``[k, j, i]`` Image (``flip``: k opposite to i x j)."""
    from gaussian_mri.image import Image

    rot = rotation(0.3, -0.5, 1.1)
    if flip:
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)[None, :]
    affine[:3, 3] = (-40.3, 12.7, 55.1)
    data = np.random.default_rng(seed).integers(-2000, 3000, size=shape).astype(np.int16)
    return Image(data, affine)


def write_dicom_series(folder: Path, image, *, thickness: float | None = 4.25, series_uid: str | None = None,
                       description: str = "T2 HASTE", series_number: int = 3, name: str = "IM",
                       orientation_of=None, position_of=None) -> list[Path]:
    """One file per slice ``k`` of ``image`` (int16), geometry from its RAS affine; returns the files.

    File names are shuffled with respect to ``k`` and Instance Numbers run backwards. ``orientation_of(k)``
    / ``position_of(k)`` may replace a slice's Image Orientation / Position (Patient) (bad series)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    along_i, along_j = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid()
    n_k = image.shape[0]
    names = np.random.default_rng(1).permutation(n_k)
    files = []
    for k in range(n_k):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{name}{names[k]:04d}"  # no suffix, as scanners export them
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series_uid, "MR"
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, description, n_k - k
        if thickness is not None:
            ds.SliceThickness = f"{thickness:g}"
        orientation = np.concatenate([along_i, along_j]) if orientation_of is None else orientation_of(k)
        position = (lps @ [0.0, 0.0, k, 1.0])[:3] if position_of is None else position_of(k)
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.8f}" for v in position]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]  # (between rows, between columns)
        ds.Rows, ds.Columns = image.shape[1], image.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(np.asarray(image.data[k], dtype="<i2")).tobytes()
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.save_as(str(path), enforce_file_format=True)
        else:  # pydicom 2.x (Slicer 5.10 bundles 2.4.4)
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(str(path), write_like_original=False)
        files.append(path)
    return files
