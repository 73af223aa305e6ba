"""``gaussian-mri svr``: slice-to-volume reconstruction of thick-slice stacks."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

NAME = "svr"
HELP = "fetal slice-to-volume reconstruction: thick-slice stacks -> isotropic volume (3D Gaussians, analytic PSF)"

log = logging.getLogger("gaussian_mri.svr")


def _smoothness(text: str) -> float | str:
    """``--smoothness``: ``auto``, ``off`` or a weight >= 0."""
    if text in ("auto", "off"):
        return "auto" if text == "auto" else 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'off' or a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected 'auto', 'off' or a number >= 0, got {text!r}")
    return value


def add_reconstruction_arguments(p) -> None:
    """The reconstruction options shared by ``gaussian-mri svr`` and ``gaussian-mri bids`` (``p``: a parser
    or an argument group); :func:`config_overrides` turns them into :class:`~gaussian_mri.svr.SVRConfig` fields."""
    p.add_argument("--resolution", type=float, default=0.8, help="output voxel size, mm (default 0.8)")
    p.add_argument("--motion", choices=["none", "stack", "slice"], default="slice", help="motion correction (default slice)")
    p.add_argument("--psf-inplane", type=float, default=1.2, help="in-plane PSF FWHM / in-plane spacing (default 1.2)")
    p.add_argument("--psf-through", type=float, default=1.0, help="through-plane PSF FWHM / thickness (default 1.0)")
    p.add_argument("--psf-mode", choices=["exact", "normalised"], default="exact", help="forward model (default exact)")
    p.add_argument("--no-robust", action="store_true", help="disable robust slice/pixel weights")
    p.add_argument("--stack-alignment", action=argparse.BooleanOptionalAction, default=True,
                   help="rigidly pre-align the stacks by image registration before the fit (default on; with motion correction)")
    p.add_argument("--bias-field", action="store_true", help="fit a smooth bias field per stack")
    p.add_argument("--smoothness", type=_smoothness, default="auto", metavar="auto|off|W",
                   help="noise-aware fit: an edge-preserving prior scaled by the stacks' measured noise; 'auto' (default) "
                        "weights it from that noise, 'off' fits the noise as well, a number sets the weight")
    p.add_argument("--severe-motion", action="store_true",
                   help="register every slice to the current volume in six rounds during the fit, from several starts "
                        "(for motion beyond ~5 degrees within a stack; slower)")
    p.add_argument("--preset", choices=["fast", "standard", "quality"], default="fast",
                   help="fast: 15k Gaussians / 300 it. (default; as good as standard on the benchmarks, 4-6x quicker), standard: 30k / 600, quality: 60k / 1200")
    p.add_argument("--n-gaussians", type=int, help="number of Gaussians (overrides the preset)")
    p.add_argument("--iterations", type=int, help="iterations (overrides the preset)")
    p.add_argument("--time-budget", type=float, help="stop fitting after this many seconds")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--kernels", choices=["auto", "torch", "triton", "native"], default="auto",
                   help="auto: fused Triton kernels on a CUDA GPU when triton is installed; on the CPU compiled C kernels when a C compiler builds them, else PyTorch")
    p.add_argument("--reference-stack", type=int, help="output axes follow this stack (default: the first)")
    p.add_argument("--maps", action=argparse.BooleanOptionalAction, default=True, help="covariance maps and tensor volume")
    p.add_argument("--seed", type=int, default=0)


def config_overrides(args: argparse.Namespace) -> dict:
    """The :func:`gaussian_mri.svr.preset` overrides of :func:`add_reconstruction_arguments`' options."""
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
        "smoothness": args.smoothness,
    }
    if args.severe_motion:
        from ..svr import SEVERE_MOTION_ROUNDS

        overrides["registration_rounds"] = SEVERE_MOTION_ROUNDS
    if args.n_gaussians:
        overrides["n_gaussians"] = args.n_gaussians
    if args.iterations:
        overrides["iterations"] = args.iterations
    return overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stacks", nargs="+", required=True, metavar="FILE",
                   help="thick-slice stacks: NIfTI/NRRD files or DICOM series folders (or one DICOM file of the series)")
    p.add_argument("--masks", nargs="+", metavar="FILE",
                   help="one mask per stack ('none' for an automatic mask), or a single mask: the reference stack's, "
                        "propagated to the other stacks through the stack alignment (as SVRTK's -mask) and written "
                        "as mask_propagated_stack-<n>.nii.gz")
    p.add_argument("--thickness", nargs="+", metavar="MM", help="slice thickness per stack in mm ('auto' = header, else spacing)")
    p.add_argument("--output-dir", required=True, type=Path, help="folder for the results (created if needed)")
    add_reconstruction_arguments(p)
    p.add_argument("--qc-report", action=argparse.BooleanOptionalAction, default=True,
                   help="QC report <output-dir>/qc/report.html with PNGs (default on; needs matplotlib, else a warning)")
    p.add_argument("--progress-json", action="store_true", help="JSON-lines progress on stdout (for the Slicer module)")


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _per_stack(values, n, name, convert):
    if values is None:
        return None
    if len(values) != n:
        raise ValueError(f"--{name} needs one value per stack ({n}), got {len(values)}")
    return [convert(v) for v in values]


