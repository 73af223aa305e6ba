"""``gaussian-mri bids`` participant and group levels, in this process (``--scheduler none``).

The cohort (tests/cohort/_bids_data.py) has 4 good runs and a corrupt subject (sub-04: a truncated
stack). Checked: the BIDS-derivatives outputs and their sidecars, the corrupt subject's clean failure,
skipping complete outputs on a re-run (files untouched) and re-running a subject whose input changed,
an interrupted run (killed process, exception after partial writes) leaving no half-written subject,
and the group TSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _bids_data import FAST

from gaussian_mri.cli import main

GOOD = {"sub-01": "sub-01", "sub-02": "sub-02", "sub-03_ses-1": "sub-03/ses-1", "sub-03_ses-2": "sub-03/ses-2"}


def _participant(bids, out, *extra):
    return main(["bids", str(bids), str(out), "participant", "--scheduler", "none", *FAST, *extra])


def _outputs(out: Path) -> dict[str, float]:
    """Every file under the derivatives' subject folders with its mtime."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in sorted(out.glob("sub-*/**/*")) if p.is_file()}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohort(bids_dataset, tmp_path_factory):
    """The participant level run once, without the distributed package (sequential needs none)."""
    out = tmp_path_factory.mktemp("derivatives") / "gaussiansvr"
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    try:
        rc = _participant(bids_dataset, out, "--qc")
    finally:
        mp.undo()
    return bids_dataset, out, rc


def test_outputs_are_bids_derivatives_with_a_full_sidecar(cohort):
    bids, out, rc = cohort
    assert rc == 1  # one subject failed (sub-04), the others completed
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Version"]
    assert desc["GeneratedBy"][0]["Name"].startswith("gaussian-mri")
    for key, folder in GOOD.items():
        anat = out / folder / "anat"
        assert sorted(p.name for p in anat.iterdir()) == sorted(
            f"{key}_rec-gaussiansvr_{s}" for s in ("T2w.nii.gz", "T2w.json", "desc-brain_mask.nii.gz",
                                                     "desc-scale_map.nii.gz", "desc-anisotropy_map.nii.gz"))
        vol = nib.load(anat / f"{key}_rec-gaussiansvr_T2w.nii.gz")
        assert np.allclose(vol.header.get_zooms()[:3], 2.0, atol=1e-4)  # --resolution 2
        assert float(np.asarray(vol.dataobj).max()) > 0
        side = json.loads((anat / f"{key}_rec-gaussiansvr_T2w.json").read_text())
        g = side["GaussianSVR"]
        assert g["status"] == "success" and g["engine_version"] == desc["GeneratedBy"][0]["Version"]
        assert g["config"]["n_gaussians"] == 500 and g["config"]["iterations"] == 10 and g["config"]["resolution_mm"] == 2.0
        assert g["config"]["stack_alignment"] is False
        stacks = [d for d in g["inputs"] if d["role"] == "stack"]
        masks = [d for d in g["inputs"] if d["role"] == "mask"]
        assert len(stacks) == 3 and len(masks) == 3
        for d in g["inputs"]:
            assert d["sha256"] == _sha(bids / d["path"]), d
        assert all(t in g["timings_s"] for t in ("read_s", "save_s", "job_s")) and g["timings_s"]["engine"]["fit_s"] > 0
        assert g["peak_memory_mib"] > 50 and isinstance(g["warnings"], list)
        assert g["n_stacks"] == 3 and 0 <= g["slice_weights"]["min"] <= g["slice_weights"]["mean"] <= 1
        for rel, digest in g["outputs"].items():  # every output is listed with its checksum
            assert _sha(out / folder / rel) == digest
        assert "gaussiansvr/slices.tsv" in g["outputs"] and "gaussiansvr/gaussians.npz" in g["outputs"]
        if g["qc_report"] is not None:
            assert (out / folder / g["qc_report"]).is_file()
        else:
            assert any("QC report" in w for w in g["warnings"])
    assert json.loads((out / "sub-01/anat/sub-01_rec-gaussiansvr_T2w.json").read_text())["Sources"][0] == "bids:raw:sub-01/anat/sub-01_run-1_T2w.nii.gz"
    assert not (out / ".tmp").exists()


