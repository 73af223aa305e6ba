"""Loading cine k-space from common research formats, and image-domain cines to simulate k-space from.

:func:`load_kspace` reads, by file suffix:

``.npy``
    one complex array, the k-space.
``.npz``
    arrays ``kspace`` (required), ``mask`` (optional, ``(frames, ky)`` or ``(frames, ky, kx)``),
    ``coil_maps`` (optional, ``(coils, ny, nx)``), ``fov_mm`` (optional, 3 numbers).
``.mat``
    MATLAB files. v7.3 files are HDF5 and are read with h5py; older (v5/v7) ones with
    :func:`scipy.io.loadmat`. Two MATLAB particularities are handled here:

    * complex arrays are stored in v7.3 files as an HDF5 compound ``{real, imag}``;
    * MATLAB is column-major, so h5py sees the axes of a v7.3 array *reversed*
      (a MATLAB ``[kx ky coils frames]`` array reads as ``(frames, coils, ky, kx)``). This module
      undoes the reversal, so ``axes`` always names the axes **in MATLAB order, as ``size(x)``
      lists them** (default ``"kx,ky,coils,frames"``, OCMR's order without its singleton axes),
      whatever the file version. The optional ``mask`` and ``coil_maps`` variables must be
      MATLAB ``[ky frames]`` (or ``[kx ky frames]``) and ``[nx ny coils]``, i.e. the package order
      reversed, as a column-major language naturally stores them.

    The k-space variable is ``kspace`` if present, otherwise the only complex variable (or name
    it with ``key=``).
``.cfl`` / ``.hdr``
    BART arrays (read with :mod:`gaussian_mri.mri.cfl`). By default BART's dimension meanings are
    used (READ = kx, PHS1 = ky, COIL = coils, TIME = frames); with ``axes`` the axes of the array
    in BART order (readout first, as ``bart show -m`` lists them) are named instead.
``.h5`` / ``.hdf5``
    ISMRMRD files (a group with an ``xml`` header) via :func:`gaussian_mri.mri.ismrmrd_io.read_cine_ismrmrd`
    (frames: the cardiac phases, or the repetitions of a file with one phase; the acquisition geometry
    in ``CineKSpace.affine``); otherwise a plain HDF5 file with a ``kspace`` dataset in C order (``axes``
    as for ``.npy``). Other formats carry no geometry (``affine`` is ``None``).

``axes`` is a comma-separated list naming each stored axis with ``frames``, ``coils``, ``ky``, ``kx``
(each exactly once) and ``_`` for singleton axes to drop; missing ``frames``/``coils`` axes are added
with size 1. The result is always ``(frames, coils, ky, kx)``.

:func:`cine_from_image` reads a 2D+t magnitude (or complex) cine from NIfTI / NRRD, or (via
:func:`cine_from_dicom`) from a DICOM cine series (a folder of single-frame images of one slice), and
:func:`simulate_coil_maps` makes smooth birdcage-like coil sensitivities to turn it into multi-coil
k-space (``fft2c(coil_maps * image)``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..dicom_io import _float, _floats, dicom_headers, group_series, require_single_frame_greyscale
from .ismrmrd_io import CineKSpace, read_cine_ismrmrd

__all__ = [
    "ImageCine",
    "KSpaceFormatError",
    "cine_from_dicom",
    "cine_from_image",
    "load_kspace",
    "simulate_coil_maps",
]

_TARGET = ("frames", "coils", "ky", "kx")
_DEFAULT_AXES = {
    "npy": "frames,coils,ky,kx",
    "npz": "frames,coils,ky,kx",
    "h5": "frames,coils,ky,kx",
    "mat": "kx,ky,coils,frames",
}


class KSpaceFormatError(ValueError):
    """The file cannot be interpreted as cine k-space (format, variables, axes)."""


# --------------------------------------------------------------------------------------------------
# axes handling
# --------------------------------------------------------------------------------------------------
def _parse_axes(axes: str | list[str] | tuple[str, ...]) -> list[str]:
    names = [a.strip() for a in axes.split(",")] if isinstance(axes, str) else [str(a).strip() for a in axes]
    unknown = [a for a in names if a not in _TARGET and a != "_"]
    if unknown:
        raise KSpaceFormatError(
            f"axes {names} contains unknown names {unknown}; use 'frames', 'coils', 'ky', 'kx' and '_' "
            "for singleton axes, e.g. axes='kx,ky,coils,frames'"
        )
    for a in _TARGET:
        if names.count(a) > 1:
            raise KSpaceFormatError(f"axes {names} names '{a}' more than once")
    if "ky" not in names or "kx" not in names:
        raise KSpaceFormatError(f"axes {names} must name at least 'ky' and 'kx'")
    return names


def _permute(array: np.ndarray, axes: str | list[str] | tuple[str, ...], where: str) -> np.ndarray:
    names = _parse_axes(axes)
    hint = (
        f"pass axes= naming the {array.ndim} stored axes in order with 'frames', 'coils', 'ky', 'kx' "
        "('_' for singleton axes)"
    )
    if array.ndim != len(names):
        raise KSpaceFormatError(
            f"{where}: the k-space array has {array.ndim} axes, shape {array.shape}, but axes={','.join(names)} "
            f"names {len(names)}; {hint}"
        )
    for n, size in zip(names, array.shape):
        if n == "_" and size != 1:
            raise KSpaceFormatError(
                f"{where}: an axis marked '_' has size {size} (shape {array.shape}, axes={','.join(names)}); "
                f"only singleton axes may be dropped; {hint}"
            )
    keep = [i for i, n in enumerate(names) if n != "_"]
    arr = array.reshape([array.shape[i] for i in keep])
    kept = [names[i] for i in keep]
    for a in ("frames", "coils"):
        if a not in kept:
            arr = arr[None]
            kept = [a] + kept
    return np.ascontiguousarray(np.transpose(arr, [kept.index(a) for a in _TARGET]))


# --------------------------------------------------------------------------------------------------
# auxiliary arrays
# --------------------------------------------------------------------------------------------------
def _finish(
    kspace: np.ndarray,
    mask: np.ndarray | None,
    coil_maps: np.ndarray | None,
    fov_mm: Any,
    path: Path,
    meta: dict[str, Any],
) -> CineKSpace:
    if not np.iscomplexobj(kspace):
        raise KSpaceFormatError(
            f"{path}: the k-space array is real ({kspace.dtype}); k-space must be complex. If this is an image, "
            "use cine_from_image and simulate k-space from it."
        )
    kspace = kspace.astype(np.complex64, copy=False)
    if not np.all(np.isfinite(kspace)):
        raise KSpaceFormatError(f"{path}: the k-space contains NaN or infinite values")
    n_frames, n_coils, ny, nx = kspace.shape
    if mask is None:
        mask = np.any(kspace != 0, axis=(1, 3))
    else:
        mask = np.asarray(mask)
        if mask.shape == (n_frames, ny, nx):
            full = mask != 0
            lines = np.any(full, axis=2)
            # Cartesian line sampling: every acquired line samples the same kx positions
            # (all of them, or all but the leading ones for an asymmetric echo)
            rows = full[lines]
            if rows.size and not np.all(rows == rows[0]):
                raise KSpaceFormatError(
                    f"{path}: the mask (frames, ky, kx) is not made of Cartesian ky lines (acquired lines sample "
                    "different kx positions); only line masks (frames, ky) are supported"
                )
            mask = lines
        if mask.shape != (n_frames, ny):
            raise KSpaceFormatError(
                f"{path}: mask has shape {mask.shape}, expected (frames, ky) = {(n_frames, ny)} or "
                f"(frames, ky, kx) = {(n_frames, ny, nx)} to match the k-space {kspace.shape}; "
                "check the axes argument"
            )
        mask = mask.astype(bool)
    if coil_maps is not None:
        coil_maps = np.asarray(coil_maps)
        if coil_maps.shape != (n_coils, ny, nx):
            raise KSpaceFormatError(
                f"{path}: coil_maps has shape {coil_maps.shape}, expected (coils, ny, nx) = {(n_coils, ny, nx)} to "
                f"match the k-space {kspace.shape}; check the axes argument"
            )
        coil_maps = coil_maps.astype(np.complex64)
    fov = None
    if fov_mm is not None:
        fv = np.asarray(fov_mm, dtype=np.float64).ravel()
        if fv.size != 3:
            raise KSpaceFormatError(f"{path}: fov_mm must hold 3 numbers (x, y, thickness) in mm, got {fv}")
        fov = (float(fv[0]), float(fv[1]), float(fv[2]))
    return CineKSpace(
        kspace=kspace,
        mask=mask,
        fov_mm=fov,
        recon_matrix=(nx, ny, 1),
        encoded_matrix=(nx, ny, 1),
        coil_maps=coil_maps,
        source=str(path),
        meta=meta,
    )


def _complex_from_h5(data: np.ndarray) -> np.ndarray:
    """HDF5 compound {real, imag} (MATLAB v7.3, h5py complex) -> complex array; others unchanged."""
    if data.dtype.names and {"real", "imag"} <= set(data.dtype.names):
        return data["real"] + 1j * data["imag"]
    return data


# --------------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    return {".hdf5": ".h5", ".hdr": ".cfl"}.get(s, s)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """True if ``path`` is an HDF5 file (signature at byte 0, 512, 1024, 2048, ... as HDF5 allows a user
    block; MATLAB v7.3 files have a 512-byte one). Needs no h5py, so v5 ``.mat`` files read without it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def _load_mat(path: Path, axes: str, key: str | None) -> CineKSpace:
    if _is_hdf5(path):  # MATLAB v7.3
        h5py = require("h5py", f"reading the MATLAB v7.3 file {path}")
        with h5py.File(path, "r") as f:
            names = [n for n in f if isinstance(f[n], h5py.Dataset) and not n.startswith("#")]

            def get(name: str) -> np.ndarray:
                data = _complex_from_h5(f[name][()])
                return np.transpose(data)  # column-major MATLAB order

            kname = _choose_key(path, names, key, lambda n: "imag" in (f[n].dtype.names or ()))
            kspace = get(kname)
            mask = get("mask") if "mask" in names else None
            coil_maps = get("coil_maps") if "coil_maps" in names else None
            fov = get("fov_mm") if "fov_mm" in names else None
        version = "7.3"
    else:
        scipy_io = require("scipy.io", f"reading the MATLAB file {path}", "scipy")
        try:
            variables = scipy_io.loadmat(str(path))
        except Exception as exc:
            raise KSpaceFormatError(f"{path} is not a readable MATLAB file: {exc}") from exc
        names = [n for n in variables if not n.startswith("__")]
        kname = _choose_key(path, names, key, lambda n: np.iscomplexobj(variables[n]))
        kspace = np.asarray(variables[kname])
        mask = variables.get("mask")
        coil_maps = variables.get("coil_maps")
        fov = variables.get("fov_mm")
        version = "5"
    # mask and coil maps are stored in reversed (column-major) package order: reverse back
    mask = None if mask is None else np.transpose(mask)
    coil_maps = None if coil_maps is None else np.transpose(coil_maps)
    meta = {"format": f"mat v{version}", "key": kname}
    return _finish(_permute(kspace, axes, str(path)), mask, coil_maps, fov, path, meta)


