"""Writing an SVR result: volumes, per-slice table, Gaussians, maps and a 3x3 tensor NRRD.

Every file is written atomically (temporary file in the output folder, then renamed).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes
from ..image import write_image
from .files import OUTPUT_FILES
from .model import save_gaussians

__all__ = ["save_result", "write_tensor_nrrd", "OUTPUT_FILES"]

def write_tensor_nrrd(path: str | os.PathLike, tensor: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (K, J, I, 3, 3) symmetric tensor field (RAS components) as a Slicer-readable NRRD.

    Kind ``3D-masked-symmetric-matrix`` (7 values per voxel: mask, xx, xy, xz, yy, yz, zz), space
    RAS, measurement frame identity (the components are RAS), gzip encoding.
    """
    path = Path(path)
    t = np.asarray(tensor, dtype=np.float32)
    if t.ndim != 5 or t.shape[3:] != (3, 3):
        raise ValueError(f"tensor must have shape (K, J, I, 3, 3), got {t.shape}")
    k, j, i = t.shape[:3]
    mask = (np.abs(t).sum((3, 4)) > 0).astype(np.float32)
    comps = np.stack([mask, t[..., 0, 0], t[..., 0, 1], t[..., 0, 2], t[..., 1, 1], t[..., 1, 2], t[..., 2, 2]], -1)
    a = np.asarray(affine, dtype=np.float64)
    vec = lambda v: "(" + ",".join(f"{x:.17g}" for x in v) + ")"  # noqa: E731
    header = (
        "NRRD0005\n"
        "# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n"
        "type: float\ndimension: 4\nspace: right-anterior-superior\n"
        f"sizes: 7 {i} {j} {k}\n"
        f"space directions: none {vec(a[:3, 0])} {vec(a[:3, 1])} {vec(a[:3, 2])}\n"
        "kinds: 3D-masked-symmetric-matrix space space space\n"
        "endian: little\nencoding: gzip\n"
        f"space origin: {vec(a[:3, 3])}\n"
        "measurement frame: (1,0,0) (0,1,0) (0,0,1)\n\n"
    )
    payload = header.encode("ascii") + gzip.compress(np.ascontiguousarray(comps).astype("<f4").tobytes(), compresslevel=4)
    atomic_write_bytes(path, payload)
    return path


def read_tensor_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a file written by :func:`write_tensor_nrrd`: ``(tensor (K, J, I, 3, 3), affine)``."""
    raw = Path(path).read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode("ascii").splitlines()[1:] if ": " in line)
    sizes = [int(v) for v in fields["sizes"].split()]
    dirs = [d for d in fields["space directions"].split() if d != "none"]
    affine = np.eye(4)
    for n, d in enumerate(dirs):
        affine[:3, n] = [float(x) for x in d.strip("()").split(",")]
    affine[:3, 3] = [float(x) for x in fields["space origin"].strip("()").split(",")]
    data = np.frombuffer(gzip.decompress(body), dtype="<f4").reshape(sizes[3], sizes[2], sizes[1], 7)
    m, xx, xy, xz, yy, yz, zz = (data[..., n] for n in range(7))
    t = np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)
    return t * m[..., None, None], affine


def save_result(result, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write an :class:`~gaussian_mri.svr.recon.SVRResult` into ``out_dir`` (created if needed).

    Returns ``{name: path}`` of the files written (see :data:`OUTPUT_FILES`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def p(name: str) -> Path:
        written[name] = str(out / OUTPUT_FILES[name])
        return out / OUTPUT_FILES[name]

    write_image(result.volume, p("volume"))
    write_image(result.mask, p("mask"))
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
        "intensity_scale": result.intensity_scale,
        "n_gaussians": int(result.model.n),
        "final_loss": result.losses[-1] if result.losses else None,
        "outputs": {k: os.path.basename(v) for k, v in written.items()},
    }
    atomic_write_bytes(p("report"), json.dumps(report, indent=2).encode())
    return written
