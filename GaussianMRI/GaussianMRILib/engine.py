"""Where the bundled engine (Python package ``gaussian_mri``) is, and how to start it.

The engine ships with the extension in two layouts:

* installed extension (and a Slicer build tree): the CMake build copies ``gaussian_mri/`` into the
  flat ``qt-scripted-modules`` folder next to ``GaussianMRILib/``; Slicer already has that folder on
  ``sys.path`` (the scripted-module factory appends each module's folder);
* source checkout (Additional module paths = the module folders of a clone): ``gaussian_mri/`` is at
  the root of the checkout, two folders above this file, which Slicer does not put on ``sys.path``.

:func:`ensureEngineImportable` (called when ``GaussianMRILib`` is imported) puts the bundled copy
first on ``sys.path`` so that ``import gaussian_mri`` works in the Slicer console, and the engine
process gets the same folder on its ``PYTHONPATH``. A ``gaussian_mri`` that was pip-installed into
Slicer's Python is used only when no bundled copy exists. Nothing here imports the engine (or torch).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EngineNotFound", "engineRootDirectory", "ensureEngineImportable", "pythonExecutable", "engineEnvironment",
           "engineCommandPrefix"]

_HERE = Path(__file__).resolve().parent


class EngineNotFound(RuntimeError):
    """No copy of the engine was found next to the modules nor installed in this Python."""


def _bundledRoots() -> list[Path]:
    # installed layout: <qt-scripted-modules>/GaussianMRILib/engine.py -> <qt-scripted-modules>/gaussian_mri
    # source checkout:  <checkout>/GaussianMRI/GaussianMRILib/engine.py -> <checkout>/gaussian_mri
    return [_HERE.parent, _HERE.parent.parent]


def engineRootDirectory() -> Path:
    """The folder that contains the ``gaussian_mri`` package used by the modules.

    The copy bundled with the modules wins over one installed in Python, so that the module code
    and the engine always come from the same release.
    """
    for root in _bundledRoots():
        if (root / "gaussian_mri" / "__init__.py").is_file():
            return root
    spec = importlib.util.find_spec("gaussian_mri")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    raise EngineNotFound(
        "The GaussianMRI engine (Python package 'gaussian_mri') was not found next to the modules "
        f"({_HERE.parent}) nor in this Python. Reinstall the GaussianMRI extension, or, from a source "
        "checkout, add its GaussianMRI/, GaussianSVR/ and GaussianCine/ folders to the module paths."
    )


def ensureEngineImportable() -> Path:
    """Make ``import gaussian_mri`` resolve to :func:`engineRootDirectory` in this process."""
    root = engineRootDirectory()
    loaded = sys.modules.get("gaussian_mri")
    if loaded is not None and getattr(loaded, "__file__", None):
        loadedRoot = Path(loaded.__file__).resolve().parent.parent
        if loadedRoot != root:
            logging.warning("GaussianMRI: the engine was already imported from %s; the modules run the copy in %s",
                            loadedRoot, root)
        return root
    spec = importlib.util.find_spec("gaussian_mri")
    current = Path(spec.origin).resolve().parent.parent if spec is not None and spec.origin else None
    if current != root:
        text = str(root)
        if text in sys.path:
            sys.path.remove(text)
        sys.path.insert(0, text)
        importlib.invalidate_caches()
    return root


def pythonExecutable() -> str:
    """The interpreter for the engine: ``PythonSlicer`` inside the Slicer application, else this one.

    ``PythonSlicer`` is Slicer's Python with Slicer's environment (on ``PATH`` inside Slicer).
    """
    import shutil

    try:
        import slicer

        inSlicer = getattr(slicer, "app", None) is not None
    except ImportError:
        inSlicer = False
    if inSlicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def engineCommandPrefix(prefix: Sequence[str] | None = None) -> list[str]:
    """``prefix`` if given, else ``[pythonExecutable(), "-m", "gaussian_mri"]``."""
    return list(prefix) if prefix else [pythonExecutable(), "-m", "gaussian_mri"]


def engineEnvironment(extraPythonPath: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """Environment for the engine process: the engine folder first on ``PYTHONPATH``, unbuffered output."""
    env = dict(os.environ)
    paths = [str(p) for p in extraPythonPath] + [str(engineRootDirectory())]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env