def test_the_corrupt_subject_fails_cleanly_with_its_reason(cohort):
    _, out, _ = cohort
    assert not (out / "sub-04").exists()  # nothing published for it
    rec = json.loads((out / "logs" / "sub-04_status.json").read_text())
    assert rec["status"] == "failed"
    assert "sub-04/anat/sub-04_run-2_T2w.nii.gz" in rec["message"] and "EOFError" in rec["message"]
    assert "Traceback" in (out / "logs" / "sub-04.log").read_text()
    for key in GOOD:
        assert json.loads((out / "logs" / f"{key}_status.json").read_text())["status"] == "success"


def test_group_level_writes_one_row_per_run(cohort, capsys):
    bids, out, _ = cohort
    assert main(["bids", str(bids), str(out), "group"]) == 0
    rows = list(csv.DictReader((out / "group.tsv").read_text().splitlines(), delimiter="\t"))
    assert [(r["participant_id"], r["session_id"], r["status"]) for r in rows] == [
        ("sub-01", "n/a", "success"), ("sub-02", "n/a", "success"), ("sub-03", "ses-1", "success"),
        ("sub-03", "ses-2", "success"), ("sub-04", "n/a", "failed")]
    for r in rows[:4]:
        assert float(r["time_s"]) > 0 and float(r["peak_memory_mib"]) > 50 and r["memory_method"] in ("VmHWM", "ru_maxrss")
        assert r["n_stacks"] == "3" and int(r["n_slices"]) > 20
        assert 0 <= float(r["slice_weight_min"]) <= float(r["slice_weight_mean"]) <= 1
        assert 0 <= float(r["slice_weight_fraction_below_0.5"]) <= 1
    assert rows[4]["slice_weight_mean"] == "n/a" and "EOFError" in rows[4]["message"]
    assert set(json.loads((out / "group.json").read_text())) == set(rows[0])
    try:
        import gaussian_mri.qc  # noqa: F401
    except ImportError:
        return
    page = (out / "index.html").read_text()
    assert "sub-01/gaussiansvr/qc/report.html" in page and "sub-04" in page
    assert page.count('data-status="ok"') == 4 and page.count('data-status="failed"') == 1
    assert main(["bids", str(bids), str(out), "group", "--participant-label", "03"]) == 0
    assert len((out / "group.tsv").read_text().splitlines()) == 3  # header + 2 sessions


