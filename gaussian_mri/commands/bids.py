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
    g.add_argument("--retries", type=int, default=2, help="re-runs of a task whose worker raised (default 2); a task whose "
                   "worker died is re-run by the scheduler up to distributed.scheduler.allowed-failures times")
    g.add_argument("--qc", action=argparse.BooleanOptionalAction, default=True,
                   help="QC report per subject (gaussiansvr/qc/report.html) and the cohort index (default on)")
    s = p.add_argument_group("reconstruction (as gaussian-mri svr)")
    s.add_argument("--preset", choices=["fast", "standard", "quality"], default="fast", help="default fast")
    s.add_argument("--resolution", type=float, default=0.8, help="output voxel size, mm (default 0.8)")
    s.add_argument("--motion", choices=["none", "stack", "slice"], default="slice", help="default slice")
    s.add_argument("--n-gaussians", type=int, help="number of Gaussians (overrides the preset)")
    s.add_argument("--iterations", type=int, help="iterations (overrides the preset)")
    s.add_argument("--time-budget", type=float, help="stop each fit after this many seconds")
    s.add_argument("--psf-inplane", type=float, default=1.2, help="in-plane PSF FWHM / spacing (default 1.2)")
    s.add_argument("--psf-through", type=float, default=1.0, help="through-plane PSF FWHM / thickness (default 1.0)")
    s.add_argument("--psf-mode", choices=["exact", "normalised"], default="exact")
    s.add_argument("--no-robust", action="store_true", help="disable robust slice/pixel weights")
    s.add_argument("--stack-alignment", action=argparse.BooleanOptionalAction, default=True,
                   help="rigid pre-alignment of the stacks (default on)")
    s.add_argument("--bias-field", action="store_true", help="fit a smooth bias field per stack")
    s.add_argument("--reference-stack", type=int, help="index of the reference stack in run order (default 0)")
    s.add_argument("--maps", action=argparse.BooleanOptionalAction, default=True, help="covariance maps (default on)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto | cpu | cuda (on a GPU worker: its pinned GPU)")
    s.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto")


def options_from_args(args: argparse.Namespace) -> dict:
    """The run options (:func:`gaussian_mri.cohort.job.run_subject`) of the command line."""
    overrides = {
        "resolution_mm": args.resolution,
        "motion": args.motion,
        "inplane_fwhm_factor": args.psf_inplane,
        "through_plane_fwhm_factor": args.psf_through,
        "psf_mode": args.psf_mode,
        "robust": not args.no_robust,
        "stack_alignment": args.stack_alignment,
        "bias_field": args.bias_field,
        "device": args.device,
        "kernels": args.kernels,
        "maps": args.maps,
        "seed": args.seed,
        "reference_stack": args.reference_stack,
        "time_budget_s": args.time_budget,
    }
    if args.n_gaussians:
        overrides["n_gaussians"] = args.n_gaussians
    if args.iterations:
        overrides["iterations"] = args.iterations
    return {"preset": args.preset, "overrides": overrides, "qc": args.qc}


def run(args: argparse.Namespace) -> int:
    from ..cohort import CohortError, find_runs, run_participants, write_group

    output_dir = args.output_dir.resolve()
    if not getattr(args, "verbose", False):
        logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler's chatter; -v shows it
    if not args.bids_dir.is_dir():
        raise CohortError(f"BIDS folder not found: {args.bids_dir}")
    if output_dir == args.bids_dir.resolve():
        raise CohortError("OUTPUT_DIR must not be BIDS_DIR itself (use e.g. BIDS_DIR/derivatives/gaussiansvr)")
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
    for r in failed:
        print(f"  {r['key']}: {r['message']}")
    return 1 if failed else 0
