"""Optional packages: imported only where needed, with a clear message when one is missing.

The engine runs inside 3D Slicer's Python, which bundles numpy, scipy, pydicom, SimpleITK but not
matplotlib, h5py or ismrmrd (the Slicer modules install torch, nibabel, h5py and ismrmrd). So:

* :func:`require` imports a package that the given input needs (``.h5`` k-space needs h5py and
  ismrmrd, DICOM needs pydicom, ...) or raises :class:`MissingDependencyError` naming what to install;
* :func:`pyplot` gives ``matplotlib.pyplot`` on the Agg backend (or :class:`MissingDependencyError`);
* :func:`write_optional_plot` writes a PNG that is nice to have, and only logs a warning when
  matplotlib is missing, so a finished reconstruction never fails for want of a picture.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

__all__ = ["MissingDependencyError", "require", "pyplot", "write_optional_plot"]


class MissingDependencyError(ImportError):
    """A Python package needed for this input or output is not installed (``package``: its pip name)."""

    def __init__(self, message: str, *, package: str) -> None:
        super().__init__(message, name=package)
        self.package = package


def require(module: str, purpose: str, package: str | None = None) -> ModuleType:
    """``import module``, or :class:`MissingDependencyError`: "<purpose> needs <package>: pip install <package>".

    ``package`` is the pip name (default: the top-level module name).
    """
    package = package or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{package}', which is not installed: pip install {package} ({exc})",
            package=package,
        ) from exc


def pyplot(purpose: str = "plotting") -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; :class:`MissingDependencyError` without it."""
    matplotlib = require("matplotlib", purpose)
    try:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # a broken install (a missing matplotlib dependency)
        raise MissingDependencyError(
            f"{purpose} needs a working matplotlib: pip install matplotlib ({exc})", package="matplotlib"
        ) from exc
    return plt


def write_optional_plot(
    path: str | os.PathLike[str], write: Callable[[Path], object], log: logging.Logger
) -> Path | None:
    """Write an optional PNG atomically (``write(tmp)``, see :func:`gaussian_mri._atomic.atomic_write`).

    Returns the path, or ``None`` after one warning when matplotlib is not installed (``write``
    should get pyplot from :func:`pyplot`). Other errors propagate.
    """
    from ._atomic import atomic_write

    try:
        return atomic_write(path, write)
    except MissingDependencyError as exc:
        if exc.package != "matplotlib":
            raise
        log.warning("matplotlib is not installed: %s not written; pip install matplotlib to get it", path)
        return None
