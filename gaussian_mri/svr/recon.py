"""Slice-to-volume reconstruction with 3D Gaussians, analytic PSF and joint slice motion.

Pipeline (:func:`reconstruct`)
-----------------------------
1. Check the inputs; masks on another grid are resampled onto their stack (nearest neighbour),
   stacks without a mask get :func:`gaussian_mri.svr.masking.auto_mask`. A single mask for several
   stacks is the reference stack's: it is propagated onto the other stacks through the rigid stack
   alignment of step 5, which then runs first (:func:`.register.masks_from_reference`, as SVRTK).
2. Intensities: each stack is divided by its median inside the mask (stacks from different series
   differ in scale); the global scale is restored on output. Residual per-slice differences are
   fitted by a per-slice intensity scale, and optionally a smooth per-stack bias field.
3. Each stack is cropped to its mask's bounding box (+ a few pixels); only pixels inside the mask
   enter the loss.
4. Gaussians are seeded at slice pixel centres inside the masks, drawn with probability
   proportional to the local in-plane gradient magnitude plus its mean (edges get more Gaussians),
   jittered inside the pixel footprint, with isotropic scale from the seeding density.
5. Adam jointly fits the Gaussians, per-stack rigid motion (first), then per-slice rigid motion
   (about each slice centre), per-slice intensity scales, and the bias field, on random slice
   batches, with a cosine learning-rate decay, after a rigid image registration of the stacks to
   each other (:mod:`.register`). The reference stack (default 0) keeps its position.
   Slice motion has no prior pulling it to zero (one biased the poses by ~1 mm), and a slice's own
   motion and intensity are fitted whatever its robust weight (registered, then weighted).
6. Robust weights, refreshed every ``reweight_every`` steps: per-slice Welsch weights on a one-sided
   robust z-score of the log slice error (outlier slices -> ~0), and per-pixel Welsch weights on the
   residual relative to a robust (MAD) scale (signal voids inside a slice). The slice errors are those
   of each slice's latest training batch and the pixel scale the mean of the batches' scales; every
   ``full_refresh_every`` refreshes both come from one pass over all slices instead (a cost that would
   otherwise grow with the number of slices while the batches do not).
7. Optional slice-to-volume registration rounds (``registration_rounds``, ``--severe-motion``): at given
   fractions of the fit every slice is registered to the current model from several starts
   (:mod:`.slice_register`), for within-stack motion beyond the fit's own capture range.
8. Noise-aware fit (``smoothness``): the in-plane noise of the stacks is measured
   (:func:`.noise.noise_sigma`) and an edge-preserving (Lorentzian) prior whose scale is that noise level
   is added on one random cube of the rendered volume per step, so the Gaussians stop fitting the noise
   (grain on flat tissue) while edges many times the noise stay sharp.
9. Output: the model voxelised on an isotropic grid that covers the masks (+ margin), a mask,
   per-slice transforms/weights/residuals, covariance maps, and the Gaussians themselves.

References
----------
.. [DAN2026] Dannecker et al., "Fast and Explicit: Slice-to-Volume Reconstruction via 3D Gaussian
   Primitives with Analytic Point Spread Function Modeling", MIDL 2026.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .._torch_compat import out_of_memory_errors, resolve_device
from ..geometry import SliceGeometry, stack_geometry
from ..image import Image
from ..render.backends import KERNEL_BACKENDS, resolve_kernel_backend
from ..render.slices import render_slices
from ..transforms import rigid_matrix
from .model import GaussianModel3D, covariance_maps, render_volume

__all__ = ["SVRConfig", "PRESETS", "SEVERE_MOTION_ROUNDS", "SVRResult", "SVRCancelled", "reconstruct", "preset"]

log = logging.getLogger(__name__)


class SVRCancelled(Exception):
    """Raised when the progress callback returns ``False``."""


@dataclass(frozen=True)
class SVRConfig:
    """Hyper-parameters of :func:`reconstruct` (units in the names; sources in comments)."""

    resolution_mm: float = 0.8  #: output voxel size (NeSVoR default 0.8 mm)
    margin_mm: float = 5.0  #: output grid margin around the masks
    n_gaussians: int = 15000  #: number of 3D Gaussians (GSVR default 30,000; 15,000 measured as good on
    #: the atlas and real-subject benchmarks and 4-6x quicker: benchmarks/README.md)
    iterations: int = 300  #: optimisation steps
    time_budget_s: float | None = None  #: stop early after this wall time (s)
    slices_per_batch: int = 32  #: slices rendered per step, over all stacks (stochastic batches)
    motion: str = "slice"  #: "none" | "stack" | "slice"
    stack_motion_start: float = 0.05  #: fraction of iterations after which stack motion is fitted
    slice_motion_start: float = 0.15  #: fraction after which per-slice motion is fitted
    registration_rounds: tuple[float, ...] = ()  #: fractions of the iterations at which every slice is
    #: registered to the current volume from several starts (:mod:`.slice_register`), with slice motion;
    #: widens the capture range for large within-stack motion
    registration_resolution_mm: float = 1.5  #: grid of the volume the slices are registered to
    smoothness: float | str = "auto"  #: noise-aware fit: an edge-preserving prior on the rendered volume whose
    #: scale is the stacks' noise level (:func:`.noise.noise_sigma`, relative to the median intensity);
    #: weight "auto" = SMOOTHNESS_PER_NOISE x that level, a number = that weight, 0 = off. Each step
    #: renders one random cube of the output grid for it
    smoothness_patch: int = 16  #: edge of that cube, voxels of ``resolution_mm``
    stack_alignment: bool = True  #: rigid pre-alignment of the stacks (image registration to the first
    #: stack, then to the average of the others) before the fit, when motion is on; the fit only
    #: refines poses near their start (the real test subject's sagittal stacks are ~21 deg off)
    inplane_fwhm_factor: float = 1.2  #: in-plane PSF FWHM / in-plane spacing (NeSVoR/SVRTK/NiftyMIC)
    through_plane_fwhm_factor: float = 1.0  #: through-plane PSF FWHM / slice thickness
    psf_mode: str = "exact"  #: "exact" convolution or "normalised" kernel regression (GSVR code)
    robust: bool = True  #: robust slice and pixel weights
    robust_slice_c: float = 3.0  #: Welsch constant on the one-sided slice z-score
    robust_pixel_c: float = 3.0  #: Welsch constant on pixel residual / robust sigma
    reweight_start: float = 0.0  #: fraction of iterations after which robust weights are first computed
    reweight_every: int = 20  #: iterations between robust-weight updates, from the latest error of each
    #: slice (every training batch records the errors of its slices) and the pixel scale of the batches
    full_refresh_every: int = 5  #: every this many robust-weight updates (and at the first), the errors of all
    #: slices and the pixel scale are recomputed in one pass over every slice instead (1: at every update,
    #: the behaviour before; the pass costs as much as ~n_slices / (2.5 slices_per_batch) steps)
    slice_weight_floor: float = 1e-3  #: slice and pixel weights in the loss are at least this: an outlier
    #: slice adds ~nothing to the volume, but its own motion and intensity keep being fitted (their
    #: gradients are divided by the slice weight), so a slice down-weighted early can come back
    max_log_intensity: float = 0.4  #: per-slice log intensity scales are bounded to +-this (a signal
    #: drop-out must stay an outlier, not be explained away as a darker slice)
    intensity_scale: bool = True  #: per-slice intensity scale
    bias_field: bool = False  #: smooth multiplicative per-stack bias field (quadratic, log domain)
    lr_means: float = 0.05  #: Adam lr of Gaussian means, in units of the seeding spacing per step
    lr_scales: float = 0.02  #: Adam lr of log-scales
    lr_quats: float = 0.02  #: Adam lr of quaternions
    lr_amplitudes: float = 0.05  #: Adam lr of amplitudes, relative to the initial amplitude
    lr_rotation: float = 5e-3  #: Adam lr of slice rotations, rad (GSVR 2.5e-3; 2x converges in our
    #: shorter schedules: GA21 slice pose error 0.31 vs 0.39 mm, benchmarks/README.md)
    lr_translation: float = 0.1  #: Adam lr of slice translations, mm (GSVR 5e-2; 2x as above)
    lr_intensity: float = 5e-3  #: Adam lr of per-slice log intensity scales
    lr_final_fraction: float = 0.1  #: cosine decay to this fraction of every lr
    motion_prior: float = 0.0  #: optional L2 prior on slice motion (per mm^2 and per deg^2, relative to
    #: the stack motion). Off: even 1e-3 outweighs the data term (~3e-4) for 3 deg motion and biased
    #: the GA21 slice poses by ~1 mm (benchmarks/README.md)
    k_sigma: float = 3.5  #: splat window, standard deviations
    device: str = "auto"  #: "auto" | "cpu" | "cuda"
    kernels: str = "auto"  #: renderer: "auto" (fused Triton kernels on a CUDA GPU when triton is installed;
    #: compiled C kernels on the CPU when they build; else PyTorch) | "torch" | "triton" | "native"
    #: (:mod:`gaussian_mri.render.backends`); used by every render of
    #: the fit, the output volume, the preview and the maps
    seed: int = 0
    maps: bool = True  #: compute covariance maps on output
    preview_every_s: float | None = None  #: pass a coarse preview volume to the callback this often (s)
    reference_stack: int | None = None  #: this stack's position defines the anatomy frame and its axes the
    #: output grid's (default: the first)

    def validated(self) -> SVRConfig:
        if self.motion not in ("none", "stack", "slice"):
            raise ValueError(f"motion must be 'none', 'stack' or 'slice', got {self.motion!r}")
        if self.psf_mode not in ("exact", "normalised"):
            raise ValueError(f"psf_mode must be 'exact' or 'normalised', got {self.psf_mode!r}")
        for name in ("resolution_mm", "inplane_fwhm_factor", "through_plane_fwhm_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.n_gaussians < 10:
            raise ValueError(f"n_gaussians must be >= 10, got {self.n_gaussians}")
        if not 0 < self.slice_weight_floor <= 1:
            raise ValueError(f"slice_weight_floor must be in (0, 1], got {self.slice_weight_floor}")
        if self.reweight_every < 1 or self.full_refresh_every < 1:
            raise ValueError(f"reweight_every and full_refresh_every must be >= 1, got {self.reweight_every}, {self.full_refresh_every}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if any(not 0 < f < 1 for f in self.registration_rounds):
            raise ValueError(f"registration_rounds are fractions of the iterations in (0, 1), got {self.registration_rounds}")
        if not (self.smoothness == "auto" or (isinstance(self.smoothness, (int, float)) and not isinstance(self.smoothness, bool)
                                              and math.isfinite(self.smoothness) and self.smoothness >= 0)):
            raise ValueError(f"smoothness must be 'auto' or a finite number >= 0 (0 = off), got {self.smoothness!r}")
        if self.smoothness_patch < 3:
            raise ValueError(f"smoothness_patch must be >= 3 voxels, got {self.smoothness_patch}")
        if not self.registration_resolution_mm > 0:
            raise ValueError(f"registration_resolution_mm must be > 0, got {self.registration_resolution_mm}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.kernels not in KERNEL_BACKENDS:
            raise ValueError(f"kernels must be one of {KERNEL_BACKENDS}, got {self.kernels!r}")
        return self


SEVERE_MOTION_ROUNDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  #: ``registration_rounds`` for severe motion
#: (``--severe-motion``): six rounds in the first 60 % of the fit; GA21 at 3x the moderate motion, SSIM
#: 0.68 -> 0.86 (benchmarks/README.md, motion sweep)

REGISTRATION_PIXELS = 800  #: pixels per slice (a random subset of its mask) in the registration rounds
SMOOTHNESS_PER_NOISE = 0.3  #: ``smoothness="auto"``: prior weight per unit of relative noise (calibrated on
#: simulated GA21 stacks at one noise level, checked on others: benchmarks/README.md, "Clean images")
MIN_NOISE = 0.01  #: below this relative noise level the prior is off: noise-free simulations measure 0.002-0.005
#: (texture and interpolation), the real subject 0.03

PRESETS: dict[str, dict] = {
    "fast": {"n_gaussians": 15000, "iterations": 300, "slices_per_batch": 32},
    "standard": {"n_gaussians": 30000, "iterations": 600, "slices_per_batch": 48},
    "quality": {"n_gaussians": 60000, "iterations": 1200, "slices_per_batch": 64},
}


def preset(name: str, **overrides) -> SVRConfig:
    """A named preset (``fast``, ``standard``, ``quality``) with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return SVRConfig(**{**PRESETS[name], **overrides}).validated()


