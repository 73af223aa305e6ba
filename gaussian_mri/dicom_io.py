"""DICOM series as stacks: a folder of 2D MR images of one series -> an :class:`~gaussian_mri.image.Image` in RAS.

:func:`read_dicom_series` is what :func:`gaussian_mri.image.read_image` does for a folder (or for one
``.dcm`` / DICOM file, which stands for its series in its folder), so a DICOM series works wherever a
stack file does (``gaussian-mri svr --stacks``, ``evaluate``, ``simulate-stacks``).

The headers are read with pydicom (no pixel data), which decides what the folder holds and checks
that it is one stack of parallel slices; the pixels are decoded by SimpleITK's
``ImageSeriesReader`` (GDCM: compressed transfer syntaxes, rescale slope/intercept) in the slice
order found here. Geometry (DICOM PS3.3 C.7.6.2, Image Plane Module; patient coordinates are LPS):

* ``ImageOrientationPatient`` = the directions of increasing column index (``i``) and of increasing
  row index (``j``); ``PixelSpacing`` = (row spacing along ``j``, column spacing along ``i``);
* slices are ordered by their ``ImagePositionPatient`` along the normal ``i x j`` (the file order,
  file names and Instance Numbers are not used), which gives ``k`` and its spacing;
* the slice thickness is Slice Thickness (0018,0050) (:func:`slice_thickness_of`); when the tag is
  missing the stack gets ``slice_thickness=None`` and a warning: the engine then uses the slice spacing.

Refused with a one-line message saying what to do: no DICOM images, several series (listed, with a
file of each to pick one), multi-frame (enhanced) files, slices with different orientations or sizes,
several images at one position (echoes, repetitions), positions not along the slice normal (gantry
tilt), unevenly spaced slices (a slice missing), a single slice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._optional import require
from .image import Image, ImageFormatError, _first_line, _native

__all__ = ["read_dicom_series", "slice_thickness_of", "dicom_headers", "group_series", "require_single_frame_greyscale"]

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOL = 1e-4  # direction cosines (DS strings carry ~6-16 digits)
_POSITION_TOL_MM = 0.01


def _floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.all(np.isfinite(out)) else None


def _float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def dicom_headers(paths: Iterable[str | os.PathLike], *, pixels: bool = False) -> list[tuple[Path, Any]]:
    """``[(path, dataset)]`` of the files that pydicom reads as DICOM (headers only, no pixel data,
    unless ``pixels``); other files (not DICOM, unreadable) are skipped. Shared by the stack reader,
    the DICOM cine reader (:func:`gaussian_mri.mri.kspace_io.cine_from_dicom`, with ``pixels``) and
    the Slicer modules."""
    pydicom = require("pydicom", "reading DICOM files")
    from pydicom.errors import InvalidDicomError

    out = []
    for p in paths:
        p = Path(p)
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=not pixels)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError):
            continue
        out.append((p, ds))
    return out


def slice_thickness_of(datasets: Iterable[Any], what: str = "DICOM series") -> float | None:
    """Slice Thickness (0018,0050) of a series from its datasets (pydicom, headers are enough), or ``None``.

    Values that are missing, not numbers or not > 0 are ignored; instances that disagree give their
    median and a warning naming ``what``. Shared by the engine's DICOM reader and the Slicer modules
    (which look the instances of a loaded volume up in Slicer's DICOM database).
    """
    values = []
    for ds in datasets:
        value = _float(ds, "SliceThickness")
        if value is not None and value > 0:
            values.append(value)
    if not values:
        return None
    if max(values) - min(values) > 1e-3:
        log.warning("%s: DICOM Slice Thickness varies between instances (%g-%g mm); using the median",
                    what, min(values), max(values))
    return float(np.median(values))


def group_series(items: Iterable[tuple[Path, Any]]) -> dict[str, list[tuple[Path, Any]]]:
    """``{SeriesInstanceUID: [(path, dataset)]}`` in the order first seen (``"<no SeriesInstanceUID>"``
    for files without one)."""
    series: dict[str, list[tuple[Path, Any]]] = {}
    for p, ds in items:
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or "<no SeriesInstanceUID>"), []).append((p, ds))
    return series


def require_single_frame_greyscale(path: Path, ds: Any, error: type[Exception], expected: str) -> None:
    """Raise ``error`` unless ``ds`` is a single-frame greyscale image (``NumberOfFrames`` and
    ``SamplesPerPixel`` 1 or absent), the only kind the stack and cine readers take; ``expected`` names
    what the reader wanted ("MR stack", "MR cine")."""
    frames, samples = int(_float(ds, "NumberOfFrames") or 1), int(_float(ds, "SamplesPerPixel") or 1)
    if frames != 1:
        raise error(
            f"{path} is a multi-frame (enhanced) DICOM image with {frames} frames, which is not supported; give "
            "a folder of single-frame images, or convert the series to NIfTI first (e.g. dcm2niix)"
        )
    if samples != 1:
        raise error(f"{path} is a colour image; a greyscale {expected} was expected")


def _series_label(uid: str, items: list[tuple[Path, Any]]) -> str:
    ds = items[0][1]
    number = ds.get("SeriesNumber", "?")
    description = str(ds.get("SeriesDescription", "") or "").strip()
    return f"series {number} '{description}' ({len(items)} images, e.g. {items[0][0].name}, UID {uid})"


def read_dicom_series(path: str | os.PathLike) -> Image:
    """Read one DICOM series of parallel 2D slices as a 3D stack.

    Parameters
    ----------
    path : path-like
        A folder holding the files of one series (other series in it: an error listing them), or one
        file of a series (its series is read from the files of its folder).

    Returns
    -------
    Image
        Voxels ``[k, j, i]`` (rescaled by GDCM; integer types kept when the rescale is the identity),
        IJK-to-RAS affine, ``slice_thickness`` from Slice Thickness (0018,0050) or ``None`` (warning),
        ``meta``: ``path``, ``series_uid``, ``series_description``, ``files`` (in slice order).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ImageFormatError
        See the module docstring.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DICOM folder or file not found: {path}")
    folder = path if path.is_dir() else path.parent
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [(p, ds) for p, ds in dicom_headers(files) if "Rows" in ds and "Columns" in ds]
    if not images:
        raise ImageFormatError(
            f"{folder} holds no DICOM images; give a folder with the DICOM files of one series, "
            "or an image file (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr)"
        )
    series = group_series(images)
    if path.is_file():
        chosen = [uid for uid, items in series.items() if any(p == path for p, _ in items)]
        if not chosen:
            raise ImageFormatError(f"{path} is not a DICOM image (no rows/columns); give an image file of the series")
        uid = chosen[0]
    elif len(series) > 1:
        listing = "; ".join(_series_label(u, items) for u, items in series.items())
        raise ImageFormatError(
            f"{folder} holds {len(series)} DICOM series: {listing}. Give one series: a folder that holds "
            "only its files, or one of its files (e.g. the file named for each series above)"
        )
    else:
        uid = next(iter(series))
    items = series[uid]
    name = f"DICOM series in {folder}" if path.is_dir() else f"DICOM series of {path}"
    return _stack(items, name, uid, path)


def _stack(items: list[tuple[Path, Any]], name: str, uid: str, path: Path) -> Image:
    for p, ds in items:
        require_single_frame_greyscale(p, ds, ImageFormatError, "MR stack")
    if len(items) < 2:
        raise ImageFormatError(
            f"{name} has a single slice ({items[0][0].name}); a stack needs several parallel slices"
        )
    first_path, first = items[0]
    iop = _floats(first, "ImageOrientationPatient", 6)
    spacing = _floats(first, "PixelSpacing", 2)
    if iop is None or _floats(first, "ImagePositionPatient", 3) is None:
        raise ImageFormatError(
            f"{first_path} has no Image Orientation/Position (Patient) (0020,0037)/(0020,0032): the slices "
            "cannot be placed in space; export the series with its geometry, or convert it to NIfTI"
        )
    if spacing is None:
        raise ImageFormatError(f"{first_path} has no Pixel Spacing (0028,0030); the in-plane voxel size is unknown")
    rows, cols = int(first.Rows), int(first.Columns)
    positions = []
    for p, ds in items:
        other = _floats(ds, "ImageOrientationPatient", 6)
        if other is None or not np.allclose(other, iop, atol=_ORIENTATION_TOL, rtol=0):
            raise ImageFormatError(
                f"{name} mixes slice orientations: {p.name} has Image Orientation (Patient) "
                f"{None if other is None else other.round(5).tolist()}, {first_path.name} has "
                f"{iop.round(5).tolist()}; a stack is one series of parallel slices: give one orientation per folder"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ImageFormatError(
                f"{name} mixes image sizes: {p.name} is {int(ds.Rows)} x {int(ds.Columns)}, {first_path.name} "
                f"is {rows} x {cols}"
            )
        other_spacing = _floats(ds, "PixelSpacing", 2)
        if other_spacing is None or not np.allclose(other_spacing, spacing, atol=1e-4, rtol=0):
            raise ImageFormatError(f"{name} mixes pixel spacings: {p.name} has {other_spacing}, {first_path.name} {spacing}")
        position = _floats(ds, "ImagePositionPatient", 3)
        if position is None:
            raise ImageFormatError(f"{p} has no Image Position (Patient) (0020,0032); the slice cannot be placed")
        positions.append(position)
    along_i = iop[:3] / np.linalg.norm(iop[:3])  # direction of increasing column index
    along_j = iop[3:] / np.linalg.norm(iop[3:])  # direction of increasing row index
    normal = np.cross(along_i, along_j)
    positions = np.asarray(positions)
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth, positions = depth[order], positions[order]
    items = [items[n] for n in order]
    steps = np.diff(depth)
    if np.any(steps < _POSITION_TOL_MM):
        n = int(np.argmin(steps))
        raise ImageFormatError(
            f"{name} has several images at one slice position ({items[n][0].name} and {items[n + 1][0].name}): "
            "several echoes, repetitions or time points in one series; split them into one folder per stack"
        )
    offsets = (positions - positions[0]) - np.outer(depth - depth[0], normal)
    if np.abs(offsets).max() > max(_POSITION_TOL_MM, 1e-3 * float(depth[-1] - depth[0])):
        raise ImageFormatError(
            f"{name}: the slice positions do not follow the slice normal (in-plane offsets up to "
            f"{np.abs(offsets).max():.3g} mm: gantry tilt or sheared stack), which a stack cannot represent; "
            "resample it to an orthogonal grid first (e.g. dcm2niix)"
        )
    step = float(np.median(steps))
    if steps.max() - steps.min() > max(_POSITION_TOL_MM, 0.01 * step):
        raise ImageFormatError(
            f"{name} has unevenly spaced slices ({steps.min():.4g} to {steps.max():.4g} mm apart along the normal; "
            f"a slice missing?): give complete stacks with evenly spaced slices"
        )
    lps = np.eye(4)
    lps[:3, 0] = along_i * spacing[1]
    lps[:3, 1] = along_j * spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0]
    data = _pixels([p for p, _ in items], name, (len(items), rows, cols))
    thickness = slice_thickness_of((ds for _, ds in items), name)
    if thickness is None:
        log.warning("%s has no Slice Thickness (0018,0050): the slice spacing, %.4g mm, is used as the thickness",
                    name, step)
    first_ds = items[0][1]
    meta = {
        "path": str(path),
        "series_uid": uid,
        "series_description": str(first_ds.get("SeriesDescription", "") or ""),
        "files": [str(p) for p, _ in items],
    }
    return Image(data=data, affine=_LPS_TO_RAS @ lps, slice_thickness=thickness, meta=meta)


def _pixels(paths: list[Path], name: str, shape: tuple[int, int, int]) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])  # in slice order (found above), not GDCM's
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageFormatError(f"{name}: the pixel data could not be decoded: {_first_line(exc)}") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFormatError(f"{name} has {img.GetNumberOfComponentsPerPixel()} values per pixel; a greyscale stack was expected")
    data = sitk.GetArrayFromImage(img)
    if data.shape != shape:
        raise ImageFormatError(f"{name}: decoded {data.shape} voxels, expected {shape} (slices, rows, columns)")
    return _native(np.ascontiguousarray(data))
