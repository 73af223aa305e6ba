"""``gaussian-mri simulate-cine``: a numerical cardiac cine as OCMR-style ISMRMRD raw data + ground truth.

Writes into ``--output-dir``:

``cine.h5``
    fully sampled multi-coil k-space, ISMRMRD HDF5 with 2x readout oversampling, an asymmetric echo
    and noise-calibration readouts (read it with ``gaussian_mri.mri.ismrmrd_io.read_cine_ismrmrd``);
``reference.nii.gz``
    magnitude of the noise-free reference cine, 4D NIfTI ``(x, y, 1, t)`` with pixel spacing, slice
    thickness and frame duration (ms) in the header;
``reference.npz``
    ``images`` (frames, ny, nx) complex, ``coil_maps`` (coils, ny, nx), ``body_mask`` (ny, nx),
    ``myocardium_mask`` and ``lv_blood_mask`` (frames, ny, nx), ``static_mask`` (ny, nx),
    ``pixel_spacing_mm``, ``frame_duration_ms``, ``fov_mm``, ``noise_std``, ``contraction``,
    ``lv_wall_thickness_mm``;
``myocardium_mask.nii.gz``
    the myocardium label per frame (4D NIfTI, same geometry as the reference);
``montage.png``
    a few frames, for a quick look (only with matplotlib installed; without it a warning is logged);
``simulation.json``
    the parameters and file list.
"""

from __future__ import annotations

import argparse
import logging

NAME = "simulate-cine"
HELP = "Simulate a multi-coil cardiac cine (OCMR-style ISMRMRD k-space + reference images and masks)"

