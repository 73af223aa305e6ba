"""Python packages the engine needs inside Slicer, the minimum versions, and their installation.

Declared once each:

* the engine's requirements (torch and the rest, with their floors): ``gaussian_mri/requirements.txt``,
  shipped with the engine and also read by ``pyproject.toml``;
* the minimum Slicer version: :data:`MINIMUM_SLICER_VERSION` below (the extension's CMakeLists reads
  it from this file). Slicer 5.10 is the first release whose Python (3.12) runs the engine (it needs
  Python >= 3.10; Slicer 5.8 bundles 3.9), and the parameter-node binding of ``ctkDoubleSpinBox`` used
  by the panels exists since 5.8.

Slicer already bundles numpy, scipy, SimpleITK and pydicom. On first use the modules install what is
missing or older than its floor, after asking: torch through the PyTorch extension (``PyTorchUtils``,
which picks the wheel matching the GPU driver) with the same floor, the others (nibabel, h5py,
ismrmrd, pynrrd) with ``slicer.util.pip_install``. matplotlib is not installed: it only draws the PNG previews
of the command line, which the engine skips with a warning when it is missing.
Nothing here imports torch or the engine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .engine import engineRootDirectory

__all__ = [
    "MINIMUM_SLICER_VERSION",
    "OPTIONAL_IN_SLICER",
    "Requirement",
    "DependencyError",
    "engineRequirements",
    "torchRequirement",
    "missingRequirements",
    "missingPackages",
    "installMissingPackages",
    "slicerVersionProblem",
    "checkSlicerVersion",
    "versionTuple",
]

#: Oldest Slicer release the modules support (major.minor).
MINIMUM_SLICER_VERSION = "5.10"

#: Import name of the requirements whose distribution (pip) name differs.
IMPORT_NAMES = {"pynrrd": "nrrd"}

#: Engine requirements the modules do not install, and why.
OPTIONAL_IN_SLICER = {
    "matplotlib": "only for the PNG previews of the command line; the engine skips them when it is missing",
}


class DependencyError(RuntimeError):
    """A required package is missing or too old, or Slicer is too old, and nothing was installed."""

    def __init__(self, message: str, restartRequired: bool = False):
        super().__init__(message)
        self.restartRequired = restartRequired


@dataclass(frozen=True)
class Requirement:
    """One line of ``requirements.txt``: distribution name and its floor (the import name is the same,
    except for those in :data:`IMPORT_NAMES`)."""

    name: str
    minimum: str = ""

    @property
    def specifier(self) -> str:
        return f">={self.minimum}" if self.minimum else ""

    def __str__(self) -> str:
        return self.name + self.specifier


def versionTuple(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``; ``"5.10"`` -> ``(5, 10)`` (leading numeric release only)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(version))
    if not match:
        raise ValueError(f"Not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _atLeast(version: str, minimum: str) -> bool:
    have, need = versionTuple(version), versionTuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def requirementsFile() -> Path:
    return engineRootDirectory() / "gaussian_mri" / "requirements.txt"


def engineRequirements(path: str | Path | None = None) -> list[Requirement]:
    """The engine's requirements (``gaussian_mri/requirements.txt``)."""
    path = Path(path) if path is not None else requirementsFile()
    requirements = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][0-9.]*))?", line)
        if not match:
            raise ValueError(f"{path}: unsupported requirement line {raw!r} (only 'name' or 'name>=X.Y')")
        requirements.append(Requirement(match.group(1), match.group(2) or ""))
    return requirements


def torchRequirement() -> str:
    """The torch version requirement (``">=2.1"``), as given to ``PyTorchUtils.installTorch``."""
    for requirement in engineRequirements():
        if requirement.name == "torch":
            return requirement.specifier
    raise ValueError("torch is not listed in the engine's requirements.txt")


def installedVersion(name: str) -> str | None:
    """Version of an installed distribution, ``""`` when importable without metadata, ``None`` when absent.

    Looked up without importing the package (importing torch in the GUI process is avoided).
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return "" if importlib.util.find_spec(IMPORT_NAMES.get(name, name)) is not None else None
    except (ImportError, ValueError):
        return None


def missingRequirements(includeOptional: bool = False) -> list[tuple[Requirement, str | None]]:
    """``[(requirement, installed version or None)]`` for each requirement not met in this Python."""
    out = []
    for requirement in engineRequirements():
        if requirement.name in OPTIONAL_IN_SLICER and not includeOptional:
            continue
        version = installedVersion(requirement.name)
        if version is None:
            out.append((requirement, None))
        elif version and requirement.minimum and not _atLeast(version, requirement.minimum):
            out.append((requirement, version))
    return out


def missingPackages() -> list[str]:
    """Human-readable list of what must be installed: ``["torch>=2.1", "nibabel>=5.0 (1.0 installed)"]``."""
    return [str(r) + (f" ({v} installed)" if v else "") for r, v in missingRequirements()]


def installMissingPackages(interactive: bool = True) -> None:
    """Install what :func:`missingRequirements` reports (Slicer application only).

    :raises DependencyError: when the user declines or the installation fails.
    """
    missing = missingRequirements()
    if not missing:
        return
    import slicer

    listed = ", ".join(missingPackages())
    if interactive and not slicer.util.confirmOkCancelDisplay(
        "GaussianMRI needs these Python packages, which are missing or too old: " + listed
        + ".\n\nInstall them now? (PyTorch is a download of up to a few GB; this can take several minutes)",
        "GaussianMRI: install dependencies",
    ):
        raise DependencyError("Missing Python packages (installation declined): " + listed)
    names = [r.name for r, _v in missing]
    if "torch" in names:
        _installTorch(torchRequirement())
    others = [str(r) for r, _v in missing if r.name != "torch"]
    if others:
        logging.info("GaussianMRI: pip install %s", " ".join(others))
        slicer.util.pip_install(others)
    still = missingPackages()
    if still:
        raise DependencyError("Installation finished but these packages are still missing or too old: "
                              + ", ".join(still) + ". Restart Slicer and try again.", restartRequired=True)


def _installTorch(requirement: str) -> None:
    import slicer

    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS PyTorch)
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)
        if torch is None:
            raise DependencyError("PyTorch could not be installed by the PyTorch extension (see its module panel)")
        return
    logging.info("GaussianMRI: PyTorch extension not found; pip install torch%s", requirement)
    slicer.util.pip_install("torch" + requirement)


def slicerVersionProblem(major: int, minor: int) -> str | None:
    """A message when Slicer ``major.minor`` is older than :data:`MINIMUM_SLICER_VERSION`, else ``None``."""
    if _atLeast(f"{int(major)}.{int(minor)}", MINIMUM_SLICER_VERSION):
        return None
    return (f"GaussianMRI needs 3D Slicer {MINIMUM_SLICER_VERSION} or newer (this is {major}.{minor}): "
            "install a current Slicer release.")


def checkSlicerVersion() -> None:
    """Raise :class:`DependencyError` inside a Slicer that is too old (no-op outside the application)."""
    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return
    problem = slicerVersionProblem(app.majorVersion, app.minorVersion)
    if problem:
        raise DependencyError(problem)
