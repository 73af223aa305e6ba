"""BART ``.cfl``/``.hdr`` file pairs: reader, writer and layout helpers.

A BART array is stored as two files sharing a base name:

* ``name.hdr``: a text header ``# Dimensions`` followed by one line of integer sizes, the fastest
  (first) dimension first;
* ``name.cfl``: the raw data, complex64 little-endian, in Fortran (column-major) order.

BART gives meaning to the first 16 dimensions (``bart`` source, ``misc/mri.h``); the ones used here:

====  ==========  ==========================================
dim   BART name   GaussianMRI axis
====  ==========  ==========================================
0     READ        ``kx`` / image ``x`` (columns, readout)
1     PHS1        ``ky`` / image ``y`` (rows)
2     PHS2        (unused, 1)
3     COIL        ``coils``
4     MAPS        ESPIRiT map set
10    TIME        ``frames``
====  ==========  ==========================================

:func:`read_cfl` / :func:`write_cfl` work on NumPy arrays whose axis order *is* BART's order
(axis 0 = BART dim 0). :func:`to_bart_dims` / :func:`from_bart_dims` convert between the
package's C-order layouts (``(frames, coils, ky, kx)``, ``(coils, ny, nx)``, ...) and that order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BART_DIMS",
    "from_bart_dims",
    "read_cfl",
    "to_bart_dims",
    "write_cfl",
]

BART_DIMS = 16
"""Number of dimensions BART uses for its arrays (``DIMS`` in ``misc/mri.h``)."""

_AXIS_TO_BART = {"kx": 0, "x": 0, "ky": 1, "y": 1, "coils": 3, "maps": 4, "frames": 10}


def _base(path: str | os.PathLike[str]) -> Path:
    """Strip a ``.cfl``/``.hdr`` suffix so that either file name or the base name may be given."""
    p = Path(path)
    if p.suffix in (".cfl", ".hdr"):
        p = p.with_suffix("")
    return p


def write_cfl(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as a BART ``.cfl``/``.hdr`` pair.

    Parameters
    ----------
    path
        Base name (``"ksp"`` writes ``ksp.hdr`` and ``ksp.cfl``); a ``.cfl``/``.hdr`` suffix is stripped.
    array
        Array whose axes are already in BART order (axis 0 = BART dim 0 = readout). Real or complex;
        it is stored as complex64. At most 16 dimensions; a 0-d array is stored as a 1-element array.

    Raises
    ------
    TypeError
        If ``array`` is not a NumPy array.
    ValueError
        If ``array`` has more than 16 dimensions.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a numpy.ndarray, got {type(array).__name__}; use tensor.numpy()")
    if array.ndim > BART_DIMS:
        raise ValueError(f"array must have at most {BART_DIMS} dimensions for BART, got {array.ndim}")
    base = _base(path)
    dims = list(array.shape) if array.ndim else [1]
    with open(base.with_suffix(".hdr"), "w", encoding="ascii") as f:
        f.write("# Dimensions\n")
        f.write(" ".join(str(d) for d in dims) + "\n")
    data = np.asarray(array, dtype=np.complex64).reshape(dims)
    # Fortran order: BART dim 0 varies fastest in the file.
    data.ravel(order="F").astype("<c8", copy=False).tofile(base.with_suffix(".cfl"))


def read_cfl(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a BART ``.cfl``/``.hdr`` pair.

    Parameters
    ----------
    path
        Base name, or either file name.

    Returns
    -------
    numpy.ndarray
        complex64 array with axes in BART order. Trailing singleton dimensions listed in the header
        are dropped (BART pads the header to 16 sizes; ``bart ones 2 3 4 x`` reads back with shape
        ``(3, 4)``); leading and inner singletons are kept.

    Raises
    ------
    FileNotFoundError
        If either file is missing.
    ValueError
        If the header cannot be parsed or the data size does not match it.
    """
    base = _base(path)
    hdr = base.with_suffix(".hdr")
    cfl = base.with_suffix(".cfl")
    for p in (hdr, cfl):
        if not p.is_file():
            raise FileNotFoundError(
                f"BART file {p} does not exist; both {hdr.name} and {cfl.name} are needed"
            )
    dims: list[int] | None = None
    with open(hdr, encoding="ascii") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("# Dimensions") and i + 1 < len(lines):
            try:
                dims = [int(tok) for tok in lines[i + 1].split()]
            except ValueError as err:
                raise ValueError(f"cannot parse the dimensions line {lines[i + 1]!r} in {hdr}") from err
            break
    if not dims or any(d < 0 for d in dims):
        raise ValueError(f"{hdr} has no valid '# Dimensions' line; is it a BART header?")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    n = int(np.prod(dims))
    data = np.fromfile(cfl, dtype="<c8")
    if data.size != n:
        raise ValueError(
            f"{cfl} holds {data.size} complex values but its header {hdr.name} says {dims} ({n})"
        )
    return data.astype(np.complex64, copy=False).reshape(dims, order="F")