def _choose_key(path: Path, names: list[str], key: str | None, is_complex: Any) -> str:
    if key is not None:
        if key not in names:
            raise KSpaceFormatError(f"{path} has no variable '{key}'; variables: {sorted(names)}")
        return key
    if "kspace" in names:
        return "kspace"
    complex_names = [n for n in names if is_complex(n)]
    if len(complex_names) == 1:
        return complex_names[0]
    raise KSpaceFormatError(
        f"{path}: cannot tell which variable is the k-space (no 'kspace'; "
        f"complex variables: {sorted(complex_names)}, "
        f"all: {sorted(names)}); pass key=<name>"
    )


def _load_cfl(path: Path, axes: str | None) -> CineKSpace:
    from .cfl import from_bart_dims, read_cfl

    array = read_cfl(path)
    if axes is None:
        try:
            kspace = from_bart_dims(array, ("frames", "coils", "ky", "kx"))
        except ValueError as exc:
            raise KSpaceFormatError(
                f"{path}: BART array of shape {array.shape} (BART order) has dimensions other than READ, PHS1, "
                f"COIL and TIME ({exc}); pass axes= naming the axes in BART order"
            ) from exc
    else:
        kspace = _permute(array, axes, str(path))
    return _finish(kspace, None, None, None, path, {"format": "bart cfl"})


