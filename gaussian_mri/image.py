"""A small 3D image type (voxels + voxel-to-RAS matrix) and NIfTI / NRRD / DICOM reading and writing.

Conventions
-----------
* ``Image.data`` is indexed ``[k, j, i]`` (slowest to fastest), the order of Slicer's
  ``slicer.util.arrayFromVolume`` and of ``SimpleITK.GetArrayFromImage``.
* ``Image.affine`` is a 4x4 float64 matrix mapping the voxel index ``(i, j, k, 1)`` to RAS
  millimetres, i.e. Slicer's IJKToRAS matrix. NIfTI (nibabel) is already RAS; ITK (MetaImage) and
  DICOM are LPS and are converted here (:func:`to_sitk`, :func:`from_sitk`), NRRD in
  :mod:`gaussian_mri.nrrd_io` (pynrrd; the file's ``space`` says which frame).
* ``slice_thickness`` (mm) is the acquired slice thickness along ``k`` when the file says so (NRRD
  ``thicknesses`` field, DICOM Slice Thickness (0018,0050), a BIDS JSON sidecar ``SliceThickness``,
  or our own NIfTI ``descrip`` tag), otherwise ``None``: callers then fall back to the slice spacing.
* A folder (or one file of it) is read as a DICOM series of parallel slices
  (:mod:`gaussian_mri.dicom_io`), so a DICOM series works wherever a stack file does.

Files are written atomically: into a temporary folder beside the destination, then renamed, so a
failure never leaves a half-written image behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ._atomic import atomic_dir
from ._optional import require

__all__ = ["Image", "read_image", "write_image", "ImageFormatError", "sidecar_path", "to_sitk", "from_sitk"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_ITK_SUFFIXES = (".mha", ".mhd")
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


def to_sitk(image: Image):  # -> SimpleITK.Image (imported lazily)
    """The image as a ``SimpleITK.Image`` (ITK LPS physical space, same voxels and dtype).

    The voxel array is copied; ITK's index ``(i, j, k)`` is our ``(i, j, k)``.
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(_native(np.asarray(image.data))))
    lps = _LPS_TO_RAS @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    return img


