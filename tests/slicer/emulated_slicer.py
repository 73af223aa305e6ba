"""Load the extension's modules the way 3D Slicer does, then run checks; prints one JSON report.

Run as a script by ``test_loading.py`` with Slicer's Python launcher (``PythonSlicer``), in a Python
where ``gaussian_mri`` is not installed::

    PythonSlicer emulated_slicer.py --report out.json --module-path DIR [--module-path DIR ...] \
        --check load [--check selftests] [--check devices] [--check svr-demo] [--check cine FILE ...]

The loader follows Slicer's scripted-module factory (Base/QTGUI/qSlicerScriptedLoadableModuleFactory.cxx,
CTK's ctkAbstractFileBasedFactory and ctkAbstractFactory, Base/QTGUI/qSlicerScriptedLoadableModule.cxx,
Base/QTCore/qSlicerScriptedUtils.cxx):

1. registration: every ``*.py`` directly inside each module path (not in sub-folders) is a module; when
   it is registered, its folder is *appended* to ``sys.path``;
2. instantiation, after all registrations: the file is executed as the Python module ``<name>``
   (``importlib.util.spec_from_file_location`` + ``exec_module``, stored in ``sys.modules``), the
   class ``<name>`` is instantiated with the module's ``parent`` and stored as
   ``slicer.modules.<name>Instance``; a module without ``<name>Widget`` has no panel;
3. a module whose dependencies are not all loaded is not loaded.

Only Qt/CTK and the Slicer application's own Python classes are stand-ins (``slicer_standins.py``);
MRML, ``slicer.util`` and the engine are real, and the engine runs as a real child process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILT_IN_MODULES = {"Sequences", "Volumes", "Segmentations", "SubjectHierarchy", "Data", "Colors"}


def registerModules(modulePaths: list[str]) -> dict[str, Path]:
    modules = {}
    for path in modulePaths:
        for entry in sorted(Path(path).iterdir()):
            if entry.is_file() and entry.suffix == ".py":
                modules.setdefault(entry.stem, entry)
                folder = str(entry.parent.absolute())
                if folder not in sys.path:
                    sys.path.append(folder)  # ctkFactoryScriptedItem::load(): appendPythonPaths
    return modules


def instantiateModules(files: dict[str, Path]) -> tuple[dict, dict]:
    import slicer
    from slicer_standins import ModuleParent

    instances, errors = {}, {}
    for name, path in sorted(files.items()):
        try:
            spec = importlib.util.spec_from_file_location(name, str(path))
            pyModule = importlib.util.module_from_spec(spec)
            sys.modules[name] = pyModule
            spec.loader.exec_module(pyModule)
            cls = getattr(pyModule, name, None)
            if cls is None:
                raise RuntimeError(f"class {name} was not found in file {path}")
            parent = ModuleParent(str(path))
            instance = cls(parent)
            setattr(slicer.modules, f"{name}Instance", instance)
            instances[name] = (pyModule, instance, parent)
        except Exception:
            errors[name] = traceback.format_exc()
    loaded = {}
    changed = True
    while changed:  # qSlicerModuleFactoryManager: a module loads once its dependencies loaded
        changed = False
        for name, (pyModule, instance, parent) in instances.items():
            if name in loaded or name in errors:
                continue
            missing = [d for d in parent.dependencies if d not in loaded and d not in BUILT_IN_MODULES]
            if not missing:
                loaded[name] = (pyModule, instance, parent)
                setattr(slicer.modules, name.lower(), instance)
                changed = True
    for name in instances:
        if name not in loaded and name not in errors:
            deps = instances[name][2].dependencies
            errors[name] = f"dependencies not loaded: {[d for d in deps if d not in loaded and d not in BUILT_IN_MODULES]}"
    return loaded, errors


def describe(loaded: dict) -> dict:
    out = {}
    for name, (pyModule, _instance, parent) in loaded.items():
        out[name] = {
            "file": str(Path(pyModule.__file__).resolve()),
            "title": parent.title,
            "hidden": bool(parent.hidden),
            "dependencies": list(parent.dependencies),
            "icon": getattr(parent.icon, "path", None),
            "widget": hasattr(pyModule, f"{name}Widget"),
            "logic": hasattr(pyModule, f"{name}Logic"),
            "test": hasattr(pyModule, f"{name}Test"),
        }
    return out


# ------------------------------------------------------------------------------------------ checks
def checkLoad(report: dict) -> None:
    import GaussianMRILib

    import gaussian_mri

    report["engine"] = str(Path(gaussian_mri.__file__).resolve().parent)
    report["engineRoot"] = str(GaussianMRILib.engineRootDirectory())
    report["libraries"] = {name: str(Path(sys.modules[name].__file__).resolve().parent)
                           for name in ("GaussianMRILib", "GaussianSVRLib", "GaussianCineLib") if name in sys.modules}
    for name in ("GaussianSVR", "GaussianCine"):
        logic = getattr(sys.modules[name], f"{name}Logic")()
        node = logic.getParameterNode()
        report.setdefault("parameterNodes", {})[name] = {
            "class": type(node).__name__, "device": node.device, "moduleName": node.parameterNode.GetAttribute("ModuleName"),
        }
    from GaussianMRILib.dependencies import missingPackages

    report["missingPackages"] = missingPackages()
    report["torchImportedInGui"] = "torch" in sys.modules


def checkSelfTests(report: dict) -> None:
    import slicer

    results = {}
    for name in ("GaussianMRI", "GaussianSVR", "GaussianCine"):
        start = time.monotonic()
        try:
            slicer.selfTests[name]()
            results[name] = {"passed": True, "seconds": round(time.monotonic() - start, 1)}
        except Exception:
            results[name] = {"passed": False, "error": traceback.format_exc()}
    report["selfTests"] = results


def checkDevices(report: dict) -> None:
    from GaussianMRILib.devices import DeviceDiscovery

    discovery = DeviceDiscovery().start()
    devices = discovery.wait(timeoutS=300)
    report["devices"] = {"choices": devices, "payload": discovery.payload, "error": discovery.error}
    report["torchImportedInGuiAfterDevices"] = "torch" in sys.modules


def checkSvrDemo(report: dict, logics: dict) -> None:
    import numpy as np

    import slicer
    from GaussianSVRLib import GaussianSVRLogic

    import gaussian_mri

    data = Path(gaussian_mri.__file__).resolve().parent / "data"
    stacks, masks = [], []
    for run in (1, 3, 5):
        stack = logics["Volumes"].AddArchetypeVolume(str(data / f"sub-01_run-{run}_T2w.nii.gz"), f"run-{run}", 0)
        mask = logics["Volumes"].AddArchetypeVolume(str(data / f"sub-01_run-{run}_T2w_mask.nii.gz"), f"run-{run} mask", 1)
        stacks.append(stack)
        masks.append(mask)
    progress = []
    out = GaussianSVRLogic().run(stacks=stacks, masks=masks, preset="fast", iterations=5, nGaussians=300, resolutionMm=2.0,
                                 device="cpu", timeoutS=900, onProgress=progress.append)
    volume = slicer.util.arrayFromVolume(out.volume)
    report["svrDemo"] = {"shape": list(volume.shape), "max": float(np.max(volume)), "finite": bool(np.isfinite(volume).all()),
                         "progressEvents": len(progress), "tableRows": out.table.GetNumberOfRows()}


def checkCine(report: dict, path: str) -> None:
    import numpy as np

    from GaussianCineLib import GaussianCineLogic, addCineSequence

    tiny = dict(steps=20, nGaussians=300, device="cpu", timeoutS=900)
    lines: list[str] = []
    logic = GaussianCineLogic(logCallback=lines.append)
    if path == "sequence":
        t, y, x = np.meshgrid(np.arange(6), np.arange(24), np.arange(24), indexing="ij")
        frames = (100.0 * (((x - 12) ** 2 + (y - 12) ** 2) < (6 + np.sin(t)) ** 2)).astype(np.float32)
        cine = addCineSequence(frames, np.diag([1.5, 1.5, 8.0, 1.0]), "emulated cine", frameMs=40.0)
        out = logic.run(cine=cine, maskType="uniform", acceleration=2, **tiny)
    else:
        out = logic.run(kspaceFile=path, **tiny)
    report.setdefault("cine", {})[Path(path).name] = {
        "frames": out.recon.GetNumberOfDataNodes(),
        "browser": out.browser is not None and out.browser.GetProxyNode(out.recon) is not None,
        "dims": list(out.recon.GetNthDataNode(0).GetImageData().GetDimensions()),
        "matplotlibWarnings": [line for line in lines if "matplotlib is not installed" in line],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--module-path", action="append", default=[])
    parser.add_argument("--check", action="append", default=[])
    parser.add_argument("--cine", action="append", default=[])
    parser.add_argument("--slicer-version", default="5.10")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report: dict = {"python": sys.version.split()[0], "sysPathBefore": list(sys.path)}
    status = 0
    try:
        sys.path.insert(0, str(HERE))  # the stand-ins only (this folder holds no engine code)
        import slicer_standins

        scene, app, logics = slicer_standins.install(tempfile.mkdtemp(prefix="emulated-slicer-"), args.slicer_version)
        sys.path.remove(str(HERE))
        report["engineImportableBeforeLoading"] = importlib.util.find_spec("gaussian_mri") is not None
        files = registerModules(args.module_path)
        loaded, errors = instantiateModules(files)
        report["modules"] = describe(loaded)
        report["errors"] = errors
        if errors:
            status = 1
        for check in args.check:
            if check == "load":
                checkLoad(report)
            elif check == "selftests":
                checkSelfTests(report)
            elif check == "devices":
                checkDevices(report)
            elif check == "svr-demo":
                checkSvrDemo(report, logics)
            elif check == "cine":
                for path in args.cine:
                    checkCine(report, path)
            else:
                raise ValueError(f"unknown check {check}")
    except Exception:
        report["exception"] = traceback.format_exc()
        status = 1
    Path(args.report).write_text(json.dumps(report, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
