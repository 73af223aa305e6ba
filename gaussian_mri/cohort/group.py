"""The group level: one TSV row per participant-level run, and the cohort's QC index page.

``group.tsv`` (BIDS tabular file: tab-separated, ``n/a`` for missing values) with its ``group.json``
column descriptions, read from the run records ``logs/<key>_status.json`` that the participant level
writes for every run, failed ones included.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .._atomic import atomic_write_text
from .bids import CohortError, strip_label
from .derivatives import LOG_DIR

__all__ = ["COLUMNS", "collect", "write_group"]

log = logging.getLogger(__name__)

#: column -> description (written to group.json)
COLUMNS = {
    "participant_id": "subject (sub-<label>)",
    "session_id": "session (ses-<label>), n/a without sessions",
    "status": "success or failed",
    "time_s": "wall time of the run in seconds (reading, reconstruction, writing, QC report)",
    "peak_memory_mib": "peak resident memory of the process that ran it, MiB (see memory_method)",
    "memory_method": "VmHWM: Linux high-water mark reset at the start of the run; ru_maxrss: peak of the whole worker process",
    "peak_cuda_memory_mib": "peak CUDA memory allocated by PyTorch, MiB (n/a on the CPU)",
    "device": "device of the fit",
    "n_stacks": "number of input stacks",
    "n_slices": "number of slices fitted (inside the masks)",
    "slice_weight_mean": "mean robust slice weight (1 = fully trusted)",
    "slice_weight_min": "smallest robust slice weight",
    "slice_weight_fraction_below_0.5": "fraction of slices with a weight below 0.5 (outliers)",
    "n_warnings": "number of warnings (see the sidecar)",
    "engine_version": "gaussian-mri version",
    "host": "machine that ran it",
    "finished": "end time (UTC, ISO 8601)",
    "output": "the run's folder in the derivatives",
    "message": "what happened (the reason of a failure)",
    "previous_outputs": "failed runs only: end time of an earlier successful run whose outputs are still published "
    "(kept, not this run's result); n/a: none",
}


def _fmt(value) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("\t", " ").replace("\n", " ")


def collect(output_dir: str | os.PathLike, participant_labels: list[str] | None = None,
            session_labels: list[str] | None = None) -> list[dict]:
    """The run records in ``output_dir/logs`` (optionally of some participants/sessions), sorted."""
    logs = Path(output_dir) / LOG_DIR
    records = []
    for p in sorted(logs.glob("*_status.json")) if logs.is_dir() else []:
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("ignored unreadable run record %s: %s", p, exc)
    if participant_labels:
        wanted = {strip_label(x, "sub-") for x in participant_labels}
        records = [r for r in records if r.get("subject") in wanted]
    if session_labels:
        wanted = {strip_label(x, "ses-") for x in session_labels}
        records = [r for r in records if r.get("session") in wanted]
    return sorted(records, key=lambda r: (str(r.get("subject")), str(r.get("session") or "")))


def _row(rec: dict) -> dict:
    w = rec.get("slice_weights") or {}
    return {
        "participant_id": f"sub-{rec.get('subject')}",
        "session_id": f"ses-{rec['session']}" if rec.get("session") else None,
        "status": rec.get("status"),
        "time_s": rec.get("time_s"),
        "peak_memory_mib": rec.get("peak_memory_mib"),
        "memory_method": (rec.get("memory_method") or "").split(" ")[0] or None,
        "peak_cuda_memory_mib": rec.get("peak_cuda_mib"),
        "device": rec.get("device"),
        "n_stacks": rec.get("n_stacks"),
        "n_slices": rec.get("n_slices"),
        "slice_weight_mean": w.get("mean"),
        "slice_weight_min": w.get("min"),
        "slice_weight_fraction_below_0.5": w.get("fraction_below_0.5"),
        "n_warnings": len(rec.get("warnings") or []) if rec.get("status") == "success" else None,
        "engine_version": rec.get("engine_version"),
        "host": rec.get("host"),
        "finished": rec.get("finished"),
        "output": rec.get("output"),
        "message": rec.get("message"),
        "previous_outputs": (rec.get("previous_outputs") or {}).get("finished") if rec.get("status") == "failed" else None,
    }


def write_group(output_dir: str | os.PathLike, participant_labels: list[str] | None = None,
                session_labels: list[str] | None = None, *, index: bool = True) -> dict[str, Path]:
    """Write ``group.tsv``, ``group.json`` and (with ``index``) the QC index ``index.html``."""
    out = Path(output_dir)
    if not out.is_dir():
        raise CohortError(f"output folder not found: {out} (run the participant level first)")
    records = collect(out, participant_labels, session_labels)
    if not records:
        raise CohortError(f"no participant-level results in {out / LOG_DIR} (run the participant level first)")
    lines = ["\t".join(COLUMNS)]
    for rec in records:
        row = _row(rec)
        lines.append("\t".join(_fmt(row[c]) for c in COLUMNS))
    written = {
        "tsv": atomic_write_text(out / "group.tsv", "\n".join(lines) + "\n"),
        "json": atomic_write_text(out / "group.json", json.dumps({c: {"Description": d} for c, d in COLUMNS.items()}, indent=2) + "\n"),
    }
    if index:
        page = _write_index(out, records)
        if page is not None:
            written["index"] = page
    return written


def _write_index(out: Path, records: list[dict]) -> Path | None:
    from ..qc import write_index

    entries = []
    for rec in records:
        report = None
        if rec.get("status") == "success" and rec.get("qc_report"):
            candidate = Path(rec["output"]) / rec["qc_report"]
            if (out / candidate).is_file():
                report = candidate.as_posix()
        entries.append({
            "subject": rec.get("subject"),
            "session": rec.get("session"),
            "status": "ok" if rec.get("status") == "success" else rec.get("status"),  # the index's words
            "report": report,
            "time_s": rec.get("time_s"),
            "message": rec.get("message"),
        })
    from .._optional import MissingDependencyError

    try:
        return write_index(entries, out / "index.html")
    except MissingDependencyError as exc:
        log.warning("QC index not written: %s", exc)
        return None