def test_rerun_skips_complete_subjects_and_redoes_one_whose_input_changed(cohort, tmp_path, one_thread):
    bids0, out0, _ = cohort
    bids, out = tmp_path / "bids", tmp_path / "out"
    shutil.copytree(bids0, bids)
    shutil.copytree(out0, out)
    before = _outputs(out)
    assert _participant(bids, out, "--participant-label", "01", "02", "03", "--no-qc") == 0
    assert _outputs(out) == before  # nothing rewritten
    # an input changes: that subject is reconstructed again, the others are not touched
    stack = bids / "sub-02/anat/sub-02_run-2_T2w.nii.gz"
    img = nib.load(stack)
    data = np.asarray(img.dataobj).copy()
    data[data.shape[0] // 2] = 0  # a changed slice
    nib.save(nib.Nifti1Image(data, img.affine, img.header), stack)
    assert _participant(bids, out, "--participant-label", "01", "02", "03", "--no-qc") == 0
    after = _outputs(out)
    changed = {k.split("/")[0] for k in after if after[k] != before.get(k)}
    assert changed == {"sub-02"}
    assert json.loads((out / "sub-02/anat/sub-02_rec-gaussiansvr_T2w.json").read_text())["GaussianSVR"]["inputs"][1]["sha256"] == _sha(stack)
    assert not (out / "sub-02" / "gaussiansvr" / "qc").exists()  # the new set replaced the old one entirely
    # a different configuration invalidates too; a damaged output as well
    (out / "sub-01/anat/sub-01_rec-gaussiansvr_desc-brain_mask.nii.gz").write_bytes(b"broken")
    assert _participant(bids, out, "--participant-label", "01", "03", "--no-qc") == 0
    again = _outputs(out)
    assert again["sub-01/anat/sub-01_rec-gaussiansvr_T2w.nii.gz"] != after["sub-01/anat/sub-01_rec-gaussiansvr_T2w.nii.gz"]
    assert again["sub-03/ses-1/anat/sub-03_ses-1_rec-gaussiansvr_T2w.nii.gz"] == after["sub-03/ses-1/anat/sub-03_ses-1_rec-gaussiansvr_T2w.nii.gz"]
    assert _participant(bids, out, "--participant-label", "03", "--session-label", "1", "--no-qc", "--seed", "1") == 0
    assert _outputs(out)["sub-03/ses-1/anat/sub-03_ses-1_rec-gaussiansvr_T2w.nii.gz"] != again["sub-03/ses-1/anat/sub-03_ses-1_rec-gaussiansvr_T2w.nii.gz"]


def test_an_exception_after_partial_writes_leaves_no_subject(bids_dataset, tmp_path, monkeypatch, one_thread):
    import gaussian_mri.svr.io as svr_io

    real = svr_io.save_result

    def save_then_fail(result, out_dir):
        real(result, out_dir)
        raise OSError("disk full (injected)")

    monkeypatch.setattr(svr_io, "save_result", save_then_fail)
    out = tmp_path / "out"
    assert _participant(bids_dataset, out, "--participant-label", "03", "--session-label", "1", "--no-qc") == 1
    assert not (out / "sub-03").exists() and not (out / ".tmp").exists()
    rec = json.loads((out / "logs/sub-03_ses-1_status.json").read_text())
    assert rec["status"] == "failed" and "disk full (injected)" in rec["message"]


_KILL_ME = """
import sys, time
from pathlib import Path
import gaussian_mri.svr.io as svr_io
real = svr_io.save_result
def save_and_hang(result, out_dir):
    real(result, out_dir)
    Path(sys.argv[1]).write_text("written")
    time.sleep(120)
svr_io.save_result = save_and_hang
from gaussian_mri.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_run_leaves_no_half_written_subject_and_a_rerun_completes(bids_dataset, tmp_path, one_thread):
    out, marker = tmp_path / "out", tmp_path / "marker"
    argv = ["bids", str(bids_dataset), str(out), "participant", "--scheduler", "none", "--participant-label", "03",
            "--session-label", "1", "--no-qc", *FAST]
    proc = subprocess.Popen([sys.executable, "-c", _KILL_ME, str(marker), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before writing its outputs"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = list((out / ".tmp").glob("sub-03_ses-1.*/unit/gaussiansvr/recon.nii.gz"))
    assert len(partial) == 1  # the half-written subject is only in .tmp ...
    assert not (out / "sub-03").exists()  # ... never where readers look
    assert _participant(bids_dataset, out, "--participant-label", "03", "--session-label", "1", "--no-qc") == 0
    assert not (out / ".tmp").exists()
    side = json.loads((out / "sub-03/ses-1/anat/sub-03_ses-1_rec-gaussiansvr_T2w.json").read_text())
    assert side["GaussianSVR"]["status"] == "success"


def test_a_mask_of_the_reference_stack_only_is_propagated(bids_dataset, tmp_path, one_thread):
    """Only run 1 has a mask in the derivatives: it is passed alone (the reference stack's mask)."""
    ds = tmp_path / "ds"
    shutil.copytree(bids_dataset / "sub-02", ds / "sub-02")
    masks = ds / "derivatives" / "masks" / "sub-02" / "anat"
    masks.mkdir(parents=True)
    shutil.copy(bids_dataset / "derivatives/masks/sub-02/anat/sub-02_run-1_desc-brain_mask.nii.gz", masks)
    out = tmp_path / "out"
    assert _participant(ds, out, "--no-qc") == 0
    side = json.loads((out / "sub-02/anat/sub-02_rec-gaussiansvr_T2w.json").read_text())["GaussianSVR"]
    assert [d["path"] for d in side["inputs"] if d["role"] == "mask"] == ["derivatives/masks/sub-02/anat/sub-02_run-1_desc-brain_mask.nii.gz"]
    assert sorted(p.name for p in (out / "sub-02/gaussiansvr").glob("mask_propagated_stack-*.nii.gz")) == [
        "mask_propagated_stack-1.nii.gz", "mask_propagated_stack-2.nii.gz"]
