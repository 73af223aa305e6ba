"""Running the participant level: a plain loop in this process, or Dask distributed.

* ``scheduler="none"``: one run after the other in this process (no extra package needed);
* ``scheduler="local"`` (default): a :class:`distributed.LocalCluster` of worker processes on this
  machine, planned by :func:`plan_local_cluster`: one worker per visible CUDA GPU, each pinned to its
  GPU with ``CUDA_VISIBLE_DEVICES``, else ``max(1, cores // 4)`` workers with ``cores // workers``
  torch threads per run; each worker runs one subject at a time. A plan of one worker runs in this
  process instead (a cluster would only add start-up time);
* ``scheduler="tcp://host:port"``: an existing Dask scheduler, e.g. of a dask-jobqueue ``SLURMCluster``
  / ``PBSCluster`` or a dask-kubernetes cluster (the workers need ``gaussian-mri`` installed and the
  BIDS and output folders at the same paths).

Every subject/session is one task (``pure=False``, with ``retries``). When a worker dies (killed,
out of memory, node lost) the scheduler re-runs its task on another worker; the task is idempotent
(see :mod:`.job`), so every subject is published exactly once. A task whose workers died
``distributed.scheduler.allowed-failures`` times (default 3) is recorded as failed -- unless its
outputs were published and are valid (the result, not the work, was lost).

Several runs may share one output folder at the same time (e.g. one cluster array job per
participant): each run has a ``run_id``; a subject is reconstructed under its lock
``.tmp/<key>.lock`` (:class:`.derivatives.SubjectLock`), and a run clears from ``.tmp`` only its own
entries and those whose owner is provably dead (same host, pid gone), never another live run's work.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._optional import MissingDependencyError
from .bids import Run
from .derivatives import clean_temporary, write_dataset_description, write_log, write_status
from .job import failure_record, run_subject

__all__ = ["ClusterPlan", "check_scheduler", "plan_local_cluster", "plan_threads", "run_participants", "run_with_client",
           "start_local_cluster"]

log = logging.getLogger(__name__)

INSTALL = "pip install 'gaussian-mri[cohort]' (or: pip install distributed)"


@dataclass(frozen=True)
class ClusterPlan:
    n_workers: int
    torch_threads: int  #: torch threads of one run (one run at a time per worker)
    gpus: tuple[str, ...] = ()  #: ``CUDA_VISIBLE_DEVICES`` of each worker (empty: CPU workers)


def _visible_gpus() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver means no GPU
        n = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:  # keep the user's selection: worker i gets the i-th entry
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def plan_local_cluster(workers: int | None = None, *, gpus: list[str] | None = None, cores: int | None = None,
                       threads: int | None = None) -> ClusterPlan:
    """How to split this machine: ``workers`` (default: one per GPU, else ``max(1, cores // 4)``),
    torch threads per run (default ``max(1, cores // workers)``), the GPU of each worker."""
    gpus = _visible_gpus() if gpus is None else list(gpus)
    cores = _affinity() if cores is None else cores
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if gpus:
        n = workers or len(gpus)
        pinned = tuple(gpus[i % len(gpus)] for i in range(n))  # more workers than GPUs share them round-robin
    else:
        n = workers or max(1, cores // 4)
        pinned = ()
    return ClusterPlan(n_workers=n, torch_threads=threads or max(1, cores // n), gpus=pinned)


def _require_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            f"running subjects on Dask workers needs the Python package 'distributed', which is not installed: {INSTALL} "
            "(or run one subject after the other with --scheduler none)",
            package="distributed",
        ) from exc
    return distributed


def start_local_cluster(plan: ClusterPlan, **kwargs):
    """A :class:`distributed.LocalCluster` of ``plan.n_workers`` processes with one task slot each;
    with GPUs, worker ``i`` is started with ``CUDA_VISIBLE_DEVICES=plan.gpus[i]``.

    The workers run without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``: that setting fixes glibc's
    mmap threshold, so every large tensor is mapped and unmapped again, and the fits measured 1.5-1.6x
    slower in a worker than in a plain process (``benchmarks/README.md``, "Cohorts").
    """
    distributed = _require_distributed()
    import dask

    # dashboard_address ":0": a free port (the default 8787 may be taken by another cluster on this machine)
    options = {"threads_per_worker": 1, "processes": True, "dashboard_address": ":0", **kwargs}
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):  # read by each nanny
        if not plan.gpus:
            return distributed.LocalCluster(n_workers=plan.n_workers, **options)
        import copy

        cluster = distributed.LocalCluster(n_workers=0, **options)
        try:
            for i, gpu in enumerate(plan.gpus):
                spec = copy.deepcopy(cluster.new_spec)
                spec["options"]["env"] = {**spec["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": gpu}
                cluster.worker_spec[f"gpu{i}"] = spec
            cluster.scale(len(plan.gpus))
            cluster.wait_for_workers(len(plan.gpus))  # the nannies start now, inside the config above
        except BaseException:
            cluster.close()
            raise
        return cluster


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _affinity_set() -> list[int]:
    """The CPUs this process may run on (sorted; all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_threads(workers: dict, cpus: dict) -> dict[str, int]:
    """Torch threads per run of each worker: its CPUs divided by the task slots of the workers that share
    them -- those on the same host whose CPU sets overlap its own (itself included). Two SLURM jobs on one
    node have disjoint CPU sets and do not halve each other. ``workers``: ``{address: {"host", "nthreads"}}``
    (the scheduler's worker info); ``cpus``: ``{address: CPUs it may use}`` (workers missing here are left out)."""
    sets = {addr: set(c) for addr, c in cpus.items()}
    out: dict[str, int] = {}
    for addr, info in workers.items():
        if addr not in sets:
            continue
        slots = sum(int(other.get("nthreads", 1)) for a, other in workers.items()
                    if other.get("host") == info.get("host") and a in sets and sets[a] & sets[addr])
        out[addr] = max(1, len(sets[addr]) // max(1, slots))
    return out


def cpu_key(host: str, cpus) -> str:
    """The key of a worker in :func:`threads_by_worker`: its host and CPU set (a worker the nanny restarts
    gets a new address but keeps both)."""
    return f"{host}|{','.join(str(c) for c in sorted(cpus))}"


def threads_by_worker(client) -> dict[str, int]:
    """:func:`plan_threads` of the cluster's workers now, keyed by :func:`cpu_key`. Workers that join later
    with another CPU set fall back to their cores divided by their own slots (see the job)."""
    workers = _workers(client)
    if not workers:
        return {}
    cpus = client.run(_affinity_set)
    return {cpu_key(workers[addr]["host"], cpus[addr]): n for addr, n in plan_threads(workers, cpus).items()}


def _workers(client) -> dict:
    """``{address: info}`` of every worker (some distributed versions list only a few by default)."""
    import inspect

    if "n_workers" in inspect.signature(client.scheduler_info).parameters:
        return client.scheduler_info(n_workers=-1).get("workers", {})
    return client.scheduler_info().get("workers", {})


def _describe(rec: dict) -> str:
    return f"{rec['key']}: {rec['status']}" + (f" ({rec['message']})" if rec.get("message") else "")


def run_sequential(runs: list[Run], output_dir: Path, options: dict, on_done: Callable[[dict], None]) -> list[dict]:
    records = []
    for run in runs:
        rec = run_subject(run, output_dir, options)
        on_done(rec)
        records.append(rec)
    return records


def run_with_client(client, runs: list[Run], output_dir: Path, options: dict, *, retries: int = 2,
                    on_done: Callable[[dict], None] = lambda rec: None) -> list[dict]:
    """Submit one task per run to ``client`` and wait for all; returns the records in ``runs`` order."""
    from distributed import as_completed

    futures = {}
    for run in runs:
        fut = client.submit(run_subject, run, str(output_dir), options, key=f"gaussiansvr-{run.key}-{uuid.uuid4().hex[:8]}",
                            pure=False, retries=retries)
        futures[fut] = run
    done: dict[str, dict] = {}
    for fut in as_completed(list(futures)):
        run = futures[fut]
        try:
            rec = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker (workers died too often), lost scheduler, ...
            rec = _published_record(run, output_dir, options)
            if rec is None:
                rec = failure_record(run, f"{type(exc).__name__}: {exc}")
                write_status(output_dir, rec)
                write_log(output_dir, run.key, [f"{rec['finished']} the task of {run.key} returned no record: {rec['message']}"])
            else:  # the task published before its result was lost (e.g. the scheduler connection)
                log.warning("%s: no result from Dask (%s: %s), but its outputs are published and valid", run.key,
                            type(exc).__name__, exc)
        done[run.key] = rec
        on_done(rec)
    return [done[r.key] for r in runs]


def _published_record(run: Run, output_dir: Path, options: dict) -> dict | None:
    """The status record of ``run`` when its published outputs are complete and valid for these options
    (a task whose result was lost may still have published), else ``None``."""
    import json

    from .derivatives import check_outputs, input_checksums, status_path

    try:
        if check_outputs(run, output_dir, input_checksums(run), options) is not None:
            return None
        rec = json.loads(status_path(output_dir, run.key).read_text())
    except Exception:  # noqa: BLE001 - anything unreadable: not published
        return None
    return rec if isinstance(rec, dict) and rec.get("status") == "success" else None


SCHEDULERS = "local, none, or a Dask scheduler address such as tcp://host:8786"


def check_scheduler(scheduler: str) -> None:
    """Raise :class:`~.bids.CohortError` (one line, the valid choices) unless ``scheduler`` is ``local``,
    ``none`` or looks like a Dask address (``protocol://...`` or ``host:port``)."""
    import re

    from .bids import CohortError

    if scheduler in ("local", "none"):
        return
    if re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", scheduler) or re.fullmatch(r"[\w.-]+:\d+|\[[0-9a-fA-F:]+\]:\d+", scheduler):
        return
    raise CohortError(f"--scheduler {scheduler!r} is not valid: use {SCHEDULERS}")


def run_participants(
    runs: list[Run],
    output_dir: str | os.PathLike,
    options: dict,
    *,
    scheduler: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    retries: int = 2,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Reconstruct every run into ``output_dir`` (BIDS derivatives) and return their records.

    ``options``: see :func:`~gaussian_mri.cohort.job.run_subject` (``threads`` is filled in here).
    ``scheduler``: ``"none"``, ``"local"`` or a scheduler address (see the module docstring).
    """
    check_scheduler(scheduler)
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    if runs:
        write_dataset_description(output_dir, runs[0].bids_dir)
    run_id = uuid.uuid4().hex
    removed = clean_temporary(output_dir)
    if removed:
        log.info("removed %d entry(ies) of interrupted earlier runs (owner gone) from %s/.tmp", len(removed), output_dir)
    n = len(runs)
    count = [0]

    def report(rec: dict) -> None:
        count[0] += 1
        (log.warning if rec["status"] == "failed" else log.info)("[%d/%d] %s", count[0], n, _describe(rec))
        if on_done is not None:
            on_done(rec)

    options = {**options, "run_id": run_id}
    if threads is not None:
        options["threads"] = threads
    try:
        if scheduler == "none":
            return run_sequential(runs, output_dir, options, report)
        if scheduler == "local":
            plan = plan_local_cluster(workers, threads=threads)
            if plan.n_workers == 1 or n == 1:
                log.info("one worker planned: running the %d run(s) one after the other in this process", n)
                return run_sequential(runs, output_dir, options, report)
            try:
                _require_distributed()
            except MissingDependencyError:
                if workers is not None:
                    raise
                log.warning("distributed is not installed: running the runs one after the other (%s for parallel workers)", INSTALL)
                return run_sequential(runs, output_dir, options, report)
            from distributed import Client

            options["threads"] = options.get("threads") or plan.torch_threads
            log.info("local Dask cluster: %d worker process(es), %d torch thread(s) per run%s", plan.n_workers,
                     options["threads"], f", GPUs {', '.join(plan.gpus)}" if plan.gpus else "")
            with start_local_cluster(plan) as cluster, Client(cluster) as client:
                client.wait_for_workers(plan.n_workers)
                return run_with_client(client, runs, output_dir, options, retries=retries, on_done=report)
        _require_distributed()
        from distributed import Client

        with Client(scheduler) as client:
            if not options.get("threads"):
                options["threads_by_worker"] = threads_by_worker(client)
            log.info("Dask scheduler %s: %d worker(s) now", scheduler, len(_workers(client)))
            return run_with_client(client, runs, output_dir, options, retries=retries, on_done=report)
    finally:
        clean_temporary(output_dir, run_id)  # what this run's killed workers left behind (other runs' entries stay)
