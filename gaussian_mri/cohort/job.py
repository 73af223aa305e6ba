"""One subject/session: read its stacks, reconstruct, write the BIDS-derivatives folder atomically.

:func:`run_subject` is what a Dask worker (or the sequential loop) runs. It never raises for a
problem of the subject (unreadable or corrupt input, failed fit, out of memory): it returns a record
with ``status`` ``"failed"`` and the reason, and writes it to ``logs/<key>_status.json``, so one
subject's failure does not stop the others. It is idempotent: outputs that are already complete and
valid for the same inputs and options are kept (``status`` ``"skipped"``), and a run is published by
renaming a finished folder into place, so a task re-run after a worker was killed gives exactly one
output set.

Validity is the inputs (SHA-256) and the configuration, not the engine version: outputs of another
gaussian-mri version are kept (the skip message names both versions; ``--rerun`` redoes them). A
``--qc`` run over outputs of a ``--no-qc`` run adds the missing QC report in place. A failed run
leaves an earlier run's complete outputs where they are; its record says ``failed`` with
"(previous outputs kept, from <date>)" and ``previous_outputs``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .._atomic import atomic_write_text
from .bids import Run
from .derivatives import (
    ENGINE_DIR,
    TMP_DIR,
    SubjectLock,
    check_outputs,
    input_checksums,
    output_names,
    owner_record,
    publish,
    sha256,
    write_log,
    write_status,
)

__all__ = ["PeakMemory", "failure_record", "run_subject"]

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PeakMemory:
    """Peak resident memory of this process while the block runs (and peak CUDA memory, when used).

    On Linux the kernel's high-water mark is reset at the start (``/proc/self/clear_refs``, value 5)
    and read at the end (``VmHWM``): the peak of this block. Elsewhere ``resource.getrusage``'s
    ``ru_maxrss``, the peak of the whole process so far (an upper bound). :attr:`method` says which.
    In a Dask worker running several tasks at once the figure covers all of them.
    """

    def __init__(self) -> None:
        self.method = "ru_maxrss (process lifetime)"
        self.peak_mib: float | None = None
        self.cuda_mib: float | None = None

    def __enter__(self) -> PeakMemory:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.method = "VmHWM (reset at the start of the run)"
        except OSError:
            pass
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.method.startswith("VmHWM"):
            try:
                with open("/proc/self/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            self.peak_mib = int(line.split()[1]) / 1024
            except OSError:
                pass
        if self.peak_mib is None:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mib = rss / (1024 * 1024 if sys.platform == "darwin" else 1024)
            self.method = "ru_maxrss (process lifetime)"
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda_mib = torch.cuda.max_memory_allocated() / 2**20


class _ThreadLog(logging.Handler):
    """Collects the ``gaussian_mri`` log records of the calling thread (a Dask worker may run others)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(self.format(record))


def _worker_address() -> str | None:
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return get_worker().address
    except (ValueError, ImportError):
        return None


