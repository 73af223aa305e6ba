"""The modules load and run the three ways a user gets them, in a Python where gaussian_mri is NOT installed.

Each test starts ``emulated_slicer.py`` (Slicer's scripted-module loader, see its docstring) through a
``PythonSlicer`` launcher, as Slicer starts its Python, and reads its JSON report:

a. source checkout: module paths = ``GaussianMRI/``, ``GaussianSVR/``, ``GaussianCine/`` of this clone
   (README, "From a source checkout"); the test venv's Python runs with ``-S`` and its site-packages
   appended, so the editable install of the engine (a ``.pth`` hook) is not there;
b. installed extension: the files named by the CMake lists (parsed from the CMakeLists, see
   ``cmakeLayout``) copied into one flat ``qt-scripted-modules`` folder as the extension build lays
   them out; same Python as (a);
c. stock Slicer packages only: a virtual environment with exactly the Python packages Slicer 5.10
   bundles (``SLICER_5_10_PACKAGES``) plus what the modules' installer installs
   (``GaussianMRILib.dependencies.missingRequirements`` evaluated in that environment; torch, which
   the PyTorch extension installs in Slicer, is the test venv's CPU build); runs a short SVR on the
   bundled demo stacks and short cines from an ISMRMRD ``.h5``, a MATLAB v7.3 ``.mat`` and a scene
   Sequence through the real engine process.

Only the Qt/CTK widgets and the Slicer application's own Python classes are stand-ins
(``slicer_standins.py``); MRML is slicer-core.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODULE_FOLDERS = ("GaussianMRI", "GaussianSVR", "GaussianCine")

#: Python packages of the Slicer 5.10.0 application, from its SuperBuild
#: (SuperBuild/External_python-*.cmake: numpy, scipy, the dicom, requests, pythonqt and extension-manager
#: requirement files; SimpleITK from External_SimpleITK.cmake, tag slicer-v2.5.2). Slicer 5.10 bundles
#: Python 3.12; this machine's CPU torch wheel is for the running Python, so the environment uses it.
SLICER_5_10_PACKAGES = [
    "numpy==2.0.2", "scipy==1.13.1", "SimpleITK==2.5.2",
    "pydicom==2.4.4", "six==1.17.0", "pillow==11.2.1", "retrying==1.3.4", "dicomweb-client==0.60.0",
    "certifi==2025.4.26", "idna==3.10", "charset-normalizer==3.4.2", "urllib3==2.4.0", "requests==2.32.3",
    "packaging==25.0", "pyparsing==3.2.3",
    "chardet==5.2.0", "GitPython==3.1.44", "gitdb==4.0.12", "smmap==5.0.2", "python-dateutil==2.9.0.post0",
    "typing_extensions==4.14.0",
]


# ------------------------------------------------------------------------------------------ helpers
def _launcher(folder: Path, python: str, hideSitePackages: bool) -> Path:
    """A ``PythonSlicer`` on ``PATH``: the given Python; with ``hideSitePackages`` it runs with ``-S`` and
    its site-packages appended to ``PYTHONPATH`` (no ``.pth`` hooks, so no editable engine install)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "PythonSlicer"
    if hideSitePackages:
        site = sysconfig.get_paths()["purelib"]
        body = f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}" exec "{python}" -S "$@"\n'
    else:
        body = f'exec "{python}" "$@"\n'
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def runEmulatedSlicer(tmp_path: Path, modulePaths, checks, python: str = sys.executable, hideSitePackages: bool = True,
                      cines=(), timeout: float = 1500) -> dict:
    bin_ = tmp_path / "bin"
    launcher = _launcher(bin_, python, hideSitePackages)
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(launcher), str(HERE / "emulated_slicer.py"), "--report", str(report)]
    cmd += [a for p in modulePaths for a in ("--module-path", str(p))]
    cmd += [a for c in checks for a in ("--check", c)]
    cmd += [a for c in cines for a in ("--cine", str(c))]
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    assert report.is_file(), f"no report; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    data = json.loads(report.read_text())
    data["_returncode"], data["_stderr"] = proc.returncode, proc.stderr[-5000:]
    return data


