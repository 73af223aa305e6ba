"""The engine where the Slicer modules run it: any torch >= 2.1, and Slicer's Python without the optional packages.

* Out-of-memory handling works on the torch 2.1 API (no ``torch.OutOfMemoryError``, only
  ``torch.cuda.OutOfMemoryError``), emulated by deleting the newer name.
* Optional outputs degrade: ``gaussian-mri cine`` without matplotlib writes everything but the montage,
  warns once and exits 0.
* The ``cine`` and ``svr`` commands import no optional package their input does not need
  (matplotlib, pydicom, h5py, ismrmrd, scipy.io), and a needed one that is missing is named in a
  clear error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_mri._optional import MissingDependencyError
from gaussian_mri._torch_compat import out_of_memory_errors
from gaussian_mri.image import Image, write_image

REPO = Path(__file__).resolve().parents[1]
# Optional packages: not in Slicer's Python (matplotlib, h5py, ismrmrd) or only needed for one input kind.
OPTIONAL = ("matplotlib", "pydicom", "h5py", "ismrmrd", "scipy.io")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------------
# torch versions: out-of-memory errors
# --------------------------------------------------------------------------------------------------
@pytest.fixture(params=["torch-2.1-api", "current-api"])
def torch_api(request, monkeypatch):
    """Run the test on this torch as it is, and with the torch 2.1 API (no ``torch.OutOfMemoryError``)."""
    if request.param == "torch-2.1-api":
        monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
        assert not hasattr(torch, "OutOfMemoryError")
    return request.param


def test_out_of_memory_errors_on_this_torch():
    errors = out_of_memory_errors()
    assert torch.cuda.OutOfMemoryError in errors
    if hasattr(torch, "OutOfMemoryError"):
        assert torch.OutOfMemoryError in errors
    assert len(set(errors)) == len(errors) and all(issubclass(e, RuntimeError) for e in errors)


def test_out_of_memory_errors_on_the_torch_2_1_api(monkeypatch):
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
    assert out_of_memory_errors() == (torch.cuda.OutOfMemoryError,)


def _tiny_stack() -> Image:
    k, j, i = np.mgrid[0:8, 0:16, 0:16]
    blob = np.exp(-(((i - 7.5) / 5) ** 2 + ((j - 7.5) / 4) ** 2 + ((k - 3.5) / 2) ** 2)) * 100
    return Image(blob.astype(np.float32), np.diag([2.0, 2.0, 4.0, 1.0]))


def _svr_raising(monkeypatch, exc: BaseException):
    """Run the SVR with the fit's first step (seeding the Gaussians) raising ``exc``."""
    from gaussian_mri.svr import recon

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(recon, "_seed_gaussians", boom)
    cfg = recon.SVRConfig(resolution_mm=4.0, n_gaussians=50, iterations=2, motion="none", maps=False, device="cpu")
    return recon.reconstruct([_tiny_stack()], config=cfg)


def test_svr_out_of_memory_becomes_a_clear_memory_error(monkeypatch, torch_api):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    with pytest.raises(MemoryError, match=r"out of memory on cpu: use a coarser resolution") as info:
        _svr_raising(monkeypatch, oom)
    assert "n_gaussians=50" in str(info.value) and "Tried to allocate 20.00 GiB" in str(info.value)
    assert info.value.__cause__ is oom


def test_svr_other_errors_pass_through_unchanged(monkeypatch, torch_api):
    # before the fix, on the 2.1 API this became "AttributeError: module 'torch' has no attribute 'OutOfMemoryError'"
    err = ValueError("not an out-of-memory error")
    with pytest.raises(ValueError) as info:
        _svr_raising(monkeypatch, err)
    assert info.value is err


# --------------------------------------------------------------------------------------------------
# optional packages
# --------------------------------------------------------------------------------------------------
def _env_without(tmp_path: Path, modules) -> dict:
    """Environment for a child Python in which ``import <module>`` fails for each of ``modules``."""
    site = tmp_path / "site_without"
    site.mkdir(exist_ok=True)
    lines = ["import sys"] + [f"sys.modules[{m!r}] = None  # import -> ImportError" for m in modules]
    (site / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return env


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp"))


def test_cine_without_matplotlib_writes_everything_but_the_montage(tmp_path):
    """Slicer's Python has no matplotlib: the finished fit must not fail for want of the montage PNG."""
    import nibabel as nib

    from gaussian_mri.cine.phantom import simulate_cine

    sim = simulate_cine(n_frames=6, ny=64, nx=64, n_coils=4, pixel_spacing_mm=4.0, noise=0.0)
    mag = np.abs(sim.images[:, 8:56, 12:52]).astype(np.float32)
    img = nib.Nifti1Image(np.transpose(mag, (2, 1, 0))[:, :, None, :], np.diag([4.0, 4.0, 8.0, 1.0]))
    nib.save(img, tmp_path / "cine_in.nii.gz")
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "gaussian_mri", "cine", "--image-cine", str(tmp_path / "cine_in.nii.gz"),
        "--mask-type", "gro", "--acceleration", "4", "--coils", "4", "--output-dir", str(out),
        "--n-gaussians", "100", "--steps", "10", "--threads", "1", "--progress-json",
    ]
    # every optional package blocked: a NIfTI input needs none of them
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env_without(tmp_path, OPTIONAL), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = _events(proc.stdout)[-1]
    assert done["event"] == "done"
    assert set(done["outputs"]) == {"result", "metrics", "cine", "gaussians", "summary"}  # no "montage"
    for path in done["outputs"].values():
        assert Path(path).is_file(), path
    assert not (out / "montage.png").exists() and _leftovers(out) == []
    warning = f"matplotlib is not installed: {out / 'montage.png'} not written; pip install matplotlib to get it"
    assert proc.stderr.count("matplotlib is not installed") == 1 and warning in proc.stderr, proc.stderr[-3000:]
    assert "WARNING" in proc.stderr