def from_sitk(img, *, slice_thickness: float | None = None) -> Image:
    """An :class:`Image` from a 3D scalar ``SimpleITK.Image`` (LPS converted to RAS)."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFormatError(
            f"a 3D scalar SimpleITK image was expected, got dimension {img.GetDimension()} with "
            f"{img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    import SimpleITK as sitk

    data = _native(sitk.GetArrayFromImage(img))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = img.GetOrigin()
    return Image(data=data, affine=_LPS_TO_RAS @ lps, slice_thickness=slice_thickness)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in _NIFTI_SUFFIXES + _NRRD_SUFFIXES + _ITK_SUFFIXES:
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


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """The BIDS JSON sidecar of an image file: ``x.nii.gz`` / ``x.nii`` / ``x.nrrd`` / ``x.nhdr`` /
    ``x.mha`` / ``x.mhd`` -> ``x.json`` beside it (whether it exists or not)."""
    path = Path(image_path)
    name = path.name
    for s in _NIFTI_SUFFIXES + _NRRD_SUFFIXES + _ITK_SUFFIXES:
        if name.lower().endswith(s):
            name = name[: -len(s)]
            break
    return path.with_name(name + ".json")


def _sidecar_thickness(path: Path) -> float | None:
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            value = json.loads(sidecar.read_text()).get("SliceThickness")
        except (json.JSONDecodeError, OSError, AttributeError):
            return None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def _is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file without a known image suffix that starts with the DICOM preamble
    (128 bytes, then ``DICM``: DICOM PS3.10 section 7.1)."""
    if path.name.lower().endswith(".dcm"):
        return True
    if _suffix(path) in _NIFTI_SUFFIXES + _NRRD_SUFFIXES + _ITK_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _native(data: np.ndarray) -> np.ndarray:
    """Native byte order (big-endian files give '>f4' arrays, which torch cannot wrap)."""
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def read_image(path: str | os.PathLike) -> Image:
    """Read a 3D NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``,
    ``.mhd``) image, or a DICOM series (a folder, or one ``.dcm`` / DICOM file of the series).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageFormatError
        If the file is not a 3D scalar image (2D, 4D, vector), has an unknown suffix, or cannot be
        parsed (corrupt or truncated file); for DICOM see :func:`gaussian_mri.dicom_io.read_dicom_series`.

    Notes
    -----
    A 4D file whose fourth axis has size 1 is read as its 3D volume. Voxels are returned in the
    file's dtype (NIfTI scaling applied by nibabel, DICOM rescale slope/intercept by GDCM), in native
    byte order.
    """
    path = Path(path)
    if path.is_dir() or (path.is_file() and _is_dicom_file(path)):
        from .dicom_io import read_dicom_series

        return read_dicom_series(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    suffix = _suffix(path)
    thickness: float | None = None
    if suffix in _NIFTI_SUFFIXES:
        nib = require("nibabel", f"reading the NIfTI file {path}")
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, zlib errors...
            raise ImageFormatError(f"{path} could not be read as NIfTI: {_first_line(exc)}") from exc
        dims = _check_ndim(path, img.shape)
        data = np.asanyarray(img.dataobj).reshape(dims)
        data = _native(np.ascontiguousarray(data.transpose(2, 1, 0)))
        affine = np.asarray(img.affine, dtype=np.float64)
        descrip = img.header.get("descrip")
        if descrip is not None:
            m = _THICK_TAG.search(bytes(descrip).decode("latin-1", errors="ignore"))
            if m:
                thickness = float(m.group(1))
    elif suffix in _NRRD_SUFFIXES:
        from .nrrd_io import read_nrrd_image

        converted = read_nrrd_image(path)
        data, affine, thickness = converted.data, converted.affine, converted.slice_thickness
    elif suffix in _ITK_SUFFIXES:
        import SimpleITK as sitk

        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageFormatError(f"{path} could not be read as a MetaImage: {_first_line(exc)}") from exc
        size = img.GetSize()
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ImageFormatError(
                f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; a scalar 3D volume was expected"
            )
        _check_ndim(path, size)
        if img.GetDimension() == 4:  # 4D with a trailing singleton axis (checked above): keep the 3D volume
            img = sitk.Extract(img, [*size[:3], 0], [0, 0, 0, 0])
        if img.GetDimension() != 3:
            raise ImageFormatError(f"{path} is a {img.GetDimension()}D image of size {size}; a 3D volume was expected")
        converted = from_sitk(img)
        data, affine = converted.data, converted.affine
    else:
        raise ImageFormatError(
            f"{path}: unknown image format '{suffix}'. Use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) "
            "or a DICOM series folder."
        )
    if thickness is None:
        thickness = _sidecar_thickness(path)
    return Image(data=data, affine=affine, slice_thickness=thickness, meta={"path": str(path)})


def _writable_data(image: Image, path: Path) -> np.ndarray:
    data = np.asarray(image.data)
    if data.dtype == np.bool_:
        return data.astype(np.uint8)  # neither NIfTI nor ITK has a boolean voxel type
    if data.dtype.kind not in "iuf" or data.dtype == np.float16:
        raise ImageFormatError(
            f"{path}: cannot write voxels of dtype {data.dtype}; convert image.data to an integer, "
            "float32 or float64 array first"
        )
    return _native(data)


def write_image(image: Image, path: str | os.PathLike) -> Path:
    """Write ``image`` to NIfTI or NRRD (by suffix) with identical geometry, atomically.

    Parameters
    ----------
    image : Image
        The volume. Integer and float32/float64 voxels are stored as they are (bit-exact round
        trip); boolean voxels are stored as uint8 (0/1).
    path : str or PathLike
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr`` (detached header + data file) or ``.mha``.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    The slice thickness, when set, is stored in the NRRD ``thicknesses`` field or the NIfTI
    ``descrip`` string (``slice_thickness=<mm>``). NIfTI stores the affine as float32 (relative
    precision ~6e-8); NRRD (written by pynrrd, :mod:`gaussian_mri.nrrd_io`, in LPS as 3D Slicer
    writes it) stores it to 17 significant digits.

    The file(s) are first written into a temporary folder beside ``path`` and then renamed into
    place (data file before header), so a failure leaves neither a partial file nor a stray
    temporary file, and an existing file at ``path`` is only replaced by a complete one.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in _NIFTI_SUFFIXES + _NRRD_SUFFIXES + _ITK_SUFFIXES:
        raise ImageFormatError(
            f"{path}: cannot write '{suffix}'; use .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {path.parent}")
    data = _writable_data(image, path)
    # Detached formats (.nhdr, .mhd) write a header and a data file: atomic_dir renames the data
    # file(s) first and the header (the file readers open) last.
    with atomic_dir(path) as tmp_dir:
        tmp = tmp_dir / path.name
        if suffix in _NIFTI_SUFFIXES:
            nib = require("nibabel", f"writing the NIfTI file {path}")
            data = data.transpose(2, 1, 0)
            img = nib.Nifti1Image(data, image.affine, dtype=data.dtype)
            img.set_qform(image.affine, code=1)
            img.set_sform(image.affine, code=1)
            img.header.set_xyzt_units("mm", "msec")
            if image.slice_thickness is not None:
                img.header["descrip"] = f"slice_thickness={image.slice_thickness:.6g}".encode()
            nib.save(img, str(tmp))
        elif suffix in _NRRD_SUFFIXES:
            from .nrrd_io import write_nrrd_image

            write_nrrd_image(image.with_data(data) if data is not image.data else image, tmp, atomic=False)
        else:
            import SimpleITK as sitk

            img = to_sitk(image.with_data(data) if data is not image.data else image)
            sitk.WriteImage(img, str(tmp), useCompression=True)
    return path
