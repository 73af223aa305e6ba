"""``gaussian-mri bids`` on Dask distributed: a real LocalCluster of worker processes, a worker killed
in the middle of a subject, GPU pinning of the local cluster's workers.

distributed is part of the ``[test]`` extra (and of ``[cohort]``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from _bids_data import FAST_OPTIONS
from distributed import Client, LocalCluster

from gaussian_mri.cohort import find_runs, plan_local_cluster, run_participants
from gaussian_mri.cohort.derivatives import check_outputs, input_checksums
from gaussian_mri.cohort.runner import ClusterPlan, start_local_cluster

EXPECTED = ["sub-01/anat/sub-01_rec-gaussiansvr_T2w.nii.gz", "sub-02/anat/sub-02_rec-gaussiansvr_T2w.nii.gz",
            "sub-03/ses-1/anat/sub-03_ses-1_rec-gaussiansvr_T2w.nii.gz", "sub-03/ses-2/anat/sub-03_ses-2_rec-gaussiansvr_T2w.nii.gz"]


def _hold_after_saving(hold: str, waiting: str, key: str) -> None:
    """Run inside each worker: after the engine has written the files of subject ``key`` (a half-written
    subject in .tmp), wait while the file ``hold`` exists, having written the worker's pid to ``waiting``."""
    import gaussian_mri.svr.io as svr_io

    real = svr_io.save_result

    def save_then_hold(result, out_dir):
        written = real(result, out_dir)
        while f"{key}." in str(out_dir) and os.path.exists(hold):
            Path(waiting).write_text(str(os.getpid()))
            time.sleep(0.05)
        return written

    svr_io.save_result = save_then_hold



def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"

def test_a_killed_worker_s_subject_is_rerun_and_every_subject_completes_exactly_once(bids_dataset, tmp_path):
    out, hold, waiting = tmp_path / "out", tmp_path / "hold", tmp_path / "waiting"
    runs = find_runs(bids_dataset)
    hold.write_text("")
    result: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2)
        pids = set(client.run(os.getpid).values())
        client.run(_hold_after_saving, str(hold), str(waiting), "sub-03_ses-1")  # simulated: its truth is known
        options = {k: v for k, v in FAST_OPTIONS.items() if k != "threads"}  # threads planned per host
        thread = threading.Thread(target=lambda: result.update(records=run_participants(
            runs, out, options, scheduler=cluster.scheduler_address, retries=1)))
        thread.start()
        deadline = time.monotonic() + 180
        while not waiting.exists():
            assert thread.is_alive() and time.monotonic() < deadline, "no subject reached the middle of its run"
            time.sleep(0.05)
        killed = int(waiting.read_text())
        assert killed in pids
        (attempt,) = [a for a in (out / ".tmp").glob("*/attempt.json") if json.loads(a.read_text())["pid"] == killed]
        killed_key = attempt.parent.name.split(".")[0]
        assert killed_key == "sub-03_ses-1"
        assert list(attempt.parent.glob("unit/gaussiansvr/recon.nii.gz"))  # half written, in .tmp only
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(killed):  # gone, or a zombie until its nanny reaps it
            assert time.monotonic() < deadline, f"worker {killed} survived SIGKILL"
            time.sleep(0.02)
        hold.unlink()
        thread.join(300)
        assert not thread.is_alive()
        pids_after = set(client.run(os.getpid).values())
    assert killed not in pids_after  # the nanny started a new worker process
    records = {r["key"]: r for r in result["records"]}
    assert {k: r["status"] for k, r in records.items()} == {
        "sub-01": "success", "sub-02": "success", "sub-03_ses-1": "success", "sub-03_ses-2": "success", "sub-04": "failed"}
    assert "EOFError" in records["sub-04"]["message"]
    # the killed subject was run again by another process, and published once
    side = json.loads((out / Path(EXPECTED[[e.split("/anat/")[1].split("_rec")[0] for e in EXPECTED].index(killed_key)]).with_suffix("").with_suffix(".json")).read_text())
    assert side["GaussianSVR"]["pid"] != killed and side["GaussianSVR"]["worker"].startswith("tcp://")
    # 2 workers x 1 slot on this host share its cores (not cores each: oversubscribed torch is many times slower)
    assert side["GaussianSVR"]["execution"]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_rec-gaussiansvr_T2w.nii.gz")) == EXPECTED
    assert not (out / ".tmp").exists() and not list(out.rglob("*.old.*")) and not (out / "sub-04").exists()
    for run in runs[:4]:
        assert check_outputs(run, out, input_checksums(run), FAST_OPTIONS) is None, run.key
        assert json.loads((out / "logs" / f"{run.key}_status.json").read_text())["status"] == "success"
    # and its volume is a reconstruction of its subject (a wrong, empty or flipped volume scores < 0.5)
    assert _ncc_to_atlas_truth(out / EXPECTED[2]) > 0.7