@dataclass
class SVRResult:
    """Everything :func:`reconstruct` produces (geometry in RAS mm, intensities in input units)."""

    volume: Image
    mask: Image
    slices: list[dict]
    model: GaussianModel3D
    intensity_scale: float
    maps: dict[str, Image] = field(default_factory=dict)
    tensor: np.ndarray | None = None  # (K, J, I, 3, 3) covariance tensor on the volume grid, mm^2
    config: SVRConfig = field(default_factory=SVRConfig)
    timings: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kernels: str = "torch"  #: the renderer that ran ("torch", "triton" or "native"), ``config.kernels`` resolved
    noise_level: float | None = None  #: the stacks' in-plane noise relative to their median intensity
    #: (:func:`.noise.noise_sigma`; ``None`` when not measured: ``smoothness=0``)
    smoothness_weight: float = 0.0  #: weight of the noise-aware prior that ran (0: off)
    propagated_masks: list[Image | None] = field(default_factory=list)  #: with one mask for several stacks:
    #: per stack, the reference stack's mask propagated onto its grid (``None`` for the reference stack itself)


@dataclass
class _Stack:
    index: int
    geom: SliceGeometry
    target: torch.Tensor  # (S, H, W)
    mask: torch.Tensor  # (S, H, W) float {0, 1}
    slice_ids: np.ndarray  # original k of each kept slice
    thickness: float
    offset: int = 0  # first global slice index
    prealign: torch.Tensor | None = None  # (4, 4) stack pre-alignment already applied to geom
    mask_index: torch.Tensor | None = None  # (P,) flat indices of the mask pixels (no boolean indexing in the loop)


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _reference_index(cfg: SVRConfig, n_stacks: int) -> int:
    ref = 0 if cfg.reference_stack is None else int(cfg.reference_stack)
    if not 0 <= ref < n_stacks:
        raise ValueError(f"reference_stack {ref} is out of range: there are {n_stacks} stacks (0 to {n_stacks - 1})")
    return ref