def assertLoaded(report: dict, engineFolder: Path, moduleFolders: dict[str, Path]) -> None:
    assert "exception" not in report, report["exception"]
    assert report["errors"] == {}, report["errors"]
    assert report["engineImportableBeforeLoading"] is False, "this Python must not have gaussian_mri installed"
    modules = report["modules"]
    assert sorted(modules) == ["GaussianCine", "GaussianMRI", "GaussianSVR"]
    assert modules["GaussianMRI"]["hidden"] is True and modules["GaussianMRI"]["dependencies"] == []
    for name in ("GaussianSVR", "GaussianCine"):
        info = modules[name]
        assert info["hidden"] is False and "GaussianMRI" in info["dependencies"]
        assert not {"GaussianSVR", "GaussianCine"} & set(info["dependencies"]), "visible modules must not depend on each other"
        assert info["widget"] and info["logic"] and info["test"], info
        assert info["icon"] and Path(info["icon"]).is_file()
    for name, folder in moduleFolders.items():
        assert Path(modules[name]["file"]).parent == folder.resolve()
    assert Path(report["engine"]) == (engineFolder / "gaussian_mri").resolve()
    for name in ("GaussianMRI", "GaussianSVR", "GaussianCine"):
        assert report["libraries"][f"{name}Lib"] == str((moduleFolders[name] / f"{name}Lib").resolve())
    assert report["parameterNodes"]["GaussianSVR"] == {"class": "GaussianSVRParameterNode", "device": "auto",
                                                       "moduleName": "GaussianSVR"}
    assert report["parameterNodes"]["GaussianCine"]["moduleName"] == "GaussianCine"
    assert report["torchImportedInGui"] is False


def assertSelfTestsPassed(report: dict) -> None:
    for name in ("GaussianMRI", "GaussianSVR", "GaussianCine"):
        result = report["selfTests"][name]
        assert result["passed"], f"{name} self-test failed:\n{result.get('error')}"


# ------------------------------------------------------------------------------------------ a
def test_a_source_checkout_loads_and_self_tests_pass(tmp_path):
    report = runEmulatedSlicer(tmp_path, [REPO / m for m in MODULE_FOLDERS], ["load", "selftests", "devices"])
    assertLoaded(report, REPO, {m: REPO / m for m in MODULE_FOLDERS})
    assertSelfTestsPassed(report)
    devices = report["devices"]
    assert devices["error"] == "" and devices["payload"]["torch"]
    values = [v for v, _label in devices["choices"]]
    assert values[0] == "auto" and values[-1] == "cpu"
    assert report["torchImportedInGuiAfterDevices"] is False, "device discovery must run in the engine process"
    assert report["_returncode"] == 0


