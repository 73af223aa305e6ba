"""Python packages the engine needs inside Slicer, and how to install them with the user's consent.

torch comes from the PyTorch extension (``PyTorchUtils``, picks the wheel matching the GPU driver)
when it is installed, else from ``slicer.util.pip_install``; the other packages (nibabel...) from
``pip_install``. Nothing is installed without a confirmation (``interactive=True``) or an explicit
``confirm=False`` from a script.
"""

from __future__ import annotations

import importlib.util
import logging

__all__ = ["REQUIRED_PACKAGES", "missingPackages", "installMissingPackages", "DependencyError"]

# import name -> pip requirement
REQUIRED_PACKAGES = {"torch": "torch", "numpy": "numpy", "nibabel": "nibabel>=5.0", "SimpleITK": "SimpleITK"}


class DependencyError(RuntimeError):
    """A required package is missing and was not installed."""

    def __init__(self, message: str, restartRequired: bool = False):
        super().__init__(message)
        self.restartRequired = restartRequired


def missingPackages() -> list[str]:
    """Import names of required packages that are not installed (without importing them)."""
    return [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]


def installMissingPackages(interactive: bool = True) -> None:
    """Install what :func:`missingPackages` reports (Slicer application only).

    :raises DependencyError: when the user declines or the installation fails.
    """
    missing = missingPackages()
    if not missing:
        return
    import slicer

    if interactive and not slicer.util.confirmOkCancelDisplay(
        "GaussianMRI needs these Python packages, which are not installed yet: "
        + ", ".join(missing)
        + ".\n\nInstall them now? (download of up to a few GB for PyTorch; this can take several minutes)",
        "GaussianMRI: install dependencies",
    ):
        raise DependencyError("Missing Python packages (installation declined): " + ", ".join(missing))
    if "torch" in missing:
        _installTorch()
        missing.remove("torch")
    requirements = [REQUIRED_PACKAGES[name] for name in missing]
    if requirements:
        logging.info("GaussianMRI: pip install %s", " ".join(requirements))
        slicer.util.pip_install(requirements)
    still = missingPackages()
    if still:
        raise DependencyError("Installation finished but these packages are still missing: " + ", ".join(still),
                              restartRequired=True)


def _installTorch() -> None:
    import slicer

    try:
        import PyTorchUtils  # the PyTorch extension (declared in EXTENSION_DEPENDS)
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        if torch is None:
            raise DependencyError("PyTorch could not be installed by the PyTorch extension (see its module panel)")
        return
    logging.info("GaussianMRI: PyTorch extension not found; pip install torch")
    slicer.util.pip_install("torch")