_log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="output folder (created if needed)")
    parser.add_argument("--frames", type=int, default=24, help="cardiac frames per RR interval (default 24)")
    parser.add_argument("--coils", type=int, default=12, help="receive coils (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed = same output")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="k-space noise standard deviation relative to the peak image magnitude (default 0.02)",
    )
    parser.add_argument("--ny", type=int, default=160, help="image rows (phase encoding, default 160)")
    parser.add_argument("--nx", type=int, default=192, help="image columns (readout, default 192)")
    parser.add_argument("--spacing", type=float, default=1.8, help="pixel size in mm (default 1.8)")
    parser.add_argument(
        "--asymmetric-echo",
        type=int,
        default=None,
        help="leading readout samples (of nx) not acquired (default nx // 8; 0 for a full echo)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cli import UserError

    out = Path(args.output_dir)
    if args.frames < 2:
        raise UserError(f"--frames must be >= 2, got {args.frames}")
    if args.coils < 1:
        raise UserError(f"--coils must be >= 1, got {args.coils}")
    if args.noise < 0:
        raise UserError(f"--noise must be >= 0, got {args.noise}")
    asym = args.nx // 8 if args.asymmetric_echo is None else args.asymmetric_echo
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    files = simulate_cine_to_folder(
        out,
        n_frames=args.frames,
        n_coils=args.coils,
        seed=args.seed,
        noise=args.noise,
        ny=args.ny,
        nx=args.nx,
        pixel_spacing_mm=args.spacing,
        asymmetric_echo=asym,
    )
    for f in files:
        _log.info("wrote %s", f)
    return 0


def simulate_cine_to_folder(
    out,
    *,
    n_frames: int = 24,
    n_coils: int = 12,
    seed: int = 0,
    noise: float = 0.02,
    ny: int = 160,
    nx: int = 192,
    pixel_spacing_mm: float = 1.8,
    asymmetric_echo: int = 24,
    n_montage: int = 6,
) -> list:
    """Simulate with :func:`gaussian_mri.cine.phantom.simulate_cine` and write all outputs to ``out``.

    Returns the list of written paths (all written atomically).
    """
    import json
    from pathlib import Path

    import numpy as np

    from .._atomic import atomic_write, atomic_write_text
    from .._optional import write_optional_plot
    from ..cine.phantom import simulate_cine
    from ..mri.ismrmrd_io import write_cine_ismrmrd

    out = Path(out)
    sim = simulate_cine(
        n_frames=n_frames, ny=ny, nx=nx, n_coils=n_coils, noise=noise, seed=seed, pixel_spacing_mm=pixel_spacing_mm
    )
    written = []
    h5 = write_cine_ismrmrd(
        out / "cine.h5",
        sim.kspace,
        readout_oversampling=2,
        asymmetric_echo=asymmetric_echo,
        fov_mm=sim.fov_mm,
        frame_times_ms=sim.frame_times_ms,
        n_noise_scans=4,
        noise_std=max(sim.noise_std, 1e-12),
        seed=seed + 3,
    )
    written.append(h5)
    written.append(_write_nifti_cine(out / "reference.nii.gz", np.abs(sim.images).astype(np.float32), sim))
    written.append(_write_nifti_cine(out / "myocardium_mask.nii.gz", sim.myocardium_mask.astype(np.uint8), sim))
    arrays = {
        "images": sim.images,
        "coil_maps": sim.coil_maps,
        "body_mask": sim.body_mask,
        "myocardium_mask": sim.myocardium_mask,
        "lv_blood_mask": sim.lv_blood_mask,
        "static_mask": sim.static_mask,
        "pixel_spacing_mm": np.float64(sim.pixel_spacing_mm),
        "frame_duration_ms": np.float64(sim.frame_duration_ms),
        "fov_mm": np.asarray(sim.fov_mm),
        "noise_std": np.float64(sim.noise_std),
        "contraction": sim.contraction,
        "lv_wall_thickness_mm": sim.lv_wall_thickness_mm,
    }
    written.append(atomic_write(out / "reference.npz", lambda p: np.savez_compressed(p, **arrays)))
    frames = np.linspace(0, n_frames - 1, min(n_montage, n_frames)).round().astype(int)
    montage = write_optional_plot(out / "montage.png", lambda p: save_montage(p, np.abs(sim.images), frames, sim), _log)
    if montage is not None:  # only with matplotlib installed (else one warning)
        written.append(montage)
    params = {
        "generator": "gaussian_mri.cine.phantom.simulate_cine",
        "frames": n_frames,
        "coils": n_coils,
        "ny": ny,
        "nx": nx,
        "seed": seed,
        "noise": noise,
        "noise_std": sim.noise_std,
        "pixel_spacing_mm": sim.pixel_spacing_mm,
        "frame_duration_ms": sim.frame_duration_ms,
        "slice_thickness_mm": sim.slice_thickness_mm,
        "readout_oversampling": 2,
        "asymmetric_echo": asymmetric_echo,
        "files": [p.name for p in written],
    }
    written.append(atomic_write_text(out / "simulation.json", json.dumps(params, indent=2) + "\n"))
    return written


def _write_nifti_cine(path, data, sim) -> object:
    """4D NIfTI ``(x, y, 1, t)`` from ``(t, rows, cols)``; pixel spacing (mm), thickness, frame time (ms)."""
    import numpy as np

    from .._atomic import atomic_write
    from .._optional import require

    nib = require("nibabel", f"writing {path}")

    sp = sim.pixel_spacing_mm
    vol = np.transpose(data, (2, 1, 0))[:, :, None, :]  # (x, y, 1, t)
    affine = np.diag([sp, sp, sim.slice_thickness_mm, 1.0])
    nx, ny = vol.shape[:2]
    affine[:3, 3] = [-(nx // 2) * sp, -(ny // 2) * sp, 0.0]
    img = nib.Nifti1Image(vol, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "msec")
    zooms = img.header.get_zooms()
    img.header.set_zooms((zooms[0], zooms[1], zooms[2], sim.frame_duration_ms))
    img.header["descrip"] = f"slice_thickness={sim.slice_thickness_mm:.6g}".encode()

    return atomic_write(path, lambda tmp: nib.save(img, tmp))  # temp name keeps the .nii.gz suffix


def save_montage(path, magnitudes, frames, sim=None) -> None:
    """Save a PNG montage of ``magnitudes[frames]`` (Agg backend, grey scale, shared window).

    Raises :class:`gaussian_mri._optional.MissingDependencyError` (an ``ImportError``) without matplotlib.
    """
    import numpy as np

    from .._optional import pyplot

    plt = pyplot("the simulated cine montage")

    n = len(frames)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    vmax = float(np.percentile(magnitudes, 99.8))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), frames):
        ax.imshow(magnitudes[f], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        title = f"frame {f}"
        if sim is not None:
            title += f"  t={f * sim.frame_duration_ms:.0f} ms  wall {sim.lv_wall_thickness_mm[f]:.1f} mm"
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
