"""Writing an SVR result: volumes, per-slice table, Gaussians, maps and a 3x3 tensor NRRD.

Every file is written atomically (temporary file in the output folder, then renamed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes
from ..image import write_image
from ..nrrd_io import read_tensor_nrrd, write_tensor_nrrd  # the tensor volume (pynrrd; also re-exported here)
from .files import OUTPUT_FILES, propagated_mask_file
from .model import save_gaussians

__all__ = ["save_result", "write_tensor_nrrd", "read_tensor_nrrd", "OUTPUT_FILES"]


def save_result(result, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write an :class:`~gaussian_mri.svr.recon.SVRResult` into ``out_dir`` (created if needed).

    Returns ``{name: path}`` of the files written (see :data:`OUTPUT_FILES`; with one mask for several
    stacks also ``mask_propagated_stack-<n>``, :func:`~gaussian_mri.svr.files.propagated_mask_file`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def p(name: str) -> Path:
        written[name] = str(out / OUTPUT_FILES[name])
        return out / OUTPUT_FILES[name]

    write_image(result.volume, p("volume"))
    write_image(result.mask, p("mask"))
    for index, mask in enumerate(getattr(result, "propagated_masks", None) or []):
        if mask is not None:  # one mask given for several stacks: where it was propagated, for inspection
            name = propagated_mask_file(index)
            written[name.removesuffix(".nii.gz")] = str(out / name)
            write_image(mask, out / name)
    lines = ["stack\tslice\tweight\tresidual\tr11\tr12\tr13\tt1\tr21\tr22\tr23\tt2\tr31\tr32\tr33\tt3"]
    for row in result.slices:
        m = np.asarray(row["transform"])[:3].ravel()
        lines.append(
            f"{row['stack']}\t{row['slice']}\t{row['weight']:.6g}\t{row['residual']:.6g}\t" + "\t".join(f"{v:.9g}" for v in m)
        )
    atomic_write_bytes(p("slices"), ("\n".join(lines) + "\n").encode())
    save_gaussians(result.model, p("gaussians"))
    if result.maps:
        write_image(result.maps["scale"], p("scale"))
        write_image(result.maps["anisotropy"], p("anisotropy"))
    if result.tensor is not None:
        write_tensor_nrrd(p("tensor"), result.tensor, result.volume.affine)
    from dataclasses import asdict

    report = {
        "config": asdict(result.config),
        "timings_s": result.timings,
        "kernels": getattr(result, "kernels", "torch"),  # the renderer that ran: "torch" or "triton"
        "warnings": result.warnings,
        "noise_aware_fit": {"noise_relative_to_median": getattr(result, "noise_level", None),
                            "prior_weight": getattr(result, "smoothness_weight", 0.0)},
        "intensity_scale": result.intensity_scale,
        "n_gaussians": int(result.model.n),
        "final_loss": result.losses[-1] if result.losses else None,
        "outputs": {k: os.path.basename(v) for k, v in written.items()},
    }
    atomic_write_bytes(p("report"), json.dumps(report, indent=2).encode())
    return written