def _load_h5(path: Path, axes: str, key: str | None, slice_index: int | None) -> CineKSpace:
    h5py = require("h5py", f"reading the HDF5 k-space file {path}")

    if not h5py.is_hdf5(path):
        raise KSpaceFormatError(f"{path} has an HDF5 suffix but is not an HDF5 file")
    with h5py.File(path, "r") as f:
        is_ismrmrd = any(isinstance(f[n], h5py.Group) and "xml" in f[n] for n in f)
        if not is_ismrmrd:
            names = [n for n in f if isinstance(f[n], h5py.Dataset)]
            kname = _choose_key(path, names, key, lambda n: f[n].dtype.kind == "c" or bool(f[n].dtype.names))
            kspace = _complex_from_h5(f[kname][()])
            mask = f["mask"][()] if "mask" in names else None
            coil_maps = _complex_from_h5(f["coil_maps"][()]) if "coil_maps" in names else None
            fov = f["fov_mm"][()] if "fov_mm" in names else None
    if is_ismrmrd:
        return read_cine_ismrmrd(path, slice=slice_index)
    return _finish(_permute(kspace, axes, str(path)), mask, coil_maps, fov, path, {"format": "hdf5", "key": kname})


def load_kspace(
    path: str | os.PathLike[str],
    *,
    axes: str | None = None,
    key: str | None = None,
    slice: int | None = None,  # noqa: A002 - same name as read_cine_ismrmrd
) -> CineKSpace:
    """Load cine k-space from ``.npy``, ``.npz``, ``.mat`` (v5 or v7.3), BART ``.cfl`` or ISMRMRD ``.h5``.

    Parameters
    ----------
    path : path-like
        The file (for BART, the ``.cfl`` or ``.hdr`` file or their base name without suffix).
    axes : str, optional
        Comma-separated names of the stored axes, e.g. ``"kx,ky,coils,frames"``; see the module
        docstring. Default: ``"frames,coils,ky,kx"`` for NumPy/HDF5, ``"kx,ky,coils,frames"`` (MATLAB
        order) for ``.mat``, BART's dimension meanings for ``.cfl``. Ignored for ISMRMRD files, whose
        layout the header describes.
    key : str, optional
        Variable / dataset holding the k-space in ``.npz``, ``.mat``, ``.h5`` files (default
        ``kspace``, or the only complex one).
    slice : int, optional
        Slice to read from a multi-slice ISMRMRD file.

    Returns
    -------
    CineKSpace
        ``kspace (frames, coils, ky, kx)`` complex64, ``mask (frames, ky)`` bool (from the file, or the
        non-zero lines), ``coil_maps (coils, ny, nx)`` if stored, ``fov_mm`` if stored.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    KSpaceFormatError
        Unknown suffix, real-valued data, wrong number of axes or shape mismatch (the message suggests
        the ``axes`` argument), ambiguous variables.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == "" and not path.exists() and path.with_suffix(".cfl").is_file():
        suffix = ".cfl"  # a BART base name
    if suffix == ".cfl":
        base = path.with_suffix("") if path.suffix.lower() in (".cfl", ".hdr") else path
        for p in (base.with_suffix(".cfl"), base.with_suffix(".hdr")):
            if not p.is_file():
                raise FileNotFoundError(f"BART file not found: {p} (a .cfl/.hdr pair is needed)")
        return _load_cfl(base.with_suffix(".cfl"), axes)
    if not path.is_file():
        raise FileNotFoundError(f"k-space file not found: {path}")
    if suffix == ".h5":
        return _load_h5(path, axes or _DEFAULT_AXES["h5"], key, slice)
    if suffix == ".mat":
        return _load_mat(path, axes or _DEFAULT_AXES["mat"], key)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise KSpaceFormatError(f"{path} is not a plain NumPy array file: {exc}") from exc
        kspace = _permute(array, axes or _DEFAULT_AXES["npy"], str(path))
        return _finish(kspace, None, None, None, path, {"format": "npy"})
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            kname = _choose_key(path, names, key, lambda n: np.iscomplexobj(z[n]))
            kspace = z[kname]
            mask = z["mask"] if "mask" in names else None
            coil_maps = z["coil_maps"] if "coil_maps" in names else None
            fov = z["fov_mm"] if "fov_mm" in names else None
        kspace = _permute(kspace, axes or _DEFAULT_AXES["npz"], str(path))
        return _finish(kspace, mask, coil_maps, fov, path, {"format": "npz", "key": kname})
    raise KSpaceFormatError(
        f"{path}: unknown k-space format '{path.suffix}'. Supported: .npy, .npz, .mat (v5 or v7.3), "
        ".cfl/.hdr (BART), .h5 (ISMRMRD or HDF5 with a 'kspace' dataset)"
    )


# --------------------------------------------------------------------------------------------------
# image-domain cines
# --------------------------------------------------------------------------------------------------
@dataclass
class ImageCine:
    """A 2D+t image-domain cine.

    Attributes
    ----------
    frames : ndarray, shape (frames, ny, nx), complex64
        Images indexed ``[t, row, col]``; magnitude files give zero phase.
    pixel_spacing_mm : tuple of 2 floats
        ``(row = y, column = x)`` pixel size in mm.
    frame_duration_ms : float or None
        Time between frames when the file says so (NIfTI ``pixdim[4]`` with time units, NRRD spacing of
        the time axis), in ms.
    affine : ndarray, shape (4, 4)
        Voxel ``(i = col, j = row, k = 0, 1)`` to RAS mm of the slice.
    """

    frames: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    frame_duration_ms: float | None
    affine: np.ndarray


def cine_from_image(path: str | os.PathLike[str], *, time_axis_is_third: bool = False) -> ImageCine:
    """Read a 2D+t image cine from NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or DICOM.

    A folder, or a ``.dcm`` file (standing for the folder it is in), is read as a DICOM cine series
    with :func:`cine_from_dicom`.

    Accepted layouts (NIfTI index order ``(i = x, j = y, k, t)``):

    * 4D with a singleton slice axis ``(nx, ny, 1, nt)`` (what ``simulate-cine`` writes);
    * 3D ``(nx, ny, nt)`` when ``time_axis_is_third=True`` (a cine saved as a "volume"); without
      the flag a 3D file is rejected, because it could equally be a 3D volume.

    Parameters
    ----------
    path : path-like
        The image file, or a DICOM cine folder / one ``.dcm`` file of it.
    time_axis_is_third : bool
        Treat the third axis of a 3D file as time (ignored for DICOM).

    Returns
    -------
    ImageCine
        Frames ``(frames, ny, nx)`` complex64 with pixel spacing in mm.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    KSpaceFormatError
        Unknown suffix, 2D file, 3D file without ``time_axis_is_third``, 4D with several slices.
    """
    path = Path(path)
    if path.is_dir():
        return cine_from_dicom(path)
    if path.suffix.lower() == ".dcm" and path.is_file():
        return cine_from_dicom(path.parent)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    name = path.name.lower()
    frame_ms: float | None = None
    if name.endswith((".nii", ".nii.gz")):
        nib = require("nibabel", f"reading the NIfTI file {path}")
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, dtype=np.float64)
        space_unit, time_unit = img.header.get_xyzt_units()
        scale = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}.get(space_unit or "mm", 1.0)
        if data.ndim == 4 and len(zooms) >= 4 and zooms[3] > 0:
            tscale = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}.get(time_unit or "", None)
            frame_ms = zooms[3] * tscale if tscale is not None else None
        spacing_xy = (zooms[0] * scale, zooms[1] * scale)
        if data.ndim == 3 and time_axis_is_third:
            data = data[:, :, None, :]
        arr = _ijkt_to_frames(path, data, time_axis_is_third)
    elif name.endswith((".nrrd", ".nhdr")):
        import SimpleITK as sitk

        img = sitk.ReadImage(str(path))
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise KSpaceFormatError(f"{path} has vector voxels; a scalar 2D+t cine is expected")
        array = sitk.GetArrayFromImage(img)  # reversed: (t, [k,] j, i)
        spacing = img.GetSpacing()
        data = np.transpose(array)  # (i, j, [k,] t)
        if data.ndim == 3 and time_axis_is_third:
            data = data[:, :, None, :]
            frame_ms = None
        elif data.ndim == 4 and len(spacing) >= 4:
            frame_ms = None  # NRRD has no time unit: not guessed
        spacing_xy = (float(spacing[0]), float(spacing[1]))
        lps = np.eye(4)
        dim = img.GetDimension()
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
        lps[:3, :3] = direction * np.asarray(spacing[:3], dtype=np.float64)[None, :]
        lps[:3, 3] = img.GetOrigin()[:3]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        arr = _ijkt_to_frames(path, data, time_axis_is_third)
    else:
        raise KSpaceFormatError(
            f"{path}: unknown image format; use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) "
            "or a DICOM cine folder"
        )
    return ImageCine(
        frames=arr.astype(np.complex64),
        pixel_spacing_mm=(float(spacing_xy[1]), float(spacing_xy[0])),
        frame_duration_ms=frame_ms,
        affine=affine,
    )


def _dicom_floats(ds: Any, keyword: str, n: int) -> tuple[float, ...] | None:
    # the stack reader's parser as a tuple: messages print ``(x, y, z)`` and ``a or b`` chains work
    out = _floats(ds, keyword, n)
    return None if out is None else tuple(float(v) for v in out)


def _same(a: tuple[float, ...] | None, b: tuple[float, ...] | None, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b, atol=tol, rtol=0.0))


def cine_from_dicom(folder: str | os.PathLike[str]) -> ImageCine:
    """Read a DICOM cine series: a folder of single-frame 2D images of one slice, one per cardiac phase.

    Every file in ``folder`` (not its sub-folders) is tried with pydicom; files that are not DICOM, or
    DICOM without pixel data (``DICOMDIR``, reports), are skipped. The frames must belong to one series
    (``SeriesInstanceUID``) and share ``ImagePositionPatient``, ``ImageOrientationPatient``, ``Rows`` and
    ``Columns``. They are ordered by ``TriggerTime`` (ties and missing trigger times by
    ``InstanceNumber``) and scaled with ``RescaleSlope`` / ``RescaleIntercept``.

    Parameters
    ----------
    folder : path-like
        The series folder.

    Returns
    -------
    ImageCine
        Frames ``(frames, Rows, Columns)`` complex64 (zero phase), pixel spacing ``PixelSpacing``
        (row, column) in mm (1 mm when absent), frame duration from the median ``TriggerTime``
        step, else ``NominalInterval / CardiacNumberOfImages``, else None, and the slice affine
        (column index, row index) to RAS mm from ``ImagePositionPatient`` / ``ImageOrientationPatient``
        (LPS in DICOM; the third column is the slice normal times ``SliceThickness``).

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder.
    KSpaceFormatError
        No DICOM images, several series, frames of different slices or sizes, multi-frame or colour
        images, undecodable pixel data.
    """
    require("pydicom", f"reading the DICOM cine {folder}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM cine folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    datasets = [(p, ds) for p, ds in dicom_headers(files, pixels=True) if "PixelData" in ds]
    if not datasets:
        raise KSpaceFormatError(
            f"{folder} holds no DICOM image files; a folder of one DICOM cine series is expected"
        )

    series = group_series(datasets)
    if len(series) > 1:
        listing = "; ".join(
            f"{uid} ({len(items)} files, SeriesNumber {items[0][1].get('SeriesNumber', '?')}, "
            f"'{items[0][1].get('SeriesDescription', '')}')"
            for uid, items in series.items()
        )
        raise KSpaceFormatError(
            f"{folder} holds {len(series)} DICOM series: {listing}; give a folder with one series only"
        )

    ref_path, ref = datasets[0]
    ref_geom = (
        _dicom_floats(ref, "ImagePositionPatient", 3),
        _dicom_floats(ref, "ImageOrientationPatient", 6),
        int(ref.get("Rows", 0) or 0),
        int(ref.get("Columns", 0) or 0),
    )
    for p, ds in datasets:
        require_single_frame_greyscale(p, ds, KSpaceFormatError, "MR cine")
        geom = (
            _dicom_floats(ds, "ImagePositionPatient", 3),
            _dicom_floats(ds, "ImageOrientationPatient", 6),
            int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0),
        )
        same = _same(geom[0], ref_geom[0], 1e-3) and _same(geom[1], ref_geom[1], 1e-4)
        if not (same and geom[2:] == ref_geom[2:]):
            raise KSpaceFormatError(
                f"{folder} is not a single-slice cine: {p.name} has position {geom[0]}, "
                f"orientation {geom[1]}, size {geom[2]} x {geom[3]} but {ref_path.name} has position "
                f"{ref_geom[0]}, orientation {ref_geom[1]}, size {ref_geom[2]} x {ref_geom[3]}; "
                "give a folder with the frames of one slice"
            )

    triggers = [_float(ds, "TriggerTime") for _, ds in datasets]
    instances = [_float(ds, "InstanceNumber") for _, ds in datasets]
    use_trigger = all(t is not None for t in triggers)
    order = sorted(
        range(len(datasets)),
        key=lambda i: (
            triggers[i] if use_trigger else 0.0,
            instances[i] if instances[i] is not None else math.inf,
            datasets[i][0].name,
        ),
    )

    frames = []
    for i in order:
        p, ds = datasets[i]
        try:
            pix = np.asarray(ds.pixel_array, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - decoder errors vary with pydicom version and plugins
            raise KSpaceFormatError(f"cannot decode the pixel data of {p}: {exc}") from exc
        slope = _float(ds, "RescaleSlope")
        intercept = _float(ds, "RescaleIntercept")
        pix = pix * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
        frames.append(pix)
    arr = np.stack(frames).astype(np.complex64)

    spacing = (
        _dicom_floats(ref, "PixelSpacing", 2) or _dicom_floats(ref, "ImagerPixelSpacing", 2) or (1.0, 1.0)
    )
    frame_ms: float | None = None
    if use_trigger and len(order) > 1:
        steps = np.diff(np.asarray([triggers[i] for i in order], dtype=np.float64))
        step = float(np.median(steps))
        frame_ms = step if step > 0 else None
    if frame_ms is None:
        nominal = _float(ref, "NominalInterval")
        n_phases = _float(ref, "CardiacNumberOfImages")
        if nominal and n_phases and nominal > 0 and n_phases > 0:
            frame_ms = nominal / n_phases

    row_mm, col_mm = float(spacing[0]), float(spacing[1])
    ipp, iop = ref_geom[0], ref_geom[1]
    if iop is not None:
        along_row = np.asarray(iop[:3], dtype=np.float64)  # direction of increasing column index
        along_col = np.asarray(iop[3:], dtype=np.float64)  # direction of increasing row index
        normal = np.cross(along_row, along_col)
        thickness = _float(ref, "SliceThickness") or _float(ref, "SpacingBetweenSlices") or 1.0
        lps = np.eye(4)
        lps[:3, 0] = along_row * col_mm
        lps[:3, 1] = along_col * row_mm
        lps[:3, 2] = normal * thickness
        lps[:3, 3] = ipp if ipp is not None else (0.0, 0.0, 0.0)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    else:
        affine = np.diag([col_mm, row_mm, 1.0, 1.0])
    return ImageCine(frames=arr, pixel_spacing_mm=(row_mm, col_mm), frame_duration_ms=frame_ms, affine=affine)


def _ijkt_to_frames(path: Path, data: np.ndarray, told: bool) -> np.ndarray:
    if data.ndim == 3:
        raise KSpaceFormatError(
            f"{path} is 3D {data.shape}; if its third axis is time pass time_axis_is_third=True "
            "(command line: --time-axis-third), otherwise it is a volume, not a cine"
        )
    if data.ndim != 4:
        raise KSpaceFormatError(
            f"{path} has {data.ndim} dimensions {data.shape}; a 2D+t cine (x, y, 1, t) or (x, y, t) is expected"
        )
    if data.shape[2] != 1:
        raise KSpaceFormatError(
            f"{path} has {data.shape[2]} slices (shape {data.shape}); a single-slice cine (x, y, 1, t) is "
            "expected: extract one slice first"
        )
    return np.transpose(data[:, :, 0, :], (2, 1, 0))  # (t, j = row, i = col)


def simulate_coil_maps(n_coils: int, ny: int, nx: int, *, seed: int = 0, radius: float = 1.3) -> np.ndarray:
    """Smooth birdcage-like complex coil sensitivities, normalised to unit root-sum-of-squares.

    ``n_coils`` loop coils sit evenly on an ellipse around the field of view (``radius`` times the half
    field of view, slightly jittered by ``seed``). Each map is ``1 / distance`` (with an out-of-plane
    offset so it stays finite) times ``exp(i * (angle of the coil + a smooth random linear phase))``,
    as in sigpy's ``birdcage_maps``; the maps are then divided by their root-sum-of-squares, so
    ``sum_c |c|^2 = 1`` at every pixel (inside the body and out). Magnitudes vary smoothly by a factor
    of a few across the field of view, as for a real phased array.

    Parameters
    ----------
    n_coils : int
        Number of coils (>= 1).
    ny, nx : int
        Map size (rows, columns).
    seed : int
        Random seed of the jitter and of the phase.
    radius : float
        Coil ring radius relative to the half field of view (> 1 puts the coils outside the image).

    Returns
    -------
    ndarray, shape (n_coils, ny, nx), complex64
    """
    if int(n_coils) != n_coils or n_coils < 1:
        raise ValueError(f"n_coils must be a positive integer, got {n_coils}")
    if ny < 1 or nx < 1:
        raise ValueError(f"ny and nx must be >= 1, got {ny}, {nx}")
    rng = np.random.default_rng(seed)
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    maps = np.empty((n_coils, ny, nx), dtype=np.complex128)
    for c in range(n_coils):
        theta = 2 * math.pi * c / n_coils + rng.uniform(-0.15, 0.15)
        r = radius * (1 + rng.uniform(-0.05, 0.05))
        cx, cy = r * math.cos(theta), r * math.sin(theta)
        dx, dy = xx - cx, yy - cy
        dist = np.sqrt(dx**2 + dy**2 + 0.3**2)
        phase = np.arctan2(dy, dx) + theta + rng.uniform(-0.5, 0.5) * xx + rng.uniform(-0.5, 0.5) * yy
        maps[c] = np.exp(1j * phase) / dist
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return maps.astype(np.complex64)
