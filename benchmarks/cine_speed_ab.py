"""What the CPU speed changes of the cine fit bought, measured in one process (A/B, alternating order).

1. Renderer: compiled C kernels (``kernels="native"``, :mod:`gaussian_mri.render.native`) vs the PyTorch
   rasteriser (``kernels="torch"``), whole fits of ``--steps`` steps on the same data, same seed; the
   final losses must agree (same model, same sums).
2. FFT: the fit's forward model as it was (``fft2c``: two shifts around ``fft2``) vs now (plain
   ``fft2`` against k-space moved into its frame once, ``centring_ramp``), on one step's coil images.

Data: the ``heart`` phantom of ``cine_phantoms`` (20 frames, 128 x 160, 8 coils), GRO R = 8.

Usage::

    python benchmarks/cine_speed_ab.py [--steps 150 --repeats 2 --threads 1]

Writes ``benchmarks/results/cine_speed_ab.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cine_phantoms  # noqa: E402
from cine_simulated import machine_meta  # noqa: E402

from gaussian_mri.cine.recon import CineConfig, check_inputs, estimate_coil_maps, reconstruct  # noqa: E402
from gaussian_mri.mri.fft import centring_ramp, fft2c  # noqa: E402
from gaussian_mri.mri.sampling import gro_mask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ph = cine_phantoms.make("heart")
    full = torch.from_numpy(ph.kspace)
    mask = gro_mask(full.shape[2], full.shape[0], 8)
    k = full * mask[:, None, :, None]
    kk, w, _ = check_inputs(k, mask, None)
    maps = estimate_coil_maps(kk, w, CineConfig())

    fits: dict[str, list[float]] = {"torch": [], "native": []}
    loss: dict[str, float] = {}
    for rep in range(args.repeats):
        for kern in (("torch", "native") if rep % 2 == 0 else ("native", "torch")):
            res = reconstruct(k, mask, maps, config=CineConfig(steps=args.steps, kernels=kern), device="cpu")
            assert res.kernels == kern
            fits[kern].append(res.timings["fit"])
            loss[kern] = res.losses[-1]
            print(kern, f"fit {res.timings['fit']:.2f} s", f"loss {res.losses[-1]:.6g}", flush=True)

    # FFT: one step's coil images (4 frames x 8 coils), old vs new forward, alternating, 200 calls each
    imgs = torch.randn(4, 1, *full.shape[2:], dtype=torch.complex64) * maps[None]
    ramp = centring_ramp(*full.shape[2:])
    fft_ms: dict[str, list[float]] = {"fft2c": [], "fft2 + ramp-free target": []}
    for rep in range(4):
        for name in fft_ms:
            t0 = time.perf_counter()
            for _ in range(50):
                fft2c(imgs) if name == "fft2c" else torch.fft.fft2(imgs, norm="ortho")
            fft_ms[name].append((time.perf_counter() - t0) / 50 * 1e3)
    same = torch.allclose(torch.fft.fftshift(ramp * torch.fft.fft2(imgs, norm="ortho"), dim=(-2, -1)), fft2c(imgs), atol=1e-5)

    rel = abs(loss["native"] - loss["torch"]) / loss["torch"]
    assert rel < 1e-3, f"the two renderers ended at different losses ({loss}): not the same model"
    out = {
        "meta": {**machine_meta(args.threads), "steps": args.steps, "repeats": args.repeats,
                 "data": "cine_phantoms heart, 20 x 128 x 160, 8 coils, GRO R = 8"},
        "fit_s": fits,
        "fit_ratio_native_over_torch": min(fits["native"]) / min(fits["torch"]),
        "ms_per_step": {k_: min(v) / args.steps * 1e3 for k_, v in fits.items()},
        "final_loss": loss,
        "fft_ms_per_call": {k_: min(v) for k_, v in fft_ms.items()},
        "fft_ratio": min(fft_ms["fft2 + ramp-free target"]) / min(fft_ms["fft2c"]),
        "fft_equivalent": bool(same),
    }
    path = Path(__file__).resolve().parent / "results" / "cine_speed_ab.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k_: v for k_, v in out.items() if k_ != "meta"}, indent=2))


if __name__ == "__main__":
    main()
