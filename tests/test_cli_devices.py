"""``gaussian-mri devices``: the device list the Slicer modules read from a child process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "gaussian_mri", "devices", *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )


def test_json_is_the_only_stdout_and_lists_every_device():
    proc = _run("--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert proc.stdout.strip().count("\n") == 0
    assert set(info) == {"torch", "cuda", "devices"}
    assert info["torch"] == torch.__version__
    assert info["cuda"] is torch.cuda.is_available()

    devices = info["devices"]
    values = [d["value"] for d in devices]
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert values == ["auto", *[f"cuda:{i}" for i in range(n_gpu)], "cpu"]
    assert all(isinstance(d["label"], str) and d["label"] for d in devices)
    threads = re.fullmatch(r"CPU \((\d+) threads\)", devices[-1]["label"])  # torch's threads in the child
    assert threads and int(threads.group(1)) >= 1, devices[-1]
    if n_gpu:
        for i, d in enumerate(devices[1:-1]):
            prop = torch.cuda.get_device_properties(i)
            gb = prop.total_memory / 2**30
            assert d["label"] == f"GPU {i}: {prop.name} ({gb:.0f} GB)"
            assert d["memory_gb"] == pytest.approx(gb, abs=0.06)
        assert devices[0]["label"].startswith("Automatic (GPU: ") and devices[0]["label"].endswith(" GB))")
    else:
        assert devices[0]["label"] == "Automatic (CPU: no CUDA GPU found)"


def test_readable_list_without_json():
    proc = _run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"PyTorch {torch.__version__}" in proc.stdout
    assert "cpu" in proc.stdout and "auto" in proc.stdout


def test_without_torch_lists_auto_and_cpu(tmp_path):
    """Asked before PyTorch is installed (the Slicer module's first start): still one JSON object, exit 0."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch -> ImportError\n")
    proc = _run("--json", pythonpath=[tmp_path])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert info["torch"] is None and info["cuda"] is False
    assert [d["value"] for d in info["devices"]] == ["auto", "cpu"]
    assert "not installed" in info["devices"][0]["label"]