def test_bundled_engine_wins_over_another_installed_copy(tmp_path):
    """A different ``gaussian_mri`` earlier on sys.path (e.g. an old pip install in Slicer's Python) does
    not replace the engine shipped with the modules, in the GUI process nor in the engine process."""
    fake = tmp_path / "site" / "gaussian_mri"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("RELEASE = 'an older install'\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'GaussianMRI')!r})
        import gaussian_mri as before
        print(before.__file__)
        del sys.modules['gaussian_mri']
        import GaussianMRILib
        import gaussian_mri
        from GaussianMRILib.engine import engineEnvironment
        print(gaussian_mri.__file__)
        print(engineEnvironment()['PYTHONPATH'].split(':')[0])
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, childPath = out.stdout.split()
    assert Path(before) == fake / "__init__.py"
    assert Path(after) == REPO / "gaussian_mri" / "__init__.py"
    assert Path(childPath) == REPO


def test_a_without_the_hidden_module_nothing_loads(tmp_path):
    """Slicer does not load a module whose dependency is missing: the visible modules need GaussianMRI."""
    report = runEmulatedSlicer(tmp_path, [REPO / "GaussianSVR", REPO / "GaussianCine"], [])
    assert set(report["errors"]) == {"GaussianSVR", "GaussianCine"}
    assert report["modules"] == {}


# ------------------------------------------------------------------------------------------ b
def _cmakeSet(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    if not match:
        return []
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def cmakeLayout() -> dict[str, Path]:
    """``{path in qt-scripted-modules: source file}`` for every file the extension build installs there.

    Parsed from the CMakeLists: the modules of ``add_subdirectory``; per module ``MODULE_PYTHON_SCRIPTS``
    and ``MODULE_PYTHON_RESOURCES`` (relative paths keep their relative path under the scripted-modules
    folder: ctkMacroCompilePythonScript), ``GAUSSIAN_MRI_ENGINE_SCRIPTS`` (configured into the module's
    build folder, so they keep their path relative to it) and ``GAUSSIAN_MRI_ENGINE_DATA`` (configured
    straight into the scripted-modules folder).
    """
    top = (REPO / "CMakeLists.txt").read_text()
    modules = re.findall(r"^add_subdirectory\((\w+)\)", top, re.M)
    layout: dict[str, Path] = {}
    for module in modules:
        folder = REPO / module
        text = (folder / "CMakeLists.txt").read_text()
        name = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
        assert name == module
        expand = lambda item: item.replace("${MODULE_NAME}", name)  # noqa: E731
        for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
            for item in map(expand, _cmakeSet(text, variable)):
                assert item not in layout, f"{item} installed twice"
                layout[item] = folder / item
        for variable in ("GAUSSIAN_MRI_ENGINE_SCRIPTS", "GAUSSIAN_MRI_ENGINE_DATA"):
            for item in _cmakeSet(text, variable):
                assert item not in layout, f"{item} installed twice"
                layout[item] = (folder / ".." / item).resolve()
    return layout


def test_cmake_installs_every_file_the_modules_need():
    layout = cmakeLayout()
    missing = [k for k, v in layout.items() if not v.is_file()]
    assert not missing, f"listed in CMakeLists but absent: {missing}"
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "gaussian_mri").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped - set(layout) == set(), "engine files not installed by GaussianMRI/CMakeLists.txt"
    for module in MODULE_FOLDERS:
        code = {p.relative_to(REPO / module).as_posix() for p in (REPO / module).rglob("*.py") if "__pycache__" not in p.parts}
        assert code - set(layout) == set(), f"add to MODULE_PYTHON_SCRIPTS of {module}/CMakeLists.txt"
        resources = {p.relative_to(REPO / module).as_posix() for p in (REPO / module / "Resources").rglob("*") if p.is_file()}
        assert resources - set(layout) == set(), f"add to MODULE_PYTHON_RESOURCES of {module}/CMakeLists.txt"


def test_b_installed_extension_layout_loads_and_self_tests_pass(tmp_path):
    scripted = tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for relative, source in cmakeLayout().items():
        target = scripted / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    report = runEmulatedSlicer(tmp_path, [scripted], ["load", "selftests"])
    assertLoaded(report, scripted, {m: scripted for m in MODULE_FOLDERS})
    assertSelfTestsPassed(report)
    assert report["_returncode"] == 0
    # the compiled CPU kernels build from the C source the layout ships (where a compiler exists)
    if shutil.which("cc") or shutil.which("gcc"):
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from gaussian_mri.render import native; "
                "print(native.available(), native.SOURCE, native.unavailable_reason())")
        out = subprocess.run([sys.executable, "-c", code, str(scripted)], capture_output=True, text=True,
                             env={**os.environ, "GAUSSIAN_MRI_CACHE": str(tmp_path / "cache")}, check=False)
        assert out.stdout.startswith(f"True {scripted}"), out.stdout + out.stderr


