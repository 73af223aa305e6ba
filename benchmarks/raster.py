"""Throughput and peak memory of the windowed 2D rasteriser and the 3D->slice projector.

Usage::

    python benchmarks/raster.py                 # CPU, writes benchmarks/results/raster_cpu.json
    python benchmarks/raster.py --device cuda   # GPU, writes benchmarks/results/raster_cuda.json
    python benchmarks/raster.py --quick         # smaller sizes, smoke test

Cases (all forward + backward, the loss ``sum(out * g)`` with a fixed random ``g``):

* ``cine``: :func:`rasterize_gaussians_2d`, M = 5,000 Gaussians with per-frame means on 25 frames of
  192 x 160, sigma ~ U(1, 3) px, random orientation, 2 channels (complex amplitude).
* ``svr``: :func:`render_slices` (exact PSF), 30,000 3D Gaussians (sigma ~ U(1, 3) mm) on 3 orthogonal
  stacks of 128 x 128 pixels x 40 slices (1 mm in-plane, 3 mm slices); gradients w.r.t. means,
  covariances and amplitudes (the 3x3 algebra of the projector is included in the time).
* ``windowed-small`` vs ``dense-small``: the same packed splats (M = 500, 5 frames, 64 x 64) through
  :func:`rasterize_splats` and through the all-pairs reference :func:`_reference.dense_splats`.

Definition of "pairs": a splat-pixel pair is one evaluation of ``exp(-q/2)``. For the windowed
rasteriser it is the sum over the (non-culled) splats of their evaluated window area
``(2 r + 1)^2`` (``r`` = the bucketed window radius that the kernel really evaluates, including
pixels later masked out by the k-sigma ellipse or the image border); for the dense reference it is
``N * H * W``. Pairs/s counts one forward + backward pass as one pass over the pairs. The ratio
columns compare each row with ``dense-small``: ``time ratio`` = dense time / row time (speed-up on
the same problem only for ``windowed-small``) and ``pairs/s ratio`` = row pairs/s / dense pairs/s.

Peak memory: 100,000 Gaussians x 64 frames (6.4 M splats, per-frame means) of 256 x 256,
sigma ~ U(1, 3) px, forward + backward, measured in a fresh subprocess: ``ru_maxrss`` (CPU; includes
the interpreter and torch, ~0.3-0.4 GB) or ``torch.cuda.max_memory_allocated`` (GPU). Limit 4 GB.

Times are the median of ``--repeats`` (default 5) runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gaussian_mri.geometry import SliceGeometry, stack_geometry  # noqa: E402
from gaussian_mri.image import Image  # noqa: E402
from gaussian_mri.render import _reference, splat2d  # noqa: E402
from gaussian_mri.render.slices import project_to_slices, render_slices  # noqa: E402

MEMORY_LIMIT_BYTES = 4 * 1024**3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _window_pairs(means: torch.Tensor, conics: torch.Tensor, height: int, width: int, k_sigma: float = 3.5) -> int:
    """Evaluated window area summed over non-culled splats (the rasteriser's own plan)."""
    plan = splat2d._plan(means.detach(), conics.detach(), height, width, k_sigma, 1 << 21)
    if isinstance(plan, tuple):  # newer versions return (plan, canvas padding)
        plan = plan[0]
    return int(sum(len(idx) * (2 * r + 1) ** 2 for r, idx in plan))


# --------------------------------------------------------------------------------------------------
# Problem generators
# --------------------------------------------------------------------------------------------------


def cine_problem(m: int, frames: int, height: int, width: int, device, seed: int = 0):
    """Per-frame means (B, M, 2), Cholesky (M, 3) with sigma ~ U(1, 3) px, complex amplitudes (M,)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(m, 2, generator=g) * torch.tensor([width - 1.0, height - 1.0])
    drift = torch.randn(frames, m, 2, generator=g) * 1.5
    means = base[None] + drift
    s1 = 1.0 + 2.0 * torch.rand(m, generator=g)
    s2 = 1.0 + 2.0 * torch.rand(m, generator=g)
    th = math.pi * torch.rand(m, generator=g)
    c, s = torch.cos(th), torch.sin(th)
    # Sigma = R diag(s1^2, s2^2) R^T -> Cholesky (l11, l21, l22)
    sxx = c * c * s1 * s1 + s * s * s2 * s2
    sxy = c * s * (s1 * s1 - s2 * s2)
    syy = s * s * s1 * s1 + c * c * s2 * s2
    l11 = torch.sqrt(sxx)
    l21 = sxy / l11
    l22 = torch.sqrt(syy - l21 * l21)
    chol = torch.stack([l11, l21, l22], -1)
    amps = torch.complex(torch.randn(m, generator=g), torch.randn(m, generator=g))
    return means.to(device), chol.to(device), amps.to(device)


def packed_from_cine(means, chol, amps):
    """Flatten a cine problem into packed splats (means, conics, amplitudes (N, 2), batch_index)."""
    b, m, _ = means.shape
    conics = splat2d.cholesky_to_conic(chol)[None].expand(b, m, 3).reshape(-1, 3).contiguous()
    a = torch.view_as_real(amps)[None].expand(b, m, 2).reshape(-1, 2).contiguous()
    bi = torch.arange(b, device=means.device).repeat_interleave(m)
    return means.reshape(-1, 2).contiguous(), conics, a, bi


def svr_problem(n_gauss: int, device, seed: int = 0, n_in: int = 128, n_slices: int = 40, thick: float = 3.0):
    """30k random 3D Gaussians in a 128 mm cube, 3 orthogonal stacks of 128 x 128 x 40 (1 x 1 x 3 mm)."""
    g = torch.Generator().manual_seed(seed)
    half_ip = (n_in - 1) / 2.0
    half_tp = (n_slices - 1) / 2.0 * thick
    ext = min(half_ip, half_tp)
    means = (torch.rand(n_gauss, 3, generator=g) * 2 - 1) * ext
    sig = 1.0 + 2.0 * torch.rand(n_gauss, 3, generator=g)
    q = torch.nn.functional.normalize(torch.randn(n_gauss, 4, generator=g), dim=-1)
    from gaussian_mri.transforms import quaternion_to_matrix

    rot = quaternion_to_matrix(q)
    l = rot * sig[:, None, :]
    covs = l @ l.transpose(1, 2)
    amps = torch.rand(n_gauss, generator=g) + 0.5
    orient = {
        "axial": np.eye(3),
        "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
        "sagittal": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    }
    geoms = []
    for rotm in orient.values():
        affine = np.eye(4)
        affine[:3, :3] = rotm @ np.diag([1.0, 1.0, thick])
        affine[:3, 3] = -affine[:3, :3] @ np.array([half_ip, half_ip, (n_slices - 1) / 2.0])
        img = Image(np.zeros((n_slices, n_in, n_in), np.float32), affine, slice_thickness=thick)
        geoms.append(stack_geometry(img, device=device)[0])
    geom = SliceGeometry(
        rotation=torch.cat([gg.rotation for gg in geoms]),
        origin=torch.cat([gg.origin for gg in geoms]),
        spacing=torch.cat([gg.spacing for gg in geoms]),
        psf_var=torch.cat([gg.psf_var for gg in geoms]),
        height=n_in,
        width=n_in,
    )
    return means.to(device), covs.to(device), amps.to(device), geom


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


def case_cine(device, repeats, m=5000, frames=25, height=192, width=160):
    means, chol, amps = cine_problem(m, frames, height, width, device)
    means.requires_grad_(True)
    chol.requires_grad_(True)
    amps.requires_grad_(True)
    gout = torch.randn(frames, height, width, dtype=torch.complex64, device=device)

    def step():
        for t in (means, chol, amps):
            t.grad = None
        out = splat2d.rasterize_gaussians_2d(means, chol, amps, height=height, width=width)
        (out * gout.conj()).real.sum().backward()

    times = _timed(step, device, repeats)
    pm, pc, _, _ = packed_from_cine(means.detach(), chol.detach(), amps.detach())
    pairs = _window_pairs(pm, pc, height, width)
    return {
        "case": "cine",
        "what": f"rasterize_gaussians_2d M={m}, {frames} frames, {height}x{width}, 2 ch",
        "splats": m * frames,
        "pairs": pairs,
        "times_s": times,
    }


def case_svr(device, repeats, n_gauss=30000):
    means, covs, amps, geom = svr_problem(n_gauss, device)
    means.requires_grad_(True)
    covs.requires_grad_(True)
    amps.requires_grad_(True)
    gout = torch.randn(geom.n_slices, geom.height, geom.width, device=device)

    def step():
        for t in (means, covs, amps):
            t.grad = None
        out = render_slices(means, covs, amps, geom)
        (out * gout).sum().backward()

    times = _timed(step, device, repeats)
    with torch.no_grad():
        packed = project_to_slices(means, covs, amps, geom)
    pairs = _window_pairs(packed.means, packed.conics, geom.height, geom.width)
    return {
        "case": "svr",
        "what": f"render_slices G={n_gauss}, 3 stacks x 40 slices of 128x128 (1x1x3 mm)",
        "splats": len(packed),
        "pairs": pairs,
        "times_s": times,
    }


def case_small(device, repeats, m=500, frames=5, size=64):
    means, chol, amps = cine_problem(m, frames, size, size, device, seed=1)
    pm, pc, pa, bi = packed_from_cine(means, chol, amps)
    g = torch.randn(frames, 2, size, size, device=device)
    rows = []
    for name, fn in (("windowed-small", splat2d.rasterize_splats), ("dense-small", _reference.dense_splats)):
        leaves = [pm.clone().requires_grad_(True), pc.clone().requires_grad_(True), pa.clone().requires_grad_(True)]

        def step(fn=fn, leaves=leaves):
            for t in leaves:
                t.grad = None
            out = fn(*leaves, bi, n_batch=frames, height=size, width=size, k_sigma=3.5)
            (out * g).sum().backward()

        times = _timed(step, device, repeats)
        pairs = _window_pairs(pm, pc, size, size) if name == "windowed-small" else pm.shape[0] * size * size
        rows.append(
            {
                "case": name,
                "what": f"{'rasterize_splats' if name.startswith('windowed') else '_reference.dense_splats'} "
                f"M={m}, {frames} frames, {size}x{size}, 2 ch",
                "splats": int(pm.shape[0]),
                "pairs": int(pairs),
                "times_s": times,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Peak memory (subprocess)
# --------------------------------------------------------------------------------------------------


def memory_child(device_name: str, m: int, frames: int, size: int) -> None:
    device = torch.device(device_name)
    means, chol, amps = cine_problem(m, frames, size, size, device, seed=2)
    means.requires_grad_(True)
    chol.requires_grad_(True)
    amps.requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = splat2d.rasterize_gaussians_2d(means, chol, amps, height=size, width=size)
    out.abs().square().sum().backward()
    _sync(device)
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1024 if sys.platform != "darwin" else 1)
    res = {
        "gaussians": m,
        "frames": frames,
        "size": size,
        "splats": m * frames,
        "time_s": elapsed,
        "ru_maxrss_bytes": rss,
        "ru_maxrss_before_bytes": rss0 * (1024 if sys.platform != "darwin" else 1),
        "finite": bool(torch.isfinite(means.grad).all()),
    }
    if device.type == "cuda":
        res["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    print("MEMJSON " + json.dumps(res))


def measure_memory(device: torch.device, m: int, frames: int, size: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", "--device", str(device), "--mem-gaussians", str(m),
           "--mem-frames", str(frames), "--mem-size", str(size)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("MEMJSON "):
            res = json.loads(line[8:])
            peak = res.get("cuda_max_allocated_bytes", res["ru_maxrss_bytes"])
            res["peak_bytes"] = peak
            res["peak_metric"] = "torch.cuda.max_memory_allocated" if "cuda_max_allocated_bytes" in res else "ru_maxrss"
            res["limit_bytes"] = MEMORY_LIMIT_BYTES
            res["ok"] = peak < MEMORY_LIMIT_BYTES
            return res
    return {"error": f"child failed (rc {proc.returncode}): {proc.stderr[-2000:]}"}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def summarise(rows: list[dict]) -> list[dict]:
    dense = next((r for r in rows if r["case"] == "dense-small"), None)
    for r in rows:
        r["median_s"] = statistics.median(r["times_s"])
        r["pairs_per_s"] = r["pairs"] / r["median_s"]
    for r in rows:
        if dense is not None:
            r["time_ratio_vs_dense"] = dense["median_s"] / r["median_s"]
            r["pairs_per_s_ratio_vs_dense"] = r["pairs_per_s"] / dense["pairs_per_s"]
    return rows


def table(rows: list[dict], meta: dict, mem: dict) -> str:
    lines = [
        f"torch {meta['torch']}, device {meta['device']} ({meta['device_name']}), threads {meta['threads']}, "
        f"median of {meta['repeats']} runs (forward + backward)",
        "",
        "| case | problem | splats | pairs | median time (s) | pairs/s | time ratio (dense/row) | pairs/s ratio (row/dense) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['what']} | {r['splats']:,} | {r['pairs']:,} | {r['median_s']:.4f} | "
            f"{r['pairs_per_s']:.3g} | {r.get('time_ratio_vs_dense', float('nan')):.2f} | "
            f"{r.get('pairs_per_s_ratio_vs_dense', float('nan')):.2f} |"
        )
    lines.append("")
    if "error" in mem:
        lines.append(f"Peak memory: {mem['error']}")
    else:
        lines.append(
            f"Peak memory, {mem['gaussians']:,} Gaussians x {mem['frames']} frames of {mem['size']}x{mem['size']} "
            f"({mem['splats']:,} splats) forward+backward: {mem['peak_bytes'] / 1024**3:.2f} GiB ({mem['peak_metric']}; "
            f"limit 4 GiB: {'OK' if mem['ok'] else 'EXCEEDED'}), {mem['time_s']:.1f} s"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--mem-gaussians", type=int, default=100_000)
    ap.add_argument("--mem-frames", type=int, default=64)
    ap.add_argument("--mem-size", type=int, default=256)
    ap.add_argument("--mem-timeout", type=float, default=1800.0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/raster_<device>.json)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.device, args.mem_gaussians, args.mem_frames, args.mem_size)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    torch.manual_seed(0)

    if args.quick:
        rows = [case_cine(device, args.repeats, m=500, frames=5, height=64, width=64), case_svr(device, args.repeats, n_gauss=2000)]
    else:
        rows = [case_cine(device, args.repeats), case_svr(device, args.repeats)]
    rows += case_small(device, args.repeats)
    rows = summarise(rows)
    if args.skip_memory:
        mem = {"error": "skipped (--skip-memory)"}
    elif args.quick:
        mem = measure_memory(device, 5000, 8, 128, args.mem_timeout)
    else:
        mem = measure_memory(device, args.mem_gaussians, args.mem_frames, args.mem_size, args.mem_timeout)
    meta = {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "repeats": args.repeats,
        "quick": bool(args.quick),
        "pairs_definition": "windowed: sum over non-culled splats of (2r+1)^2, r = bucketed window radius; dense: N*H*W",
    }
    text = table(rows, meta, mem)
    print(text)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"raster_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "cases": rows, "memory": mem, "table": text}, indent=2))
    print(f"\nwrote {out}")
    return 0 if ("error" in mem and args.skip_memory) or mem.get("ok", False) else 1


if __name__ == "__main__":
    sys.exit(main())
