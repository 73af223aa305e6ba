"""Real MRML scene for the Slicer-module tests (slicer-core, no Qt, no Slicer application).

Set-up (the same calls a headless script would make)::

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic(); app.SetMRMLScene(scene)
    for name, cls in (("Colors", vtkSlicerColorLogic), ("Volumes", vtkSlicerVolumesLogic), ...):
        logic = cls(); logic.SetMRMLApplicationLogic(app); logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
    app.SetColorLogic(colorLogic)
    slicer.mrmlScene = scene
    GaussianMRILib.useApplicationLogic(app)     # where slicer.modules.<x>.logic() does not exist

The module folders (GaussianSVR/, GaussianCine/) are put on ``sys.path`` as Slicer does for
scripted modules; their *Lib packages import no Qt, the <Module>.py files need the full application.

The logic tests run the real engine (``<python> -m gaussian_mri svr|cine``, fixture ``engine``) as a
child process, with tiny settings on the bundled cropped fetal stacks and a small simulated cine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import slicer
    import vtk  # noqa: F401

    _IMPORT_ERROR = None if hasattr(slicer, "vtkMRMLScene") else "the 'slicer' package found is not slicer-core"
except ImportError as exc:  # pragma: no cover - depends on the environment
    _IMPORT_ERROR = str(exc)

if _IMPORT_ERROR is not None:
    collect_ignore_glob = ["test_*_logic.py"]  # test_packaging.py needs no slicer-core

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FETAL_ANAT = SHARED / "data" / "fetal" / "mialsrtk-sub01" / "sub-01" / "anat"
HERE = Path(__file__).resolve().parent
for _module in ("GaussianMRI", "GaussianSVR", "GaussianCine"):
    if str(REPO / _module) not in sys.path:
        sys.path.insert(0, str(REPO / _module))


def pytest_report_header(config):
    if _IMPORT_ERROR is not None:
        return f"tests/slicer skipped: slicer-core (pip install slicer-core) cannot be imported: {_IMPORT_ERROR}"
    return None


def pytest_collection_modifyitems(config, items):  # pragma: no cover - only without slicer-core
    if _IMPORT_ERROR is None:
        return
    skip = pytest.mark.skip(reason=f"slicer-core cannot be imported ({_IMPORT_ERROR})")
    for item in items:
        if "tests/slicer" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


def _makeScene():
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}
    for name, cls in (
        ("Colors", slicer.vtkSlicerColorLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Sequences", slicer.vtkSlicerSequencesLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    app.SetColorLogic(logics["Colors"])
    return scene, app, logics


@pytest.fixture(scope="session")
def mrml():
    """``(scene, applicationLogic, {name: logic})``; ``slicer.mrmlScene`` is this scene."""
    from GaussianMRILib import useApplicationLogic

    scene, app, logics = _makeScene()
    slicer.mrmlScene = scene
    useApplicationLogic(app)
    yield scene, app, logics
    useApplicationLogic(None)


@pytest.fixture
def scene(mrml):
    """The session scene, cleared after each test (with its subject-hierarchy node, as in Slicer)."""
    scene = mrml[0]
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    yield scene
    scene.Clear(0)


@pytest.fixture
def volumesLogic(mrml):
    return mrml[2]["Volumes"]


@pytest.fixture
def fetalStackPaths() -> list[Path]:
    paths = sorted(FETAL_ANAT.glob("*_T2w.nii.gz"))
    if not paths:
        pytest.skip(f"fetal stacks not found in {FETAL_ANAT} (CI checks out ../shared beside the repo)")
    return paths


@pytest.fixture
def fetalStacks(scene, volumesLogic, fetalStackPaths):
    """The first three real fetal stacks loaded through vtkSlicerVolumesLogic.AddArchetypeVolume."""
    nodes = []
    for path in fetalStackPaths[:3]:
        name = path.name.replace(".nii.gz", "")
        node = volumesLogic.AddArchetypeVolume(str(path), name, 0)
        assert node is not None, f"could not load {path}"
        nodes.append(node)
    return nodes


@pytest.fixture(scope="session")
def engine() -> list[str]:
    """Command prefix of the real engine, as the modules start it (``<python> -m gaussian_mri``)."""
    return [sys.executable, "-m", "gaussian_mri"]


@pytest.fixture
def demoStackPaths() -> list[tuple[Path, Path]]:
    """``[(stack, mask)]``: the bundled cropped fetal stacks, runs 1 (axial), 3 (coronal), 5 (sagittal)."""
    data = REPO / "gaussian_mri" / "data"
    return [(data / f"sub-01_run-{r}_T2w.nii.gz", data / f"sub-01_run-{r}_T2w_mask.nii.gz") for r in (1, 3, 5)]


@pytest.fixture
def demoStacks(scene, volumesLogic, demoStackPaths):
    """``(stacks, masks)``: the three bundled stacks and their brain masks (labelmaps) loaded through
    vtkSlicerVolumesLogic.AddArchetypeVolume, as File > Add Data does."""
    stacks, masks = [], []
    for stackPath, maskPath in demoStackPaths:
        stack = volumesLogic.AddArchetypeVolume(str(stackPath), stackPath.name.replace(".nii.gz", ""), 0)
        mask = volumesLogic.AddArchetypeVolume(str(maskPath), maskPath.name.replace(".nii.gz", ""), 1)  # 1 = labelmap
        assert stack is not None and mask is not None, f"could not load {stackPath} / {maskPath}"
        stacks.append(stack)
        masks.append(mask)
    return stacks, masks


def _waitForFirstProgress(process, timeoutS: float = 120.0):
    """Poll a running :class:`EngineProcess` (as the widget's QTimer does) until its first progress event."""
    import time

    deadline = time.monotonic() + timeoutS
    while process.lastProgress is None:
        assert process.poll().value == "running", f"engine ended early: {process.errorMessage}"
        assert time.monotonic() < deadline, "no progress event from the engine"
        time.sleep(0.05)
    return process.lastProgress


def _assertProcessGone(process) -> None:
    """The engine child and its process group no longer exist."""
    import os

    proc = process._proc
    assert proc is not None and proc.poll() is not None, "engine process still running"
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing left in its process group (start_new_session=True)


@pytest.fixture(scope="session")
def waitForFirstProgress():
    return _waitForFirstProgress


@pytest.fixture(scope="session")
def assertProcessGone():
    return _assertProcessGone