def _read_mask(value: str):
    """A ``--masks`` value: an image (file or DICOM folder), or ``None`` for 'none' / 'auto' (automatic mask)."""
    from ..image import read_image

    return None if value.lower() in ("none", "auto") else read_image(value)


def _write_qc_report(args: argparse.Namespace, reference_stack: int | None = None) -> Path | None:
    """Write ``<output-dir>/qc/report.html`` (:func:`gaussian_mri.qc.write_report_safely`: the
    reconstruction is already saved, so any failure of the report is a logged warning, never raised),
    with each stack's mask as the fit used it (a single reference mask: the propagated ones)."""
    from ..qc import write_report_safely
    from ..svr.files import masks_as_fitted

    masks = None if args.masks is None else [None if m.lower() in ("none", "auto") else m for m in args.masks]
    masks = masks_as_fitted(masks, len(args.stacks), args.output_dir, reference_stack)
    return write_report_safely(args.output_dir, args.stacks, masks, logger=log)


def run(args: argparse.Namespace) -> int:
    from ..image import read_image, write_image
    from ..svr import SVRCancelled, preset, reconstruct
    from ..svr.io import save_result

    n = len(args.stacks)
    try:
        stacks = [read_image(f) for f in args.stacks]
        if args.masks is not None and len(args.masks) == 1 and n > 1:  # the reference stack's mask, propagated
            only = _read_mask(args.masks[0])
            masks = None if only is None else [only]
        else:
            masks = _per_stack(args.masks, n, "masks", _read_mask)
        thickness = _per_stack(args.thickness, n, "thickness", lambda v: None if v.lower() == "auto" else float(v))
    except (OSError, ValueError, ImportError) as exc:  # ImportError: a reader's package is missing
        if args.progress_json:
            _emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        raise
    overrides = config_overrides(args)
    if args.progress_json:
        overrides["preview_every_s"] = 10.0
    cfg = preset(args.preset, **overrides)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    from .._progress import TerminalProgress

    bar = None if args.progress_json else TerminalProgress()  # a person at a terminal (stderr)

    def callback(status: dict) -> None:
        preview = status.pop("preview", None)
        if args.progress_json:
            if preview is not None:
                path = write_image(preview, args.output_dir / "preview.nii.gz")
                _emit({"event": "preview", "path": str(path)})
            _emit({"event": "progress", **status})
        else:
            bar(status)

    t0 = time.perf_counter()
    try:
        result = reconstruct(stacks, masks, thickness=thickness, config=cfg, callback=callback)
        outputs = save_result(result, args.output_dir)
    except SVRCancelled as exc:
        if args.progress_json:
            _emit({"event": "error", "message": str(exc)})
        return 3
    except Exception as exc:
        if args.progress_json:
            _emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        if bar is not None:
            bar.close()
        preview = args.output_dir / "preview.nii.gz"
        if preview.exists():
            preview.unlink()
    for w in result.warnings:
        log.warning(w)
    log.info("reconstruction done in %.1f s: %s", time.perf_counter() - t0, outputs["volume"])
    if args.qc_report:
        qc = _write_qc_report(args, cfg.reference_stack)
        if qc is not None:
            outputs["qc_report"] = str(qc)
    if args.progress_json:
        _emit({"event": "done", "outputs": outputs})
    return 0