def _ncc_to_atlas_truth(path: Path) -> float:
    """NCC of a reconstruction of sub-03 (simulated from the atlas) with the atlas truth, inside the truth's
    brain mask (the fast test settings reach about 0.83)."""
    from _cases import atlas_truth

    from gaussian_mri.image import read_image
    from gaussian_mri.metrics import ncc
    from gaussian_mri.resample import resample_to_reference

    truth, mask = atlas_truth(2.0)
    recon = read_image(path)
    inside = resample_to_reference(mask.with_data(mask.data.astype("float32")), recon, order=0).data > 0.5
    return ncc(recon.data, resample_to_reference(truth, recon).data, mask=inside)


def test_local_cluster_plan_and_gpu_pinning():
    assert plan_local_cluster(gpus=["3", "5"], cores=16) == ClusterPlan(2, 8, ("3", "5"))
    assert plan_local_cluster(workers=3, gpus=["0"], cores=6) == ClusterPlan(3, 2, ("0", "0", "0"))
    assert plan_local_cluster(gpus=[], cores=2) == ClusterPlan(1, 2, ())  # runs in-process
    assert plan_local_cluster(gpus=[], cores=16) == ClusterPlan(4, 4, ())
    assert plan_local_cluster(workers=2, gpus=[], cores=2, threads=1) == ClusterPlan(2, 1, ())
    with start_local_cluster(ClusterPlan(2, 1, ("7", "9"))) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    assert sorted(v[0] for v in seen.values()) == ["7", "9"]
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:  # Dask's default (65536) made the fits 1.5x slower
        assert [v[1] for v in seen.values()] == [None, None]


def test_the_dask_path_without_distributed_says_what_to_install(bids_dataset, tmp_path, monkeypatch, capsys):
    import sys

    from gaussian_mri.cli import main

    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["bids", str(bids_dataset), str(tmp_path / "out"), "participant", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'gaussian-mri[cohort]'" in err and len(err.strip().splitlines()) == 1


def test_cli_local_cluster_with_two_workers(bids_dataset, tmp_path, capsys):
    """``gaussian-mri bids ... --workers 2``: the command starts its own LocalCluster (2 processes)."""
    from _bids_data import FAST

    from gaussian_mri.cli import main

    out = tmp_path / "out"
    argv = ["bids", str(bids_dataset), str(out), "participant", "--participant-label", "03", "--workers", "2", "--no-qc", *FAST]
    assert main(argv) == 0
    assert "2 reconstructed, 0 skipped (complete), 0 failed" in capsys.readouterr().out
    sides = [json.loads(p.read_text())["GaussianSVR"] for p in sorted(out.glob("sub-03/ses-*/anat/*_T2w.json"))]
    assert len(sides) == 2 and all(s["worker"].startswith("tcp://") for s in sides)  # ran on Dask workers
    assert all(s["pid"] != os.getpid() for s in sides) and not (out / ".tmp").exists()