def _prepare_inputs(stacks, masks, thickness):
    """``(stacks, masks, thickness, reference_mask)``: ``masks`` are boolean arrays on the stacks' grids;
    with a single mask for several stacks that mask is ``reference_mask`` (the reference stack's) and
    ``masks`` is ``None`` (propagated later, :func:`.register.masks_from_reference`)."""
    if stacks is None or len(stacks) == 0:
        raise ValueError("no stacks given; pass at least one thick-slice stack (ideally 3+ in orthogonal orientations)")
    stacks = list(stacks)
    for n, s in enumerate(stacks):
        if not isinstance(s, Image):
            raise TypeError(f"stacks[{n}] must be a gaussian_mri.image.Image, got {type(s).__name__}")
        data = np.asarray(s.data, dtype=np.float64)
        if not np.isfinite(data).all():
            raise ValueError(f"stacks[{n}] contains NaN or infinite voxels; clean the stack (e.g. replace NaN by 0) first")
        if np.ptp(data) == 0:
            raise ValueError(f"stacks[{n}] is constant (all voxels = {data.flat[0]}); it carries no image")
    masks = [None] * len(stacks) if masks is None else list(masks)
    reference_mask = None
    if len(masks) == 1 and len(stacks) > 1 and masks[0] is not None:
        reference_mask = masks[0]  # one mask: the reference stack's, propagated to the others (SVRTK -mask)
        if not isinstance(reference_mask, Image):
            raise TypeError(f"masks[0] must be a gaussian_mri.image.Image, got {type(reference_mask).__name__}")
        if not (np.asarray(reference_mask.data) > 0).any():
            raise ValueError("the mask of the reference stack is empty (no voxel > 0); draw a mask or pass no mask")
    elif len(masks) != len(stacks):
        raise ValueError(
            f"got {len(masks)} masks for {len(stacks)} stacks; pass one mask (or None) per stack, or a single mask "
            "for the reference stack"
        )
    thickness = [None] * len(stacks) if thickness is None else list(thickness)
    if len(thickness) != len(stacks):
        raise ValueError(f"got {len(thickness)} thickness values for {len(stacks)} stacks; pass one (or None) per stack")
    if reference_mask is not None:
        return stacks, None, thickness, reference_mask
    from .masking import mask_on_stack

    out_masks = []
    for n, (s, m) in enumerate(zip(stacks, masks)):
        if m is not None and not (m.shape == s.shape and np.allclose(m.affine, s.affine, atol=1e-3)):
            warnings.warn(f"mask {n} is on a different grid than its stack; resampled (nearest neighbour) onto the stack", stacklevel=3)
        m_arr = mask_on_stack(s, m)
        if m is None:
            log.info("stack %d: no mask given, automatic mask covers %d voxels", n, int(m_arr.sum()))
        if not m_arr.any():
            raise ValueError(f"mask {n} is empty (no voxel > 0 on its stack); draw a mask or pass None for an automatic one")
        out_masks.append(m_arr)
    return stacks, out_masks, thickness, None


def _crop_stack(stack: Image, mask: np.ndarray, thickness, cfg: SVRConfig, index: int, device, pad: int = 3) -> _Stack:
    kk = np.nonzero(mask.any(axis=(1, 2)))[0]
    jj = np.nonzero(mask.any(axis=(0, 2)))[0]
    ii = np.nonzero(mask.any(axis=(0, 1)))[0]
    j0, j1 = max(jj[0] - pad, 0), min(jj[-1] + pad + 1, stack.shape[1])
    i0, i1 = max(ii[0] - pad, 0), min(ii[-1] + pad + 1, stack.shape[2])
    data = np.asarray(stack.data, dtype=np.float32)[kk][:, j0:j1, i0:i1]
    affine = stack.affine.copy()
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.array([i0, j0, 0.0])
    full_geom, thick = stack_geometry(
        Image(np.zeros((stack.shape[0], j1 - j0, i1 - i0), np.float32), affine, stack.slice_thickness),
        thickness=thickness,
        inplane_fwhm_factor=cfg.inplane_fwhm_factor,
        through_plane_fwhm_factor=cfg.through_plane_fwhm_factor,
        device=device,
    )
    geom = full_geom.select(torch.as_tensor(kk, device=device))
    return _Stack(
        index=index,
        geom=geom,
        target=torch.as_tensor(data, device=device),
        mask=torch.as_tensor(mask[kk][:, j0:j1, i0:i1].astype(np.float32), device=device),
        mask_index=torch.as_tensor(np.flatnonzero(mask[kk][:, j0:j1, i0:i1]), device=device),
        slice_ids=kk,
        thickness=thick,
    )


def _seed_gaussians(stacks: list[_Stack], n: int, gen: torch.Generator, psf_mode: str) -> tuple[GaussianModel3D, float]:
    pts, vals, prob = [], [], []
    voxel_volume = []
    for st in stacks:
        img = st.target
        gy = torch.zeros_like(img)
        gx = torch.zeros_like(img)
        gy[:, 1:-1] = (img[:, 2:] - img[:, :-2]) * 0.5
        gx[:, :, 1:-1] = (img[:, :, 2:] - img[:, :, :-2]) * 0.5
        grad = torch.sqrt(gx * gx + gy * gy)
        sel = st.mask > 0
        world = st.geom.pixel_to_world()[sel]  # (P, 3)
        g = grad[sel]
        pts.append(world)
        vals.append(img[sel])
        prob.append(g + g.mean())
        sp = st.geom.spacing[0]
        voxel_volume.append(float(sel.sum()) * float(sp[0] * sp[1]) * st.thickness)
        # remember jitter scales per candidate
    pts_all = torch.cat(pts)
    vals_all = torch.cat(vals)
    p = torch.cat(prob)
    # The union of masks is at most the largest stack's mask volume (same brain seen by each stack).
    roi_volume = max(voxel_volume)
    spacing = (roi_volume / n) ** (1.0 / 3.0)
    # random draws on the CPU generator (same numbers on every device), then moved to the data's device
    idx = torch.multinomial((p / p.sum()).cpu(), n, replacement=True, generator=gen).to(p.device)
    jitter = (torch.rand(n, 3, generator=gen, device="cpu").to(pts_all.device) - 0.5) * spacing
    means = pts_all[idx] + jitter
    sigma = 0.6 * spacing
    # sum of Gaussians of peak c at density 1/spacing^3 ~ c (2 pi)^1.5 sigma^3 / spacing^3
    overlap = (2 * math.pi) ** 1.5 * sigma**3 / spacing**3
    amps = vals_all[idx] / overlap
    quats = torch.zeros(n, 4, device=pts_all.device)
    quats[:, 0] = 1.0
    model = GaussianModel3D(
        means=means.clone(),
        log_scales=torch.full((n, 3), math.log(sigma), device=pts_all.device),
        quats=quats,
        amplitudes=amps.clone(),
        psf_mode=psf_mode,
    )
    return model, spacing


