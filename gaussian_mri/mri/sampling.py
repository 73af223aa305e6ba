"""Cartesian ky-t sampling masks for cine: GRO, regular interleaved, variable-density random.

Every generator returns a ``torch.bool`` line mask of shape ``(frames, ky)`` (``True`` = the whole
readout line ``ky`` is acquired in that frame) with exactly ``n = round(n_ky / R)`` lines per frame,
rounding half away from zero. :func:`expand_line_mask` turns it into ``(frames, ky, kx)``.
The k-space centre is index ``n_ky // 2`` (as :func:`gaussian_mri.mri.fft.fft2c`) for even and odd
``n_ky``; every generator's density is centred there.

All generators are pure functions of their arguments: the random one takes a ``seed`` and uses its
own :class:`numpy.random.Generator`, never the global RNG.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gaussian_mri._checks import require_tensor

__all__ = [
    "expand_line_mask",
    "gro_mask",
    "lines_per_frame",
    "random_vd_mask",
    "round_half_away",
    "sampling_density",
    "uniform_mask",
]

GOLDEN_RATIO = (1.0 + math.sqrt(5.0)) / 2.0


def round_half_away(x: float | np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (MATLAB ``round``; NumPy rounds half to even)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def lines_per_frame(n_ky: int, R: float) -> int:  # noqa: N803 - R is the usual name for acceleration
    """Number of lines per frame, ``round(n_ky / R)`` with halves rounded away from zero.

    Parameters
    ----------
    n_ky
        Number of phase-encode lines of the fully sampled grid.
    R
        Acceleration factor, ``>= 1``.

    Raises
    ------
    ValueError
        If ``R < 1`` (or not finite), or if ``R`` is so high that a frame would get fewer than 2 lines.
    """
    n_ky = _check_int("n_ky", n_ky, 2)
    if isinstance(R, bool) or not isinstance(R, (int, float, np.integer, np.floating)):
        raise TypeError(f"R must be a number, got {type(R).__name__} ({R!r})")
    if not math.isfinite(R) or R < 1:
        raise ValueError(f"R (acceleration) must be a finite number >= 1, got {R}")
    n = int(round_half_away(n_ky / R))
    if n < 2:
        raise ValueError(
            f"R={R} is too high for n_ky={n_ky}: round({n_ky}/{R}) = {n} line(s) per frame, at least 2 are "
            f"needed; use R <= {n_ky / 1.5:.4g}"
        )
    return n


def _place_unique(targets: np.ndarray, order_key: np.ndarray, n_ky: int, outward: np.ndarray) -> np.ndarray:
    """Place each target line on a free line, nearest first; returns the chosen indices.

    Targets are processed by increasing ``order_key`` (distance from the centre); a target whose line
    is taken moves to the nearest free line, trying the outward side first on ties.
    """
    taken = np.zeros(n_ky, dtype=bool)
    for i in np.argsort(order_key, kind="stable"):
        t = int(targets[i])
        if not taken[t]:
            taken[t] = True
            continue
        step_first = 1 if outward[i] >= 0 else -1
        for dist in range(1, n_ky):
            placed = False
            for cand in (t + step_first * dist, t - step_first * dist):
                if 0 <= cand < n_ky and not taken[cand]:
                    taken[cand] = True
                    placed = True
                    break
            if placed:
                break
    return taken


def gro_mask(
    n_ky: int,
    n_frames: int,
    R: float,  # noqa: N803
    *,
    s: float = 2.2,
    alpha: float = 3.0,
    tau: int = 1,
    frame_offset: int = 0,
) -> torch.Tensor:
    """Golden-ratio-offset (GRO) Cartesian ky-t sampling (Joshi et al. 2022).

    Parameters
    ----------
    n_ky
        Number of phase-encode lines ``N``.
    n_frames
        Number of frames.
    R
        Acceleration; each frame gets ``n = round(N / R)`` lines (halves away from zero).
    s
        Shrink factor ``> 1``: the uniform pattern lives on a grid of ``Ns = ceil(N / s)`` lines
        before it is stretched; larger ``s`` means a denser centre.
    alpha
        Stretch exponent ``>= 1``; ``alpha = 1`` gives a uniform density.
    tau
        Order of the generalised golden ratio, ``>= 1``: the per-frame offset increment is
        ``1 / (phi + tau - 1)`` of the line spacing (``tau = 1``: ``1 / phi``, the golden ratio;
        larger ``tau`` as "tiny golden angles" in radial imaging).
    frame_offset
        Index of the first frame in the golden-ratio sequence (to continue a sequence).

    Returns
    -------
    torch.Tensor
        ``(n_frames, n_ky)`` bool, exactly ``n`` lines ``True`` per frame.

    Raises
    ------
    ValueError
        If ``R < 1``, if a frame would get fewer than 2 lines, or a shape parameter is out of range.

    Notes
    -----
    Positions follow the paper and the reference MATLAB code (``gro_fun.m`` in OSU-CMR/GRO-CAVA, by
    R. Ahmad; also ported to Python by M. Vornehm): for frame ``j`` the ``n`` samples of a uniform
    pattern on the shrunk grid are ``v_i = 1/2 + 1e-10 + (i + frac(j / (phi + tau - 1))) * Ns / n``,
    ``i = 0..n-1`` (1-based continuous line numbers in ``[1/2, Ns + 1/2)``, centre ``c = (Ns + 1) / 2``;
    the 1e-10 is the reference's tie breaker). They are stretched to variable density by
    ``w = v - k sign(c - v) |c - v|^alpha`` with ``k = (N/2 - Ns/2) / (Ns/2)^alpha``, which maps the
    shrunk grid onto ``kappa = w - c`` in ``[-N/2, N/2)`` lines from the k-space centre and leaves the
    centre almost unstretched.

    **Centre.** ``kappa = 0`` is the k-space centre, which is line ``N // 2`` (0-based) for even and odd
    ``N``: the DC line of :func:`gaussian_mri.mri.fft.fft2c` (fftshift convention). A sample goes to line
    ``floor(kappa + 1/2) + N // 2``; for even ``N`` a sample that lands on ``+N/2`` wraps to line 0
    (``-N/2``, the unpaired edge line of an even grid). This is what the reference code does: for even
    ``N`` it shifts the pattern by half a line (``+ 1/2``) and wraps ``vC >= N + 1/2`` to ``vC - N``, so
    its 1-based lines are centred on ``N/2 + 1``; for odd ``N`` it does not shift (centre ``(N + 1)/2``);
    in 0-based indices both are ``N // 2``. (Before this was fixed, the pattern here was centred on
    ``(N - 1) / 2``, half a line below the DC line for even ``N``.) Without collisions (below) the
    lines are exactly those of ``gro_fun.m`` with ``E = 1``, ``PF = 0`` (``tests/mri/test_sampling.py``).

    Differences from the reference code: where rounding puts two samples of a frame on the same line
    (only when the centre spacing ``R / s`` is below one line) the reference keeps the line once, so the
    frame has fewer than ``n`` lines; here the sample farther from the centre moves to the nearest free
    line, outward first on ties, so every frame has exactly ``n`` distinct lines (our choice). No
    partial Fourier, one encoding (``E = 1``: cine), and ``frame_offset`` to continue a sequence.

    References
    ----------
    .. [JOS2022] Joshi M, Pruitt A, Chen C, Liu Y, Ahmad R. Technical report (v1.0): pseudo-random
       Cartesian sampling for dynamic MRI. arXiv:2206.03630, 2022.
    .. [RIC2020] Rich A, Gregg M, Jin N, Liu Y, Potter L, Simonetti O, Ahmad R. Cartesian sampling with
       variable density and adjustable temporal resolution (CAVA). Magn Reson Med 83:2015-2025, 2020.
    .. [GRO] Reference MATLAB code: https://github.com/OSU-CMR/GRO-CAVA (``gro_fun.m``).
    """
    n_ky = _check_int("n_ky", n_ky, 2)
    n_frames = _check_int("n_frames", n_frames, 1)
    tau = _check_int("tau", tau, 1)
    frame_offset = _check_int("frame_offset", frame_offset, 0)
    if not (isinstance(s, (int, float)) and math.isfinite(s) and s >= 1):
        raise ValueError(f"s (shrink factor) must be a finite number >= 1, got {s!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 1):
        raise ValueError(f"alpha (stretch exponent) must be a finite number >= 1, got {alpha!r}")
    n = lines_per_frame(n_ky, R)
    increment = 1.0 / (GOLDEN_RATIO + tau - 1.0)
    mask = np.zeros((n_frames, n_ky), dtype=bool)
    for row, j in enumerate(range(frame_offset, frame_offset + n_frames)):
        mask[row] = _gro_frame(n_ky, n, math.fmod(j * increment, 1.0), s, alpha)
    assert (mask.sum(axis=1) == n).all()
    return torch.from_numpy(mask)


def _gro_frame(n_ky: int, n: int, offset: float, s: float, alpha: float) -> np.ndarray:
    """One GRO frame: ``(n_ky,)`` bool with ``n`` lines for the golden-ratio offset ``offset`` in [0, 1)."""
    big_n = float(n_ky)
    ns = float(math.ceil(big_n / s))
    c = (ns + 1.0) / 2.0  # centre of [1/2, Ns + 1/2), 1-based line numbers as in the paper
    k = (big_n / 2.0 - ns / 2.0) / (ns / 2.0) ** alpha
    i = np.arange(n, dtype=np.float64)
    v = 0.5 + 1e-10 + (i + offset) * ns / n  # uniform on the shrunk grid, in [1/2, Ns + 1/2)
    kappa = v - k * np.sign(c - v) * np.abs(c - v) ** alpha - c  # lines from the k-space centre, [-N/2, N/2)
    line = (np.floor(kappa + 0.5).astype(np.int64) + n_ky // 2) % n_ky  # DC at N // 2; even N: +N/2 -> 0
    return _place_unique(line, np.abs(kappa), n_ky, np.sign(kappa))


def uniform_mask(
    n_ky: int,
    n_frames: int,
    R: float,  # noqa: N803
    *,
    shift_step: int = 1,
) -> torch.Tensor:
    """Regular (equispaced) line sampling with a per-frame shift (interleaved, as in k-t methods).

    Parameters
    ----------
    n_ky
        Number of phase-encode lines ``N``.
    n_frames
        Number of frames.
    R
        Acceleration; ``n = round(N / R)`` lines per frame, spacing ``N / n`` (rounded down per line).
    shift_step
        Shift between consecutive frames in lines; frame ``j`` is shifted by
        ``(j * shift_step) mod round(N / n)``, so with ``shift_step = 1`` and integer ``R`` the union of
        ``R`` consecutive frames is the full grid.

    Returns
    -------
    torch.Tensor
        ``(n_frames, n_ky)`` bool, exactly ``n`` lines per frame; frame 0 contains the centre line
        ``N // 2``.

    Raises
    ------
    ValueError
        If ``R < 1`` or a frame would get fewer than 2 lines.
    """
    n_ky = _check_int("n_ky", n_ky, 2)
    n_frames = _check_int("n_frames", n_frames, 1)
    shift_step = _check_int("shift_step", shift_step, 0)
    n = lines_per_frame(n_ky, R)
    spacing = n_ky / n
    period = max(1, int(round_half_away(spacing)))
    base = np.floor(np.arange(n) * spacing).astype(np.int64)  # distinct: spacing >= 1
    mask = np.zeros((n_frames, n_ky), dtype=bool)
    for j in range(n_frames):
        shift = (j * shift_step) % period
        mask[j, (n_ky // 2 + base + shift) % n_ky] = True
    assert (mask.sum(axis=1) == n).all()
    return torch.from_numpy(mask)


def random_vd_mask(
    n_ky: int,
    n_frames: int,
    R: float,  # noqa: N803
    *,
    n_center: int | None = None,
    power: float = 2.0,
    seed: int = 0,
) -> torch.Tensor:
    """Variable-density random line sampling with a fully sampled centre, new lines every frame.

    Parameters
    ----------
    n_ky
        Number of phase-encode lines ``N``.
    n_frames
        Number of frames.
    R
        Acceleration; ``n = round(N / R)`` lines per frame.
    n_center
        Number of central lines acquired in every frame (centred on ``N // 2``). Default
        ``min(n // 2, max(2, round(0.04 N)))``.
    power
        The other ``n - n_center`` lines are drawn without replacement with probability proportional to
        ``(1 - |ky - N//2| / (N/2 + 1)) ** power``; ``0`` gives uniform random sampling.
    seed
        Seed of the private :class:`numpy.random.Generator`; the same seed gives the same mask.

    Returns
    -------
    torch.Tensor
        ``(n_frames, n_ky)`` bool, exactly ``n`` lines per frame.

    Raises
    ------
    ValueError
        If ``R < 1``, a frame would get fewer than 2 lines, ``n_center > n`` or ``power < 0``.
    """
    n_ky = _check_int("n_ky", n_ky, 2)
    n_frames = _check_int("n_frames", n_frames, 1)
    seed = _check_int("seed", seed, 0)
    n = lines_per_frame(n_ky, R)
    if n_center is None:
        n_center = min(n // 2, max(2, int(round_half_away(0.04 * n_ky))))
    n_center = _check_int("n_center", n_center, 0)
    if n_center > n:
        raise ValueError(f"n_center={n_center} exceeds the {n} lines per frame at R={R}; lower n_center or R")
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
        raise ValueError(f"power must be a finite number >= 0, got {power!r}")
    rng = np.random.default_rng(seed)
    centre = n_ky // 2
    start = centre - n_center // 2
    centre_lines = np.arange(start, start + n_center)
    dist = np.abs(np.arange(n_ky) - centre)
    pdf = (1.0 - dist / (n_ky / 2.0 + 1.0)) ** power
    pdf[centre_lines] = 0.0
    pdf /= pdf.sum()
    mask = np.zeros((n_frames, n_ky), dtype=bool)
    for j in range(n_frames):
        mask[j, centre_lines] = True
        if n > n_center:
            mask[j, rng.choice(n_ky, size=n - n_center, replace=False, p=pdf)] = True
    assert (mask.sum(axis=1) == n).all()
    return torch.from_numpy(mask)


def expand_line_mask(mask: torch.Tensor, n_kx: int) -> torch.Tensor:
    """Expand a ``(frames, ky)`` line mask to ``(frames, ky, kx)`` (every readout sample of a line).

    Parameters
    ----------
    mask
        ``(frames, ky)`` bool or real line mask.
    n_kx
        Readout length.

    Returns
    -------
    torch.Tensor
        ``(frames, ky, n_kx)``, same dtype as ``mask`` (a contiguous copy).

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D or ``n_kx < 1``.
    """
    require_tensor("mask", mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be a (frames, ky) line mask, got shape {tuple(mask.shape)}")
    n_kx = _check_int("n_kx", n_kx, 1)
    return mask[:, :, None].expand(-1, -1, n_kx).contiguous()


def sampling_density(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of frames that acquire each location: ``mask.float().mean(0)``.

    Parameters
    ----------
    mask
        ``(frames, ky)`` or ``(frames, ky, kx)`` bool or real mask.

    Returns
    -------
    torch.Tensor
        ``(ky,)`` or ``(ky, kx)`` float32 density in ``[0, 1]``.
    """
    require_tensor("mask", mask)
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask must be (frames, ky) or (frames, ky, kx), got shape {tuple(mask.shape)}")
    return mask.to(torch.float32).mean(dim=0)
