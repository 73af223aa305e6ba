"""``gaussian-mri cine``: reconstruct an undersampled cardiac cine with motion-resolved 2D Gaussians.

Input, one of:

``--kspace F [--axes frames,coils,ky,kx]``
    k-space read by :func:`gaussian_mri.mri.kspace_io.load_kspace` (.npy, .npz, .mat, BART .cfl,
    ISMRMRD or plain .h5). Fully sampled data (every line of every frame) is the reference; with
    ``--acceleration`` it is undersampled retrospectively with ``--mask-type``.
``--image-cine F.nii.gz --mask-type gro|uniform|random --acceleration R``
    a 2D+t image cine, 4D NIfTI ``(nx, ny, 1, T)`` (or NRRD, or a DICOM cine series: a folder of
    single-frame images of one slice, or one ``.dcm`` file of it), turned into ``--coils`` channel k-space
    with simulated coil maps and undersampled retrospectively; the image is the reference.

Output folder (every file written atomically):

``result.npz``
    ``recon`` (T, ny*s, nx*s) complex64 (``s`` = ``--sr-factor``), ``recon_1x`` (T, ny, nx) when s > 1,
    ``spacing_mm`` (2,) (row, col) of ``recon``, ``frame_ms``, ``eigen_ratio`` and ``det_ratio``
    (T, ny*s, nx*s) float32 (covariance eigenvalue-ratio and determinant relative to frame 0, splatted),
    ``displacement`` (T, ny*s, nx*s, 2) float32 mm, last axis (x = column, y = row), displacement of
    each Gaussian since frame 0, splatted; with a reference also ``reference``, ``zero_filled``,
    ``lps`` (T, ny, nx) complex64 and ``body_mask`` (ny, nx). ``mask`` (T, ky) or (T, ky, kx) bool.
``metrics.json``
    with a reference: ``{method: {"ssim", "psnr", "nrmse"}}`` for ``gaussian``, ``zero_filled``
    (density-compensated coil-combined adjoint), ``lps`` (L+S), on magnitudes at 1x inside the body
    mask (time-averaged reference magnitude > 10 % of its 99th percentile, holes filled, largest
    connected component), every image scaled by the least-squares gain that best matches the
    reference magnitude (each method alike; the gains are stored as ``"gain"``).
``cine.nii.gz``
    magnitude of ``recon``, 4D NIfTI (nx, ny, 1, T), pixdim[4] = frame duration in ms, placed where
    the input was acquired: the affine is the input's geometry (ISMRMRD acquisition headers:
    :func:`gaussian_mri.mri.ismrmrd_io.acquisition_affine`; the affine of an image cine) on the output
    grid; inputs without geometry (.npy, .mat, .cfl, ISMRMRD files with zero directions) get an
    axis-aligned pose with pixel ``(nx // 2, ny // 2)`` at the origin. ``result.npz`` holds the 1x
    grid's ``ijk_to_ras`` (4, 4) and ``geometry_source`` (``"ismrmrd"``, ``"image"`` or ``"default"``).
``gaussians.npz``
    the fitted model (:class:`gaussian_mri.cine.model.CineGaussians`).
``montage.png``
    a few frames of every method and their error maps (only with matplotlib installed; without it a
    warning is logged and the key is left out of the outputs).
``summary.json``
    settings, timings, losses.

With ``--progress-json`` stdout carries one JSON object per line: ``{"event": "progress", "stage",
"iteration", "total", "loss", "elapsed_s", "eta_s"}``, finally ``{"event": "done", "outputs":
{name: path}}`` or ``{"event": "error", "message"}``.
"""

from __future__ import annotations

import argparse
import logging

NAME = "cine"
HELP = "Reconstruct an undersampled 2D cine with motion-resolved Gaussians (GaussianCine)."