def _job_threads(options: dict) -> int | None:
    """Torch threads for this run: ``options["threads"]``; inside a Dask worker the value planned for it
    (``options["threads_by_worker"]``, :func:`.runner.plan_threads`, by host and CPU set), else the cores this process may use divided by the worker's
    task slots (Dask's nanny sets ``OMP_NUM_THREADS=1``, so torch would otherwise use one thread);
    outside Dask None (torch's default)."""
    if options.get("threads"):
        return int(options["threads"])
    if _worker_address() is None:
        return None
    from distributed import get_worker

    worker = get_worker()
    from .runner import _affinity_set, cpu_key

    by_worker = options.get("threads_by_worker") or {}
    key = cpu_key(worker.ip, _affinity_set())
    if key in by_worker:
        return int(by_worker[key])
    cores = len(_affinity_set())
    return max(1, cores // max(1, worker.state.nthreads))


def _base_record(run: Run, output_dir: Path) -> dict:
    from .. import __version__

    return {
        "subject": run.subject,
        "session": run.session,
        "key": run.key,
        "status": None,
        "message": "",
        "started": _now(),
        "finished": None,
        "time_s": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": _worker_address(),
        "engine_version": __version__,
        "output": run.folder.as_posix(),
    }


def failure_record(run: Run, message: str, **extra) -> dict:
    """A ``failed`` record for a run that did not return one (its worker died too often)."""
    from .. import __version__

    return {
        "subject": run.subject,
        "session": run.session,
        "key": run.key,
        "status": "failed",
        "message": message,
        "started": None,
        "finished": _now(),
        "time_s": None,
        "engine_version": __version__,
        "output": run.folder.as_posix(),
        **extra,
    }


def _read(path: Path, role: str, run: Run):
    from ..image import read_image

    try:
        return read_image(path)
    except Exception as exc:  # a truncated .nii.gz raises EOFError / zlib.error from nibabel
        rel = os.path.relpath(path, run.bids_dir)
        raise _InputError(f"cannot read {role} {rel}: {type(exc).__name__}: {exc}") from exc


class _InputError(Exception):
    """An input that cannot be used (unreadable file, discovery problem): the message says which."""


def _weights_summary(slices: list[dict]) -> dict:
    w = [float(r["weight"]) for r in slices]
    if not w:
        return {"mean": None, "min": None, "fraction_below_0.5": None}
    return {"mean": sum(w) / len(w), "min": min(w), "fraction_below_0.5": sum(x < 0.5 for x in w) / len(w)}


def _qc_report(unit: Path, run: Run, notes: list[str], reference_stack: int | None) -> Path | None:
    """The QC report of the run folder ``unit`` (engine files in ``unit/gaussiansvr``, the volume and mask
    either there or already in ``anat/``); a failure is a warning in ``notes``, never the run's failure."""
    from ..qc import write_report_safely
    from ..svr.files import masks_as_fitted

    engine_dir = unit / ENGINE_DIR
    names = output_names(run)
    moved = {role: unit / names[role] for role in ("volume", "mask") if (unit / names[role]).is_file()}
    masks = masks_as_fitted(run.masks, len(run.stacks), engine_dir, reference_stack)
    return write_report_safely(engine_dir, list(run.stacks), masks, title=f"{run.key} (GaussianSVR)",
                               volume=moved.get("volume"), mask=moved.get("mask"), notes=notes, logger=log)


def _reconstruct(run: Run, unit: Path, options: dict, notes: list[str], timings: dict) -> dict:
    """Reconstruct into the (temporary) folder ``unit``; returns what the sidecar needs."""
    from .._torch_compat import resolve_device
    from ..svr import preset, reconstruct
    from ..svr.io import save_result

    t0 = time.perf_counter()
    stacks = [_read(p, "stack", run) for p in run.stacks]
    masks = None if run.masks is None else [None if p is None else _read(p, "mask", run) for p in run.masks]
    timings["read_s"] = time.perf_counter() - t0
    cfg = preset(options.get("preset", "fast"), **(options.get("overrides") or {}))
    result = reconstruct(stacks, masks, config=cfg)
    t0 = time.perf_counter()
    engine_dir = unit / ENGINE_DIR
    written = save_result(result, engine_dir)
    timings["save_s"] = time.perf_counter() - t0
    # The BIDS files: the volume, mask and maps move from the engine's folder into anat/.
    names = output_names(run)
    (unit / "anat").mkdir(parents=True, exist_ok=True)
    moved = {}
    for role in ("volume", "mask", "scale", "anisotropy"):
        if role in written:
            os.replace(written[role], unit / names[role])
            moved[role] = names[role]
    report = engine_dir / "report.json"
    if report.is_file():  # its list of outputs now points at the moved files
        doc = json.loads(report.read_text())
        doc["outputs"] = {k: (f"../{moved[k]}" if k in moved else os.path.basename(v)) for k, v in written.items()}
        atomic_write_text(report, json.dumps(doc, indent=2))
    qc = None
    if options.get("qc", True):  # after the move: the report reads (and names) the files in anat/
        t0 = time.perf_counter()
        qc = _qc_report(unit, run, notes, cfg.reference_stack)
        timings["qc_s"] = time.perf_counter() - t0
    from dataclasses import asdict

    return {
        "config": asdict(result.config),
        "device": str(resolve_device(cfg.device)),
        "kernels": result.kernels,
        "engine_timings_s": result.timings,
        "warnings": list(result.warnings),
        "n_stacks": len(stacks),
        "n_slices": len(result.slices),
        "n_slices_input": int(sum(s.shape[0] for s in stacks)),
        "slice_weights": _weights_summary(result.slices),
        "final_loss": result.losses[-1] if result.losses else None,
        "qc_report": None if qc is None else Path(qc).relative_to(unit).as_posix(),
    }


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in items))