# --------------------------------------------------------------------------------------------------
# Forward model of one stack batch
# --------------------------------------------------------------------------------------------------


class _Motion:
    """Per-stack and per-slice rigid parameters; slice pose = M_slice o M_stack o nominal pose."""

    def __init__(self, stacks: list[_Stack], device):
        n_slices = sum(st.geom.n_slices for st in stacks)
        self.stack_rot = torch.zeros(len(stacks), 3, device=device, requires_grad=True)
        self.stack_trans = torch.zeros(len(stacks), 3, device=device, requires_grad=True)
        self.slice_rot = torch.zeros(n_slices, 3, device=device, requires_grad=True)
        self.slice_trans = torch.zeros(n_slices, 3, device=device, requires_grad=True)
        self.stack_centre = torch.stack([st.geom.centre.mean(0) for st in stacks])

    def matrices(self, st: _Stack, local: torch.Tensor) -> torch.Tensor:
        g = local + st.offset
        centre = st.geom.centre[local]
        stack_m = rigid_matrix(self.stack_rot[st.index], self.stack_trans[st.index], self.stack_centre[st.index])
        # slice motion about the slice centre after the stack motion
        moved_centre = (stack_m[:3, :3] @ centre.T).T + stack_m[:3, 3]
        slice_m = rigid_matrix(self.slice_rot[g], self.slice_trans[g], moved_centre)
        return slice_m @ stack_m[None]


class _Bias:
    """Quadratic log-domain bias field per stack in normalised slice coordinates."""

    def __init__(self, stacks: list[_Stack], device):
        self.coef = torch.zeros(len(stacks), 10, device=device, requires_grad=True)

    def field(self, st: _Stack, local: torch.Tensor) -> torch.Tensor:
        s, h, w = len(local), st.geom.height, st.geom.width
        dev = self.coef.device
        y = torch.linspace(-1, 1, h, device=dev)[None, :, None].expand(s, h, w)
        x = torch.linspace(-1, 1, w, device=dev)[None, None, :].expand(s, h, w)
        n_total = max(st.geom.n_slices - 1, 1)
        z = (local.to(torch.float32) / n_total * 2 - 1)[:, None, None].expand(s, h, w)
        basis = torch.stack([torch.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], -1)
        return torch.exp(basis @ self.coef[st.index])


def _predict(model, covs, st, local, motion, scales, bias, cfg, kernels="torch"):
    geom = st.geom.select(local)
    if motion is not None:
        geom = geom.moved(motion.matrices(st, local))
    pred = render_slices(model.means, covs, model.amplitudes, geom, mode=cfg.psf_mode, k_sigma=cfg.k_sigma, backend=kernels)
    if scales is not None:
        pred = pred * torch.exp(scales[local + st.offset])[:, None, None]
    if bias is not None:
        pred = pred * bias.field(st, local)
    return pred


def _welsch(z: torch.Tensor, c: float) -> torch.Tensor:
    return torch.exp(-0.5 * (z / c) ** 2)


# --------------------------------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------------------------------


def reconstruct(
    stacks: Sequence[Image],
    masks: Sequence[Image | None] | None = None,
    *,
    thickness: Sequence[float | None] | None = None,
    config: SVRConfig | None = None,
    callback: Callable[[dict], bool | None] | None = None,
    **overrides,
) -> SVRResult:
    """Reconstruct an isotropic volume from thick-slice stacks.

    Parameters
    ----------
    stacks : sequence of Image
        Thick-slice stacks, any orientation (``k`` is the slice direction).
    masks : sequence of (Image or None), optional
        Region of interest per stack (any grid: resampled onto the stack). ``None`` -> automatic.
        A single mask with several stacks is the mask of the reference stack (``reference_stack``,
        default the first), as SVRTK's ``reconstruct ... -mask``: it is propagated onto the other
        stacks through the rigid stack alignment (world coordinates only when the motion is
        ``"none"`` or ``stack_alignment`` is off), see :func:`.register.masks_from_reference`; the
        propagated masks are returned in :attr:`SVRResult.propagated_masks`.
    thickness : sequence of (float or None), optional
        Slice thickness per stack in mm (default: header, else slice spacing).
    config : SVRConfig, optional
        Hyper-parameters (see :data:`PRESETS`); keyword ``overrides`` replace single fields.
    callback : callable, optional
        Called with a status dict (``stage, iteration, total, loss, elapsed_s, eta_s``); returning
        ``False`` cancels (raises :class:`SVRCancelled`).

    Returns
    -------
    SVRResult
    """
    cfg = replace(config or SVRConfig(), **overrides).validated()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    kernels = resolve_kernel_backend(cfg.kernels, device)  # "torch" | "triton"; raises where it cannot run
    # one CPU generator: the same seed gives the same random draws on every device (GPU/CPU parity)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    notes: list[str] = []
    stacks, mask_arrays, thickness, reference_mask = _prepare_inputs(stacks, masks, thickness)
    ref = _reference_index(cfg, len(stacks))
    if cfg.registration_rounds and cfg.motion != "slice":
        msg = f"registration rounds (severe motion) need motion='slice'; with motion='{cfg.motion}' they are not run"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    if len(stacks) == 1 and cfg.motion != "none":
        msg = "only one stack: slice motion can only be estimated within the stack's plane; use 3+ orthogonal stacks for full motion correction"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)

    # Rigid stack alignment (and, with one reference mask, the masks of the other stacks).
    timings: dict[str, float] = {}
    prealign = None
    align = cfg.stack_alignment and cfg.motion != "none" and len(stacks) > 1
    propagated: list[Image | None] = []
    if align and callback is not None and callback({"stage": "align", "iteration": 0, "total": cfg.iterations, "loss": None, "elapsed_s": time.perf_counter() - t_start, "eta_s": None}) is False:
        raise SVRCancelled("cancelled before the stack alignment")
    t0 = time.perf_counter()
    if reference_mask is not None:
        from .register import masks_from_reference

        mask_arrays, prealign = masks_from_reference(stacks, reference_mask, reference=ref, align=align)
        propagated = [None if n == ref else Image(m.astype(np.uint8), s.affine.copy()) for n, (s, m) in enumerate(zip(stacks, mask_arrays))]
        log.info("one mask for %d stacks: the reference stack %d's mask propagated to the others (%s)", len(stacks), ref,
                 "through the stack alignment" if align else "in world coordinates, no alignment")
    elif align:
        from .register import align_stacks

        prealign = align_stacks(stacks, mask_arrays, reference=ref)
    if align:
        timings["align_s"] = time.perf_counter() - t0

    # Intensity normalisation per stack.
    medians = [float(np.median(np.asarray(s.data, dtype=np.float64)[m])) for s, m in zip(stacks, mask_arrays)]
    medians = [m if m > 0 else float(np.abs(np.asarray(s.data)).max()) for m, s in zip(medians, stacks)]
    global_scale = float(np.mean(medians))
    norm_stacks = [s.with_data((np.asarray(s.data, dtype=np.float32) / med).astype(np.float32)) for s, med in zip(stacks, medians)]

    data: list[_Stack] = []
    offset = 0
    for n, (s, m, th) in enumerate(zip(norm_stacks, mask_arrays, thickness)):
        st = _crop_stack(s, m, th, cfg, n, device)
        st.offset = offset
        offset += st.geom.n_slices
        data.append(st)
    n_slices_total = offset
    smooth_weight, noise_rel = _smoothness_weight(cfg, norm_stacks, mask_arrays)
    if smooth_weight > 0:
        log.info("noise-aware fit: noise %.4f of the median intensity, edge-preserving prior weight %.4g", noise_rel, smooth_weight)
    timings["prepare_s"] = time.perf_counter() - t_start - timings.get("align_s", 0.0)
    if align:
        for st, m in zip(data, prealign):
            st.prealign = torch.as_tensor(m, dtype=torch.float32, device=device)
            st.geom = st.geom.moved(st.prealign[None].expand(st.geom.n_slices, 4, 4))

    try:
        result = _fit(cfg, device, gen, data, stacks, mask_arrays, global_scale, n_slices_total, callback, t_start, timings, notes, kernels, smooth_weight, noise_rel)
    except out_of_memory_errors() as exc:  # torch.OutOfMemoryError only exists from torch 2.5
        raise MemoryError(
            f"out of memory on {device}: use a coarser resolution (resolution_mm), fewer Gaussians "
            f"(n_gaussians={cfg.n_gaussians}), fewer slices per batch, or device='cpu'. ({exc})"
        ) from exc
    result.propagated_masks = propagated
    result.noise_level = noise_rel if math.isfinite(noise_rel) else None
    result.smoothness_weight = smooth_weight
    return result


