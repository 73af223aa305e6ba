"""Several runs on one output folder, re-runs with other settings, failures around published outputs.

One subject (sub-03 ses-1, simulated) is reconstructed once per module (``published``); the tests work
on copies of that derivatives folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys

import pytest
from _bids_data import FAST

from gaussian_mri.cli import main

KEY, FOLDER = "sub-03_ses-1", "sub-03/ses-1"
VOLUME = f"{FOLDER}/anat/{KEY}_rec-gaussiansvr_T2w.nii.gz"
SIDECAR = f"{FOLDER}/anat/{KEY}_rec-gaussiansvr_T2w.json"


def _participant(bids, out, *extra):
    return main(["bids", str(bids), str(out), "participant", "--scheduler", "none", "--participant-label", "03",
                 "--session-label", "1", *FAST, *extra])


@pytest.fixture(scope="module")
def published(bids_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "out"
    assert _participant(bids_dataset, out, "--no-qc") == 0
    return bids_dataset, out


@pytest.fixture
def copy(published, tmp_path):
    bids, out0 = published
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    return bids, out


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _owner(pid: int) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00+00:00"})


def test_a_live_foreign_run_s_work_in_progress_survives_and_a_dead_one_s_is_cleared(bids_dataset, tmp_path, live_pid, one_thread):
    out = tmp_path / "out"
    live, dead = out / ".tmp" / "sub-01.aaaa", out / ".tmp" / "sub-02.bbbb"
    for folder, pid in ((live, live_pid), (dead, _dead_pid())):
        (folder / "unit" / "gaussiansvr").mkdir(parents=True)
        (folder / "unit" / "gaussiansvr" / "recon.nii.gz").write_bytes(b"half written")
        (folder / "attempt.json").write_text(_owner(pid))
    assert _participant(bids_dataset, out, "--no-qc") == 0
    assert (live / "unit" / "gaussiansvr" / "recon.nii.gz").is_file()  # another run's work in progress
    assert not dead.exists()  # its owner is gone (same host, pid not alive)
    assert (out / VOLUME).is_file()


def test_a_subject_locked_by_a_live_run_is_not_reconstructed_here(bids_dataset, tmp_path, live_pid, one_thread, capsys):
    out = tmp_path / "out"
    lock = out / ".tmp" / f"{KEY}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(_owner(live_pid))
    assert _participant(bids_dataset, out, "--no-qc") == 0
    assert "0 reconstructed, 1 skipped" in capsys.readouterr().out
    assert not (out / FOLDER).exists() and lock.is_file()  # the owner's lock stays
    assert not (out / "logs" / f"{KEY}_status.json").exists()  # the owner writes the record
    lock.write_text(_owner(_dead_pid()))  # a stale lock (its run was killed) is taken over
    assert _participant(bids_dataset, out, "--no-qc") == 0
    assert (out / VOLUME).is_file() and not (out / ".tmp").exists()


def test_a_qc_run_after_a_no_qc_run_adds_the_missing_reports(copy, one_thread):
    from gaussian_mri.cohort import find_runs
    from gaussian_mri.cohort.derivatives import check_outputs, input_checksums

    bids, out = copy
    before = (out / VOLUME).stat().st_mtime_ns
    assert _participant(bids, out, "--qc") == 0
    assert (out / VOLUME).stat().st_mtime_ns == before  # not reconstructed again
    side = json.loads((out / SIDECAR).read_text())["GaussianSVR"]
    assert side["qc_report"] == "gaussiansvr/qc/report.html" and (out / FOLDER / side["qc_report"]).is_file()
    assert "gaussiansvr/qc/report.html" in side["outputs"]
    assert json.loads((out / "logs" / f"{KEY}_status.json").read_text())["qc_report"] == side["qc_report"]
    page = (out / FOLDER / side["qc_report"]).read_text()
    assert f"{KEY}_rec-gaussiansvr_T2w.nii.gz" in page and f"{KEY}_rec-gaussiansvr_desc-brain_mask.nii.gz" in page
    (run,) = find_runs(bids, ["03"], ["1"])
    assert check_outputs(run, out, input_checksums(run), {"preset": "fast", "overrides": json.loads((out / SIDECAR).read_text())["GaussianSVR"]["options"]["overrides"]}) is None


def test_a_failing_qc_report_is_a_warning_not_a_failed_subject(bids_dataset, tmp_path, monkeypatch, one_thread):
    import gaussian_mri.qc

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the report (injected)")

    monkeypatch.setattr(gaussian_mri.qc, "write_report", broken)
    out = tmp_path / "out"
    assert _participant(bids_dataset, out, "--qc") == 0
    side = json.loads((out / SIDECAR).read_text())["GaussianSVR"]
    assert side["status"] == "success" and side["qc_report"] is None
    assert any("QC report not written (RuntimeError: a bug in the report (injected))" in w for w in side["warnings"])


def test_a_failed_rerun_keeps_the_previous_outputs_and_says_so(copy, monkeypatch, one_thread, capsys):
    import gaussian_mri.svr.io as svr_io

    bids, out = copy
    old = (out / VOLUME).read_bytes()
    finished = json.loads((out / SIDECAR).read_text())["GaussianSVR"]["finished"]

    def fail(result, out_dir):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(svr_io, "save_result", fail)
    assert _participant(bids, out, "--no-qc", "--seed", "1") == 1  # a new configuration, and it fails
    assert (out / VOLUME).read_bytes() == old  # the earlier, complete outputs stay published
    rec = json.loads((out / "logs" / f"{KEY}_status.json").read_text())
    assert rec["status"] == "failed" and rec["message"].endswith(f"(previous outputs kept, from {finished})")
    assert rec["previous_outputs"]["finished"] == finished
    assert main(["bids", str(bids), str(out), "group", "--no-qc"]) == 0
    (row,) = csv.DictReader((out / "group.tsv").read_text().splitlines(), delimiter="\t")
    assert row["status"] == "failed" and row["previous_outputs"] == finished and row["n_slices"] == "n/a"
    monkeypatch.undo()
    # --rerun redoes complete outputs (e.g. after an engine upgrade, which alone does not invalidate them)
    capsys.readouterr()
    assert _participant(bids, out, "--no-qc") == 0
    assert "0 reconstructed, 1 skipped" in capsys.readouterr().out
    assert _participant(bids, out, "--no-qc", "--rerun") == 0
    assert "1 reconstructed, 0 skipped" in capsys.readouterr().out
    assert json.loads((out / "logs" / f"{KEY}_status.json").read_text())["message"].startswith("done in")


def test_a_lost_result_of_a_published_subject_is_not_recorded_as_failed(copy, monkeypatch):
    """run_with_client: the task's result is lost (scheduler connection), but it had published."""
    import distributed

    from gaussian_mri.cohort import find_runs
    from gaussian_mri.cohort.runner import run_with_client

    bids, out = copy
    (run,) = find_runs(bids, ["03"], ["1"])
    before = json.loads((out / "logs" / f"{KEY}_status.json").read_text())
    side = json.loads((out / SIDECAR).read_text())["GaussianSVR"]

    class LostFuture:
        def result(self):
            raise OSError("Timed out trying to connect to the scheduler (injected)")

    class Client:
        def submit(self, *args, **kwargs):
            return LostFuture()

    monkeypatch.setattr(distributed, "as_completed", lambda futures: iter(futures))
    options = {"preset": "fast", "overrides": side["options"]["overrides"], "qc": False}
    (rec,) = run_with_client(Client(), [run], out, options)
    assert rec["status"] == "success"
    assert json.loads((out / "logs" / f"{KEY}_status.json").read_text()) == before
    (out / VOLUME).write_bytes(b"damaged")  # not published (validly): then it is a failure, with a log
    (rec,) = run_with_client(Client(), [run], out, options)
    assert rec["status"] == "failed" and "injected" in rec["message"]
    assert "injected" in (out / "logs" / f"{KEY}.log").read_text()


