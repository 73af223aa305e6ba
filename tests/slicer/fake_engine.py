"""A small real stand-in for ``python -m gaussian_mri`` (svr / cine) used by the Slicer tests.

It parses the same command line, prints the same ``--progress-json`` events and writes the same
output files (real NIfTI / TSV / NPZ / NRRD), without any fitting. ``GAUSSIAN_MRI_FAKE_MODE``:
``ok`` (default), ``fail`` (error event + exit 1), ``crash`` (traceback, exit 1), ``slow`` (runs
until killed, with previews), ``nooutput`` (exit 0 without files).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gaussian_mri.image import Image, read_image, write_image  # noqa: E402


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def write_tensor_nrrd(path: Path, tensors: np.ndarray, affine: np.ndarray) -> None:
    """tensors (K, J, I, 3, 3) in RAS -> NRRD kind 3D-masked-symmetric-matrix (7 values per voxel)."""
    K, J, I = tensors.shape[:3]
    sym = np.stack([np.ones((K, J, I)), tensors[..., 0, 0], tensors[..., 0, 1], tensors[..., 0, 2],
                    tensors[..., 1, 1], tensors[..., 1, 2], tensors[..., 2, 2]], -1).astype("<f4")
    dirs = " ".join("(" + ",".join(f"{v:.17g}" for v in affine[:3, c]) + ")" for c in range(3))
    header = (
        "NRRD0004\ntype: float\ndimension: 4\nspace: right-anterior-superior\n"
        f"sizes: 7 {I} {J} {K}\nspace directions: none {dirs}\n"
        "kinds: 3D-masked-symmetric-matrix domain domain domain\nendian: little\nencoding: gzip\n"
        "space origin: (" + ",".join(f"{v:.17g}" for v in affine[:3, 3]) + ")\n"
        "measurement frame: (1,0,0) (0,1,0) (0,0,1)\n\n"
    )
    path.write_bytes(header.encode() + gzip.compress(sym.tobytes()))


def run_svr(args, mode: str) -> int:
    out = Path(args.output_dir)
    stacks = [read_image(p) for p in args.stacks]
    if args.masks:
        assert len(args.masks) == len(args.stacks)
    ref = stacks[0]
    direction = ref.direction
    affine = np.eye(4)
    affine[:3, :3] = direction * args.resolution
    affine[:3, 3] = ref.origin
    shape = (12, 14, 16)
    rng = np.random.default_rng(args.seed)
    recon = rng.random(shape).astype(np.float32)
    total = 6
    t0 = time.time()
    step = 0
    while True:
        step += 1
        emit(event="progress", stage="fit", iteration=min(step, total), total=total, loss=1.0 / step,
             elapsed_s=time.time() - t0, eta_s=max(total - step, 0) * 0.05)
        if step in (2, 4) or (mode == "slow" and step % 5 == 0):
            preview = out / "preview.nii.gz"
            write_image(Image(data=recon * step, affine=affine), preview)
            emit(event="preview", path=str(preview))
        if mode == "fail" and step == 3:
            emit(event="error", message="CUDA out of memory (fake)")
            return 1
        if mode == "crash" and step == 3:
            raise RuntimeError("fake crash")
        if mode != "slow" and step >= total:
            break
        time.sleep(0.05)
    if mode == "nooutput":
        emit(event="done", outputs={})
        return 0
    outputs = {"recon": write_image(Image(data=recon, affine=affine), out / "recon.nii.gz")}
    outputs["recon_mask"] = write_image(Image(data=(recon > 0.5).astype(np.uint8), affine=affine), out / "recon_mask.nii.gz")
    cols = ["stack", "slice", "weight", "residual", "r11", "r12", "r13", "t1", "r21", "r22", "r23", "t2", "r31", "r32", "r33", "t3"]
    lines = ["\t".join(cols)]
    for s, img in enumerate(stacks):
        for k in range(img.shape[0]):
            lines.append("\t".join(map(str, [s, k, 0.9, 0.1, 1, 0, 0, 0.5 * s, 0, 1, 0, 0, 0, 0, 1, k])))
    (out / "slices.tsv").write_text("\n".join(lines) + "\n")
    outputs["slices"] = out / "slices.tsv"
    np.savez(out / "gaussians.npz", means=rng.normal(size=(50, 3)).astype(np.float32) * 20,
             amplitudes=rng.random(50).astype(np.float32), scales=rng.random((50, 3)).astype(np.float32))
    outputs["gaussians"] = out / "gaussians.npz"
    if args.maps:
        outputs["map_scale"] = write_image(Image(data=recon * 2, affine=affine), out / "map_scale.nii.gz")
        outputs["map_anisotropy"] = write_image(Image(data=recon / 2, affine=affine), out / "map_anisotropy.nii.gz")
        tensors = np.zeros(shape + (3, 3), np.float32)
        tensors[..., 0, 0], tensors[..., 1, 1], tensors[..., 2, 2] = 3.0, 2.0, 1.0
        tensors[..., 0, 1] = tensors[..., 1, 0] = 0.5
        write_tensor_nrrd(out / "tensor.nrrd", tensors, affine)
        outputs["tensor"] = out / "tensor.nrrd"
    emit(event="done", outputs={k: str(v) for k, v in outputs.items()})
    return 0


def run_cine(args, mode: str) -> int:
    out = Path(args.output_dir)
    if args.image_cine:
        import nibabel as nib

        img = nib.load(args.image_cine)
        data = np.asarray(img.dataobj, dtype=np.float32)
        assert data.ndim == 4 and data.shape[2] == 1, data.shape
        ref = data[:, :, 0, :].transpose(2, 1, 0)  # (T, ny, nx)
        spacing = np.asarray(img.header.get_zooms()[:2][::-1], dtype=np.float32)
        frame_ms = float(img.header.get_zooms()[3])
    else:
        ksp = np.load(args.kspace)
        ref = np.abs(np.fft.ifft2(ksp).sum(1)).astype(np.float32)
        spacing = np.array([1.5, 1.5], np.float32)
        frame_ms = 40.0
    T, ny, nx = ref.shape
    sr = int(args.sr_factor)
    recon = np.repeat(np.repeat(ref, sr, 1), sr, 2).astype(np.complex64) * (1 + 0.01j)
    for step in range(1, 5):
        emit(event="progress", stage="fit", iteration=step, total=4, loss=1.0 / step, elapsed_s=0.1 * step, eta_s=0.1 * (4 - step))
        if mode == "fail" and step == 2:
            emit(event="error", message="fake failure")
            return 1
        time.sleep(0.02)
    while mode == "slow":
        emit(event="progress", stage="fit", iteration=1, total=4, loss=1.0, elapsed_s=0.1, eta_s=1.0)
        time.sleep(0.1)
    result = dict(recon=recon, spacing_mm=spacing / sr, frame_ms=np.float32(frame_ms),
                  eigen_ratio=np.ones(recon.shape, np.float32), det_ratio=np.full(recon.shape, 2.0, np.float32),
                  displacement=np.zeros(recon.shape + (2,), np.float32))
    if args.image_cine:
        result.update(reference=ref.astype(np.complex64), lps=(ref * 0.9).astype(np.complex64),
                      zero_filled=(ref * 0.5).astype(np.complex64))
        metrics = {m: {"ssim": 0.9 - i / 10, "psnr": 30.0 - i, "nrmse": 0.1 + i / 10} for i, m in enumerate(["gaussian", "lps", "zero_filled"])}
        (out / "metrics.json").write_text(json.dumps(metrics))
    np.savez(out / "result.npz", **result)
    emit(event="done", outputs={"result": str(out / "result.npz")})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("svr")
    s.add_argument("--stacks", nargs="+", required=True)
    s.add_argument("--masks", nargs="+")
    s.add_argument("--thickness", nargs="+", type=float)
    s.add_argument("--output-dir", required=True)
    s.add_argument("--resolution", type=float, default=0.8)
    s.add_argument("--motion", default="slice")
    s.add_argument("--psf-inplane", type=float)
    s.add_argument("--psf-through", type=float)
    s.add_argument("--no-robust", action="store_true")
    s.add_argument("--bias-field", action="store_true")
    s.add_argument("--preset")
    s.add_argument("--n-gaussians", type=int)
    s.add_argument("--iterations", type=int)
    s.add_argument("--device")
    s.add_argument("--reference-stack", type=int)
    s.add_argument("--maps", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--progress-json", action="store_true")
    c = sub.add_parser("cine")
    c.add_argument("--kspace")
    c.add_argument("--axes")
    c.add_argument("--image-cine")
    c.add_argument("--mask-type")
    c.add_argument("--acceleration", type=float)
    c.add_argument("--output-dir", required=True)
    for name in ("--n-gaussians", "--steps", "--seed"):
        c.add_argument(name, type=int)
    for name in ("--lambda-mu", "--lambda-c"):
        c.add_argument(name, type=float)
    c.add_argument("--sr-factor", type=int, default=1)
    c.add_argument("--coil-maps")
    c.add_argument("--device")
    c.add_argument("--baselines", action="store_true")
    c.add_argument("--progress-json", action="store_true")
    args = parser.parse_args()
    mode = os.environ.get("GAUSSIAN_MRI_FAKE_MODE", "ok")
    return run_svr(args, mode) if args.command == "svr" else run_cine(args, mode)


if __name__ == "__main__":
    sys.exit(main())