_log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--kspace", metavar="F", help="k-space file (.npy, .npz, .mat, .cfl, ISMRMRD .h5)")
    src.add_argument(
        "--image-cine",
        metavar="F",
        help="2D+t image cine to simulate from: NIfTI (nx, ny, 1, T), NRRD, or a DICOM cine folder "
        "(or one .dcm file of it)",
    )
    parser.add_argument("--axes", default=None, help="names of the stored k-space axes, e.g. frames,coils,ky,kx")
    parser.add_argument("--mask-type", choices=("gro", "uniform", "random"), default="gro", help="retrospective sampling (default gro)")
    parser.add_argument("--acceleration", type=float, default=None, metavar="R", help="retrospective acceleration R")
    parser.add_argument("--coils", type=int, default=12, help="simulated coils for --image-cine (default 12)")
    parser.add_argument("--output-dir", required=True, metavar="D")
    parser.add_argument("--n-gaussians", type=int, default=None, metavar="N")
    parser.add_argument("--steps", type=int, default=None, metavar="N")
    parser.add_argument("--frames-per-step", type=int, default=None, metavar="N")
    parser.add_argument("--lambda-mu", type=float, default=2e-3)
    parser.add_argument("--lambda-c", type=float, default=2e-3)
    parser.add_argument("--sr-factor", type=float, default=1.0, help="render the result this many times finer (default 1)")
    parser.add_argument("--coil-maps", metavar="F", help="coil maps (C, ny, nx): .npy or .npz with 'coil_maps' (default ESPIRiT)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--kernels", choices=["auto", "torch", "triton", "native"], default="auto",
                        help="auto: fused Triton kernels on a CUDA GPU when triton is installed; on the CPU compiled C kernels when a C compiler builds them, else PyTorch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--baselines", action="store_true", help="also compute zero-filled and L+S (always done with a reference)")
    parser.add_argument("--progress-json", action="store_true", help="JSON progress lines on stdout")


def _emit(enabled: bool, **event) -> None:
    if enabled:
        import json
        import math

        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        print(json.dumps({k: clean(v) for k, v in event.items()}), flush=True)