def test_a_bad_scheduler_is_refused_before_anything_is_written(bids_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bids", str(bids_dataset), str(out), "participant", "--scheduler", "lcoal"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'lcoal'" in err and "local, none" in err and "tcp://" in err
    assert not (out / "dataset_description.json").exists() and not (out / ".bidsignore").exists()
    from gaussian_mri.cohort.runner import check_scheduler

    for ok in ("local", "none", "tcp://10.0.0.5:8786", "tls://node1:8786", "node1:8786", "inproc://1.2.3.4/55/1"):
        check_scheduler(ok)


def test_threads_are_divided_only_among_workers_sharing_cpus():
    from gaussian_mri.cohort.runner import plan_threads

    # two SLURM jobs on one node: 8 CPUs each, disjoint; one worker each
    workers = {"tcp://n1:1": {"host": "10.0.0.1", "nthreads": 1}, "tcp://n1:2": {"host": "10.0.0.1", "nthreads": 1},
               "tcp://n2:1": {"host": "10.0.0.2", "nthreads": 2}}
    cpus = {"tcp://n1:1": range(0, 8), "tcp://n1:2": range(8, 16), "tcp://n2:1": range(0, 16)}
    assert plan_threads(workers, cpus) == {"tcp://n1:1": 8, "tcp://n1:2": 8, "tcp://n2:1": 8}
    # a LocalCluster: two workers with the same CPUs share them
    cpus = {"tcp://n1:1": range(16), "tcp://n1:2": range(16)}
    assert plan_threads(workers, cpus) == {"tcp://n1:1": 8, "tcp://n1:2": 8}
    cpus = {"tcp://n1:1": range(0, 3), "tcp://n1:2": range(2, 4)}  # overlapping: shared
    assert plan_threads(workers, cpus) == {"tcp://n1:1": 1, "tcp://n1:2": 1}
