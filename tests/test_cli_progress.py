"""Progress on the command line: a bar in a real terminal (a pseudo-terminal), JSON only with --progress-json."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gaussian_mri._progress import TerminalProgress, format_duration

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "gaussian_mri" / "data"


def _tiny_cine(path: Path) -> Path:
    t, y, x = np.meshgrid(np.arange(6), np.arange(32), np.arange(32), indexing="ij")
    frames = (100.0 * (((x - 16) ** 2 + (y - 16) ** 2) < (8 + np.sin(t)) ** 2)).astype(np.float32)
    image = nib.Nifti1Image(frames.transpose(2, 1, 0)[:, :, None, :], np.diag([1.5, 1.5, 8.0, 1.0]))
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, path)
    return path


def _run_in_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python -m gaussian_mri ARGS`` with stderr on a pseudo-terminal (as in a shell) and stdout
    on a pipe; returns (exit code, terminal text, stdout)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "gaussian_mri", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            pytest.fail("no output from the command within the timeout")
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    code = proc.wait(timeout=timeout)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace"), out


BAR = re.compile(r"\rfit \[[#-]{30}\]\s+(\d+)/(\d+)\s+loss [0-9.e+-]+\s+(?:\d+ s|\d+ min \d+ s) left")


def test_cine_shows_a_progress_bar_in_a_terminal_and_only_json_with_progress_json(tmp_path):
    cine = _tiny_cine(tmp_path / "cine.nii.gz")
    common = ["cine", "--image-cine", str(cine), "--mask-type", "uniform", "--acceleration", "2",
              "--steps", "40", "--n-gaussians", "200", "--device", "cpu"]
    code, terminal, stdout = _run_in_terminal([*common, "--output-dir", str(tmp_path / "a")], tmp_path)
    assert code == 0, terminal[-2000:]
    steps = [(int(a), int(b)) for a, b in BAR.findall(terminal)]
    assert len(steps) >= 3 and all(total == 40 for _, total in steps), terminal[-2000:]
    assert steps == sorted(steps) and steps[-1][0] == 40  # redrawn in place, up to the last step
    code, terminal, stdout = _run_in_terminal([*common, "--output-dir", str(tmp_path / "b"), "--progress-json"], tmp_path)
    assert code == 0
    assert not BAR.search(terminal)  # quiet for programs
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert {e["event"] for e in events} >= {"progress", "done"}


def test_svr_shows_a_progress_bar_in_a_terminal(tmp_path):
    stacks = [str(DATA / f"sub-01_run-{r}_T2w.nii.gz") for r in (1, 3)]
    masks = [str(DATA / f"sub-01_run-{r}_T2w_mask.nii.gz") for r in (1, 3)]
    code, terminal, stdout = _run_in_terminal(
        ["svr", "--stacks", *stacks, "--masks", *masks, "--output-dir", str(tmp_path / "out"), "--resolution", "2",
         "--iterations", "20", "--n-gaussians", "300", "--device", "cpu", "--no-maps", "--no-stack-alignment"], tmp_path)
    assert code == 0, terminal[-2000:]
    steps = [(int(a), int(b)) for a, b in BAR.findall(terminal)]
    assert len(steps) >= 3 and steps[-1] == (20, 20), terminal[-2000:]
    assert stdout.strip() == ""  # nothing on stdout without --progress-json


def test_plain_lines_when_not_a_terminal():
    import io

    stream = io.StringIO()
    progress = TerminalProgress(stream=stream, interval_s=3600.0, tty=False)
    for it in range(0, 101, 5):
        progress({"stage": "fit", "iteration": it, "total": 100, "loss": 1.0 / (it + 1), "elapsed_s": it, "eta_s": 100 - it})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fit [") and "100/100" in lines[-1]  # first and last, no flood
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()
    assert format_duration(75.2) == "1 min 15 s" and format_duration(float("nan")) == "?"
