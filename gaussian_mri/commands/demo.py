"""``gaussian-mri demo``: reconstruct the bundled real fetal subject (6 stacks + masks)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

NAME = "demo"
HELP = "run GaussianSVR on the bundled real fetal subject (6 cropped T2 stacks, CC0) and save the results"

log = logging.getLogger("gaussian_mri.demo")


def data_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data"


def demo_inputs() -> tuple[list[Path], list[Path]]:
    d = data_dir()
    stacks = [d / f"sub-01_run-{r}_T2w.nii.gz" for r in range(1, 7)]
    masks = [d / f"sub-01_run-{r}_T2w_mask.nii.gz" for r in range(1, 7)]
    missing = [str(p) for p in stacks + masks if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"bundled demo data missing (broken install?): {missing}")
    return stacks, masks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, default=Path("demo_output"), help="results folder (default ./demo_output)")
    p.add_argument("--preset", choices=["fast", "standard", "quality"], default="fast")
    p.add_argument("--iterations", type=int, help="override the preset's iterations")
    p.add_argument("--n-gaussians", type=int, help="override the preset's number of Gaussians")
    p.add_argument("--resolution", type=float, default=0.8, help="output voxel size, mm (default 0.8)")
    p.add_argument("--device", default="auto")
    p.add_argument("--qc-report", action=argparse.BooleanOptionalAction, default=True,
                   help="QC report <output-dir>/qc/report.html with PNGs (default on; needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    from .._optional import write_optional_plot
    from ..image import read_image
    from ..plotting import save_orthogonal_views
    from ..svr import preset, reconstruct
    from ..svr.io import save_result

    stacks_p, masks_p = demo_inputs()
    stacks = [read_image(p) for p in stacks_p]
    masks = [read_image(p) for p in masks_p]
    overrides = {"device": args.device, "resolution_mm": args.resolution}
    if args.iterations:
        overrides["iterations"] = args.iterations
    if args.n_gaussians:
        overrides["n_gaussians"] = args.n_gaussians
    cfg = preset(args.preset, **overrides)
    log.info("GaussianSVR demo: %d stacks, preset %s (%d Gaussians, %d iterations), device %s",
             len(stacks), args.preset, cfg.n_gaussians, cfg.iterations, cfg.device)
    from .._progress import TerminalProgress

    t0 = time.perf_counter()
    bar = TerminalProgress()  # progress on stderr: a bar in a terminal, a line every 10 s in a log
    try:
        result = reconstruct(stacks, masks, config=cfg, callback=bar)
    finally:
        bar.close()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    outputs = save_result(result, args.output_dir)
    png = write_optional_plot(
        args.output_dir / "recon_views.png", lambda p: save_orthogonal_views(result.volume, p, mask=result.mask), log
    )
    if png is not None:  # only with matplotlib installed (else one warning)
        outputs["views_png"] = str(png)
    if args.qc_report:
        from ..qc import write_report_safely

        qc = write_report_safely(args.output_dir, stacks_p, masks_p, title="GaussianSVR demo: bundled real subject", logger=log)
        if qc is not None:
            outputs["qc_report"] = str(qc)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "outputs": outputs}, indent=2))
    return 0