def _smoothness_weight(cfg: SVRConfig, norm_stacks, mask_arrays) -> tuple[float, float]:
    """``(weight, noise)``: the weight of the edge-preserving prior and the stacks' noise level relative to
    their median intensity (median of the per-stack estimates, :func:`.noise.noise_sigma`), which is also
    the prior's knee. ``"auto"``: weight SMOOTHNESS_PER_NOISE x noise, off (weight 0) when the noise cannot
    be measured or is below MIN_NOISE. A number: that weight, knee at least MIN_NOISE."""
    if cfg.smoothness == 0:
        return 0.0, float("nan")
    if cfg.psf_mode == "normalised":  # the rendered volume is a kernel regression, not the sum the prior sees
        log.info("noise-aware fit off: not available with psf_mode='normalised'")
        return 0.0, float("nan")
    from .noise import noise_sigma

    levels = []
    for s, m in zip(norm_stacks, mask_arrays):
        try:
            levels.append(noise_sigma(np.asarray(s.data), m))
        except ValueError:  # slices or mask too small to measure: this stack does not vote
            continue
    levels = [v for v in levels if math.isfinite(v)]
    noise = float(np.median(levels)) if levels else float("nan")
    if cfg.smoothness != "auto":  # an explicit weight always applies; the knee is the noise, at least MIN_NOISE
        return float(cfg.smoothness), max(noise, MIN_NOISE) if math.isfinite(noise) else MIN_NOISE
    if not noise >= MIN_NOISE:
        log.info("noise-aware fit off: the stacks' noise (%.2g of the median intensity) is below %g", noise, MIN_NOISE)
        return 0.0, noise
    return SMOOTHNESS_PER_NOISE * noise, noise


def _patch_planes(grid_rotation: np.ndarray, cfg: SVRConfig, device) -> SliceGeometry:
    """The ``smoothness_patch`` planes of a cube of ``resolution_mm`` voxels with axes ``grid_rotation``,
    centred at the origin (as :func:`gaussian_mri.geometry.grid_geometry` lays out a voxel grid): built once,
    on the fit's device; each step only shifts the origins (:func:`_smoothness_patch`)."""
    from ..geometry import grid_geometry

    n = cfg.smoothness_patch
    affine = np.eye(4)
    affine[:3, :3] = grid_rotation * cfg.resolution_mm
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (n - 1) / 2.0)
    return grid_geometry((n, n, n), affine, device=device)


def _smoothness_patch(model, covs, planes: SliceGeometry, centre: torch.Tensor, tau, cfg, kernels):
    """Mean edge-preserving penalty ``tau log(1 + |grad v|^2 / tau^2)`` (Lorentzian; Black & Rangarajan,
    IJCV 19(1), 1996) of the model rendered on the cube ``planes`` (:func:`_patch_planes`) moved to
    ``centre``; ``|grad v|`` is the forward-difference gradient per voxel. Quadratic (``|grad v|^2 / tau``)
    for differences below ``tau``, the noise level, so grain is smoothed; logarithmic above it, so tissue
    edges many times the noise are hardly penalised."""
    geom = SliceGeometry(planes.rotation, planes.origin + centre, planes.spacing, planes.psf_var, planes.height, planes.width)
    v = render_slices(model.means, covs, model.amplitudes, geom, mode="exact", k_sigma=cfg.k_sigma, backend=kernels)
    dz = v[1:, :-1, :-1] - v[:-1, :-1, :-1]
    dy = v[:-1, 1:, :-1] - v[:-1, :-1, :-1]
    dx = v[:-1, :-1, 1:] - v[:-1, :-1, :-1]
    return (tau * torch.log1p((dx * dx + dy * dy + dz * dz) / (tau * tau))).mean()


