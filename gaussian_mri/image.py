"""A small 3D image type (voxels + voxel-to-RAS matrix) and NIfTI / NRRD reading and writing.

Conventions
-----------
* ``Image.data`` is indexed ``[k, j, i]`` (slowest to fastest), the order of Slicer's
  ``slicer.util.arrayFromVolume`` and of ``SimpleITK.GetArrayFromImage``.
* ``Image.affine`` is a 4x4 float64 matrix mapping the voxel index ``(i, j, k, 1)`` to RAS
  millimetres, i.e. Slicer's IJKToRAS matrix. NIfTI (nibabel) is already RAS; ITK/NRRD is LPS and
  is converted here and only here.
* ``slice_thickness`` (mm) is the acquired slice thickness along ``k`` when the file says so (NRRD
  ``thicknesses`` field, a BIDS JSON sidecar ``SliceThickness``, or our own NIfTI ``descrip`` tag),
  otherwise ``None``: callers then fall back to the slice spacing.

Files are written atomically: to a temporary file in the destination folder, then renamed, so a
failure never leaves a half-written image behind.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["Image", "read_image", "write_image", "ImageFormatError"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_THICK_TAG = re.compile(r"slice_thickness=([0-9.eE+-]+)")


class ImageFormatError(ValueError):
    """The file exists but is not an image this engine can use (wrong dimensionality, format...)."""


@dataclass
class Image:
    """A 3D scalar image with its geometry.

    Attributes
    ----------
    data : ndarray, shape (K, J, I)
        Voxel values, any numeric dtype.
    affine : ndarray, shape (4, 4), float64
        IJK-to-RAS matrix (mm).
    slice_thickness : float or None
        Acquired slice thickness along ``k`` in mm, if known.
    """

    data: np.ndarray
    affine: np.ndarray
    slice_thickness: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.data.ndim != 3:
            raise ValueError(f"Image data must be 3D (K, J, I), got shape {self.data.shape}")
        if not np.allclose(self.affine[3], [0, 0, 0, 1]):
            raise ValueError(f"affine last row must be [0, 0, 0, 1], got {self.affine[3]}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, J, I)``."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along ``(i, j, k)`` in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of ``i, j, k``."""
        return self.affine[:3, :3] / self.spacing[None, :]

    @property
    def origin(self) -> np.ndarray:
        """RAS position of voxel ``(0, 0, 0)`` in mm."""
        return self.affine[:3, 3].copy()

    def with_data(self, data: np.ndarray) -> Image:
        """Same geometry, new voxels (same shape)."""
        if data.shape != self.data.shape:
            raise ValueError(f"new data shape {data.shape} differs from image shape {self.data.shape}")
        return replace(self, data=data, meta=dict(self.meta))

    def world_coordinates(self) -> np.ndarray:
        """RAS coordinates of all voxel centres, shape (K, J, I, 3)."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij")
        ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).astype(np.float64)
        return (ijk1 @ self.affine.T)[..., :3]

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        th = "" if self.slice_thickness is None else f", thickness={self.slice_thickness:.3g} mm"
        return f"Image(shape(K,J,I)={self.shape}, spacing(i,j,k)=({sp}) mm{th}, dtype={self.data.dtype})"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in _NIFTI_SUFFIXES + _ITK_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _check_ndim(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond 3; reject 2D and 4D images with a clear message."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise ImageFormatError(
            f"{path} is a {len(dims)}D image of shape {tuple(shape)}; a 3D volume was expected. "
            "For a cine (2D+t) use `gaussian-mri cine` / the GaussianCine module; for a multi-volume "
            "file split it into single 3D volumes first."
        )
    if len(dims) < 3:
        raise ImageFormatError(
            f"{path} is a {len(dims)}D image of shape {tuple(shape)}; a 3D volume was expected "
            "(a single 2D slice cannot be used as a stack: save the stack as one 3D file)."
        )
    return tuple(dims)


def _sidecar_thickness(path: Path) -> float | None:
    name = path.name
    for s in _NIFTI_SUFFIXES + _ITK_SUFFIXES:
        if name.lower().endswith(s):
            name = name[: -len(s)]
            break
    sidecar = path.with_name(name + ".json")
    if sidecar.is_file():
        try:
            value = json.loads(sidecar.read_text()).get("SliceThickness")
        except (json.JSONDecodeError, OSError, AttributeError):
            return None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def read_image(path: str | os.PathLike) -> Image:
    """Read a 3D NIfTI (``.nii``, ``.nii.gz``) or ITK (``.nrrd``, ``.nhdr``, ``.mha``) image.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageFormatError
        If the file is not a 3D image (2D, 4D) or has an unknown suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    suffix = _suffix(path)
    thickness: float | None = None
    if suffix in _NIFTI_SUFFIXES:
        import nibabel as nib

        img = nib.load(str(path))
        dims = _check_ndim(path, img.shape)
        data = np.asanyarray(img.dataobj).reshape(dims)
        data = np.ascontiguousarray(data.transpose(2, 1, 0))
        affine = np.asarray(img.affine, dtype=np.float64)
        descrip = img.header.get("descrip")
        if descrip is not None:
            m = _THICK_TAG.search(bytes(descrip).decode("latin-1", errors="ignore"))
            if m:
                thickness = float(m.group(1))
    elif suffix in _ITK_SUFFIXES:
        import SimpleITK as sitk

        img = sitk.ReadImage(str(path))
        size = img.GetSize()
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ImageFormatError(
                f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; a scalar 3D volume was expected"
            )
        _check_ndim(path, size)
        if img.GetDimension() != 3:
            raise ImageFormatError(f"{path} is a {img.GetDimension()}D image of size {size}; a 3D volume was expected")
        data = sitk.GetArrayFromImage(img)
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
        lps[:3, 3] = img.GetOrigin()
        affine = _LPS_TO_RAS @ lps
        if img.HasMetaDataKey("NRRD_thicknesses"):
            values = [v for v in re.split(r"[\s,]+", img.GetMetaData("NRRD_thicknesses")) if v]
            try:
                thickness = float(values[2]) if len(values) >= 3 else None
            except ValueError:
                thickness = None
            if thickness is not None and not np.isfinite(thickness):
                thickness = None
    else:
        raise ImageFormatError(
            f"{path}: unknown image format '{suffix}'. Use NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr)."
        )
    if thickness is None:
        thickness = _sidecar_thickness(path)
    return Image(data=data, affine=affine, slice_thickness=thickness, meta={"path": str(path)})


