"""Speed of the cine nuclear norm: Gram eigenvalues vs ``torch.linalg.svdvals`` (value + gradient).

Usage::

    python benchmarks/nuclear_norm_speed.py [--frames 24] [--gaussians 6000] [--repeats 50] [--threads 1]
        [--device cpu] [--out benchmarks/results/nuclear_norm_speed_cpu.json]

The matrix is what the fit regularises every step: ``dmu`` (frames, Gaussians, 2) reshaped to
(frames, 2 x Gaussians), float32, random values. Each method computes the value and its gradient
(``backward``), as in a fit step; the median over ``--repeats`` calls (after 3 warm-up calls) is
reported, with min and p90, plus the relative difference of the values and gradients to ``svdvals``.
Methods: ``gram`` (:func:`gaussian_mri.cine.recon.nuclear_norm_gram`, the CPU default), ``svd``
(``svdvals``, the previous CPU default) and ``newton_schulz`` (the CUDA default).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gaussian_mri.cine.recon import nuclear_norm


def timed(method: str, dmu: torch.Tensor, repeats: int) -> tuple[list[float], float, torch.Tensor]:
    times = []
    for i in range(repeats + 3):
        x = dmu.clone().requires_grad_()
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = nuclear_norm(x, method=method)
        value.backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return times, float(value.detach()), x.grad.detach().double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--gaussians", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    dmu = (0.5 * torch.randn(args.frames, args.gaussians, 2, generator=gen)).to(args.device)
    rows = {}
    ref_value, ref_grad = None, None
    for method in ("svd", "gram", "newton_schulz"):
        times, value, grad = timed(method, dmu, args.repeats)
        if method == "svd":
            ref_value, ref_grad = value, grad
        ms = sorted(t * 1e3 for t in times)
        rows[method] = {
            "median_ms": statistics.median(ms),
            "min_ms": ms[0],
            "p90_ms": ms[int(0.9 * (len(ms) - 1))],
            "value_rel_diff_to_svd": abs(value - ref_value) / abs(ref_value),
            "grad_rel_diff_to_svd": float((grad - ref_grad).norm() / ref_grad.norm()),
        }
        print(f"{method:14s} median {rows[method]['median_ms']:8.2f} ms  min {ms[0]:8.2f}  "
              f"value diff {rows[method]['value_rel_diff_to_svd']:.1e}  grad diff {rows[method]['grad_rel_diff_to_svd']:.1e}")
    speedup = rows["svd"]["median_ms"] / rows["gram"]["median_ms"]
    print(f"gram is {speedup:.1f}x faster than svdvals (medians)")
    out = {
        "matrix": [args.frames, 2 * args.gaussians],
        "dtype": "float32",
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "methods": rows,
        "gram_speedup_vs_svd": speedup,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
    }
    path = Path(args.out or Path(__file__).resolve().parent / "results" / f"nuclear_norm_speed_{args.device.split(':')[0]}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
