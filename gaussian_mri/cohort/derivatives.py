"""The BIDS-derivatives output of a cohort: names, ``dataset_description.json``, checks, atomic publication.

Layout of ``OUTPUT_DIR`` (BIDS derivatives; ``<key>`` is ``sub-<label>`` or ``sub-<label>_ses-<label>``)::

    dataset_description.json        DatasetType "derivative", GeneratedBy, SourceDatasets
    .bidsignore                     the non-BIDS files below
    sub-<label>/[ses-<label>/]
        anat/<key>_rec-gaussiansvr_T2w.nii.gz              the reconstruction
        anat/<key>_rec-gaussiansvr_T2w.json                its sidecar: status, full configuration, engine
                                                           version, inputs with SHA-256, outputs with SHA-256,
                                                           timings, peak memory, warnings
        anat/<key>_rec-gaussiansvr_desc-brain_mask.nii.gz  the output mask
        anat/<key>_rec-gaussiansvr_desc-scale_map.nii.gz   covariance maps (with maps on)
        anat/<key>_rec-gaussiansvr_desc-anisotropy_map.nii.gz
        gaussiansvr/                                       the engine's other files: slices.tsv, gaussians.npz,
                                                           tensor.nrrd, report.json, qc/report.html
    logs/<key>_status.json, logs/<key>.log                 one record and one log per run (failures included;
                                                           a task lost with its workers gets a one-line log)
    group.tsv, group.json, index.html                      the group level
    .tmp/<key>.<hex>/ (attempt.json: owner)                work in progress of a subject, removed when done
    .tmp/<key>.lock                                        who reconstructs <key> now (:class:`SubjectLock`)

A subject/session folder is written in ``.tmp/`` and renamed into place only when complete (the
sidecar is its last file), so an interrupted run leaves no half-written subject; :func:`check_outputs`
decides whether a finished one can be skipped. Several runs may use one output folder at once: see
:class:`SubjectLock` and :func:`clean_temporary`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path

from .._atomic import atomic_write_text
from .bids import Run

__all__ = [
    "ENGINE_DIR",
    "LOG_DIR",
    "REC",
    "TMP_DIR",
    "check_outputs",
    "SubjectLock",
    "clean_temporary",
    "comparable_config",
    "input_checksums",
    "output_names",
    "owner_dead",
    "owner_record",
    "publish",
    "resolved_config",
    "sha256",
    "status_path",
    "write_dataset_description",
    "write_log",
    "write_status",
]

REC = "gaussiansvr"  #: the ``rec`` entity of the outputs
ENGINE_DIR = "gaussiansvr"  #: per-run folder of the engine's non-BIDS files
TMP_DIR = ".tmp"
LOG_DIR = "logs"
CODE_URL = "https://github.com/GaussianMRI/SlicerGaussianMRI"
BIDS_VERSION = "1.10.0"
#: configuration fields that choose where or how a run goes, not what it computes: changing them keeps outputs valid
EXECUTION_ONLY = ("device", "kernels", "preview_every_s")
_BIDSIGNORE = "logs/\ngroup.tsv\ngroup.json\nindex.html\n*_map.nii.gz\n**/gaussiansvr/\n"


def output_names(run: Run) -> dict[str, str]:
    """``{role: path relative to the run's folder}`` of the BIDS files of a run."""
    base = f"anat/{run.key}_rec-{REC}"
    return {
        "volume": f"{base}_T2w.nii.gz",
        "sidecar": f"{base}_T2w.json",
        "mask": f"{base}_desc-brain_mask.nii.gz",
        "scale": f"{base}_desc-scale_map.nii.gz",
        "anisotropy": f"{base}_desc-anisotropy_map.nii.gz",
    }


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def input_checksums(run: Run) -> list[dict]:
    """``[{role, path (relative to the BIDS folder), bytes, sha256}]`` of the run's inputs; raises
    :class:`FileNotFoundError` naming a missing one."""
    out = []
    for role, p in run.inputs():
        if not Path(p).is_file():
            raise FileNotFoundError(f"{role} {p} not found")
        out.append({"role": role, "path": _rel(p, run.bids_dir), "bytes": Path(p).stat().st_size, "sha256": sha256(p)})
    return out


def _json_normal(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def comparable_config(config: dict) -> dict:
    """The fields of a resolved :class:`~gaussian_mri.svr.SVRConfig` (as a dict) that decide the result."""
    return _json_normal({k: v for k, v in config.items() if k not in EXECUTION_ONLY})


def resolved_config(options: dict) -> dict:
    """The full configuration of ``options`` (``preset`` + ``overrides``), as a dict (imports torch)."""
    from dataclasses import asdict

    from ..svr import preset

    return asdict(preset(options.get("preset", "fast"), **(options.get("overrides") or {})))


def check_outputs(run: Run, output_dir: str | os.PathLike, inputs: list[dict], options: dict) -> str | None:
    """``None`` when the run's outputs are complete and valid for these inputs and options, else the
    reason they are not (``"no outputs"``, ``"input changed: ..."``, ...).

    Valid means: the folder and the sidecar exist, the sidecar says success, the configuration
    (but :data:`EXECUTION_ONLY`) and the inputs (paths and SHA-256) are those of this run, every
    output listed in the sidecar is there with its SHA-256, and the volume and mask load as NIfTI.
    """
    unit = Path(output_dir) / run.folder
    names = output_names(run)
    sidecar = unit / names["sidecar"]
    if not unit.is_dir():
        return "no outputs"
    if not sidecar.is_file():
        return f"no sidecar {names['sidecar']}"
    try:
        doc = json.loads(sidecar.read_text())["GaussianSVR"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"sidecar unreadable: {exc}"
    if doc.get("status") != "success":
        return f"previous status {doc.get('status')!r}"
    if comparable_config(doc.get("config") or {}) != comparable_config(resolved_config(options)):
        return "configuration changed"
    old = {(d.get("role"), d.get("path")): d.get("sha256") for d in doc.get("inputs", [])}
    new = {(d["role"], d["path"]): d["sha256"] for d in inputs}
    if old != new:
        changed = sorted({k[1] for k in set(old) ^ set(new)} | {k[1] for k in old.keys() & new.keys() if old[k] != new[k]})
        return "input changed: " + ", ".join(changed)
    outputs = doc.get("outputs") or {}
    for role in ("volume", "mask"):
        if names[role] not in outputs:
            return f"sidecar lists no {role}"
    for rel, digest in outputs.items():
        p = unit / rel
        if not p.is_file():
            return f"output missing: {rel}"
        if sha256(p) != digest:
            return f"output changed or corrupt: {rel}"
    try:
        import nibabel as nib

        for role in ("volume", "mask"):
            img = nib.load(str(unit / names[role]))
            if len(img.shape) != 3 or min(img.shape) < 1:
                return f"output {names[role]} is not a 3D volume"
    except Exception as exc:  # noqa: BLE001 - any reader error means "not valid"
        return f"output unreadable: {type(exc).__name__}: {exc}"
    return None


def publish(work: Path, target: Path, trash: Path) -> None:
    """Rename the finished folder ``work`` onto ``target`` (replacing an earlier, stale ``target``).

    Both renames stay inside the output folder (one file system), so a reader sees either the old
    complete folder, no folder for an instant, or the new complete folder; never a partial one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = trash / f"{target.name}.old.{secrets.token_hex(4)}"
        try:
            os.rename(target, old)
        except FileNotFoundError:  # another attempt of the same run moved it first
            old = None
    try:
        os.rename(work, target)
    except OSError:
        if not target.is_dir():
            raise
        # another attempt of the same run (e.g. a worker presumed dead) published a complete folder just now
        shutil.rmtree(work, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def owner_record(run_id: str | None = None) -> dict:
    """Who owns a temporary folder or a lock: this process (``host``, ``pid``, its start ``ticks`` where
    ``/proc`` has them, so a reused pid is told apart), ``run_id`` (the participant-level run) and ``started``."""
    from datetime import datetime, timezone

    return {"host": socket.gethostname(), "pid": os.getpid(), "ticks": _start_ticks(os.getpid()), "run_id": run_id,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: start time after boot, in ticks
    except (OSError, IndexError, ValueError):
        return None


def owner_dead(owner: dict | None) -> bool:
    """True only when the owner is provably gone: it ran on this host and its pid is not alive (or is now
    another process, by its start time). An owner on another host is never presumed dead."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    ticks = owner.get("ticks")
    return ticks is not None and _start_ticks(pid) not in (None, ticks)


def _owner_of(entry: Path) -> dict | None:
    path = entry / "attempt.json" if entry.is_dir() else entry
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def clean_temporary(output_dir: str | os.PathLike, run_id: str | None = None, *, orphan_age_s: float = 3600.0) -> list[str]:
    """Remove what interrupted runs left in ``OUTPUT_DIR/.tmp``; returns the names removed.

    Safe while other participant-level runs use ``output_dir``: an entry (an attempt folder with its
    ``attempt.json``, a ``<key>.lock`` file) is removed only when it belongs to the run ``run_id`` or its
    owner is provably dead (:func:`owner_dead`: same host, pid gone). An entry without a readable owner
    record is removed only when older than ``orphan_age_s`` (the owner writes it right after creating it).
    """
    import time

    tmp = Path(output_dir) / TMP_DIR
    removed = []
    if not tmp.is_dir():
        return removed
    for entry in sorted(tmp.iterdir()):
        owner = _owner_of(entry)
        if owner is None:
            try:
                stale = time.time() - entry.stat().st_mtime > orphan_age_s
            except OSError:
                continue
        else:
            stale = (run_id is not None and owner.get("run_id") == run_id) or owner_dead(owner)
        if stale:
            _remove(entry)
            removed.append(entry.name)
    try:
        tmp.rmdir()  # only when empty
    except OSError:
        pass
    return removed


class SubjectLock:
    """``OUTPUT_DIR/.tmp/<key>.lock``, created with ``O_EXCL``, holding its owner's record: at most one run
    reconstructs a subject/session at a time, across processes and hosts sharing the output folder.

    :meth:`acquire` returns ``None`` when taken, else the record of the live owner. A lock whose owner is
    provably dead (:func:`owner_dead`), or that belongs to the same participant-level run (``run_id``: Dask
    re-runs a task only once its previous worker is gone, possibly on another host), is taken over.
    """

    def __init__(self, output_dir: str | os.PathLike, key: str, run_id: str | None = None) -> None:
        self.path = Path(output_dir) / TMP_DIR / f"{key}.lock"
        self.owner = owner_record(run_id)
        self.owner["token"] = secrets.token_hex(8)
        self.held = False

    def acquire(self) -> dict | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.owner)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                other = _owner_of(self.path)
                if other is None:  # being written this instant, or broken: wait a moment, then judge by age
                    import time

                    time.sleep(0.2)
                    other = _owner_of(self.path)
                    if other is None:
                        try:
                            if time.time() - self.path.stat().st_mtime < 60:
                                return {"host": "?", "pid": "?", "started": "just now"}
                        except OSError:
                            continue
                same_run = other is not None and self.owner["run_id"] is not None and other.get("run_id") == self.owner["run_id"]
                if other is None or same_run or owner_dead(other):
                    stale = self.path.with_name(f"{self.path.name}.stale.{secrets.token_hex(4)}")
                    try:
                        os.rename(self.path, stale)  # one of several contenders wins the rename
                        stale.unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass
                    continue
                return other
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            self.held = True
            return None
        return _owner_of(self.path) or {"host": "?", "pid": "?"}

    def release(self) -> None:
        if self.held and (_owner_of(self.path) or {}).get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)
        self.held = False


def write_dataset_description(output_dir: str | os.PathLike, bids_dir: str | os.PathLike) -> Path:
    """Write ``dataset_description.json`` (and ``.bidsignore``) of the derivatives, if not there yet."""
    from .. import __version__

    out = Path(output_dir)
    path = out / "dataset_description.json"
    if not (out / ".bidsignore").is_file():
        atomic_write_text(out / ".bidsignore", _BIDSIGNORE)
    if path.is_file():
        return path
    source: dict = {}
    try:
        source = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError):
        pass
    src = {"URL": Path(bids_dir).resolve().as_uri()}
    if source.get("DatasetDOI"):
        src = {"DOI": source["DatasetDOI"]}
    if source.get("Version"):
        src["Version"] = source["Version"]
    doc = {
        "Name": f"GaussianSVR reconstructions of {source.get('Name') or Path(bids_dir).resolve().name}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "gaussian-mri (GaussianSVR)",
                "Version": __version__,
                "Description": "Fetal slice-to-volume reconstruction with 3D Gaussians and an analytic PSF "
                "(Dannecker et al., MIDL 2026); gaussian-mri bids, a BIDS App",
                "CodeURL": CODE_URL,
            }
        ],
        "SourceDatasets": [src],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},  # the "bids:raw:" URIs of the sidecars' Sources
    }
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def status_path(output_dir: str | os.PathLike, key: str) -> Path:
    return Path(output_dir) / LOG_DIR / f"{key}_status.json"


def write_status(output_dir: str | os.PathLike, record: dict) -> Path:
    """Write a run's record to ``logs/<key>_status.json`` (atomically)."""
    path = status_path(output_dir, record["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def write_log(output_dir: str | os.PathLike, key: str, lines: list[str]) -> Path:
    """Write a run's log to ``logs/<key>.log`` (atomically)."""
    path = Path(output_dir) / LOG_DIR / f"{key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "\n".join(lines) + "\n")