def run_subject(run: Run, output_dir: str | os.PathLike, options: dict) -> dict:
    """Reconstruct one subject/session into ``output_dir`` (see the module docstring).

    ``options``: ``preset`` (name), ``overrides`` (:class:`~gaussian_mri.svr.SVRConfig` fields),
    ``qc`` (write the QC report, default True), ``threads`` (torch threads; default: see
    :func:`_job_threads`), ``rerun`` (reconstruct even when the outputs are complete and valid),
    ``run_id`` (the participant-level run this task belongs to; see :class:`.derivatives.SubjectLock`).
    Returns the run's record (also written to ``logs/<key>_status.json`` unless skipped).

    Concurrent runs on one output folder are safe: the reconstruction happens under the subject's lock
    ``.tmp/<key>.lock``; a subject locked by a live run elsewhere is not reconstructed (``status``
    ``"skipped"``, message ``"running elsewhere ..."``, no status file written: the owner writes it).
    """
    output_dir = Path(output_dir)
    record = _base_record(run, output_dir)
    t_start = time.perf_counter()
    handler = _ThreadLog()
    pkg_log = logging.getLogger("gaussian_mri")
    old_level = pkg_log.level
    pkg_log.addHandler(handler)
    if pkg_log.getEffectiveLevel() > logging.INFO and _worker_address() is not None:
        pkg_log.setLevel(logging.INFO)  # a worker's log file gets the progress; in-process the caller's level holds
    work: Path | None = None
    lock: SubjectLock | None = None
    threads_before = None
    notes: list[str] = list(run.notes)
    try:
        if run.problem:
            raise _InputError(run.problem)
        inputs = input_checksums(run)
        reason = "--rerun" if options.get("rerun") else check_outputs(run, output_dir, inputs, options)
        if reason is None and not _qc_missing(run, output_dir, options):
            return _skipped(run, output_dir, record)
        lock = SubjectLock(output_dir, run.key, options.get("run_id"))
        other = lock.acquire()
        if other is not None:
            log.warning("%s: running elsewhere (pid %s on %s since %s), not reconstructed here", run.key,
                        other.get("pid"), other.get("host"), other.get("started"))
            return {**record, "status": "skipped", "finished": _now(), "running_elsewhere": other,
                    "message": f"running elsewhere: pid {other.get('pid')} on {other.get('host')} since {other.get('started')}"}
        if reason is not None and reason != "--rerun":
            reason = check_outputs(run, output_dir, inputs, options)  # another run may have published it meanwhile
        if reason is None:
            _add_qc_report(run, output_dir, notes)
            return _skipped(run, output_dir, record)
        log.info("%s: reconstructing (%s)", run.key, reason)
        work = output_dir / TMP_DIR / f"{run.key}.{secrets.token_hex(4)}"
        (work / "unit").mkdir(parents=True)
        atomic_write_text(work / "attempt.json", json.dumps({**owner_record(options.get("run_id")), "worker": record["worker"]}))
        threads = _job_threads(options)
        if threads:
            import SimpleITK as sitk  # the stack registration's threads
            import torch

            threads_before = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
            torch.set_num_threads(threads)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        timings: dict = {}
        with PeakMemory() as mem, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = _reconstruct(run, work / "unit", options, notes, timings)
        info["warnings"] = _dedupe(info["warnings"] + notes + [str(w.message) for w in caught])
        timings["job_s"] = time.perf_counter() - t_start
        record.update(
            status="success",
            time_s=round(timings["job_s"], 3),
            peak_memory_mib=None if mem.peak_mib is None else round(mem.peak_mib, 1),
            memory_method=mem.method,
            peak_cuda_mib=None if mem.cuda_mib is None else round(mem.cuda_mib, 1),
            threads=threads,
            **{k: info[k] for k in ("device", "n_stacks", "n_slices", "slice_weights", "qc_report")},
            warnings=info["warnings"],
        )
        record["finished"] = _now()
        _write_sidecar(run, work / "unit", options, inputs, info, timings, record)
        publish(work / "unit", output_dir / run.folder, work)  # a replaced folder goes into this attempt's folder
        record["message"] = f"done in {record['time_s']:.1f} s" + (f", {len(info['warnings'])} warning(s)" if info["warnings"] else "")
    except Exception as exc:  # noqa: BLE001 - one subject's failure is recorded, never raised
        message = str(exc) if isinstance(exc, _InputError) else f"{type(exc).__name__}: {exc}"
        record.update(status="failed", message=message, finished=_now(),
                      time_s=round(time.perf_counter() - t_start, 3), warnings=_dedupe(notes))
        _note_kept_outputs(run, output_dir, record)
        handler.lines.append("".join(traceback.format_exception(exc)))
        log.error("%s failed: %s", run.key, record["message"])
    finally:
        pkg_log.removeHandler(handler)
        pkg_log.setLevel(old_level)
        if threads_before is not None:
            import SimpleITK as sitk
            import torch

            torch.set_num_threads(threads_before[0])
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads_before[1])
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            lock.release()
    if record["status"] is not None:
        write_status(output_dir, record)
        write_log(output_dir, run.key, handler.lines)
    return record


