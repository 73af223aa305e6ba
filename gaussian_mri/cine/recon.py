"""GaussianCine reconstruction: fit motion-resolved complex 2D Gaussians to undersampled cine k-space.

Model (:mod:`gaussian_mri.cine.model`): ``M`` complex Gaussians with per-frame centre offsets ``dmu``
(T, M, 2) and Cholesky offsets ``dl`` (T, M, 3). Loss, after dividing the k-space by its largest
magnitude (Terpstra & van den Berg; METHODS.md section 1 and 3)::

    L = HDR(M_t F C G_t, s_t) + lambda_mu (||dmu||_* + TV_t(dmu)) + lambda_c TV_t(dl)
    HDR(y_hat, y) = mean over sampled (t, coil, ky, kx) of (|y_hat - y| / (stopgrad|y_hat| + eps))^2

Normalisation of the regularisers (the paper does not give one; chosen so that ``lambda = 1e-4``
does not depend on the number of Gaussians): ``TV_t(x) = (1/M) sum_{t,i,k} |x_{t+1,i,k} - x_{t,i,k}|``
(cyclic over the cardiac cycle when ``cyclic_tv``), ``||dmu||_* = sum of singular values of dmu
reshaped (T, 2M), divided by sqrt(M)``. ``dmu`` is in pixels.

Optimisation: Adam with one learning rate per parameter group (``CineConfig``): the paper's
``lr = 1e-3`` is kept for the amplitudes (normalised to the initial image maximum) and the shape
offsets; centres and displacements are in pixels, where ``1e-3`` px per step would barely move
them in a few thousand steps, so they get ``lr_means`` / ``lr_dmu`` = 0.05 px per step (a Gaussian
can cross its own width in tens of steps; chosen by hand on small phantoms, not swept). Amplitudes
(normalised to the initial image maximum) and log-Cholesky factors use 1e-2. All rates decay
exponentially to ``lr_final_factor`` of their start value. On the simulated cine (24 frames,
160 x 192, 12 coils) 600 steps of 4 frames with 6000 Gaussians and lambda = 1e-3 beat L+S at R = 8
and 16 (``benchmarks/results/cine_simulated_*.md``); lambda = 1e-3 was also better than 1e-4 on a
small phantom (regulariser normalisation below is ours, so the paper's 1e-4 is not directly
comparable). Every step renders ``frames_per_step`` random frames (a fresh permutation each cycle).
The per-frame parameters (``dmu``, ``dl``) of the frames not drawn in a step do not move, and their
Adam moments and step counts do not advance (:class:`gaussian_mri._optim.MaskedAdam`): only the
regularisers would give them a gradient, and plain Adam's momentum would keep moving them blindly
(SVR keeps the per-slice parameters of the slices outside its batch in place for the same reason).
A frame then feels the regularisers only in the steps that draw it (``frames_per_step / T`` of them),
so they are weighted by ``T / frames_per_step`` in the loss: the expected update of each frame is that
of the full objective (``CineConfig.freeze_undrawn_frames = False`` restores the old behaviour, no
weighting). Measured in ``benchmarks/README.md`` ("Frozen undrawn frames").
The nuclear norm is computed from the eigenvalues of the T x T Gram matrix on the CPU
(:func:`nuclear_norm_gram`, with a defined subgradient at zero singular values).
Every ``prune_every`` steps Gaussians that are faint (``|c| < prune_amplitude`` x max |c|) or tiny
(``sqrt(det Sigma) < prune_min_area`` px^2 in every frame) are removed.

Initialisation: the time-averaged k-space (each location averaged over the frames that sampled it)
is coil-combined into an image ``x0``; centres are drawn with probability proportional to
``|x0| + |grad x0| + floor``, sizes from the local density of centres, amplitudes from ``x0`` and
one least-squares gain.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .._optim import MaskedAdam
from .._torch_compat import resolve_device as _resolve_device

from ..mri.fft import centring_ramp, ifft2c
from ..mri.operators import mask_as_weights
from ..render.backends import KERNEL_BACKENDS, resolve_kernel_backend
from .model import CineGaussians

__all__ = [
    "CineCancelled",
    "CineConfig",
    "CineInputError",
    "CineResult",
    "reconstruct",
    "render_sr",
    "resolve_device",
]


class CineInputError(ValueError):
    """The k-space, mask or coil maps do not fit together (message says how)."""


class CineCancelled(RuntimeError):
    """The callback returned ``False``."""


@dataclass(frozen=True)
class CineConfig:
    """Settings of :func:`reconstruct` (defaults: the paper where it says, measured otherwise)."""

    n_gaussians: int = 6000
    """Initial number of Gaussians (the paper uses 1000-25000 for ~58500 pixels; >= 6000 saturates)."""
    steps: int = 1000
    """Adam steps. The paper uses 7500 steps of one frame on a GPU; with 4 frames per step, 600 steps
    already gave SSIM 0.941 (R = 8) / 0.916 (R = 16) on the simulated cine
    (``benchmarks/cine_simulated.py``), and 7500 would take about an hour on a 2-core CPU."""
    frames_per_step: int = 4
    """Frames rendered per step (stochastic training)."""
    freeze_undrawn_frames: bool = True
    """The per-frame parameters (``dmu``, ``dl``) of frames not drawn in a step keep their values and
    Adam state (:class:`gaussian_mri._optim.MaskedAdam`). ``False``: plain Adam moves every frame every
    step (regulariser gradients and momentum), the behaviour before; measured in ``benchmarks/README.md``
    ("Frozen undrawn frames")."""
    lambda_mu: float = 2e-3
    """Weight of the nuclear norm and the temporal TV of ``dmu``. Paper: 1e-4, but our regularisers
    are normalised (TV / M, nuclear norm / sqrt(M)), so the values are not directly comparable; measured
    on the simulated cine, 1e-3 beat 1e-4 at R = 16 (SSIM 0.916 vs 0.866, NRMSE 0.097 vs 0.121), and with
    the undrawn frames frozen 2e-3 beat the earlier default (plain Adam, 1e-3) on SSIM at 300 and 600 steps
    (benchmarks/README.md, "Frozen undrawn frames")."""
    lambda_c: float = 2e-3
    """Weight of the temporal TV of ``dl`` (paper: 1e-4; see ``lambda_mu`` for why 2e-3)."""
    hdr_eps: float = 1e-2
    """HDR loss epsilon, relative to the k-space maximum (Huang et al. 2023)."""
    lr: float = 1e-3
    """Adam rate of the shape offsets ``dl`` (paper: 1e-3)."""
    lr_amplitudes: float = 1e-2
    """Adam rate of the amplitudes, normalised to the initial image maximum."""
    lr_chol: float = 1e-2
    """Adam rate of the log-Cholesky shape parameters."""
    lr_means: float = 0.05
    """Adam rate of the centres, pixels per step."""
    lr_dmu: float = 0.05
    """Adam rate of the per-frame displacements, pixels per step."""
    lr_dl: float = 5e-3
    """Adam rate of the per-frame shape offsets."""
    lr_final_factor: float = 0.1
    """All rates decay exponentially to this fraction at the last step."""
    prune_every: int = 500
    """Prune every this many steps (paper: 500); 0 disables."""
    prune_amplitude: float = 0.01
    """Prune Gaussians with ``|c| <`` this times the largest ``|c|``."""
    prune_min_area: float = 0.02
    """Prune Gaussians with ``sqrt(det Sigma_t) <`` this (pixels^2) in every frame."""
    cyclic_tv: bool = True
    """Temporal TV wraps from the last frame to the first (one cardiac cycle)."""
    init_floor: float = 0.05
    """Floor of the centre-sampling density, relative to its maximum (keeps some Gaussians in dark areas)."""
    k_sigma: float = 3.0
    """Splat window in standard deviations (3: the truncated tail holds 1 % of the mass)."""
    espirit_calib: int = 16
    espirit_kernel: int = 6
    seed: int = 0
    callback_every: int = 10
    """Call the callback every this many steps."""
    kernels: str = "auto"
    """Renderer of the fit, the output, the super-resolution rendering and the maps: ``"auto"`` (fused
    Triton kernels on a CUDA GPU when triton is installed; compiled C kernels on the CPU when they
    build; else PyTorch), ``"torch"``, ``"triton"`` or ``"native"`` (:mod:`gaussian_mri.render.backends`)."""

    def __post_init__(self) -> None:
        for name in ("n_gaussians", "steps", "frames_per_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lambda_mu", "lambda_c", "prune_amplitude", "prune_min_area", "init_floor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("hdr_eps", "lr", "lr_amplitudes", "lr_chol", "lr_means", "lr_dmu", "lr_dl", "lr_final_factor", "k_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.prune_every < 0:
            raise ValueError(f"prune_every must be >= 0, got {self.prune_every}")
        if self.kernels not in KERNEL_BACKENDS:
            raise ValueError(f"kernels must be one of {KERNEL_BACKENDS}, got {self.kernels!r}")


@dataclass
class CineResult:
    """Output of :func:`reconstruct`; images in the units of the input k-space.

    recon : (T, ny, nx) complex64 tensor
    model : CineGaussians (amplitudes in image units of the input data)
    eigen_ratio, det_ratio : (T, ny, nx) float32 tensors, splatted covariance ratios relative to frame 0
    displacement_mm : (T, ny, nx, 2) float32 tensor, splatted ``dmu_t - dmu_0`` in mm, last axis (x = column, y = row)
    coil_maps : (C, ny, nx) complex64 tensor used
    losses : data (HDR) loss per step; total_losses: with the regularisers (weighted as in the fit)
    n_gaussians : count after each pruning, starting with the initial one
    timings : seconds of ``coil_maps``, ``init``, ``fit``, ``render``, ``maps``, ``total``
    device : the device the fit ran on (:func:`render_sr` and :func:`covariance_maps` of a result run there)
    kernels : the renderer that ran, ``"torch"`` or ``"triton"`` (``config.kernels`` resolved)
    """

    recon: torch.Tensor
    model: CineGaussians
    eigen_ratio: torch.Tensor
    det_ratio: torch.Tensor
    displacement_mm: torch.Tensor
    coil_maps: torch.Tensor
    config: CineConfig
    losses: list[float] = field(default_factory=list)
    total_losses: list[float] = field(default_factory=list)
    n_gaussians: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    device: str = "cpu"
    kernels: str = "torch"

    def summary(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "timings_s": self.timings,
            "kernels": self.kernels,
            "final_loss": self.losses[-1] if self.losses else None,
            "n_gaussians": self.n_gaussians,
            "frames": int(self.recon.shape[0]),
            "shape": list(self.recon.shape[1:]),
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """:func:`gaussian_mri._torch_compat.resolve_device`, raising :class:`CineInputError` (a ``ValueError``)."""
    try:
        return _resolve_device(device)
    except ValueError as exc:
        raise CineInputError(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a NumPy array or torch tensor, got {type(value).__name__}")
    return value


def check_inputs(
    kspace: Any, mask: Any, coil_maps: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate and convert: k-space (T, C, ky, kx) complex64, mask as weights (T, 1, ky, kx|1), maps."""
    kspace = _as_tensor("kspace", kspace)
    if not kspace.is_complex():
        raise CineInputError(f"kspace must be complex (frames, coils, ky, kx), got dtype {kspace.dtype}")
    if kspace.dim() != 4:
        raise CineInputError(
            f"kspace must be 4-D (frames, coils, ky, kx), got shape {tuple(kspace.shape)}; for a single coil "
            "add a coil axis of size 1"
        )
    kspace = kspace.to(torch.complex64)
    n_t, n_c, n_ky, n_kx = kspace.shape
    if n_ky < 8 or n_kx < 8:
        raise CineInputError(
            f"kspace (frames, coils, ky, kx) = {tuple(kspace.shape)} has fewer than 8 ky or kx samples; "
            "is the axis order right? (expected frames, coils, ky, kx)"
        )
    if not bool(torch.isfinite(torch.view_as_real(kspace)).all()):
        raise CineInputError("kspace contains NaN or infinite values")
    if n_c > 1:
        # every coil of a frame sees the same lines; differing lines across "coils" mean swapped axes
        lines_tc = (kspace != 0).any(dim=-1)  # (T, C, ky)
        live = lines_tc.any(dim=-1)  # coils with data in that frame
        for t in range(n_t):
            sel = lines_tc[t][live[t]]
            if sel.shape[0] > 1 and not bool((sel == sel[:1]).all()):
                raise CineInputError(
                    f"the coils of frame {t} have different sampled ky lines; the frames and coils axes look "
                    f"swapped (kspace must be (frames, coils, ky, kx), got {tuple(kspace.shape)})"
                )
    mask = _as_tensor("mask", mask)
    if mask.is_complex():
        raise CineInputError("mask must be bool or real (the sampling pattern), got a complex array")
    if mask.dim() not in (2, 3) or mask.shape[0] != n_t:
        raise CineInputError(
            f"mask must be (frames={n_t}, ky={n_ky}) or (frames, ky, kx) to match kspace {tuple(kspace.shape)}, "
            f"got {tuple(mask.shape)}; check the axis order (frames, coils, ky, kx)"
        )
    try:
        weights = mask_as_weights(mask.to(torch.float32) if mask.dtype == torch.bool else mask.float(), n_ky, n_kx)
    except ValueError as exc:
        raise CineInputError(f"{exc}; check the axis order (frames, coils, ky, kx)") from exc
    if not bool(torch.isfinite(weights).all()):
        raise CineInputError("mask contains NaN or infinite values")
    weights = (weights > 0).to(torch.float32)
    if not bool(weights.any()):
        raise CineInputError("mask is all zero: no k-space sample is acquired")
    # lines per frame (a ky line counts when any kx of it is sampled)
    lines = (weights.amax(dim=-1)[:, 0] > 0).sum(dim=-1)
    if int(lines.min()) < 2:
        bad = int(torch.argmin(lines))
        raise CineInputError(
            f"frame {bad} has {int(lines[bad])} sampled ky line(s); at least 2 per frame are needed "
            f"(acceleration too high for {n_ky} lines)"
        )
    if coil_maps is not None:
        coil_maps = _as_tensor("coil_maps", coil_maps)
        if coil_maps.dim() != 3 or tuple(coil_maps.shape) != (n_c, n_ky, n_kx):
            raise CineInputError(
                f"coil_maps must be (coils={n_c}, ny={n_ky}, nx={n_kx}) to match kspace {tuple(kspace.shape)}, "
                f"got {tuple(coil_maps.shape)}"
            )
        if not coil_maps.is_complex():
            coil_maps = coil_maps.to(torch.complex64)
        coil_maps = coil_maps.to(torch.complex64)
        if not bool(torch.isfinite(torch.view_as_real(coil_maps)).all()):
            raise CineInputError("coil_maps contain NaN or infinite values")
        if float(coil_maps.abs().max()) == 0:
            raise CineInputError("coil_maps are all zero")
    if n_c == 1:
        warnings.warn(
            "single-coil k-space: no parallel-imaging information, the reconstruction relies on the Gaussian "
            "model alone",
            stacklevel=3,
        )
    return kspace, weights, coil_maps