def _atomic_target(path: Path) -> tuple[int, str]:
    suffix = _suffix(path)
    return tempfile.mkstemp(prefix=".tmp_" + path.name.split(".")[0] + "_", suffix=suffix, dir=path.parent)


def write_image(image: Image, path: str | os.PathLike) -> Path:
    """Write ``image`` to NIfTI or NRRD (by suffix) with identical geometry, atomically.

    The slice thickness, when set, is stored in the NRRD ``thicknesses`` field or the NIfTI
    ``descrip`` string (``slice_thickness=<mm>``).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in _NIFTI_SUFFIXES + _ITK_SUFFIXES:
        raise ImageFormatError(f"{path}: cannot write '{suffix}'; use .nii, .nii.gz or .nrrd")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {path.parent}")
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        if suffix in _NIFTI_SUFFIXES:
            import nibabel as nib

            data = np.asarray(image.data).transpose(2, 1, 0)
            img = nib.Nifti1Image(data, image.affine)
            img.set_qform(image.affine, code=1)
            img.set_sform(image.affine, code=1)
            img.header.set_xyzt_units("mm", "msec")
            if image.slice_thickness is not None:
                img.header["descrip"] = f"slice_thickness={image.slice_thickness:.6g}".encode()
            nib.save(img, tmp)
        else:
            import SimpleITK as sitk

            img = sitk.GetImageFromArray(np.ascontiguousarray(image.data))
            lps = _LPS_TO_RAS @ image.affine
            spacing = np.linalg.norm(lps[:3, :3], axis=0)
            img.SetSpacing([float(s) for s in spacing])
            img.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
            img.SetOrigin([float(v) for v in lps[:3, 3]])
            if image.slice_thickness is not None:
                img.SetMetaData("NRRD_thicknesses", f"nan nan {image.slice_thickness:.17g}")
            sitk.WriteImage(img, tmp, useCompression=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
