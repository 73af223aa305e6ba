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

The module folders (GaussianMRI/, GaussianSVR/, GaussianCine/) are put on ``sys.path`` as Slicer does
for scripted modules; their *Lib packages import no Qt. The <Module>.py files need the application:
``test_loading.py`` loads them in a separate Python with stand-ins for Qt (``emulated_slicer.py``).

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

    if not hasattr(slicer, "vtkMRMLScene"):
        raise ImportError("the 'slicer' package found is not slicer-core (uninstall the unrelated PyPI package 'slicer')")
except ImportError as exc:  # a required test dependency: fail loudly, never skip
    raise ImportError(f"tests/slicer need slicer-core (pip install -e '.[test]'): {exc}") from exc

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for _module in ("GaussianMRI", "GaussianSVR", "GaussianCine"):
    if str(REPO / _module) not in sys.path:
        sys.path.insert(0, str(REPO / _module))


@pytest.fixture(scope="session")
def mrml():
    """``(scene, applicationLogic, {name: logic})``; ``slicer.mrmlScene`` is this scene."""
    from GaussianMRILib import useApplicationLogic

    from slicer_standins import makeScene  # the set-up Slicer does (shared with the emulated loader)

    scene, app, logics = makeScene()
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
def fetalStackPaths(tmp_path) -> list[Path]:
    """The bundled stacks (runs 1-3) as a BIDS dataset has them: no thickness in the NIfTI header, a JSON
    sidecar with ``SliceThickness`` (3 mm, the slice spacing is 3.3 mm)."""
    import json

    import nibabel as nib

    folder = tmp_path / "bids" / "sub-01" / "anat"
    folder.mkdir(parents=True)
    paths = []
    for run in (1, 2, 3):
        image = nib.load(REPO / "gaussian_mri" / "data" / f"sub-01_run-{run}_T2w.nii.gz")
        image.header["descrip"] = b""
        path = folder / f"sub-01_run-{run}_T2w.nii.gz"
        nib.save(image, path)
        (folder / f"sub-01_run-{run}_T2w.json").write_text(json.dumps({"SliceThickness": 3.0, "MagneticFieldStrength": 1.5}))
        paths.append(path)
    return paths


@pytest.fixture
def fetalStacks(scene, volumesLogic, fetalStackPaths):
    """The three BIDS-style stacks of ``fetalStackPaths`` loaded through vtkSlicerVolumesLogic.AddArchetypeVolume."""
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