def _published_sidecar(run: Run, output_dir: Path) -> dict | None:
    try:
        doc = json.loads((output_dir / run.folder / output_names(run)["sidecar"]).read_text())["GaussianSVR"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc if isinstance(doc, dict) else None


def _note_kept_outputs(run: Run, output_dir: Path, record: dict) -> None:
    """A failed run leaves an earlier run's published outputs in place (they are complete, for their own
    inputs and configuration): say so in the record, so the status and group.tsv do not pass them off as
    this run's result nor hide them."""
    doc = _published_sidecar(run, output_dir)
    if doc is None or doc.get("status") != "success":
        return
    record["previous_outputs"] = {"finished": doc.get("finished"), "engine_version": doc.get("engine_version")}
    record["message"] += f" (previous outputs kept, from {doc.get('finished')})"


def _qc_missing(run: Run, output_dir: Path, options: dict) -> bool:
    """QC requested but the published outputs have no report (made by a ``--no-qc`` run)."""
    if not options.get("qc", True):
        return False
    doc = _published_sidecar(run, output_dir) or {}
    return not (doc.get("qc_report") and (output_dir / run.folder / doc["qc_report"]).is_file())


def _add_qc_report(run: Run, output_dir: Path, notes: list[str]) -> None:
    """Write the missing QC report of complete outputs in place (under the subject's lock) and record it in
    the sidecar (``qc_report`` and the report's files in ``outputs``, with their SHA-256)."""
    if not _qc_missing(run, output_dir, {"qc": True}):
        return
    unit = output_dir / run.folder
    sidecar = unit / output_names(run)["sidecar"]
    full = json.loads(sidecar.read_text())
    doc = full["GaussianSVR"]
    qc = _qc_report(unit, run, notes, (doc.get("config") or {}).get("reference_stack"))
    if qc is None:
        return
    doc["qc_report"] = Path(qc).relative_to(unit).as_posix()
    qc_dir = Path(qc).parent.relative_to(unit).as_posix() + "/"
    doc["outputs"] = {rel: d for rel, d in (doc.get("outputs") or {}).items() if not rel.startswith(qc_dir)}
    for f in sorted(Path(qc).parent.rglob("*")):
        if f.is_file():
            doc["outputs"][f.relative_to(unit).as_posix()] = sha256(f)
    atomic_write_text(sidecar, json.dumps(full, indent=2, default=str) + "\n")
    log.info("%s: QC report added to the complete outputs", run.key)


def _write_sidecar(run: Run, unit: Path, options: dict, inputs: list[dict], info: dict, timings: dict, record: dict) -> Path:
    import torch

    from .. import __version__

    names = output_names(run)
    outputs = {}
    for p in sorted(unit.rglob("*")):
        rel = p.relative_to(unit).as_posix()
        if p.is_file() and rel != names["sidecar"]:
            outputs[rel] = sha256(p)
    doc = {
        "Description": "Isotropic T2-weighted volume reconstructed from thick-slice stacks by GaussianSVR "
        "(slice-to-volume reconstruction with 3D Gaussians and an analytic PSF)",
        "Sources": [f"bids:raw:{d['path']}" for d in inputs],
        "SkullStripped": False,
        "GaussianSVR": {
            "status": "success",
            "engine_version": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "options": {"preset": options.get("preset", "fast"), "overrides": options.get("overrides") or {}},
            "execution": {"threads": record.get("threads"), "qc": bool(options.get("qc", True))},
            "config": info["config"],
            "device": info["device"],
            "kernels": info["kernels"],
            "inputs": inputs,
            "outputs": outputs,
            "timings_s": {**{k: round(v, 3) for k, v in timings.items()}, "engine": info["engine_timings_s"]},
            "peak_memory_mib": record["peak_memory_mib"],
            "peak_memory_method": record["memory_method"],
            "peak_cuda_memory_mib": record["peak_cuda_mib"],
            "n_stacks": info["n_stacks"],
            "n_slices": info["n_slices"],
            "slice_weights": info["slice_weights"],
            "final_loss": info["final_loss"],
            "qc_report": info["qc_report"],
            "warnings": info["warnings"],
            "host": record["host"],
            "pid": record["pid"],
            "worker": record["worker"],
            "started": record["started"],
            "finished": record["finished"],
        },
    }
    return atomic_write_text(unit / names["sidecar"], json.dumps(doc, indent=2, default=str) + "\n")


def _skipped(run: Run, output_dir: Path, record: dict) -> dict:
    """The record of a run whose outputs are complete and valid: rebuilt from its sidecar (and its
    status file rewritten when missing, e.g. the worker was killed between publishing and logging)."""
    sidecar = output_dir / run.folder / output_names(run)["sidecar"]
    doc = json.loads(sidecar.read_text())["GaussianSVR"]
    done = {
        **record,
        "status": "success",
        "message": "outputs complete and valid",
        "started": doc.get("started"),
        "finished": doc.get("finished"),
        "time_s": (doc.get("timings_s") or {}).get("job_s"),
        "host": doc.get("host"),
        "pid": doc.get("pid"),
        "worker": doc.get("worker"),
        "engine_version": doc.get("engine_version"),
        "peak_memory_mib": doc.get("peak_memory_mib"),
        "memory_method": doc.get("peak_memory_method"),
        "peak_cuda_mib": doc.get("peak_cuda_memory_mib"),
        "threads": (doc.get("execution") or {}).get("threads"),
        "device": doc.get("device"),
        "n_stacks": doc.get("n_stacks"),
        "n_slices": doc.get("n_slices"),
        "slice_weights": doc.get("slice_weights"),
        "qc_report": doc.get("qc_report"),
        "warnings": doc.get("warnings", []),
    }
    from .derivatives import status_path

    try:
        current = json.loads(status_path(output_dir, run.key).read_text())
    except (OSError, ValueError):
        current = None
    if current is None or any(current.get(k) != done[k] for k in ("status", "started", "qc_report")):
        write_status(output_dir, done)
    log.info("%s: outputs complete and valid, skipped", run.key)
    message = done["message"]
    from .. import __version__

    if doc.get("engine_version") != __version__:  # not a reason to redo a subject: said, and --rerun redoes it
        message += f" (made by gaussian-mri {doc.get('engine_version')}, this is {__version__}; --rerun to redo)"
    return {**done, "status": "skipped", "message": message}