def _fit(cfg, device, gen, data, stacks, mask_arrays, global_scale, n_slices_total, callback, t_start, timings, notes, kernels="torch", smooth_weight=0.0, noise=float("nan")):
    model, seed_spacing = _seed_gaussians(data, cfg.n_gaussians, gen, cfg.psf_mode)
    prior_centres = prior_planes = None
    if smooth_weight > 0:  # cube centres: the seeds (inside the masks), picked by an index drawn on the host
        from .baseline import output_grid

        prior_centres = model.means.detach().clone()
        _, grid_affine = output_grid(stacks, [s.with_data(m.astype(np.uint8)) for s, m in zip(stacks, mask_arrays)],
                                     resolution_mm=cfg.resolution_mm, margin_mm=cfg.margin_mm, reference_stack=cfg.reference_stack)
        prior_planes = _patch_planes(grid_affine[:3, :3] / np.linalg.norm(grid_affine[:3, :3], axis=0), cfg, device)
    for p in model.parameters():
        p.requires_grad_(True)
    amp0 = float(model.amplitudes.detach().abs().mean())
    motion = _Motion(data, device) if cfg.motion != "none" else None
    scales = torch.zeros(n_slices_total, device=device, requires_grad=True) if cfg.intensity_scale else None
    bias = _Bias(data, device) if cfg.bias_field else None
    groups = [
        {"params": [model.means], "lr": cfg.lr_means * seed_spacing},
        {"params": [model.log_scales], "lr": cfg.lr_scales},
        {"params": [model.quats], "lr": cfg.lr_quats},
        {"params": [model.amplitudes], "lr": cfg.lr_amplitudes * amp0},
    ]
    if scales is not None:
        groups.append({"params": [scales], "lr": cfg.lr_intensity})
    if bias is not None:
        groups.append({"params": [bias.coef], "lr": cfg.lr_intensity})
    if motion is not None:
        groups.append({"params": [motion.stack_rot], "lr": cfg.lr_rotation})
        groups.append({"params": [motion.stack_trans], "lr": cfg.lr_translation})
        groups.append({"params": [motion.slice_rot], "lr": cfg.lr_rotation})
        groups.append({"params": [motion.slice_trans], "lr": cfg.lr_translation})
    opt = torch.optim.Adam(groups)
    base_lr = [g["lr"] for g in opt.param_groups]

    slice_w = torch.ones(n_slices_total, device=device)
    pixel_sigma = [None] * len(data)
    slice_err = torch.zeros(n_slices_total, device=device)
    # masked signal energy of every slice (the denominator of its relative error), and per stack the running
    # sum and count of the batches' robust pixel scales since the last robust-weight update
    energy = [(st.target * st.mask).pow(2).sum((1, 2)).clamp_min(1e-12) for st in data]
    sigma_sum = [torch.zeros((), device=device) for _ in data]
    sigma_n = [0] * len(data)
    n_refresh = 0
    losses: list[float] = []
    # The per-iteration loop never reads a tensor back to the host (a GPU synchronisation): the
    # losses stay on the device until a reporting point (callback, log line, end), where
    # `flush_losses` reads them all at once and checks them.
    pending: list[torch.Tensor] = []

    def flush_losses() -> None:
        if not pending:
            return
        vals = torch.stack(pending).tolist()
        pending.clear()
        for n, v in enumerate(vals):
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"the loss became {v} at iteration {len(losses) + n}; lower the learning rates or check the input intensities"
                )
        losses.extend(vals)

    log_min = math.log(0.25 * cfg.resolution_mm)
    log_max = math.log(20.0)
    # Slices per stack in every batch (proportional to stack size): fixed, so computed once, on the host.
    n_batch = min(cfg.slices_per_batch, n_slices_total)
    sizes = torch.tensor([st.geom.n_slices for st in data], dtype=torch.float32, device="cpu")
    counts = torch.clamp(torch.round(sizes / sizes.sum() * n_batch), min=1).long().tolist()
    ref = _reference_index(cfg, len(data))  # the reference stack defines the anatomy frame
    t_fit = time.perf_counter()
    it = 0
    total = cfg.iterations
    preview_grid = None
    last_preview = time.perf_counter()
    if callback is not None and cfg.preview_every_s is not None:
        from .baseline import output_grid

        masks_img = [s.with_data(m.astype(np.uint8)) for s, m in zip(stacks, mask_arrays)]
        preview_grid = output_grid(stacks, masks_img, resolution_mm=max(2.0, 2 * cfg.resolution_mm), margin_mm=cfg.margin_mm, reference_stack=cfg.reference_stack)
    register_at = sorted({int(f * total) for f in cfg.registration_rounds}) if motion is not None and cfg.motion == "slice" else []
    register_grid = None
    if register_at:
        from .baseline import output_grid
    for it in range(total):
        frac = it / max(total - 1, 1)
        if it in register_at:
            if callback is not None and callback({"stage": "register", "iteration": it, "total": total, "loss": losses[-1] if losses else None, "elapsed_s": time.perf_counter() - t_start, "eta_s": None}) is False:
                raise SVRCancelled(f"cancelled at iteration {it}")
            t_reg = time.perf_counter()
            if register_grid is None:  # the grid the slices are registered to: the same at every round
                register_grid = output_grid(stacks, [s.with_data(m.astype(np.uint8)) for s, m in zip(stacks, mask_arrays)],
                                            resolution_mm=cfg.registration_resolution_mm, margin_mm=cfg.margin_mm,
                                            reference_stack=cfg.reference_stack)
            moved = _register_round(model, data, motion, opt, register_grid, cfg, kernels, gen)
            timings["register_s"] = timings.get("register_s", 0.0) + time.perf_counter() - t_reg
            log.info("iteration %d: slice registration round moved %d/%d slices (%.1fs)", it, moved, n_slices_total, time.perf_counter() - t_reg)
        cos = cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * cos
        stack_on = motion is not None and frac >= cfg.stack_motion_start
        slice_on = motion is not None and cfg.motion == "slice" and frac >= cfg.slice_motion_start

        first = int(cfg.reweight_start * total)
        if cfg.robust and it >= first and (it - first) % cfg.reweight_every == 0:
            if n_refresh % cfg.full_refresh_every == 0:
                slice_err, pixel_sigma = _residual_stats(model, data, motion, scales, bias, cfg, kernels)
            else:  # the slices' latest errors (from their last batch) and the batches' pixel scales
                pixel_sigma = [None if old is None or n == 0 else (acc / n).clamp_min(1e-6)
                               for old, acc, n in zip(pixel_sigma, sigma_sum, sigma_n)]
            sigma_sum = [torch.zeros((), device=device) for _ in data]
            sigma_n = [0] * len(data)
            n_refresh += 1
            slice_w = _robust_weights(slice_err, cfg)

        opt.zero_grad(set_to_none=True)
        covs = model.covariances()
        # Stochastic slice batch, proportional to stack size.
        loss_sum = torch.zeros((), device=device)
        total_loss = 0.0
        in_batch = torch.zeros(n_slices_total, dtype=torch.bool, device=device)
        for st, cnt in zip(data, counts):
            cnt = min(cnt, st.geom.n_slices)
            local = torch.randperm(st.geom.n_slices, generator=gen, device="cpu")[:cnt].sort().values.to(device, non_blocking=True)
            in_batch.index_fill_(0, local + st.offset, True)
            pred = _predict(model, covs, st, local, motion, scales, bias, cfg, kernels)
            r = (pred - st.target[local]) * st.mask[local]
            if cfg.robust:
                with torch.no_grad():  # this batch's slice errors and robust pixel scale (as _residual_stats)
                    rd = r.detach()
                    slice_err.index_copy_(0, local + st.offset, rd.pow(2).sum((1, 2)) / energy[st.index][local])
                    absr = torch.where(st.mask[local] > 0, rd.abs(), torch.full_like(rd, float("nan")))
                    med = absr.nanmedian()
                    sigma_sum[st.index] = sigma_sum[st.index] + 1.4826 * torch.nan_to_num(med, nan=0.0)
                    sigma_n[st.index] += 1
            w = slice_w[local + st.offset].clamp_min(cfg.slice_weight_floor)[:, None, None] * st.mask[local]  # floor: see below
            if cfg.robust and pixel_sigma[st.index] is not None:
                w = w * _welsch(r.detach() / pixel_sigma[st.index], cfg.robust_pixel_c).clamp_min(cfg.slice_weight_floor)
            total_loss = total_loss + (w * r * r).sum()
            loss_sum = loss_sum + st.mask[local].sum()  # pixel counts: exact in float32
        loss = total_loss / loss_sum.clamp_min(1.0)
        if prior_centres is not None:
            pick = int(torch.randint(len(prior_centres), (1,), generator=gen))
            loss = loss + smooth_weight * _smoothness_patch(model, covs, prior_planes, prior_centres[pick], noise, cfg, kernels)
        loss.backward()
        # A slice's own parameters (motion, intensity) are fitted to its data whatever its robust
        # weight: the weight decides how much the slice shapes the volume, not whether it is
        # registered (as in SVRTK, where every slice is registered and then weighted). Their
        # gradients come from that slice's residual alone, times its weight: undo the weight.
        w_slice = slice_w.clamp_min(cfg.slice_weight_floor)
        for t in (motion.slice_rot if motion is not None else None, motion.slice_trans if motion is not None else None):
            if t is not None and t.grad is not None:
                t.grad /= w_slice[:, None]
        if scales is not None and scales.grad is not None:
            scales.grad /= w_slice
        prior = torch.zeros((), device=device)
        if motion is not None:
            prior = prior + cfg.motion_prior * (motion.slice_trans.pow(2).mean() + (motion.slice_rot * 57.3).pow(2).mean())
        if scales is not None:
            prior = prior + 1e-2 * scales.mean().pow(2)
        if prior.requires_grad:
            prior.backward()
        loss = loss.detach() + prior.detach()
        if motion is not None:
            motion.stack_rot.grad[ref] = 0
            motion.stack_trans.grad[ref] = 0
            if not stack_on:
                motion.stack_rot.grad.zero_()
                motion.stack_trans.grad.zero_()
            if not slice_on:
                motion.slice_rot.grad.zero_()
                motion.slice_trans.grad.zero_()
        # Per-slice parameters of slices outside this batch got no data gradient: keep them where
        # they are (Adam's momentum would otherwise keep moving them, blindly).
        per_slice = [t for t in (motion.slice_rot if motion is not None else None,
                                 motion.slice_trans if motion is not None else None, scales) if t is not None]
        frozen = [t.detach().clone() for t in per_slice]  # (torch.where, not a boolean index: no sync)
        opt.step()
        with torch.no_grad():
            for t, old in zip(per_slice, frozen):
                t.copy_(torch.where(in_batch.reshape(-1, *([1] * (t.dim() - 1))), t, old))
        with torch.no_grad():
            model.log_scales.clamp_(log_min, log_max)
            if scales is not None:
                scales.clamp_(-cfg.max_log_intensity, cfg.max_log_intensity)
        pending.append(loss.detach())
        elapsed = time.perf_counter() - t_fit
        eta = elapsed / (it + 1) * (total - it - 1)
        if cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s:
            notes.append(f"stopped at iteration {it + 1}/{total}: time budget {cfg.time_budget_s} s reached")
            log.info(notes[-1])
            break
        report = callback is not None and (it % 5 == 0 or it == total - 1)
        log_now = (it % 50 == 0 or it == total - 1) and log.isEnabledFor(logging.INFO)
        if report or log_now:
            flush_losses()
            lv = losses[-1]
        if report:
            status = {"stage": "fit", "iteration": it + 1, "total": total, "loss": lv, "elapsed_s": time.perf_counter() - t_start, "eta_s": eta}
            if preview_grid is not None and time.perf_counter() - last_preview >= cfg.preview_every_s:
                shape_p, affine_p = preview_grid
                vol_p = render_volume(model.detach(), shape_p, affine_p, antialias=True, k_sigma=cfg.k_sigma, backend=kernels)
                status["preview"] = Image((vol_p.cpu().numpy() * global_scale).astype(np.float32), affine_p)
                last_preview = time.perf_counter()
            if callback(status) is False:
                raise SVRCancelled(f"cancelled at iteration {it + 1}")
        if log_now:
            log.info("iteration %d/%d loss %.5f elapsed %.1fs eta %.1fs", it + 1, total, lv, elapsed, eta)
    flush_losses()
    timings["fit_s"] = time.perf_counter() - t_fit
    timings["iterations"] = it + 1

    # Final robust statistics for the report.
    slice_err, pixel_sigma = _residual_stats(model, data, motion, scales, bias, cfg, kernels)
    if cfg.robust:
        slice_w = _robust_weights(slice_err, cfg)
    return _outputs(cfg, model, data, stacks, mask_arrays, motion, slice_w, slice_err, global_scale, timings, losses, notes, t_start, callback, kernels)


