"""``gaussian-mri bids``: GaussianSVR as a BIDS App over a cohort (participant and group levels)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "bids"
HELP = ("BIDS App: reconstruct the T2w stacks of every subject/session of a BIDS dataset into BIDS derivatives "
        "(participant level, on Dask workers), summarise the cohort (group level)")

log = logging.getLogger("gaussian_mri.bids")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bids_dir", type=Path, help="the BIDS dataset (raw data: sub-<label>/[ses-<label>/]anat/*_T2w.nii.gz)")
    p.add_argument("output_dir", type=Path, help="the derivatives folder to write (e.g. BIDS_DIR/derivatives/gaussiansvr)")
    p.add_argument("analysis_level", choices=["participant", "group"],
                   help="participant: reconstruct each subject/session; group: group.tsv of every run and the QC index")
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="only these subjects (labels without 'sub-'; default: all)")
    p.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                   help="only these sessions (labels without 'ses-'; default: all)")
    p.add_argument("--mask-pattern", metavar="TEMPLATE",
                   help="brain masks: a glob template with {subject}, {session}, {stem} (stack name without _T2w.nii.gz), "
                   "{run}, relative to BIDS_DIR, e.g. 'derivatives/masks/sub-{subject}/anat/{stem}_mask.nii.gz'; without "
                   "{stem}/{run} one mask per subject/session (the reference stack's). Default: "
                   "derivatives/*/sub-<label>/[ses-<label>/]anat/<stem>_desc-brain_mask.nii.gz, else automatic masks")
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", default="local", metavar="local|none|ADDRESS",
                   help="local (default): a local Dask cluster (one worker per GPU, else CPUs // 4 workers; one worker "
                   "runs in this process); none: one subject after the other in this process; ADDRESS: an existing Dask "
                   "scheduler, e.g. tcp://10.0.0.5:8786 of a dask-jobqueue SLURMCluster")
    g.add_argument("--workers", type=int, help="worker processes of the local cluster (default: one per GPU, else CPUs // 4)")
    g.add_argument("--threads-per-job", type=int, help="torch threads per subject (default: CPUs // workers)")
    g.add_argument("--retries", type=int, default=2,
                   help="Dask retries of a subject's task lost with its worker (killed, out of memory, node gone; default 2), "
                   "on top of the scheduler's own re-runs (distributed.scheduler.allowed-failures). A subject's own failure "
                   "(bad input, failed fit) is recorded, not retried")
    g.add_argument("--rerun", action="store_true",
                   help="reconstruct every selected subject again, even when its outputs are complete and valid. Without it "
                   "a subject is skipped when its inputs (SHA-256) and configuration are unchanged; outputs of another "
                   "gaussian-mri version count as valid (the record names both versions)")
    g.add_argument("--qc", action=argparse.BooleanOptionalAction, default=True,
                   help="QC report per subject (gaussiansvr/qc/report.html) and the cohort index (default on); a --qc "
                   "run adds the report to complete outputs of a --no-qc run without reconstructing them")
    from .svr import add_reconstruction_arguments

    add_reconstruction_arguments(p.add_argument_group("reconstruction (as gaussian-mri svr; --device cuda on a GPU worker: its pinned GPU)"))


def options_from_args(args: argparse.Namespace) -> dict:
    """The run options (:func:`gaussian_mri.cohort.job.run_subject`) of the command line."""
    from .svr import config_overrides

    return {"preset": args.preset, "overrides": config_overrides(args), "qc": args.qc, "rerun": args.rerun}


def run(args: argparse.Namespace) -> int:
    from ..cohort import CohortError, find_runs, run_participants, write_group

    output_dir = args.output_dir.resolve()
    if not getattr(args, "verbose", False):
        logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler's chatter; -v shows it
    if not args.bids_dir.is_dir():
        raise CohortError(f"BIDS folder not found: {args.bids_dir}")
    if output_dir == args.bids_dir.resolve():
        raise CohortError("OUTPUT_DIR must not be BIDS_DIR itself (use e.g. BIDS_DIR/derivatives/gaussiansvr)")
    if args.analysis_level == "participant":
        from ..cohort.runner import check_scheduler

        check_scheduler(args.scheduler)  # before anything is written
    if args.analysis_level == "group":
        written = write_group(output_dir, args.participant_label, args.session_label, index=args.qc)
        for path in written.values():
            print(path)
        return 0
    for name in ("workers", "threads_per_job", "retries"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "retries" else 1):
            raise CohortError(f"--{name.replace('_', '-')} must be >= {0 if name == 'retries' else 1}, got {value}")
    runs = find_runs(args.bids_dir, args.participant_label, args.session_label, mask_pattern=args.mask_pattern,
                     exclude=[output_dir], reference_stack=args.reference_stack)
    log.info("%d run(s) in %s: %s", len(runs), args.bids_dir, ", ".join(r.key for r in runs))
    options = options_from_args(args)
    from ..svr import preset

    preset(options["preset"], **options["overrides"])  # a bad option fails here, once, not in every run
    records = run_participants(runs, output_dir, options, scheduler=args.scheduler, workers=args.workers,
                               threads=args.threads_per_job, retries=args.retries)
    failed = [r for r in records if r["status"] == "failed"]
    counts = {s: sum(r["status"] == s for r in records) for s in ("success", "skipped", "failed")}
    print(f"{counts['success']} reconstructed, {counts['skipped']} skipped (complete), {counts['failed']} failed; "
          f"outputs in {output_dir}, records in {output_dir / 'logs'}")
    for r in failed + [r for r in records if r.get("running_elsewhere")]:
        print(f"  {r['key']}: {r['message']}")
    return 1 if failed else 0