def to_bart_dims(array: np.ndarray, axes: Sequence[str]) -> np.ndarray:
    """Reorder a package-layout array into BART dimension order.

    Parameters
    ----------
    array
        Array in C order with named axes, e.g. k-space ``(frames, coils, ky, kx)``.
    axes
        Name of each axis of ``array``: any of ``"frames"``, ``"coils"``, ``"maps"``, ``"ky"``/``"y"``,
        ``"kx"``/``"x"``, each at most once.

    Returns
    -------
    numpy.ndarray
        View with ``max(bart_dim) + 1`` axes, axis ``d`` = BART dimension ``d`` (singletons inserted).

    Raises
    ------
    ValueError
        If ``axes`` does not name each axis of ``array`` exactly once with a known name.
    """
    axes = list(axes)
    if len(axes) != array.ndim:
        raise ValueError(f"axes must name each of the {array.ndim} axes of array, got {axes}")
    unknown = [a for a in axes if a not in _AXIS_TO_BART]
    if unknown:
        raise ValueError(f"axes contains unknown names {unknown}; use {sorted(_AXIS_TO_BART)}")
    bart = [_AXIS_TO_BART[a] for a in axes]
    if len(set(bart)) != len(bart):
        raise ValueError(f"axes maps two axes to the same BART dimension: {axes}")
    order = np.argsort(bart)
    moved = np.transpose(array, order)
    shape = [1] * (max(bart) + 1)
    for ax in order:
        shape[_AXIS_TO_BART[axes[ax]]] = array.shape[ax]
    return moved.reshape(shape)


def from_bart_dims(array: np.ndarray, axes: Sequence[str]) -> np.ndarray:
    """Inverse of :func:`to_bart_dims`: pick the named BART dimensions, in the order of ``axes``.

    Parameters
    ----------
    array
        Array in BART order (as returned by :func:`read_cfl`).
    axes
        Names of the wanted output axes, e.g. ``("coils", "y", "x")``.

    Returns
    -------
    numpy.ndarray
        Array with ``len(axes)`` axes in the given order.

    Raises
    ------
    ValueError
        If a BART dimension that is not named in ``axes`` has a size other than 1.
    """
    axes = list(axes)
    unknown = [a for a in axes if a not in _AXIS_TO_BART]
    if unknown:
        raise ValueError(f"axes contains unknown names {unknown}; use {sorted(_AXIS_TO_BART)}")
    bart = [_AXIS_TO_BART[a] for a in axes]
    full = array.reshape(list(array.shape) + [1] * (BART_DIMS - array.ndim))
    others = [d for d in range(BART_DIMS) if d not in bart]
    bad = {d: full.shape[d] for d in others if full.shape[d] != 1}
    if bad:
        raise ValueError(f"BART array has non-singleton dimensions {bad} that are not among axes {axes}")
    return np.transpose(full, bart + others).reshape([full.shape[d] for d in bart])