def test_svr_command_needs_no_optional_package(tmp_path):
    stack = write_image(_tiny_stack(), tmp_path / "stack.nii.gz")
    cmd = [
        sys.executable, "-m", "gaussian_mri", "svr", "--stacks", str(stack), "--output-dir", str(tmp_path / "out"),
        "--motion", "none", "--n-gaussians", "100", "--iterations", "3", "--resolution", "4", "--no-maps",
        "--device", "cpu", "--progress-json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env_without(tmp_path, OPTIONAL), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = _events(proc.stdout)[-1]
    assert done["event"] == "done" and Path(done["outputs"]["volume"]).is_file()


def test_engine_modules_import_no_optional_package(tmp_path):
    """Importing what the ``svr`` / ``cine`` / ``devices`` commands run imports none of the optional packages."""
    code = (
        "import sys\n"
        "from gaussian_mri.cli import build_parser\n"
        "build_parser()\n"
        "import gaussian_mri.svr.recon, gaussian_mri.svr.io, gaussian_mri.svr.register, gaussian_mri.svr.masking\n"
        "import gaussian_mri.cine.recon, gaussian_mri.mri.kspace_io, gaussian_mri.mri.ismrmrd_io\n"
        "import gaussian_mri.mri.baselines, gaussian_mri.mri.sampling, gaussian_mri.plotting, gaussian_mri.image\n"
        f"opt = {OPTIONAL!r}\n"
        "print(sorted(m for m in sys.modules if any(m == o or m.startswith(o + '.') for o in opt)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def _block(monkeypatch, *modules: str) -> None:
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_missing_h5py_is_named_for_h5_input(tmp_path, monkeypatch, capsys):
    import h5py

    from gaussian_mri.cli import main
    from gaussian_mri.mri.kspace_io import load_kspace

    k = (np.ones((2, 1, 8, 8)) + 1j).astype(np.complex64)
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["kspace"] = k
    _block(monkeypatch, "h5py")
    with pytest.raises(MissingDependencyError, match=r"pip install h5py") as info:
        load_kspace(tmp_path / "k.h5")
    assert info.value.package == "h5py" and isinstance(info.value, ImportError)
    # through the command: one clear error event, exit 2, before any fitting
    rc = main(["cine", "--kspace", str(tmp_path / "k.h5"), "--output-dir", str(tmp_path / "o"), "--progress-json"])
    err = _events(capsys.readouterr().out)[-1]
    assert rc == 2 and err["event"] == "error" and "pip install h5py" in err["message"]


def test_missing_ismrmrd_is_named_for_ismrmrd_input(tmp_path, monkeypatch):
    from gaussian_mri.mri.ismrmrd_io import read_cine_ismrmrd, write_cine_ismrmrd

    k = (np.random.default_rng(0).standard_normal((2, 2, 8, 8)) + 1j).astype(np.complex64)
    path = write_cine_ismrmrd(tmp_path / "c.h5", k)
    _block(monkeypatch, "ismrmrd", "ismrmrd.xsd", "ismrmrd.hdf5")
    with pytest.raises(MissingDependencyError, match=r"pip install ismrmrd"):
        read_cine_ismrmrd(path)


def test_missing_pydicom_is_named_for_dicom_input(tmp_path, monkeypatch):
    from gaussian_mri.mri.kspace_io import cine_from_image

    _block(monkeypatch, "pydicom", "pydicom.errors")
    with pytest.raises(MissingDependencyError, match=r"DICOM .*pip install pydicom"):
        cine_from_image(tmp_path)  # a folder = a DICOM cine series


def test_mat_files_need_h5py_only_for_v7_3(tmp_path, monkeypatch):
    import h5py
    import scipy.io

    from gaussian_mri.mri.kspace_io import load_kspace

    k = (np.arange(2 * 3 * 8 * 8).reshape(8, 8, 3, 2) + 1j).astype(np.complex64)  # MATLAB [kx ky coils frames]
    scipy.io.savemat(tmp_path / "k5.mat", {"kspace": k})
    with h5py.File(tmp_path / "k73.mat", "w", userblock_size=512) as f:
        f["kspace"] = np.transpose(k)
    with open(tmp_path / "k73.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64")
    _block(monkeypatch, "h5py")
    assert load_kspace(tmp_path / "k5.mat").kspace.shape == (2, 3, 8, 8)  # v5: scipy.io, no h5py needed
    with pytest.raises(MissingDependencyError, match=r"MATLAB v7.3.*pip install h5py"):
        load_kspace(tmp_path / "k73.mat")


def test_one_device_resolver_with_one_error():
    """SVR, cine and the devices command share one resolver; CUDA requests on a machine without it fail clearly."""
    import torch

    from gaussian_mri._torch_compat import resolve_device
    from gaussian_mri.cine.recon import CineInputError
    from gaussian_mri.cine.recon import resolve_device as cine_resolve

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' was requested but PyTorch sees no CUDA GPU"):
            resolve_device("cuda:1")
        with pytest.raises(CineInputError, match="sees no CUDA GPU"):
            cine_resolve("cuda")
    else:
        with pytest.raises(ValueError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
