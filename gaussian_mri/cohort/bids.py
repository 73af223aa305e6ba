"""Finding the work in a BIDS dataset: the T2w stacks (and brain masks) of every subject/session.

One :class:`Run` per subject, or per subject and session when the subject has ``ses-*`` folders.
Stacks are the raw-data files ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<key>-<value>...]_T2w.nii[.gz]``
(BIDS specification, "Anatomy imaging data"), ordered by their ``run`` index (then by name): the first
is the reference stack of the reconstruction unless ``reference_stack`` says otherwise.

Brain masks, per stack, come from

* a derivatives folder of the dataset: ``BIDS_DIR/derivatives/<pipeline>/sub-<label>/[ses-<label>/]anat/
  <stack entities>_desc-brain_mask.nii[.gz]`` (the BIDS-derivatives name of a brain mask, as the
  MIALSRTK BIDS App's ``derivatives/manual_masks`` uses it), or
* ``mask_pattern``: a glob template with the placeholders ``{subject}`` and ``{session}`` (labels without
  ``sub-`` / ``ses-``; ``{session}`` is empty without sessions), ``{stem}`` (the stack's file name without
  ``_T2w.nii.gz``, e.g. ``sub-01_ses-2_run-3``) and ``{run}``; relative templates are relative to
  ``BIDS_DIR``. A template without ``{stem}`` or ``{run}`` names one mask per subject/session.

A stack without a mask gets the engine's automatic mask. When the only mask found is the reference
stack's (or a template names one mask per subject/session), it is passed alone
(``reconstruct(stacks, masks=[mask])``: the reference stack's mask, propagated to the other stacks).

References: K. J. Gorgolewski et al., "BIDS apps: Improving ease of use, accessibility, and
reproducibility of neuroimaging data analysis methods", PLoS Comput Biol 13(3): e1005209, 2017;
the BIDS specification, https://bids-specification.readthedocs.io (raw data and derivatives).
"""

from __future__ import annotations

import glob
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..image import sidecar_path

__all__ = ["CohortError", "Run", "find_runs", "strip_label"]

log = logging.getLogger(__name__)

_T2W = re.compile(r"^(?P<stem>sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?(?:_[A-Za-z]+-[A-Za-z0-9]+)*)_T2w\.nii(?:\.gz)?$")
_RUN = re.compile(r"_run-(\d+)")
_PLACEHOLDERS = ("subject", "session", "stem", "run")


class CohortError(ValueError):
    """A problem with the cohort's input (folder, labels, patterns): one clear line for the user."""


@dataclass(frozen=True)
class Run:
    """One reconstruction: the stacks of one subject (and session)."""

    bids_dir: Path
    subject: str  #: label without ``sub-``
    session: str | None  #: label without ``ses-``; None when the subject has no sessions
    stacks: tuple[Path, ...]
    #: one per stack (None: automatic), or a 1-tuple (the reference stack's mask, propagated); None: all automatic
    masks: tuple[Path | None, ...] | None = None
    notes: tuple[str, ...] = ()  #: discovery remarks, copied into the run's warnings
    problem: str | None = None  #: set when the inputs cannot be used: the run fails with this message
    sidecars: tuple[Path, ...] = field(default=())  #: BIDS JSON sidecars of the stacks (slice thickness)

    @property
    def key(self) -> str:
        """``sub-01`` or ``sub-01_ses-2``: the prefix of the output names and of the log files."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> Path:
        """``sub-01`` or ``sub-01/ses-2``: the output folder, relative to the output directory."""
        return Path(f"sub-{self.subject}") / (f"ses-{self.session}" if self.session else "")

    def inputs(self) -> list[tuple[str, Path]]:
        """``(role, path)`` of every input file (stacks, their sidecars, masks), in a fixed order."""
        out = [("stack", p) for p in self.stacks] + [("stack_sidecar", p) for p in self.sidecars]
        out += [("mask", p) for p in (self.masks or ()) if p is not None]
        return out


def strip_label(label: str, prefix: str) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"`` (BIDS Apps pass labels without the prefix; accept both)."""
    label = str(label).strip()
    return label.removeprefix(prefix)


def _run_index(stem: str) -> int:
    m = _RUN.search(stem)
    return int(m.group(1)) if m else -1


def _stacks_in(anat: Path, subject: str, session: str | None) -> list[tuple[str, Path]]:
    found = []
    for p in sorted(anat.glob("*_T2w.nii*")):
        m = _T2W.match(p.name)
        if not m or not p.is_file():
            continue
        if m.group("sub") != subject or (m.group("ses") or None) != session:
            log.warning("ignored %s: its name does not match its folder (sub-%s%s)", p, subject, f"/ses-{session}" if session else "")
            continue
        found.append((m.group("stem"), p))
    return sorted(found, key=lambda t: (_run_index(t[0]), t[0]))


def _derivative_masks(bids_dir: Path, exclude: list[Path], rel: Path, stem: str) -> tuple[Path | None, str | None]:
    deriv = bids_dir / "derivatives"
    if not deriv.is_dir():
        return None, None
    hits = []
    for pipeline in sorted(d for d in deriv.iterdir() if d.is_dir()):
        if any(pipeline.resolve() == e for e in exclude):
            continue
        for suffix in (".nii.gz", ".nii"):
            p = pipeline / rel / "anat" / f"{stem}_desc-brain_mask{suffix}"
            if p.is_file():
                hits.append(p)
    if not hits:
        return None, None
    note = None
    if len(hits) > 1:
        note = f"several masks for {stem}: {', '.join(str(h) for h in hits)}; used the first"
    return hits[0], note