def estimate_coil_maps(kspace: torch.Tensor, weights: torch.Tensor, config: CineConfig) -> torch.Tensor:
    """ESPIRiT maps from the time-averaged k-space; a unit map for one coil."""
    from ..mri.espirit import espirit_maps

    n_t, n_c, n_ky, n_kx = kspace.shape
    if n_c == 1:
        return torch.ones(1, n_ky, n_kx, dtype=torch.complex64, device=kspace.device)
    mask = weights[:, 0].expand(n_t, n_ky, n_kx) > 0
    calib = min(config.espirit_calib, n_ky, n_kx)
    # shrink the calibration region until every location in it was sampled at least once
    covered = mask.any(0)
    while calib > config.espirit_kernel:
        cy, cx = n_ky // 2, n_kx // 2
        box = covered[cy - calib // 2 : cy - calib // 2 + calib, cx - calib // 2 : cx - calib // 2 + calib]
        if bool(box.all()):
            break
        calib -= 2
    kernel = min(config.espirit_kernel, calib)
    try:
        maps = espirit_maps(kspace * weights, mask, calib=calib, kernel=kernel)
    except ValueError as exc:
        raise CineInputError(f"ESPIRiT coil maps failed ({exc}); pass coil maps explicitly") from exc
    energy = (maps.abs() ** 2).sum(0)
    if not bool(torch.isfinite(energy).all()) or float((energy > 0.5).float().mean()) < 0.05:
        raise CineInputError(
            f"ESPIRiT found no usable coil sensitivity (calibration region {calib} x {calib} k-space samples "
            f"with kernel {kernel}): the fully sampled centre of k-space is too small for these data. "
            "Pass coil maps explicitly (--coil-maps), or use a sampling mask with more central lines."
        )
    return maps.to(torch.complex64)


# --------------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------------
def initial_image(y: torch.Tensor, weights: torch.Tensor, coil_maps: torch.Tensor) -> torch.Tensor:
    """Coil-combined image of the time-averaged k-space (each location averaged over the frames sampling it)."""
    w = weights.expand(y.shape[0], 1, y.shape[2], y.shape[3])
    count = w.sum(0)
    avg = torch.where(count > 0, (y * w).sum(0) / count.clamp_min(1), torch.zeros_like(y[0]))
    return (coil_maps.conj() * ifft2c(avg)).sum(0)


def init_gaussians(
    x0: torch.Tensor, n_frames: int, config: CineConfig, generator: torch.Generator, *, backend: str = "auto"
) -> tuple[CineGaussians, float]:
    """Gaussians approximating ``x0``; returns the model (amplitudes normalised) and the amplitude scale.

    The model is on ``x0``'s device; the random draws use ``generator`` on its own device (a CPU
    generator gives the same draws whatever the device of ``x0``).
    """
    dev = x0.device
    ny, nx = x0.shape
    mag = x0.abs()
    peak = float(mag.max())
    if peak == 0:
        peak = 1.0
    gy, gx = torch.gradient(mag)
    grad = torch.sqrt(gx * gx + gy * gy)
    dens = mag / peak + grad / grad.max().clamp_min(1e-30)
    dens = dens + config.init_floor * float(dens.max())
    p = (dens / dens.sum()).flatten()
    m = config.n_gaussians
    idx = torch.multinomial(p.to(generator.device), m, replacement=True, generator=generator).to(dev)
    row = (idx // nx).to(torch.float32)
    col = (idx % nx).to(torch.float32)
    jitter = torch.rand(m, 2, generator=generator, device=generator.device).to(dev) - 0.5
    means = torch.stack([col, row], -1) + jitter
    rho = m * p[idx]  # expected centres per pixel around each centre
    sigma = (0.8 / rho.sqrt()).clamp(0.5, 3.0)
    chol_raw = torch.stack([sigma.log(), torch.zeros_like(sigma), sigma.log()], -1)
    amp = x0.flatten()[idx] / (rho * 2 * math.pi * sigma * sigma).clamp_min(1.0)
    amps = torch.view_as_real(amp.to(torch.complex64)).clone() / peak
    model = CineGaussians(
        means, chol_raw, amps, torch.zeros(n_frames, m, 2, device=dev), torch.zeros(n_frames, m, 3, device=dev), ny, nx
    )
    with torch.no_grad():  # one complex least-squares gain against x0
        r = model.render([0], k_sigma=config.k_sigma, backend=backend)[0]
        g = (r.conj() * (x0 / peak)).sum() / (r.abs() ** 2).sum().clamp_min(1e-30)
        model.amplitudes = torch.view_as_real(model.complex_amplitudes() * g).contiguous()
    return model, peak


# --------------------------------------------------------------------------------------------------
# loss pieces
# --------------------------------------------------------------------------------------------------
def hdr_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """``mean_sampled (|pred - target| / (stopgrad|pred| + eps))^2``; ``weights`` 0/1 broadcastable."""
    d = torch.view_as_real(pred - target)
    r2 = d.square().sum(-1) / (pred.detach().abs() + eps).square()  # |pred - target|^2 without a square root
    w = weights.expand_as(r2)
    return (w * r2).sum() / w.sum().clamp_min(1)


def temporal_tv(x: torch.Tensor, cyclic: bool) -> torch.Tensor:
    """``(1/M) sum |x_{t+1} - x_t|`` over frames (axis 0), Gaussians (axis 1) and components."""
    if x.shape[0] < 2:
        return x.sum() * 0
    d = (torch.roll(x, -1, 0) - x) if cyclic else (x[1:] - x[:-1])
    return d.abs().sum() / x.shape[1]


def nuclear_norm(dmu: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Sum of singular values of ``dmu`` reshaped (T, 2M), divided by ``sqrt(M)``.

    ``method``:

    * ``"gram"`` (used on the CPU): the eigenvalues of the T x T Gram matrix ``A A^H`` are the squared
      singular values; :func:`nuclear_norm_gram` with a defined subgradient. Value and gradient 5-7x
      faster than ``svdvals`` on the cine's (24, 12000) float32 matrices (``benchmarks/nuclear_norm_speed.py``).
    * ``"svd"``: ``torch.linalg.svdvals``, the reference (its gradient at repeated or zero singular
      values is not defined).
    * ``"newton_schulz"`` (used on CUDA): ``trace(sqrt(A A^T))`` by a matrix-product iteration, because
      ``torch.linalg`` decompositions on CUDA (``eigh`` too) read their error flag back to the host on
      every call, a synchronisation per step that the fit loop avoids.
    * ``"auto"``: ``"newton_schulz"`` on CUDA, ``"gram"`` elsewhere.
    """
    t, m, _ = dmu.shape
    a = dmu.reshape(t, 2 * m)
    if method == "auto":
        method = "newton_schulz" if a.is_cuda else "gram"
    if method == "gram":
        return nuclear_norm_gram(a) / math.sqrt(m)
    if method == "svd":
        return torch.linalg.svdvals(a).sum() / math.sqrt(m)
    if method != "newton_schulz":
        raise ValueError(f"method must be 'auto', 'gram', 'svd' or 'newton_schulz', got {method!r}")
    return _trace_sqrt_gram(a) / math.sqrt(m)


def _gram_eig(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, U, keep)``: singular values of ``a`` (T, N) and the left singular vectors, from the
    eigen-decomposition of the T x T Gram matrix ``G = A A^H``, in float64 (complex128).

    ``keep`` marks the singular values that are resolved: ``lambda_i > T * eps64 * lambda_max``
    (``lambda = s^2``); below that the eigenvalue is round-off of a zero singular value (the Gram
    matrix squares the condition number), so ``s_i`` is set to 0 exactly.
    """
    wide = a.to(torch.complex128 if a.is_complex() else torch.float64)
    g = wide @ wide.mH
    lam, u = torch.linalg.eigh(g)  # ascending, u unitary
    tol = g.shape[0] * torch.finfo(torch.float64).eps * lam[-1].clamp_min(0)
    keep = lam > tol
    s = torch.where(keep, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
    return s, u, keep


class _NuclearNormGram(torch.autograd.Function):
    """``||A||_*`` from the Gram eigenvalues; backward: the subgradient ``U diag(1/s_i) U^H A`` over
    the resolved singular values (``= U_r V_r^H``, the minimum-norm element of the subdifferential);
    zero singular values contribute 0."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        s, u, keep = _gram_eig(a.detach())
        ctx.save_for_backward(a, s, u, keep)
        return s.sum().to(a.real.dtype if a.is_complex() else a.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        a, s, u, keep = ctx.saved_tensors
        inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
        q = (u * inv.to(u.dtype)) @ u.mH  # U diag(1/s) U^H, (T, T), Hermitian
        return (q.to(a.dtype) @ a) * grad_out.to(a.dtype)


def nuclear_norm_gram(a: torch.Tensor) -> torch.Tensor:
    """Nuclear norm ``sum_i s_i`` of a (T, N) real or complex matrix, ``T <= N`` preferred.

    ``s_i^2`` are the eigenvalues of the T x T Gram matrix ``A A^H`` (``torch.linalg.eigh``, float64):
    one small eigen-decomposition instead of an SVD of the wide matrix. The gradient is a defined
    subgradient, ``U diag(1/s_i) U^H A`` over the singular values above round-off (``U``: eigenvectors
    of the Gram matrix), i.e. ``U_r V_r^H``; singular values at zero (repeated frames, a zero matrix)
    contribute nothing, which is a valid element of the subdifferential (Watson, "Characterization of
    the subdifferential of some matrix norms", Linear Algebra Appl. 1992). Not twice differentiable.
    """
    if a.dim() != 2:
        raise ValueError(f"nuclear_norm_gram expects a 2-D matrix, got shape {tuple(a.shape)}")
    return _NuclearNormGram.apply(a)


def _trace_sqrt_gram(a: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """``trace(sqrt(A A^T))`` = the sum of the singular values of ``a`` (T, N), with matrix products only.

    The coupled Newton-Schulz iteration for the square root of the T x T Gram matrix ``G`` scaled by
    its Frobenius norm ``c`` (eigenvalues in [0, 1]): ``Y <- Y (3I - ZY) / 2``, ``Z <- (3I - ZY) Z / 2``
    with ``Y0 = G / c``, ``Z0 = I`` gives ``Y -> sqrt(G / c)`` (Higham, Functions of Matrices, 2008,
    s. 6.7). 30 iterations resolve singular values down to about 1e-5 of the largest; smaller ones add
    less than that to the sum. ``c`` is a detached scale (the value does not depend on it), floored so
    that ``a = 0`` gives 0 with a zero gradient (a defined subgradient). No host synchronisation.
    """
    g = a @ a.transpose(0, 1)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    c = torch.linalg.matrix_norm(g.detach()).clamp_min(1e-12)
    y, z = g / c, eye
    for _ in range(iterations):
        half = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ half, half @ z
    return torch.diagonal(y).sum() * torch.sqrt(c)


# --------------------------------------------------------------------------------------------------
# optimisation helpers
# --------------------------------------------------------------------------------------------------
_GROUPS = ("means", "chol_raw", "amplitudes", "dmu", "dl")


_PER_FRAME = ("dmu", "dl")


def _make_optimizer(params: dict[str, torch.Tensor], config: CineConfig) -> MaskedAdam:
    """Adam over the parameter groups; the per-frame groups (``dmu``, ``dl``, frames on axis 0) only
    advance on the frames drawn in a step (:class:`gaussian_mri._optim.MaskedAdam`)."""
    lrs = {
        "means": config.lr_means,
        "chol_raw": config.lr_chol,
        "amplitudes": config.lr_amplitudes,
        "dmu": config.lr_dmu,
        "dl": config.lr_dl,
    }
    return MaskedAdam(
        [
            {"params": [params[k]], "lr": lrs[k], "name": k, "base_lr": lrs[k], "rows_dim": 0 if k in _PER_FRAME else None}
            for k in _GROUPS
        ]
    )


def _prune(
    params: dict[str, torch.Tensor], opt: MaskedAdam, keep: torch.Tensor, config: CineConfig
) -> tuple[dict[str, torch.Tensor], MaskedAdam]:
    """Keep Gaussians ``keep`` (bool, M), carrying the Adam moments (and per-frame step counts) over."""
    new = {}
    for k in _GROUPS:
        dim = 1 if k in ("dmu", "dl") else 0
        new[k] = params[k].detach().index_select(dim, torch.nonzero(keep).squeeze(1)).clone().requires_grad_(True)
    new_opt = _make_optimizer(new, config)
    for g_old, g_new in zip(opt.param_groups, new_opt.param_groups):
        g_new["lr"] = g_old["lr"]
        p_old, p_new = g_old["params"][0], g_new["params"][0]
        st = opt.state.get(p_old)
        if st:
            dim = 1 if g_old["name"] in ("dmu", "dl") else 0
            sel = torch.nonzero(keep).squeeze(1)
            new_opt.state[p_new] = {
                "step": st["step"].clone(),
                "exp_avg": st["exp_avg"].index_select(dim, sel).clone(),
                "exp_avg_sq": st["exp_avg_sq"].index_select(dim, sel).clone(),
            }
    return new, new_opt


# --------------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------------
def reconstruct(
    kspace: Any,
    mask: Any,
    coil_maps: Any = None,
    *,
    config: CineConfig | None = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    device: str | torch.device | None = "auto",
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    frame_ms: float = 0.0,
) -> CineResult:
    """Reconstruct a cine from undersampled Cartesian k-space with motion-resolved Gaussians.

    Parameters
    ----------
    kspace : (T, C, ky, kx) complex array/tensor
        Centred k-space (:func:`gaussian_mri.mri.fft.fft2c` convention); values outside the mask are ignored.
    mask : (T, ky) or (T, ky, kx) bool / 0-1
        Sampling pattern per frame.
    coil_maps : (C, ny, nx) complex, optional
        Sensitivities (``ny, nx = ky, kx``); ``None`` estimates them with ESPIRiT from the
        time-averaged k-space (a unit map for a single coil).
    config : CineConfig
    callback : callable, optional
        Called every ``config.callback_every`` steps and at the end with a dict ``{"stage",
        "iteration", "total", "loss", "elapsed_s", "eta_s", "n_gaussians"}``; returning ``False``
        stops the run with :class:`CineCancelled`.
    device : "auto", "cpu", "cuda", ...
    spacing_mm : (row, col) pixel size in mm (for the displacement maps and the saved model).
    frame_ms : time between frames in ms (stored in the model).

    Raises
    ------
    CineInputError
        Shapes that do not fit, wrong axis order, non-finite values, all-zero mask, a frame with
        fewer than 2 lines.
    CineCancelled
        The callback returned ``False``.
    """
    config = config or CineConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    kspace, weights, maps = check_inputs(kspace, mask, coil_maps)
    dev = resolve_device(device)
    try:
        kernels = resolve_kernel_backend(config.kernels, dev)
    except ValueError as exc:
        raise CineInputError(str(exc)) from None
    n_t, n_c, n_ky, n_kx = kspace.shape
    # Everything below runs on the fit's device (ESPIRiT, init, fit, rendering, maps); only the
    # returned arrays go to the CPU.
    kspace, weights = kspace.to(dev), weights.to(dev)
    kspace = kspace * weights  # ignore anything outside the mask

    t0 = time.perf_counter()
    if maps is None:
        maps = estimate_coil_maps(kspace, weights, config)
    maps = maps.to(dev)
    timings["coil_maps"] = time.perf_counter() - t0

    scale = float(kspace.abs().max())
    if scale == 0:
        raise CineInputError("kspace is zero at every sampled location")
    y = kspace / scale

    t0 = time.perf_counter()
    # The random draws (initial centres, frame order) come from a CPU generator: one seed gives the
    # same draws on every device.
    gen = torch.Generator(device="cpu").manual_seed(int(config.seed))
    x0 = initial_image(y, weights, maps)
    model, amp_scale = init_gaussians(x0, n_t, config, gen, backend=kernels)
    timings["init"] = time.perf_counter() - t0

    params = {k: getattr(model, k).detach().clone().requires_grad_(True) for k in _GROUPS}
    opt = _make_optimizer(params, config)
    gamma = config.lr_final_factor ** (1.0 / max(config.steps, 1))
    losses: list[float] = []
    totals: list[float] = []
    counts = [config.n_gaussians]
    b = min(config.frames_per_step, n_t)
    # With frozen undrawn frames a frame's parameters feel the regularisers only in the steps that draw
    # it (a fraction b / T of them), while the data term (a mean over the drawn frames) is an unbiased
    # estimate of the mean over all frames. Weighting the regularisers by T / b makes the expected update
    # of every frame that of the full objective (data mean + lambda R), so lambda means the same as
    # with every frame updated every step.
    reg_weight = n_t / b if config.freeze_undrawn_frames else 1.0
    # Frames of every step (a fresh permutation each cycle), drawn up front and moved to the device
    # once, so the loop reads nothing back to the host.
    order = torch.randperm(n_t, generator=gen, device=gen.device)
    pos = 0
    schedule = []
    for _ in range(config.steps):
        if pos + b > n_t:
            order = torch.randperm(n_t, generator=gen, device=gen.device)
            pos = 0
        schedule.append(order[pos : pos + b])
        pos += b
    frame_schedule = torch.stack(schedule).to(dev, non_blocking=True)  # (steps, b); once, no stream sync
    # The fit compares the plain FFT of its coil images with the measured k-space moved into that
    # FFT's frame once (fft2c = fftshift(r * fft2), gaussian_mri.mri.fft.centring_ramp): the same
    # residuals without two shifts of the predicted k-space every step.
    ramp = centring_ramp(n_ky, n_kx, device=dev)
    y_fit = torch.fft.ifftshift(y, dim=(-2, -1)) * ramp.conj()
    w_fit = torch.fft.ifftshift(weights, dim=(-2, -1))
    del kspace, y  # only y_fit is read from here on (a full k-space copy less during the fit)
    # Losses stay on the device until a reporting point (callback, end): read back together there.
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush_losses() -> None:
        if not pending:
            return
        vals = torch.stack([torch.stack(p) for p in pending]).tolist()
        pending.clear()
        for n, (lv, tv) in enumerate(vals):
            if not math.isfinite(lv):
                raise FloatingPointError(f"the loss became {lv} at step {len(losses) + n + 1}; try smaller learning rates")
        losses.extend(v[0] for v in vals)
        totals.extend(v[1] for v in vals)

    t_fit = time.perf_counter()

    def status(it: int, loss: float, stage: str = "fit") -> dict[str, Any]:
        el = time.perf_counter() - t_fit
        return {
            "stage": stage,
            "iteration": it,
            "total": config.steps,
            "loss": loss,
            "elapsed_s": el,
            "eta_s": el / max(it, 1) * (config.steps - it),
            "n_gaussians": int(params["means"].shape[0]),
        }

    for step in range(1, config.steps + 1):
        frames = frame_schedule[step - 1]
        cur = CineGaussians(
            params["means"], params["chol_raw"], params["amplitudes"], params["dmu"], params["dl"], n_ky, n_kx
        )
        img = cur.render(frames, amplitude_scale=amp_scale, k_sigma=config.k_sigma, backend=kernels, validate=False)
        pred = torch.fft.fft2(maps[None] * img[:, None], norm="ortho")
        data = hdr_loss(pred, y_fit[frames], w_fit[frames], config.hdr_eps)
        reg = data.new_zeros(())
        if config.lambda_mu > 0:
            reg = reg + config.lambda_mu * (nuclear_norm(params["dmu"]) + temporal_tv(params["dmu"], config.cyclic_tv))
        if config.lambda_c > 0:
            reg = reg + config.lambda_c * temporal_tv(params["dl"], config.cyclic_tv)
        loss = data + reg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Per-frame parameters of the frames not drawn in this step stay where they are, with their Adam
        # moments (the regularisers give them a gradient, but no data term does); as SVR does for the
        # per-slice parameters of the slices outside its batch.
        opt.step(active=frames if config.freeze_undrawn_frames else None)
        for g in opt.param_groups:
            g["lr"] = g["lr"] * gamma
        pending.append((data.detach(), loss.detach()))

        if config.prune_every and step % config.prune_every == 0 and step < config.steps:
            with torch.no_grad():
                amp = torch.linalg.vector_norm(params["amplitudes"], dim=1)
                raw = params["chol_raw"][None] + params["dl"]
                area = torch.exp(raw[..., 0] + raw[..., 2])  # sqrt(det Sigma_t) = l11 l22
                keep = (amp >= config.prune_amplitude * amp.max()) & (area.amax(0) >= config.prune_min_area)
                mu = params["means"][None] + params["dmu"]
                inside = (
                    (mu[..., 0] > -4) & (mu[..., 0] < n_kx + 3) & (mu[..., 1] > -4) & (mu[..., 1] < n_ky + 3)
                ).any(0)
                keep &= inside
            if int(keep.sum()) < keep.numel() and int(keep.sum()) > 0:
                params, opt = _prune(params, opt, keep, config)
            counts.append(int(params["means"].shape[0]))

        if callback is not None and (step % config.callback_every == 0 or step == config.steps):
            flush_losses()
            if callback(status(step, losses[-1])) is False:
                raise CineCancelled(f"cancelled at step {step} of {config.steps}")
    flush_losses()
    timings["fit"] = time.perf_counter() - t_fit

    t0 = time.perf_counter()
    with torch.no_grad():
        fitted = CineGaussians(
            params["means"].detach(),
            params["chol_raw"].detach(),
            params["amplitudes"].detach() * (amp_scale * scale),
            params["dmu"].detach(),
            params["dl"].detach(),
            n_ky,
            n_kx,
            (float(spacing_mm[0]), float(spacing_mm[1])),
            float(frame_ms),
        )
        recon = torch.cat(
            [fitted.render(list(range(s, min(s + 8, n_t))), k_sigma=config.k_sigma, backend=kernels) for s in range(0, n_t, 8)]
        )
    timings["render"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eig, det, disp = covariance_maps(fitted, backend=kernels)
    timings["maps"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    if callback is not None:
        callback(status(config.steps, losses[-1] if losses else float("nan"), stage="done"))
    return CineResult(
        recon=recon.cpu(),
        model=fitted.to("cpu"),
        eigen_ratio=eig.cpu(),
        det_ratio=det.cpu(),
        displacement_mm=disp.cpu(),
        coil_maps=maps.cpu(),
        config=config,
        losses=losses,
        total_losses=totals,
        n_gaussians=counts,
        timings=timings,
        scale=scale,
        device=str(dev),
        kernels=kernels,
    )


def covariance_maps(
    model: CineGaussians | CineResult, factor: float = 1.0, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splatted ``(eigen_ratio, det_ratio, displacement_mm)``: (T, H, W), (T, H, W), (T, H, W, 2).

    A :class:`CineResult` is computed on the device and with the renderer of its fit, and the maps
    are returned on the CPU; a :class:`CineGaussians` on its own device (``backend`` default ``"auto"``).

    Each is the amplitude- and kernel-weighted average over the Gaussians covering a pixel (at the
    frame-``t`` position and shape) of the per-Gaussian value: eigenvalue ratio and determinant of
    ``Sigma_t`` relative to frame 0, and ``dmu_t - dmu_0`` in mm (x = column, y = row). Pixels no
    Gaussian covers get 1, 1 and 0.
    """
    if isinstance(model, CineResult):
        on_device = model.model.to(model.device)
        maps = covariance_maps(on_device, factor, backend=backend or model.kernels)
        return tuple(m.cpu() for m in maps)  # type: ignore[return-value]
    backend = backend or "auto"
    with torch.no_grad():
        eig, det = model.covariance_ratios()
        sp = torch.tensor([model.spacing_mm[1], model.spacing_mm[0]], dtype=model.means.dtype, device=model.means.device)
        disp = (model.dmu - model.dmu[:1]) * sp
        vals = torch.cat([eig[..., None], det[..., None], disp], -1)  # (T, M, 4)
        outs = []
        for s in range(0, model.n_frames, 8):
            idx = list(range(s, min(s + 8, model.n_frames)))
            outs.append(model.splat_values(vals[idx], idx, factor, default=(1.0, 1.0, 0.0, 0.0), backend=backend))
        out = torch.cat(outs)  # (T, 4, H, W)
        return out[:, 0].float(), out[:, 1].float(), out[:, 2:].permute(0, 2, 3, 1).contiguous().float()


def render_sr(
    result: CineResult | CineGaussians, factor: float, frames: Any = None, *, backend: str | None = None
) -> torch.Tensor:
    """Render the fitted cine on a grid ``factor`` times finer, (T, ny*factor, nx*factor) complex.

    A :class:`CineResult` renders on the device and with the renderer of its fit and returns a CPU
    tensor; a :class:`CineGaussians` renders on its own device (``backend`` default ``"auto"``).
    """
    if isinstance(result, CineResult):
        model, backend = result.model.to(result.device), backend or result.kernels
    else:
        model, backend = result, backend or "auto"
    idx = list(range(model.n_frames)) if frames is None else list(frames)
    with torch.no_grad():
        out = torch.cat([model.render(idx[s : s + 4], factor, backend=backend) for s in range(0, len(idx), 4)])
    return out.cpu() if isinstance(result, CineResult) else out