def _register_round(model, data, motion, opt, grid, cfg, kernels, gen) -> int:
    """One slice-to-volume registration round (:mod:`.slice_register`): render the model on a coarse
    grid, register every slice to it from several starts (its own pose, its stack neighbours' k +- 1, 2,
    rotated starts), write the improved poses into the slice motion and clear the first moment (momentum)
    of Adam for all slice poses.
    ``grid`` = ``(shape, affine)`` of the volume. Returns the number of slices moved."""
    from .slice_register import register_slices_to_volume
    from ..transforms import invert_rigid, rigid_params_from_matrix

    shape, affine = grid
    volume = render_volume(model.detach(), shape, affine, antialias=True, k_sigma=cfg.k_sigma, backend=kernels)
    moved = 0
    with torch.no_grad():
        for st in data:
            n = st.geom.n_slices
            local = torch.arange(n, device=volume.device)
            mats = motion.matrices(st, local).detach()  # full motion of each slice (on the pre-aligned geometry)
            geom = st.geom.moved(mats)
            inv = invert_rigid(mats)
            cands = []
            for d in (-1, 1, -2, 2):
                nb = (local + d).clamp(0, n - 1)
                cands.append(mats[nb] @ inv)  # this slice moved as its neighbour was
            delta, before, after = register_slices_to_volume(
                volume, affine, geom, st.target, st.mask, thickness=st.thickness * cfg.through_plane_fwhm_factor,
                neighbour_poses=torch.stack(cands, 1), generator=gen, max_pixels=REGISTRATION_PIXELS,
            )
            # Accept a new pose only where the NCC gain is above its noise (~1/sqrt(pixels)) and the slice
            # holds enough of the anatomy: a slice that grazes the edge of the mask has a poorly defined pose
            # (its NCC can rise by sliding it off the anatomy; giving it a neighbour's pose instead did not
            # help on the motion sweep) and keeps the fit's.
            n_px = st.mask.sum((1, 2))
            n_used = n_px.clamp(1, REGISTRATION_PIXELS)  # the NCC is measured on at most this many pixels
            change = (after > before + 0.5 / n_used.sqrt()) & (n_px >= 0.25 * n_px.median())
            g = local + st.offset
            stack_m = rigid_matrix(motion.stack_rot[st.index], motion.stack_trans[st.index], motion.stack_centre[st.index])
            slice_m = mats @ invert_rigid(stack_m)[None]
            new_slice = delta @ slice_m
            moved_centre = (stack_m[:3, :3] @ st.geom.centre.T).T + stack_m[:3, 3]
            rv, tv = rigid_params_from_matrix(new_slice, moved_centre)
            motion.slice_rot[g] = torch.where(change[:, None], rv, motion.slice_rot[g])
            motion.slice_trans[g] = torch.where(change[:, None], tv, motion.slice_trans[g])
            moved += int(change.sum())
        for t in (motion.slice_rot, motion.slice_trans):
            state = opt.state.get(t)
            if state and "exp_avg" in state:
                state["exp_avg"].zero_()
    return moved


