"""Thin wrapper around the BART command-line tool (Debian package ``bart``) as an independent peer.

Each call writes its inputs as ``.cfl`` files into a fresh temporary folder, runs ``bart`` there with
:func:`subprocess.run` and reads the result back; a failing command raises :class:`BartError` with
BART's own message. Layout conversion (package ``(frames, coils, ky, kx)`` <-> BART dims
``READ=0 (kx), PHS1=1 (ky), COIL=3, TIME=10``) is in :mod:`gaussian_mri.mri.cfl`.

BART's centred unitary FFT (``bart fft -u``) equals :func:`gaussian_mri.mri.fft.fft2c` for even and
odd sizes (checked in ``tests/mri/test_cfl.py``), so data simulated with :class:`SenseOp` can be passed
to BART as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gaussian_mri._checks import require_tensor
from gaussian_mri.mri.cfl import from_bart_dims, read_cfl, to_bart_dims, write_cfl
from gaussian_mri.mri.espirit import time_average_kspace
from gaussian_mri.mri.operators import SenseOp, mask_as_weights

__all__ = ["BartError", "bart_available", "bart_ecalib", "bart_executable", "bart_pics", "run_bart"]

TIME_FLAG = 1 << 10
"""BART bitmask of the TIME dimension (10): ``-R T:1024:...`` is a total variation along time."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BartError(RuntimeError):
    """A BART command failed; the message holds the command line and BART's stderr."""


def bart_executable() -> str | None:
    """Path of the ``bart`` binary: ``$BART_EXECUTABLE`` if set, else ``bart`` on ``PATH``, else ``None``."""
    env = os.environ.get("BART_EXECUTABLE")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    return shutil.which("bart")


def bart_available() -> bool:
    """Whether a ``bart`` binary can be found (see :func:`bart_executable`)."""
    return bart_executable() is not None


def run_bart(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    timeout_s: float = 600.0,
    threads: int | None = None,
) -> str:
    """Run ``bart <args>`` in ``cwd``; return its stdout.

    Parameters
    ----------
    args
        Command and arguments after ``bart`` (e.g. ``["ecalib", "-m1", "ksp", "maps"]``).
    cwd
        Working folder, where the ``.cfl`` files named in ``args`` live.
    timeout_s
        Seconds before the process is killed.
    threads
        OpenMP threads for BART (``OMP_NUM_THREADS``); ``None`` inherits the environment. On a small,
        shared machine ``1`` is much faster than oversubscribed threads.

    Raises
    ------
    BartError
        If ``bart`` is not installed, exits with a non-zero status or times out.
    """
    exe = bart_executable()
    if exe is None:
        raise BartError("the 'bart' executable was not found on PATH; install it (apt-get install bart)")
    cmd = [exe, *[str(a) for a in args]]
    env = None
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
        )
    except subprocess.TimeoutExpired as err:
        raise BartError(f"'{' '.join(cmd)}' did not finish within {timeout_s} s") from err
    if proc.returncode != 0:
        how = f"exit status {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}"
        message = _ANSI.sub("", proc.stderr.strip() or proc.stdout.strip()) or "(no output)"
        raise BartError(f"'{' '.join(cmd)}' failed with {how}:\n{message}")
    return proc.stdout


def _to_numpy(name: str, value: torch.Tensor) -> np.ndarray:
    require_tensor(name, value)
    return value.detach().cpu().resolve_conj().numpy()