def run(args: argparse.Namespace) -> int:
    from .._optional import MissingDependencyError
    from ..cli import UserError

    clear = (UserError, ValueError, FileNotFoundError, MissingDependencyError)
    try:
        return _run(args)
    except KeyboardInterrupt:
        _emit(args.progress_json, event="error", message="interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 - reported as an event, then re-raised for the exit code
        if args.progress_json:
            _emit(True, event="error", message=str(exc) if isinstance(exc, clear) else f"{type(exc).__name__}: {exc}")
            return 2 if isinstance(exc, clear) else 1
        raise


def _mask(kind: str, n_ky: int, n_frames: int, acceleration: float, seed: int):
    from ..mri.sampling import gro_mask, random_vd_mask, uniform_mask

    if kind == "gro":
        return gro_mask(n_ky, n_frames, acceleration)
    if kind == "uniform":
        return uniform_mask(n_ky, n_frames, acceleration)
    return random_vd_mask(n_ky, n_frames, acceleration, seed=seed)


def body_mask_from_reference(reference):
    """Body mask: time-averaged magnitude > 10 % of its 99th percentile, holes filled, largest component."""
    import numpy as np
    from scipy import ndimage

    avg = np.abs(reference).mean(0)
    m = avg > 0.1 * np.percentile(avg, 99)
    m = ndimage.binary_closing(m, iterations=2)
    m = ndimage.binary_fill_holes(m)
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == (int(np.argmax(sizes)) + 1)
    return m


def magnitude_metrics(image, reference, body_mask) -> dict:
    """SSIM / PSNR / NRMSE of ``|image|`` (least-squares gain to ``|reference|``) inside ``body_mask``."""
    import numpy as np

    from ..metrics import nrmse, psnr, ssim

    x = np.abs(image).astype(np.float64)
    r = np.abs(reference).astype(np.float64)
    m = np.broadcast_to(body_mask, r.shape)
    gain = float((x[m] * r[m]).sum() / max((x[m] ** 2).sum(), 1e-30))
    x = x * gain
    return {
        "ssim": ssim(x, r, mask=body_mask, time_axis=0),
        "psnr": psnr(x, r, mask=body_mask, time_axis=0),
        "nrmse": nrmse(x, r, mask=body_mask, time_axis=0),
        "gain": gain,
    }


def _run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .._atomic import atomic_write, atomic_write_text
    from .._optional import require, write_optional_plot
    from ..cine.recon import CineConfig, CineInputError, reconstruct, render_sr, covariance_maps
    from ..cli import UserError
    from ..mri.fft import fft2c

    prog = bool(args.progress_json)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a folder")
    if args.sr_factor <= 0 or args.sr_factor > 32:
        raise UserError(f"--sr-factor must be in (0, 32], got {args.sr_factor}")
    if args.acceleration is not None and not args.acceleration >= 1:
        raise UserError(f"--acceleration must be >= 1, got {args.acceleration}")
    require("nibabel", "writing the result cine.nii.gz")  # before the fit, not after it
    out.mkdir(parents=True, exist_ok=True)

    _emit(prog, event="progress", stage="load", iteration=0, total=1, loss=None, elapsed_s=0.0, eta_s=None)
    reference = None
    coil_maps = None
    frame_ms = 0.0
    spacing = (1.0, 1.0)
    affine = None  # IJK-to-RAS of the 1x grid, when the input says where it was acquired
    geometry_source = "default"
    if args.image_cine:
        from ..mri.kspace_io import cine_from_image, simulate_coil_maps

        if args.acceleration is None:
            raise UserError("--image-cine needs --acceleration R (and --mask-type)")
        cine = cine_from_image(args.image_cine)
        reference = cine.frames.astype(np.complex64)
        n_t, ny, nx = reference.shape
        spacing = tuple(float(s) for s in cine.pixel_spacing_mm)
        frame_ms = float(cine.frame_duration_ms or 0.0)
        affine, geometry_source = np.asarray(cine.affine, dtype=np.float64), "image"
        if args.coils < 1:
            raise UserError(f"--coils must be >= 1, got {args.coils}")
        sim_maps = simulate_coil_maps(args.coils, ny, nx, seed=args.seed).astype(np.complex64)
        full = fft2c(torch.from_numpy(sim_maps)[None] * torch.from_numpy(reference)[:, None])
        mask = _mask(args.mask_type, ny, n_t, args.acceleration, args.seed)
        kspace = full * mask[:, None, :, None]
        coil_maps = torch.from_numpy(sim_maps)
    else:
        from ..mri.kspace_io import load_kspace

        data = load_kspace(args.kspace, axes=args.axes)
        kspace = torch.from_numpy(np.ascontiguousarray(data.kspace)).to(torch.complex64)
        n_t, n_c, ny, nx = kspace.shape
        line_mask = torch.from_numpy(np.asarray(data.mask, dtype=bool))
        if data.pixel_spacing_mm is not None:
            spacing = tuple(float(s) for s in data.pixel_spacing_mm)
        if getattr(data, "affine", None) is not None:
            affine, geometry_source = np.asarray(data.affine, dtype=np.float64), "ismrmrd"
        if data.frame_times_ms is not None and len(data.frame_times_ms) > 1:
            frame_ms = float(np.median(np.diff(np.asarray(data.frame_times_ms, dtype=np.float64))))
        if data.coil_maps is not None:
            coil_maps = torch.from_numpy(np.asarray(data.coil_maps)).to(torch.complex64)
        fully = bool(line_mask.all())
        if args.acceleration is not None:
            if not fully:
                raise UserError(
                    f"--acceleration needs fully sampled k-space; {args.kspace} is already undersampled "
                    f"(R = {line_mask.numel() / max(int(line_mask.sum()), 1):.2f}); drop --acceleration"
                )
            mask = _mask(args.mask_type, ny, n_t, args.acceleration, args.seed)
        else:
            mask = line_mask
        kx0 = int(getattr(data, "kx_first_acquired", 0) or 0)
        if kx0 > 0:  # asymmetric echo: leading readout samples were never acquired
            full_mask = mask[:, :, None].expand(n_t, ny, nx).clone()
            full_mask[:, :, :kx0] = False
            mask = full_mask
        if fully:
            if coil_maps is None:
                from ..cine.recon import estimate_coil_maps

                coil_maps = estimate_coil_maps(kspace, torch.ones(n_t, 1, ny, 1), CineConfig())
            from ..mri.baselines import zero_filled_sense

            reference = zero_filled_sense(kspace, torch.ones(n_t, ny, dtype=torch.bool), coil_maps).numpy()
        w = mask[:, None, :, None] if mask.dim() == 2 else mask[:, None]
        kspace = kspace * w

    if args.coil_maps:
        p = Path(args.coil_maps)
        if not p.is_file():
            raise FileNotFoundError(f"--coil-maps file not found: {p}")
        if p.suffix == ".npz":
            with np.load(p) as z:
                if "coil_maps" not in z.files:
                    raise UserError(f"--coil-maps {p} has no 'coil_maps' array (has {list(z.files)})")
                arr = z["coil_maps"]
        else:
            arr = np.load(p)
        coil_maps = torch.from_numpy(np.asarray(arr)).to(torch.complex64)

    overrides = {
        k: v
        for k, v in (
            ("n_gaussians", args.n_gaussians),
            ("steps", args.steps),
            ("frames_per_step", args.frames_per_step),
        )
        if v is not None
    }
    try:
        config = CineConfig(lambda_mu=args.lambda_mu, lambda_c=args.lambda_c, seed=args.seed, kernels=args.kernels, **overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from exc

    from .._progress import TerminalProgress

    bar = None if prog else TerminalProgress()  # a person at a terminal (stderr); JSON events for programs

    def callback(status: dict) -> None:
        if bar is not None:
            bar(status)
        elif status["stage"] == "fit":
            _emit(prog, event="progress", **{k: status[k] for k in ("stage", "iteration", "total", "loss", "elapsed_s", "eta_s")})

    _emit(prog, event="progress", stage="fit", iteration=0, total=config.steps, loss=None, elapsed_s=0.0, eta_s=None)
    try:
        result = reconstruct(
            kspace, mask, coil_maps, config=config, callback=callback, device=args.device, spacing_mm=spacing, frame_ms=frame_ms
        )
    except CineInputError as exc:
        raise UserError(str(exc)) from exc
    finally:
        if bar is not None:
            bar.close()

    recon_1x = result.recon.numpy().astype(np.complex64)
    sr = float(args.sr_factor)
    arrays: dict = {}
    if sr != 1.0:
        recon = render_sr(result, sr).numpy().astype(np.complex64)  # on the fit's device, returned on the CPU
        eig, det, disp = covariance_maps(result, sr)
        arrays["recon_1x"] = recon_1x
    else:
        recon, eig, det, disp = recon_1x, result.eigen_ratio, result.det_ratio, result.displacement_mm
    out_spacing = np.asarray([spacing[0] * recon_1x.shape[1] / recon.shape[1], spacing[1] * recon_1x.shape[2] / recon.shape[2]])
    if affine is None:
        affine = default_affine(spacing, recon_1x.shape[1:])
    arrays.update(
        ijk_to_ras=np.asarray(affine, dtype=np.float64),
        geometry_source=np.array(geometry_source),
    )
    arrays.update(
        recon=recon,
        spacing_mm=out_spacing.astype(np.float64),
        frame_ms=np.float64(frame_ms),
        eigen_ratio=np.asarray(eig, dtype=np.float32),
        det_ratio=np.asarray(det, dtype=np.float32),
        displacement=np.asarray(disp, dtype=np.float32),
        mask=mask.numpy().astype(bool),
    )

    methods = {"gaussian": recon_1x}
    if reference is not None or args.baselines:
        from ..mri.baselines import lplus_s, zero_filled_sense

        _emit(prog, event="progress", stage="baselines", iteration=0, total=2, loss=None, elapsed_s=time.perf_counter() - t_start, eta_s=None)
        maps = result.coil_maps
        zf = zero_filled_sense(kspace, mask, maps, density_compensation=True).numpy().astype(np.complex64)
        lps = lplus_s(kspace, mask, maps).numpy().astype(np.complex64)
        arrays.update(zero_filled=zf, lps=lps)
        methods.update(zero_filled=zf, lps=lps)
        _emit(prog, event="progress", stage="baselines", iteration=2, total=2, loss=None, elapsed_s=time.perf_counter() - t_start, eta_s=0.0)

    outputs: dict = {}
    metrics = None
    if reference is not None:
        reference = np.asarray(reference, dtype=np.complex64)
        body = body_mask_from_reference(reference)
        arrays.update(reference=reference, body_mask=body)
        metrics = {name: magnitude_metrics(img, reference, body) for name, img in methods.items()}
        outputs["metrics"] = str(atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n"))

    _emit(prog, event="progress", stage="write", iteration=0, total=1, loss=None, elapsed_s=time.perf_counter() - t_start, eta_s=None)
    outputs["result"] = str(atomic_write(out / "result.npz", lambda p: np.savez_compressed(p, **arrays)))
    out_affine = finer_grid_affine(affine, recon_1x.shape[1:], recon.shape[1:])
    outputs["cine"] = str(atomic_write(out / "cine.nii.gz", lambda p: _write_nifti(p, np.abs(recon), out_affine, frame_ms)))
    outputs["gaussians"] = str(atomic_write(out / "gaussians.npz", lambda p: result.model.save(p)))
    montage = write_optional_plot(out / "montage.png", lambda p: _montage(p, methods, reference), _log)
    if montage is not None:  # without matplotlib: a warning, no montage, the rest as usual
        outputs["montage"] = str(montage)
    summary = {**result.summary(), "sr_factor": sr, "spacing_mm": list(out_spacing), "frame_ms": frame_ms,
               "metrics": metrics, "losses_every_10": result.losses[::10], "wall_s": time.perf_counter() - t_start}
    outputs["summary"] = str(atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n"))
    _emit(prog, event="done", outputs=outputs)
    if not prog:
        for k, v in outputs.items():
            _log.info("wrote %s: %s", k, v)
    return 0


def default_affine(spacing, shape):
    """IJK-to-RAS of an input without geometry: axis-aligned, ``spacing`` = (row, col) mm, pixel
    ``(nx // 2, ny // 2)`` (the centre of the centred FFT) at the origin, 1 mm slice."""
    import numpy as np

    ny, nx = (int(v) for v in shape)
    affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])
    affine[:3, 3] = [-(nx // 2) * spacing[1], -(ny // 2) * spacing[0], 0.0]
    return affine


def finer_grid_affine(affine, shape, fine_shape):
    """IJK-to-RAS of the grid ``fine_shape`` (rows, cols) whose pixels subdivide those of the grid
    ``shape`` with IJK-to-RAS ``affine`` (same field of view and outer corner; fine pixel centres at
    ``(coarse + 1/2) s - 1/2``, :func:`gaussian_mri.render.splat2d.sr_grid`)."""
    import numpy as np

    sy, sx = fine_shape[0] / shape[0], fine_shape[1] / shape[1]
    step = np.eye(4)
    step[0, 0], step[1, 1] = 1.0 / sx, 1.0 / sy
    step[0, 3], step[1, 3] = -(sx - 1.0) / (2.0 * sx), -(sy - 1.0) / (2.0 * sy)
    return np.asarray(affine, dtype=np.float64) @ step


def _write_nifti(path, magnitude, affine, frame_ms) -> None:
    """4D NIfTI (x, y, 1, t) from (t, rows, cols) with IJK-to-RAS ``affine`` (i = column, j = row); pixdim[4] = frame ms."""
    import numpy as np

    from .._optional import require

    nib = require("nibabel", "writing the NIfTI cine")

    vol = np.transpose(magnitude.astype(np.float32), (2, 1, 0))[:, :, None, :]
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(vol, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "msec")
    z = img.header.get_zooms()
    img.header.set_zooms((z[0], z[1], z[2], float(frame_ms) if frame_ms > 0 else 1.0))
    nib.save(img, path)


def _montage(path, methods: dict, reference) -> None:
    import numpy as np

    from .._optional import pyplot

    plt = pyplot("the cine montage")

    n_t = next(iter(methods.values())).shape[0]
    frames = np.unique(np.linspace(0, n_t - 1, min(4, n_t)).round().astype(int))
    rows = []
    if reference is not None:
        rows.append(("reference", np.abs(reference), False))
    for name, img in methods.items():
        mag = np.abs(img)
        if reference is not None:
            r = np.abs(reference)
            m = r > 0.1 * r.max()
            gain = float((mag[m] * r[m]).sum() / max((mag[m] ** 2).sum(), 1e-30))
            rows.append((name, mag * gain, False))
            rows.append((f"{name} error x5", np.abs(mag * gain - r) * 5, True))
        else:
            rows.append((name, mag, False))
    vmax = float(np.percentile(rows[0][1], 99.5)) or 1.0
    fig, axes = plt.subplots(len(rows), len(frames), figsize=(2.6 * len(frames), 2.4 * len(rows)), squeeze=False)
    for i, (name, img, _err) in enumerate(rows):
        for j, f in enumerate(frames):
            ax = axes[i, j]
            ax.imshow(img[f], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(f"frame {f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)