def _residual_stats(model, data, motion, scales, bias, cfg, kernels="torch"):
    """Relative error of every slice (masked SSD / masked signal energy) and a robust pixel sigma
    (1.4826 x median absolute residual) per stack, from one no-grad pass over all slices. Relative:
    a signal void or drop-out (little signal, large residual) stands out from the first iterations
    on; the log-domain weights (:func:`_robust_weights`) keep dark edge slices, whose relative error
    is also higher, from being flagged."""
    errs, sigmas = [], []
    with torch.no_grad():
        covs = model.covariances()
        for st in data:
            local = torch.arange(st.geom.n_slices, device=st.target.device)
            pred = _predict(model, covs, st, local, motion, scales, bias, cfg, kernels)
            r = (pred - st.target) * st.mask
            denom = (st.target * st.mask).pow(2).sum((1, 2)).clamp_min(1e-12)
            errs.append(r.pow(2).sum((1, 2)) / denom)
            index = st.mask_index if st.mask_index is not None else torch.nonzero(st.mask.reshape(-1) > 0).squeeze(1)
            vals = r.reshape(-1)[index].abs()  # = r[st.mask > 0], without the boolean index's sync
            sigmas.append(1.4826 * vals.median().clamp_min(1e-6) if vals.numel() else None)
    return torch.cat(errs), sigmas


def _robust_weights(err: torch.Tensor, cfg: SVRConfig) -> torch.Tensor:
    """Welsch slice weights on a one-sided robust z-score of the log slice errors.

    Log domain: clean slices' errors spread over about a decade (edge slices, partial volume), a
    corrupted slice's error is orders of magnitude larger; a z-score of the raw errors flags the
    upper tail of the clean ones. One-sided: only slices worse than typical are down-weighted. The
    MAD (natural-log units) is floored at 0.25, so near-identical slice errors do not flag normal
    slices, and capped at 1.0, so a widely spread clean population (a model that fits some slices
    very closely) cannot hide a slice whose error is 1000x the median.
    """
    le = torch.log(err.clamp_min(1e-12))
    med = le.median()
    mad = (1.4826 * (le - med).abs().median()).clamp(0.25, 1.0)
    z = ((le - med) / mad).clamp_min(0)
    return _welsch(z, cfg.robust_slice_c)


def _outputs(cfg, model, data, stacks, mask_arrays, motion, slice_w, slice_err, global_scale, timings, losses, notes, t_start, callback, kernels="torch"):
    from .baseline import output_grid

    if callback is not None and callback({"stage": "render", "iteration": len(losses), "total": cfg.iterations, "loss": losses[-1] if losses else float("nan"), "elapsed_s": time.perf_counter() - t_start, "eta_s": 0.0}) is False:
        raise SVRCancelled("cancelled before rendering the output")
    t0 = time.perf_counter()
    masks_img = [s.with_data(m.astype(np.uint8)) for s, m in zip(stacks, mask_arrays)]
    ref = cfg.reference_stack if cfg.reference_stack is not None else None
    shape, affine = output_grid(stacks, masks_img, resolution_mm=cfg.resolution_mm, margin_mm=cfg.margin_mm, reference_stack=ref)
    final = model.detach()
    vol = render_volume(final, shape, affine, k_sigma=cfg.k_sigma, backend=kernels)
    volume = Image((vol.cpu().numpy() * global_scale).astype(np.float32), affine)
    # Output mask: union of the stack masks in world space, each stack where the pre-alignment put it.
    from ..resample import resample_to_reference

    grid = Image(np.zeros(shape, np.uint8), affine)
    union = np.zeros(shape, bool)
    for m, st in zip(masks_img, data):
        back = None if st.prealign is None else np.linalg.inv(st.prealign.detach().cpu().double().numpy())
        union |= np.asarray(resample_to_reference(m, grid, transform=back, order=0).data) > 0
    mask = Image(union.astype(np.uint8), affine)
    timings["render_s"] = time.perf_counter() - t0

    # Per-slice table.
    rows = []
    weights_host, errs_host = slice_w.detach().cpu().tolist(), slice_err.detach().cpu().tolist()  # one read-back each
    with torch.no_grad():
        for st in data:
            local = torch.arange(st.geom.n_slices, device=st.target.device)
            mats = motion.matrices(st, local) if motion is not None else torch.eye(4, device=st.target.device).expand(len(local), 4, 4)
            if st.prealign is not None:
                mats = mats @ st.prealign
            mats = mats.cpu().numpy()
            for n, k in enumerate(st.slice_ids):
                g = st.offset + n
                rows.append(
                    {
                        "stack": st.index,
                        "slice": int(k),
                        "weight": float(weights_host[g]),
                        "residual": float(errs_host[g]),
                        "transform": mats[n].tolist(),
                    }
                )
    final_scaled = GaussianModel3D(final.means, final.log_scales, final.quats, final.amplitudes * global_scale, final.psf_mode)
    result = SVRResult(
        volume=volume,
        mask=mask,
        slices=rows,
        model=final_scaled,
        intensity_scale=global_scale,
        config=cfg,
        timings=timings,
        losses=losses,
        warnings=notes,
        kernels=kernels,
    )
    if cfg.maps:
        t0 = time.perf_counter()
        maps = covariance_maps(final, shape, affine, backend=kernels)  # on the fit's device
        inside = torch.as_tensor(union, device=final.means.device)
        result.maps = {
            "scale": Image((maps["scale"] * inside).cpu().numpy().astype(np.float32), affine),
            "anisotropy": Image((maps["anisotropy"] * inside).cpu().numpy().astype(np.float32), affine),
        }
        result.tensor = (maps["tensor"] * inside[..., None, None]).cpu().numpy().astype(np.float32)
        timings["maps_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    return result
