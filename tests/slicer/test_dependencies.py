"""Minimum versions declared once and enforced; what the modules install, through what."""

from __future__ import annotations

import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import slicer
from GaussianMRILib import dependencies as D

REPO = Path(__file__).resolve().parents[2]


def test_versions_compare_numerically():
    assert D.versionTuple("2.13.0+cpu") == (2, 13, 0)
    assert D._atLeast("2.13.0+cpu", "2.1") and D._atLeast("2.1", "2.1.0") and not D._atLeast("2.0.1", "2.1")
    assert not D._atLeast("5.8", "5.10") and D._atLeast("5.10", "5.10") and D._atLeast("6.0", "5.10")
    assert D.slicerVersionProblem(5, 10) is None and D.slicerVersionProblem(5, 12) is None
    assert "needs 3D Slicer 5.10 or newer (this is 5.8)" in D.slicerVersionProblem(5, 8)


def test_requirements_are_declared_once_for_pip_and_for_slicer():
    """The file the modules read is the one pip installed the engine from (pyproject dynamic dependencies)."""
    requirements = [str(r) for r in D.engineRequirements(REPO / "gaussian_mri" / "requirements.txt")]
    pipRequires = [r for r in metadata.requires("gaussian-mri") if "extra ==" not in r]
    assert requirements == pipRequires
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["dependencies"]' in pyproject and "torch>=" not in pyproject
    assert D.torchRequirement() == next(r.specifier for r in D.engineRequirements() if r.name == "torch")
    assert D.torchRequirement().startswith(">=")


def test_nothing_missing_in_the_test_environment_and_matplotlib_is_optional():
    assert D.missingRequirements() == []
    assert "matplotlib" in D.OPTIONAL_IN_SLICER
    assert all(r.name != "matplotlib" for r, _v in D.missingRequirements())


class PyTorchUtilsStandIn(types.ModuleType):
    """The PyTorch extension's module (SlicerPyTorch, PyTorchUtils/PyTorchUtils.py): ``PyTorchUtilsLogic().
    installTorch(askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
    torchvisionVersionRequirement=None)`` returns the torch module, or ``None`` when not installed."""

    def __init__(self, calls: list, succeed: bool = True):
        super().__init__("PyTorchUtils")
        outer = self

        class PyTorchUtilsLogic:
            def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                             torchvisionVersionRequirement=None):
                calls.append(("installTorch", askConfirmation, torchVersionRequirement))
                return types.SimpleNamespace(__version__="9.9") if outer.succeed else None

        self.succeed = succeed
        self.PyTorchUtilsLogic = PyTorchUtilsLogic


@pytest.fixture
def fakeInstalled(monkeypatch):
    """Pretend these versions are installed (None = absent); the rest as in this Python."""
    versions: dict = {}
    real = D.installedVersion
    monkeypatch.setattr(D, "installedVersion", lambda name: versions[name] if name in versions else real(name))
    return versions


def test_installer_asks_then_installs_torch_with_the_floor_and_the_rest_with_pip(monkeypatch, fakeInstalled):
    calls = []
    fakeInstalled.update({"torch": "2.0.1", "nibabel": None, "matplotlib": None})
    monkeypatch.setitem(sys.modules, "PyTorchUtils", PyTorchUtilsStandIn(calls))
    questions = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None, **k: questions.append(text) or True,
                        raising=False)

    def pipInstall(requirements, **kwargs):
        calls.append(("pip_install", list(requirements)))
        fakeInstalled.update({"torch": "2.13.0", "nibabel": "5.4.2"})  # what the installs did

    monkeypatch.setattr(slicer.util, "pip_install", pipInstall)
    assert D.missingPackages() == ["torch>=2.1 (2.0.1 installed)", "nibabel>=5.0"]
    D.installMissingPackages(interactive=True)
    assert len(questions) == 1 and "torch>=2.1 (2.0.1 installed), nibabel>=5.0" in questions[0]
    assert calls == [("installTorch", False, D.torchRequirement()), ("pip_install", ["nibabel>=5.0"])]
    assert D.missingPackages() == []


def test_installer_declined_or_failed_installs_nothing_and_says_so(monkeypatch, fakeInstalled):
    calls = []
    fakeInstalled.update({"h5py": None})
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: False, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda r, **k: calls.append(r))
    with pytest.raises(D.DependencyError, match="declined.*h5py>=3.8"):
        D.installMissingPackages(interactive=True)
    assert calls == []
    # confirmed, but pip could not install it: still missing -> restart/try again message
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: True, raising=False)
    with pytest.raises(D.DependencyError, match="still missing or too old: h5py>=3.8") as info:
        D.installMissingPackages(interactive=True)
    assert info.value.restartRequired and calls == [["h5py>=3.8"]]


def test_torch_without_the_pytorch_extension_uses_pip_with_the_same_floor(monkeypatch, fakeInstalled):
    calls = []
    fakeInstalled.update({"torch": None})
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails: extension not installed
    monkeypatch.setattr(slicer.util, "pip_install", lambda r, **k: calls.append(r) or fakeInstalled.update({"torch": "2.13"}))
    D.installMissingPackages(interactive=False)
    assert calls == ["torch" + D.torchRequirement()]


def test_slicer_version_is_enforced_inside_slicer(monkeypatch):
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=8), raising=False)
    with pytest.raises(D.DependencyError, match="5.10 or newer"):
        D.checkSlicerVersion()
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=10), raising=False)
    D.checkSlicerVersion()


def test_pynrrd_is_installed_by_its_pip_name_and_found_by_its_import_name(monkeypatch, fakeInstalled):
    """The NRRD reader (gaussian_mri.nrrd_io) needs pynrrd, whose import name is ``nrrd``; Slicer does not bundle it."""
    assert "pynrrd>=1.1" in [str(r) for r in D.engineRequirements()]
    assert D.IMPORT_NAMES["pynrrd"] == "nrrd"

    def noMetadata(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(D.importlib.metadata, "version", noMetadata)
    assert D.installedVersion("pynrrd") == ""  # importable as 'nrrd' (no metadata): present, version unknown
    calls = []
    fakeInstalled.update({"pynrrd": None})
    monkeypatch.setattr(slicer.util, "pip_install", lambda r, **k: calls.append(list(r)) or fakeInstalled.update({"pynrrd": "1.1.3"}))
    D.installMissingPackages(interactive=False)
    assert calls == [["pynrrd>=1.1"]]