def _pattern_fields(template: str) -> set[str]:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise CohortError(f"--mask-pattern {template!r} is not a valid template: {exc}") from exc
    unknown = names - set(_PLACEHOLDERS)
    if unknown:
        raise CohortError(
            f"--mask-pattern {template!r} has unknown placeholder(s) {sorted(unknown)}; use {{subject}}, {{session}}, {{stem}}, {{run}}"
        )
    return names


def _pattern_mask(bids_dir: Path, template: str, values: dict) -> tuple[Path | None, str | None]:
    pattern = template.format(**values)
    if not Path(pattern).is_absolute():
        pattern = str(bids_dir / pattern)
    hits = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    if len(hits) > 1:
        return None, f"--mask-pattern matches {len(hits)} files for {values.get('stem') or values['subject']}: {', '.join(map(str, hits))}"
    return (hits[0] if hits else None), None


def _subject_dirs(bids_dir: Path) -> dict[str, Path]:
    return {d.name[4:]: d for d in sorted(bids_dir.glob("sub-*")) if d.is_dir() and len(d.name) > 4}


def find_runs(
    bids_dir: str | Path,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    *,
    mask_pattern: str | None = None,
    exclude: list[str | Path] = (),
    reference_stack: int | None = None,
) -> list[Run]:
    """Every subject/session of ``bids_dir`` with T2w stacks (see the module docstring).

    ``exclude``: derivatives folders not to search for masks (the output directory). Raises
    :class:`CohortError` for a missing folder, unknown participant labels, no T2w stack at all, or a
    bad ``mask_pattern``; a problem of one subject (e.g. an ambiguous mask) is put in its
    :attr:`Run.problem` instead, so that the others still run.
    """
    bids_dir = Path(bids_dir).resolve()
    if not bids_dir.is_dir():
        raise CohortError(f"BIDS folder not found: {bids_dir}")
    if not (bids_dir / "dataset_description.json").is_file():
        log.warning("%s has no dataset_description.json: is it a BIDS dataset?", bids_dir)
    fields = _pattern_fields(mask_pattern) if mask_pattern else set()
    per_stack_pattern = bool(fields & {"stem", "run"})
    exclude = [Path(e).resolve() for e in exclude]
    subjects = _subject_dirs(bids_dir)
    if not subjects:
        raise CohortError(f"no subject folders (sub-<label>) in {bids_dir}")
    if participant_labels:
        wanted = [strip_label(p, "sub-") for p in participant_labels]
        unknown = [w for w in wanted if w not in subjects]
        if unknown:
            raise CohortError(
                f"participant label(s) {', '.join(unknown)} not found in {bids_dir} (found: {', '.join(sorted(subjects))})"
            )
        subjects = {w: subjects[w] for w in dict.fromkeys(wanted)}
    sessions_wanted = [strip_label(s, "ses-") for s in session_labels] if session_labels else None

    runs: list[Run] = []
    for sub, sub_dir in subjects.items():
        ses_dirs = {d.name[4:]: d for d in sorted(sub_dir.glob("ses-*")) if d.is_dir()}
        units = list(ses_dirs.items()) if ses_dirs else [(None, sub_dir)]
        for ses, unit_dir in units:
            if sessions_wanted is not None and ses not in sessions_wanted:
                continue
            stacks = _stacks_in(unit_dir / "anat", sub, ses)
            rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "")
            if not stacks:
                log.warning("no T2w stack in %s: skipped", unit_dir / "anat")
                continue
            notes, problems = [], []
            ref = 0 if reference_stack is None else reference_stack
            if not 0 <= ref < len(stacks):
                problems.append(f"reference stack {ref} is out of range: {len(stacks)} stacks")
                ref = 0
            masks: list[Path | None] = []
            single: Path | None = None
            if mask_pattern and not per_stack_pattern:
                single, problem = _pattern_mask(bids_dir, mask_pattern, {"subject": sub, "session": ses or "", "stem": "", "run": ""})
                if problem:
                    problems.append(problem)
                elif single is None:
                    notes.append(f"--mask-pattern matched no file for {rel}: automatic masks")
            else:
                for stem, _ in stacks:
                    run_idx = _run_index(stem)
                    if mask_pattern:
                        values = {"subject": sub, "session": ses or "", "stem": stem, "run": str(run_idx) if run_idx >= 0 else ""}
                        m, problem = _pattern_mask(bids_dir, mask_pattern, values)
                        if problem:
                            problems.append(problem)
                    else:
                        m, note = _derivative_masks(bids_dir, exclude, rel, stem)
                        if note:
                            notes.append(note)
                    masks.append(m)
                found = [m for m in masks if m is not None]
                if len(found) == 1 and masks[ref] is not None and len(stacks) > 1:
                    single = masks[ref]
                elif found and len(found) < len(masks):
                    missing = [stem for (stem, _), m in zip(stacks, masks) if m is None]
                    notes.append(f"no mask for {', '.join(missing)}: automatic mask")
            mask_tuple = (single,) if single is not None else (tuple(masks) if any(m is not None for m in masks) else None)
            sidecars = tuple(
                sidecar_path(p) for _, p in stacks if sidecar_path(p).is_file()
            )
            runs.append(
                Run(
                    bids_dir=bids_dir,
                    subject=sub,
                    session=ses,
                    stacks=tuple(p for _, p in stacks),
                    masks=mask_tuple,
                    notes=tuple(notes),
                    problem="; ".join(problems) or None,
                    sidecars=sidecars,
                )
            )
    if not runs:
        what = f" for session(s) {', '.join(sessions_wanted)}" if sessions_wanted else ""
        raise CohortError(
            f"no T2w stacks found in {bids_dir}{what} (expected sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_..._T2w.nii.gz)"
        )
    return runs
