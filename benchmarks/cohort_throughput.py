"""Cohort throughput: the same small BIDS cohort run one subject after the other vs on a local Dask cluster.

The cohort is the one of the cohort tests (``tests/cohort/_bids_data.py``, without the corrupt subject):
sub-01 and sub-02 (3 stacks each of the bundled real subject, with masks) and sub-03 ses-1/ses-2 (3
stacks each simulated from the CC0 atlas crop), 4 runs in all. Configuration: preset ``fast`` with
``--n-gaussians``, ``--iterations`` and ``--resolution`` below (stack alignment on, maps on, QC off).

* sequential: ``run_participants(..., scheduler="none")`` in this process, torch (and SimpleITK) on
  every core for each subject: a plain loop over the subjects;
* dask: ``run_participants(..., scheduler="local", workers=W)``: a LocalCluster of W worker processes x
  1 task slot, cores // W torch threads per run, cluster start-up and the workers' imports included
  (what ``gaussian-mri bids ... --workers W`` does);
* dask_warm: the same cluster started beforehand and its workers' imports done (torch, the engine),
  submitted to with ``scheduler=<its address>``: the steady-state throughput of a running cluster.

Both write into fresh folders; wall times are for the whole cohort. Usage::

    python benchmarks/cohort_throughput.py                      # 2 workers, 2000 Gaussians, 60 it., 1.5 mm
    python benchmarks/cohort_throughput.py --workers 4 --iterations 300

Writes ``benchmarks/results/cohort_throughput.json`` and prints a markdown row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "cohort"))
sys.path.insert(0, str(HERE.parent / "tests"))

from _bids_data import build_dataset  # noqa: E402

from gaussian_mri.cohort import find_runs, run_participants  # noqa: E402


def _run(runs, out: Path, options: dict, **kw) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    records = run_participants(runs, out, options, **kw)
    wall = time.perf_counter() - t0
    assert all(r["status"] == "success" for r in records), [(r["key"], r["message"]) for r in records]
    return {
        "wall_s": round(wall, 1),
        "runs_per_hour": round(3600 * len(records) / wall, 1),
        "run_times_s": {r["key"]: r["time_s"] for r in records},
        "peak_memory_mib": {r["key"]: r["peak_memory_mib"] for r in records},
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-gaussians", type=int, default=2000)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--resolution", type=float, default=1.5)
    p.add_argument("--order", choices=["seq-first", "dask-first"], default="seq-first")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cores = len(os.sched_getaffinity(0))
    options = {
        "preset": "fast",
        "overrides": {"n_gaussians": args.n_gaussians, "iterations": args.iterations, "resolution_mm": args.resolution},
        "qc": False,
    }
    with tempfile.TemporaryDirectory(prefix="cohort_bench_") as tmp:
        tmp = Path(tmp)
        bids = build_dataset(tmp / "bids", corrupt=False)
        runs = find_runs(bids)
        results = {}
        modes = [("sequential", {"scheduler": "none", "threads": cores}),
                 (f"dask_{args.workers}x1", {"scheduler": "local", "workers": args.workers, "threads": max(1, cores // args.workers)})]
        if args.order == "dask-first":
            modes.reverse()
        for name, kw in modes:
            print(f"running {name} ...", flush=True)
            results[name] = _run(runs, tmp / name, options, **kw)
            print(json.dumps(results[name]), flush=True)
        from distributed import Client

        from gaussian_mri.cohort.runner import plan_local_cluster, start_local_cluster

        plan = plan_local_cluster(args.workers, threads=max(1, cores // args.workers))
        with start_local_cluster(plan) as cluster, Client(cluster) as client:
            client.wait_for_workers(plan.n_workers)
            client.run(lambda: __import__("gaussian_mri.svr.recon") and __import__("gaussian_mri.svr.io"))
            print(f"running dask_warm_{args.workers}x1 ...", flush=True)
            results[f"dask_warm_{args.workers}x1"] = _run(runs, tmp / "warm", options, scheduler=cluster.scheduler_address,
                                                          threads=plan.torch_threads)
            print(json.dumps(results[f"dask_warm_{args.workers}x1"]), flush=True)
    seq, dsk, warm = results["sequential"], results[f"dask_{args.workers}x1"], results[f"dask_warm_{args.workers}x1"]
    doc = {
        "cohort": [r.key for r in runs],
        "options": options,
        "machine": f"{platform.machine()}, {cores} cores, {platform.python_version()}",
        "torch": __import__("torch").__version__,
        "distributed": __import__("distributed").__version__,
        "results": results,
        "speedup_dask_vs_sequential": round(seq["wall_s"] / dsk["wall_s"], 2),
        "speedup_dask_warm_vs_sequential": round(seq["wall_s"] / warm["wall_s"], 2),
    }
    out = HERE / "results" / "cohort_throughput.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"| {len(runs)} runs | {seq['wall_s']} s | {dsk['wall_s']} s ({doc['speedup_dask_vs_sequential']}x) | "
          f"{warm['wall_s']} s ({doc['speedup_dask_warm_vs_sequential']}x) |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
