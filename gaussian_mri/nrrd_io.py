"""NRRD files through pynrrd: the one NRRD reader and writer of the engine and of the Slicer modules.

The NRRD format (teem, http://teem.sourceforge.net/nrrd/format.html) is parsed and written by
pynrrd (https://pynrrd.readthedocs.io); this module adds what the engine needs on top of it:

* **Geometry.** The ``space directions`` and ``space origin`` of the spatial axes (those with a
  direction; ``none`` marks a component axis) are converted to an IJK-to-RAS matrix and the voxels
  to ``[k, j, i]`` (component axes last). The file's ``space`` says how: ``right-anterior-superior``,
  ``left-anterior-superior`` or ``left-posterior-superior`` (with or without ``-time``); other
  spaces (``scanner-xyz``, ``3D-right-handed``...) and files with only a ``space dimension`` are
  taken as LPS, as ITK's NRRD reader does. Old-style files with ``spacings`` and no directions get
  axis-aligned LPS directions, also as ITK does.
* **Slice thickness.** The per-axis field ``thicknesses`` (teem writes it and 3D Slicer keeps it;
  ITK parses it but SimpleITK cannot return it) of the third spatial axis ``k``.
* **Scalar volumes** (:func:`read_nrrd_image`, :func:`write_nrrd_image`, used by
  :mod:`gaussian_mri.image` for ``.nrrd`` and ``.nhdr``): written in LPS, as 3D Slicer and ITK write
  them, with ``thicknesses: nan nan <mm>`` when the thickness is known.
* **Vector and tensor volumes** with components in RAS (:func:`write_vector_nrrd`,
  :func:`write_tensor_nrrd`): kind ``vector`` (3D Slicer opens it as a ``vtkMRMLVectorVolumeNode``) and
  kind ``3D-masked-symmetric-matrix`` (a ``vtkMRMLDiffusionTensorVolumeNode``), written with
  ``space: right-anterior-superior`` and an identity ``measurement frame``. :func:`read_nrrd` and
  :func:`read_tensor_nrrd` return components in RAS whatever the file's frame: the measurement frame
  (whose vectors, as the NRRD specification says, are the columns of the matrix from measurement to
  world space) and the space are applied.

Writes are atomic (:mod:`gaussian_mri._atomic`): a failure leaves neither a partial file nor a
temporary one. Only numpy is imported here; pynrrd is imported on first use (3D Slicer does not
bundle it: the modules install it with the engine's other requirements).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_dir
from ._optional import require
from .image import Image, ImageFormatError, _check_ndim, _first_line, _native

__all__ = [
    "NrrdVolume",
    "read_nrrd_header",
    "nrrd_thickness",
    "read_nrrd",
    "read_nrrd_image",
    "write_nrrd",
    "write_nrrd_image",
    "write_vector_nrrd",
    "write_tensor_nrrd",
    "read_tensor_nrrd",
]

#: sign of each RAS axis in a NRRD ``space`` (``-time`` variants included)
_SPACE_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}
_LPS = (-1.0, -1.0, 1.0)
_SPACE_NAMES = {"RAS": "right-anterior-superior", "LPS": "left-posterior-superior"}
#: per-axis kinds of the sampling grid (NRRD specification, "kinds"); every other kind is a component axis
_SPATIAL_KINDS = {"domain", "space", "time", "???", "none"}
_COMPRESSION_LEVEL = 4  # gzip: ~2x faster than level 9 for a few percent larger files


@dataclass
class NrrdVolume:
    """A NRRD volume in engine conventions.

    Attributes
    ----------
    data : ndarray, shape (K, J, I, *components)
        Voxels in native byte order; the component axes (e.g. 3 for a vector, 7 for a masked
        symmetric matrix) follow the spatial ones, in file order.
    affine : ndarray (4, 4)
        IJK-to-RAS matrix (mm) of the three spatial axes.
    kinds : list of str
        Kinds of the component axes (``[]`` for a scalar volume).
    measurement_frame : ndarray (3, 3)
        Maps component coordinates to RAS (identity for a file written by :func:`write_nrrd` with
        components in RAS).
    slice_thickness : float or None
        ``thicknesses`` of the third spatial axis (mm) when finite and > 0.
    header : dict
        The header as pynrrd parsed it.
    """

    data: np.ndarray
    affine: np.ndarray
    kinds: list[str] = field(default_factory=list)
    measurement_frame: np.ndarray = field(default_factory=lambda: np.eye(3))
    slice_thickness: float | None = None
    header: dict = field(default_factory=dict)


def _nrrd():
    return require("nrrd", "reading and writing NRRD files", package="pynrrd")


def read_nrrd_header(path: str | os.PathLike) -> dict:
    """The header of a ``.nrrd`` / ``.nhdr`` file as pynrrd parses it (no voxel data read).

    :raises FileNotFoundError: no such file.
    :raises ImageFormatError: the file is not a readable NRRD header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    nrrd = _nrrd()
    try:
        return dict(nrrd.read_header(str(path)))
    except Exception as exc:  # NRRDError, UnicodeDecodeError, ValueError from a damaged field...
        raise ImageFormatError(f"{path} could not be read as NRRD: {_first_line(exc)}") from exc