def bart_ecalib(
    kspace: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    calib: int = 16,
    kernel: int = 6,
    crop: float | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """One set of ESPIRiT coil maps from BART: ``bart ecalib -m1 -r calib -k kernel [-c crop]``.

    Parameters
    ----------
    kspace
        ``(frames, coils, ky, kx)`` undersampled cine k-space, time-averaged first with
        :func:`gaussian_mri.mri.espirit.time_average_kspace`, or ``(coils, ky, kx)``.
    mask
        Sampling mask for the time average; ``None`` infers it from the non-zero samples.
    calib
        Calibration region width (``-r``).
    kernel
        Kernel width (``-k``).
    crop
        Eigenvalue crop (``-c``); ``None`` keeps BART's default (0.8).
    threads
        OpenMP threads (see :func:`run_bart`).

    Returns
    -------
    torch.Tensor
        ``(coils, ny, nx)`` complex64 maps (BART's phase convention: rotated to the first principal
        component).

    Raises
    ------
    BartError
        If BART is missing or fails.
    """
    avg = _to_numpy("kspace", time_average_kspace(kspace, mask))  # (C, ky, kx)
    args = ["ecalib", "-m1", "-r", str(int(calib)), "-k", str(int(kernel))]
    if crop is not None:
        args += ["-c", f"{float(crop):g}"]
    with tempfile.TemporaryDirectory(prefix="gmri_bart_") as tmp:
        write_cfl(Path(tmp) / "ksp", to_bart_dims(avg, ("coils", "ky", "kx")))
        run_bart([*args, "ksp", "maps"], cwd=tmp, threads=threads)
        maps = read_cfl(Path(tmp) / "maps")
    return torch.from_numpy(np.ascontiguousarray(from_bart_dims(maps, ("coils", "y", "x"))))


def bart_pics(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    coil_maps: torch.Tensor,
    *,
    regularizer: Literal["tv", "llr"] = "tv",
    lam: float = 0.01,
    iterations: int = 100,
    llr_block: int = 8,
    normalize: bool = True,
    extra_args: Sequence[str] = (),
    threads: int | None = None,
) -> torch.Tensor:
    """Regularised SENSE reconstruction of a cine series with ``bart pics``.

    Parameters
    ----------
    kspace
        ``(frames, coils, ky, kx)`` complex k-space, zero where not sampled.
    mask
        ``(frames, ky)`` or ``(frames, ky, kx)`` sampling mask, passed to BART as its pattern (``-p``).
    coil_maps
        ``(coils, ny, nx)`` complex sensitivities (e.g. from :func:`bart_ecalib` or
        :func:`gaussian_mri.mri.espirit.espirit_maps`).
    regularizer
        ``"tv"``: total variation along time, ``-R T:1024:0:lam`` (1024 = bit of BART's TIME dim 10);
        ``"llr"``: locally low rank over spatial blocks of ``llr_block`` pixels with time as the matrix
        columns, ``-R L:7:7:lam -b llr_block``.
    lam
        Regularisation weight, for data normalised as described under ``normalize``.
    iterations
        Maximum number of iterations (``-i``).
    llr_block
        LLR block size (``-b``; BART's default is 8).
    normalize
        Divide the k-space by ``max |E^H y|`` (the zero-filled SENSE image maximum) before calling BART
        and multiply the result back, and pass ``-w 1`` so that BART's own automatic scaling is off. With
        frame-varying masks BART's automatic scaling is unreliable (METHODS.md section 3), so ``lam`` is
        only meaningful on normalised data.
    extra_args
        More ``pics`` options, inserted before the file names (e.g. ``["-d", "5"]``).
    threads
        OpenMP threads (see :func:`run_bart`).

    Returns
    -------
    torch.Tensor
        ``(frames, ny, nx)`` complex64 image series, in the units of ``kspace``.

    Raises
    ------
    ValueError
        On a bad ``regularizer``, ``lam``, ``iterations`` or mismatched shapes.
    BartError
        If BART is missing or fails (the message contains BART's stderr).
    """
    if regularizer not in ("tv", "llr"):
        raise ValueError(f"regularizer must be 'tv' or 'llr', got {regularizer!r}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    op = SenseOp(coil_maps, mask)
    zero_filled = op.adjoint(kspace)  # also checks the shapes of kspace, mask and coil_maps
    n_frames, _, n_ky, n_kx = kspace.shape
    scale = float(zero_filled.abs().max()) if normalize else 1.0
    if scale == 0.0:
        return torch.zeros_like(zero_filled, dtype=torch.complex64)

    ksp = _to_numpy("kspace", kspace) / scale
    pattern = mask_as_weights(mask, n_ky, n_kx).expand(n_frames, 1, n_ky, n_kx)[:, 0]
    pat = _to_numpy("mask", pattern.to(torch.float32))
    ksp = ksp * pat[:, None]
    maps = _to_numpy("coil_maps", coil_maps)

    if regularizer == "tv":
        reg = ["-R", f"T:{TIME_FLAG}:0:{lam:g}"]
    else:
        reg = ["-R", f"L:7:7:{lam:g}", "-b", str(int(llr_block))]
    args = ["pics", "-i", str(iterations), *reg, "-p", "pat"]
    if normalize:
        args += ["-w", "1"]
    args += [*map(str, extra_args), "ksp", "maps", "rec"]
    with tempfile.TemporaryDirectory(prefix="gmri_bart_") as tmp:
        write_cfl(Path(tmp) / "ksp", to_bart_dims(ksp, ("frames", "coils", "ky", "kx")))
        write_cfl(Path(tmp) / "pat", to_bart_dims(pat, ("frames", "ky", "kx")))
        write_cfl(Path(tmp) / "maps", to_bart_dims(maps, ("coils", "y", "x")))
        run_bart(args, cwd=tmp, threads=threads)
        rec = read_cfl(Path(tmp) / "rec")
    out = from_bart_dims(rec, ("frames", "y", "x")) * scale
    return torch.from_numpy(np.ascontiguousarray(out.astype(np.complex64)))