# ------------------------------------------------------------------------------------------ c
def _stockEnvironment() -> Path:
    """The stock-Slicer virtual environment, built once per package list (cached across runs)."""
    torchVersion = metadata.version("torch")
    slicerCore = metadata.version("slicer-core")
    requirements = (REPO / "gaussian_mri" / "requirements.txt").read_text()
    key = hashlib.sha256("\n".join([*SLICER_5_10_PACKAGES, torchVersion, slicerCore, metadata.version("vtk"), requirements,
                                   sys.version, "no-deps-mrml"]).encode())
    root = Path(os.environ.get("GAUSSIAN_MRI_TEST_CACHE", Path.home() / ".cache" / "gaussian-mri-tests"))
    env = root / f"slicer-stock-{key.hexdigest()[:12]}"
    python = env / "bin" / "python"
    if (env / "ready.json").is_file():
        return env
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)

    def pip(*args):
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"pip install {' '.join(args)} failed (network to PyPI needed):\n{proc.stderr[-3000:]}"

    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    # Slicer's own packages, and torch as the PyTorch extension installs it
    pip(*SLICER_5_10_PACKAGES, f"torch=={torchVersion}")
    # MRML: slicer-core and its VTK stand for the ones built into Slicer. Without their dependencies: the
    # PyPI vtk wheel requires matplotlib, which Slicer does not have (its VTK is built without it).
    pip("--no-deps", f"slicer-core=={slicerCore}", f"vtk=={metadata.version('vtk')}")
    # what the modules' installer installs into that Python (asked in that Python)
    probe = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'GaussianMRI')!r})
        from GaussianMRILib.dependencies import missingRequirements
        print(json.dumps([str(r) for r, _v in missingRequirements()]))
    """)
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    installer = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(r.startswith("torch") for r in installer), "torch should be there already (PyTorch extension)"
    if installer:
        pip(*installer)
    (env / "ready.json").write_text(json.dumps({"slicer": SLICER_5_10_PACKAGES, "installer": installer}))
    return env


@pytest.fixture(scope="session")
def stockEnvironment() -> Path:
    return _stockEnvironment()


def _writeCineFiles(folder: Path) -> tuple[Path, Path]:
    """A small fully sampled cine as an ISMRMRD ``.h5`` (the engine's OCMR-style writer) and a MATLAB v7.3 ``.mat``."""
    import h5py

    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.mri.ismrmrd_io import write_cine_ismrmrd

    sim = simulate_cine(n_frames=4, ny=64, nx=64, n_coils=2, seed=0, pixel_spacing_mm=2.0)
    kspace = np.asarray(sim.kspace)
    h5 = write_cine_ismrmrd(folder / "cine.h5", kspace, readout_oversampling=1)
    mat = folder / "cine.mat"
    stored = np.ascontiguousarray(kspace.transpose(3, 2, 1, 0))  # MATLAB (column-major) order as h5py sees it
    compound = np.empty(stored.shape, dtype=[("real", "<f4"), ("imag", "<f4")])
    compound["real"], compound["imag"] = stored.real, stored.imag
    with h5py.File(mat, "w", userblock_size=512) as f:
        f.create_dataset("kspace", data=compound)
    with open(mat, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Nov 29 00:00:00 2026 HDF5 schema 1.00 .")
    return h5, mat


def test_c_stock_slicer_packages_run_svr_and_cine(tmp_path, stockEnvironment):
    h5, mat = _writeCineFiles(tmp_path)
    python = str(stockEnvironment / "bin" / "python")
    report = runEmulatedSlicer(tmp_path, [REPO / m for m in MODULE_FOLDERS], ["load", "devices", "svr-demo", "cine"],
                               python=python, hideSitePackages=False, cines=[h5, mat, "sequence"])
    assertLoaded(report, REPO, {m: REPO / m for m in MODULE_FOLDERS})
    assert report["missingPackages"] == [], "the installer's packages should be there"
    assert report["devices"]["error"] == ""
    svr = report["svrDemo"]
    assert svr["finite"] and svr["max"] > 10 and svr["progressEvents"] > 0 and svr["tableRows"] > 0
    for name in ("cine.h5", "cine.mat"):
        assert report["cine"][name]["frames"] == 4 and report["cine"][name]["browser"], report["cine"][name]
        assert report["cine"][name]["dims"] == [64, 64, 1]
    assert report["cine"]["sequence"]["frames"] == 6
    for name in ("cine.h5", "cine.mat", "sequence"):  # the montage is skipped with one warning, the fit kept
        assert len(report["cine"][name]["matplotlibWarnings"]) == 1, report["cine"][name]
    assert report["_returncode"] == 0
    ready = json.loads((stockEnvironment / "ready.json").read_text())
    assert not any(r.split(">")[0] == "matplotlib" for r in ready["installer"])
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "matplotlib" not in installed and "gaussian-mri" not in installed