def _signs(header: dict) -> tuple[float, float, float]:
    space = str(header.get("space", "")).strip().lower()
    space = space.removesuffix("-time")
    return _SPACE_SIGNS.get(space, _LPS)  # no or another space: LPS, as ITK's NrrdImageIO assumes


def _layout(path: Path, header: dict):
    """``(spatial axes, component axes, spatial sizes, directions, kinds, sizes)`` of a header, axes in
    NRRD order (fastest first); ``directions`` has one row per axis in the file's space (NaN rows for
    component axes)."""
    try:
        dim = int(header["dimension"])
        sizes = [int(s) for s in header["sizes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageFormatError(f"{path}: NRRD header without valid 'dimension' and 'sizes' fields") from exc
    kinds = [str(k) for k in header.get("kinds", ["domain"] * dim)]
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64).reshape(dim, -1)
        spatial = [a for a in range(dim) if np.all(np.isfinite(directions[a]))]
    else:  # old style: 'spacings' on the axes of the sampling grid, axis-aligned
        spatial = [a for a in range(dim) if kinds[a] in _SPATIAL_KINDS]
        spacings = np.asarray(header.get("spacings", [np.nan] * dim), dtype=np.float64)
        directions = np.full((dim, max(len(spatial), 3)), np.nan)
        for n, a in enumerate(spatial):
            directions[a] = 0.0
            directions[a, n] = spacings[a] if np.isfinite(spacings[a]) and spacings[a] != 0 else 1.0
    components = [a for a in range(dim) if a not in spatial]
    return spatial, components, [sizes[a] for a in spatial], directions, kinds, sizes


def _thickness(header: dict, axis: int) -> float | None:
    values = header.get("thicknesses")
    if values is None:
        return None
    try:
        value = float(np.asarray(values, dtype=np.float64)[axis])
    except (IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def nrrd_thickness(path: str | os.PathLike) -> float | None:
    """The slice thickness (mm) of a NRRD file: ``thicknesses`` of its third spatial axis, or ``None``
    when the field is absent, ``nan`` or not positive. Reads the header only.

    :raises ImageFormatError: not a readable NRRD header (and :class:`FileNotFoundError`,
        :class:`gaussian_mri._optional.MissingDependencyError` without pynrrd).
    """
    path = Path(path)
    header = read_nrrd_header(path)
    spatial, _components, _sizes, _dirs, _kinds, _all = _layout(path, header)
    return _thickness(header, spatial[2]) if len(spatial) >= 3 else None


def read_nrrd(path: str | os.PathLike, *, scalar: bool = False) -> NrrdVolume:
    """Read a 3D NRRD volume (scalar, vector, tensor...) in RAS with its voxels as ``[k, j, i, ...]``.

    Trailing spatial axes of size 1 beyond the third (a 4D file holding one volume) are dropped.

    Parameters
    ----------
    path : path-like
        ``.nrrd`` or ``.nhdr`` (detached data read from the file it names).
    scalar : bool
        Refuse files with more than one value per voxel (checked before the data are read).

    Raises
    ------
    FileNotFoundError
        No such file (or a detached header whose data file is missing).
    ImageFormatError
        Not a NRRD file, truncated or damaged data, not three spatial axes (2D, 4D), or with
        ``scalar``: several components per voxel.
    """
    path = Path(path)
    header = read_nrrd_header(path)
    spatial, components, spatial_sizes, directions, kinds, sizes = _layout(path, header)
    n_values = int(np.prod([sizes[a] for a in components])) if components else 1
    if scalar and n_values != 1:
        raise ImageFormatError(
            f"{path} has {n_values} components per voxel (kinds {' '.join(kinds)}); a scalar 3D volume was expected"
        )
    dims = _check_ndim(path, tuple(spatial_sizes))
    kept, dropped = spatial[:3], spatial[3:]
    if directions.shape[1] < 3:
        raise ImageFormatError(f"{path}: its space has {directions.shape[1]} dimensions; a 3D space was expected")
    signs = np.asarray(_signs(header))
    affine = np.eye(4)
    for n, a in enumerate(kept):
        affine[:3, n] = signs * directions[a, :3]
    origin = header.get("space origin")
    if origin is not None:
        origin = np.asarray(origin, dtype=np.float64).ravel()[:3]
        affine[:3, 3] = signs * np.where(np.isfinite(origin), origin, 0.0)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageFormatError(f"{path}: the space directions of its three spatial axes are degenerate")
    frame = header.get("measurement frame")
    frame = np.eye(3) if frame is None else np.asarray(frame, dtype=np.float64)[:3, :3].T  # vectors = columns
    nrrd = _nrrd()
    try:
        data, _ = nrrd.read(str(path), index_order="C")
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated gzip, short raw data, unknown encoding...
        raise ImageFormatError(f"{path} could not be read as NRRD: {_first_line(exc)}") from exc
    data = np.asarray(data)
    dim = data.ndim
    order = [dim - 1 - a for a in [*reversed(kept), *components, *dropped]]  # NRRD axis -> C-order array axis
    data = data.transpose(order).reshape(tuple(reversed(dims)) + tuple(sizes[a] for a in components))
    return NrrdVolume(
        data=_native(np.ascontiguousarray(data)),
        affine=affine,
        kinds=[kinds[a] for a in components],
        measurement_frame=np.diag(signs) @ frame,
        slice_thickness=_thickness(header, kept[2]),
        header=header,
    )


def read_nrrd_image(path: str | os.PathLike) -> Image:
    """A scalar 3D NRRD file as an :class:`~gaussian_mri.image.Image` (RAS, ``slice_thickness`` from ``thicknesses``)."""
    volume = read_nrrd(path, scalar=True)
    data = volume.data.reshape(volume.data.shape[:3])
    return Image(data=data, affine=volume.affine, slice_thickness=volume.slice_thickness, meta={"path": str(path)})


def _check_path(path: Path) -> None:
    name = path.name.lower()
    if not name.endswith((".nrrd", ".nhdr")):
        raise ImageFormatError(f"{path}: a NRRD file name ends with .nrrd (or .nhdr for a detached header)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {path.parent}")


def _write(path: Path, data: np.ndarray, header: dict) -> None:
    """``nrrd.write`` of ``data`` (C order: ``[k, j, i, ...]`` reversed into NRRD axes) to ``path``, not atomic."""
    nrrd = _nrrd()
    with warnings.catch_warnings():
        # pynrrd dates its header comment with datetime.utcnow(), deprecated in Python 3.12
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"nrrd(\.|$)")
        warnings.filterwarnings("ignore", message=r".*utcnow", category=DeprecationWarning)
        nrrd.write(str(path), np.ascontiguousarray(data), header, index_order="C",
                   compression_level=_COMPRESSION_LEVEL)


def _header(affine: np.ndarray, space: str, kind: str | None, thickness: float | None) -> dict:
    if space not in _SPACE_NAMES:
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    signs = np.asarray(_SPACE_SIGNS[space.lower()])
    directions = (signs[:, None] * affine[:3, :3]).T  # one row per axis i, j, k
    header: dict = {
        "space": _SPACE_NAMES[space],
        "space origin": signs * affine[:3, 3],
        "encoding": "gzip",
    }
    if kind is None:
        header["kinds"] = ["domain"] * 3
        header["space directions"] = directions
        if thickness is not None:
            header["thicknesses"] = [np.nan, np.nan, float(thickness)]
    else:
        header["kinds"] = [kind, "domain", "domain", "domain"]
        header["space directions"] = np.vstack([np.full(3, np.nan), directions])
        # components are RAS: the measurement frame maps them into the file's space
        header["measurement frame"] = np.diag(signs)
        if thickness is not None:
            header["thicknesses"] = [np.nan, np.nan, np.nan, float(thickness)]
    return header


def write_nrrd(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    kind: str | None = None,
    slice_thickness: float | None = None,
    space: str = "LPS",
    atomic: bool = True,
) -> Path:
    """Write a 3D volume ``data[k, j, i]`` (``kind=None``) or ``data[k, j, i, c]`` (one component axis
    of NRRD ``kind``, e.g. ``"vector"``, components in RAS) with IJK-to-RAS ``affine``.

    ``space`` is the frame written in the header (``"LPS"`` as 3D Slicer and ITK write scalar volumes,
    or ``"RAS"``); the geometry, and a component frame via the measurement frame, are converted to it.
    ``.nhdr`` writes a detached header and a ``.raw.gz`` data file. ``atomic=False`` writes straight to
    ``path`` (for callers that already write into a temporary folder). Returns ``path``.
    """
    path = Path(path)
    _check_path(path)
    data = np.asarray(data)
    want = 3 if kind is None else 4
    if data.ndim != want:
        raise ValueError(f"data must have {want} axes ([k, j, i]{'' if kind is None else ', c'}), got shape {data.shape}")
    header = _header(affine, space, kind, slice_thickness)
    if not atomic:
        _write(path, data, header)
        return path
    with atomic_dir(path) as folder:  # header and data file renamed into place together (data first)
        _write(folder / path.name, data, header)
    return path


def write_nrrd_image(image: Image, path: str | os.PathLike, *, atomic: bool = True) -> Path:
    """Write a scalar :class:`~gaussian_mri.image.Image` as NRRD (LPS header, ``thicknesses`` when known)."""
    return write_nrrd(path, np.asarray(image.data), image.affine, slice_thickness=image.slice_thickness, atomic=atomic)


def write_vector_nrrd(path: str | os.PathLike, vectors: np.ndarray, affine: np.ndarray) -> Path:
    """Write a vector field ``vectors[k, j, i, c]`` (components in RAS) that 3D Slicer opens as a vector volume."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 4:
        raise ValueError(f"vectors must have shape (K, J, I, C), got {vectors.shape}")
    return write_nrrd(path, vectors, affine, kind="vector", space="RAS")


def write_tensor_nrrd(path: str | os.PathLike, tensor: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (K, J, I, 3, 3) symmetric tensor field (RAS components) as a Slicer-readable NRRD.

    Kind ``3D-masked-symmetric-matrix`` (7 values per voxel: mask, xx, xy, xz, yy, yz, zz; the mask
    is 1 where the tensor is not zero), float32, space RAS with an identity measurement frame, gzip
    encoding; 3D Slicer opens it as a diffusion-tensor volume.
    """
    t = np.asarray(tensor, dtype=np.float32)
    if t.ndim != 5 or t.shape[3:] != (3, 3):
        raise ValueError(f"tensor must have shape (K, J, I, 3, 3), got {t.shape}")
    mask = (np.abs(t).sum((3, 4)) > 0).astype(np.float32)
    comps = np.stack([mask, t[..., 0, 0], t[..., 0, 1], t[..., 0, 2], t[..., 1, 1], t[..., 1, 2], t[..., 2, 2]], -1)
    return write_nrrd(path, comps, affine, kind="3D-masked-symmetric-matrix", space="RAS")


def read_tensor_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A 3x3 tensor NRRD (kinds ``3D-masked-symmetric-matrix``, ``3D-symmetric-matrix`` or
    ``3D-matrix``) as ``(tensor (K, J, I, 3, 3) float32 in RAS, IJK-to-RAS affine)``.

    The measurement frame and the space are applied (``M T M^T``), as 3D Slicer does.

    :raises ImageFormatError: not a tensor NRRD, or unreadable.
    """
    volume = read_nrrd(path)
    kind = volume.kinds[0] if len(volume.kinds) == 1 else None
    values = np.asarray(volume.data, dtype=np.float64)
    if kind == "3D-masked-symmetric-matrix" and values.shape[3] == 7:
        m, xx, xy, xz, yy, yz, zz = (values[..., n] for n in range(7))
        t = np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)
        t = t * m[..., None, None]
    elif kind == "3D-symmetric-matrix" and values.shape[3] == 6:
        xx, xy, xz, yy, yz, zz = (values[..., n] for n in range(6))
        t = np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)
    elif kind == "3D-matrix" and values.shape[3] == 9:
        t = values.reshape(values.shape[:3] + (3, 3))
    else:
        raise ImageFormatError(
            f"{path} is not a 3x3 tensor volume: component kinds {volume.kinds or ['none']} with shape "
            f"{values.shape[3:]}; kind 3D-masked-symmetric-matrix, 3D-symmetric-matrix or 3D-matrix was expected"
        )
    frame = volume.measurement_frame
    if not np.allclose(frame, np.eye(3), atol=1e-12):
        t = np.einsum("ab,...bc,dc->...ad", frame, t, frame)
    return t.astype(np.float32), volume.affine
