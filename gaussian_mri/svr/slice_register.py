"""Slice-to-volume registration rounds for large within-stack motion.

The joint gradient fit of :mod:`.recon` refines slice poses only near their start: a slice turned by
10 degrees against its neighbours sits in a different basin of the photometric loss, and the model,
fitted meanwhile to the misplaced slice, holds it there. As in SVRTK's reconstruction loop (Kuklisova-
Murgasova et al., Med. Image Anal. 2012; Kainz et al., IEEE TMI 2015), the fit is interrupted a few times
and every slice is registered rigidly to the current volume, then the fit continues from the new poses.
Three things widen the capture range beyond what the fit's own gradients reach:

* **several starts per slice**: the slice's own pose, the poses of its neighbours in the stack (k +- 1 and
  k +- 2: with the usual interleaved acquisition one of them was acquired just before or after the slice,
  so its pose is the best guess of a smooth motion path), and rotations of +-``start_deg`` about the
  slice's three axes; each start is refined and the best normalised cross-correlation (NCC) wins;
* **coarse to fine**: the starts are refined against the volume blurred by ``sigma_coarse_mm`` first
  (a wide, smooth basin), then against the sharp volume;
* **NCC** on the pixels inside the slice's mask, so the per-slice intensity scale and the robust weights
  do not matter; a slice's pose changes only if its NCC improves.

The volume is the current model rendered on a coarse grid; a slice is compared with it through a
three-point through-plane profile (the slice thickness PSF) sampled by trilinear interpolation.
Everything is batched over slices and starts, in PyTorch, on the fit's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import FWHM_TO_SIGMA, SliceGeometry
from ..transforms import axis_angle_to_matrix, rigid_matrix

__all__ = ["register_slices_to_volume", "blur_volume"]


def blur_volume(volume: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian blur of a (K, J, I) volume, ``sigma_vox`` in voxels (0: unchanged)."""
    if sigma_vox <= 0:
        return volume
    r = max(1, int(math.ceil(3 * sigma_vox)))
    x = torch.arange(-r, r + 1, dtype=volume.dtype, device=volume.device)
    k = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    k = k / k.sum()
    v = volume[None, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = len(x)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = r
        pad[2 * (2 - dim) + 1] = r
        v = F.conv3d(F.pad(v, pad, mode="replicate"), k.reshape(shape))
    return v[0, 0]


def _sampler(volume: torch.Tensor, affine: np.ndarray):
    """``f(points (..., 3) RAS mm) -> values (...)``: trilinear samples of ``volume`` (zero outside)."""
    inv = torch.as_tensor(np.linalg.inv(np.asarray(affine, dtype=np.float64)), dtype=volume.dtype, device=volume.device)
    size = torch.tensor([volume.shape[2], volume.shape[1], volume.shape[0]], dtype=volume.dtype, device=volume.device)
    vol = volume[None, None]

    def sample(points: torch.Tensor) -> torch.Tensor:
        ijk = points @ inv[:3, :3].T + inv[:3, 3]
        grid = 2.0 * ijk / (size - 1).clamp_min(1) - 1.0  # (i, j, k) -> grid_sample's (x, y, z)
        flat = grid.reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(vol, flat, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(points.shape[:-1])

    return sample


def _ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted NCC over the last dimension (a, b, w broadcast to (..., P))."""
    n = w.sum(-1).clamp_min(1.0)
    ma = (w * a).sum(-1) / n
    mb = (w * b).sum(-1) / n
    da, db = a - ma[..., None], b - mb[..., None]
    cov = (w * da * db).sum(-1)
    va = (w * da * da).sum(-1)
    vb = (w * db * db).sum(-1)
    return cov / torch.sqrt(va * vb + 1e-12)


def register_slices_to_volume(
    volume: torch.Tensor,
    affine: np.ndarray,
    geom: SliceGeometry,
    targets: torch.Tensor,
    masks: torch.Tensor,
    *,
    thickness: float,
    neighbour_poses: torch.Tensor | None = None,
    start_deg: float = 8.0,
    sigma_coarse_mm: float = 2.0,
    steps: tuple[int, int] = (20, 50),
    lr_rotation: float = 0.02,
    lr_translation: float = 0.3,
    max_pixels: int = 800,
    keep: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rigid corrections that register each slice to ``volume``.

    Parameters
    ----------
    volume : (K, J, I) tensor
        The current reconstruction on a grid with IJK-to-RAS ``affine`` (any scale: NCC).
    geom : SliceGeometry
        The S slices at their current poses.
    targets, masks : (S, H, W) tensors
        The slices' pixels and masks (pixels with mask > 0 are compared).
    thickness : float
        Slice thickness (mm): the through-plane profile's sigma is ``thickness x FWHM_TO_SIGMA``.
    neighbour_poses : (S, N, 4, 4) tensor, optional
        Extra starts: world transforms that move slice ``s`` from its current pose to a candidate pose
        (e.g. to where its neighbours' motion would put it).
    start_deg : float
        Rotation of the six perturbed starts (+- about the slice axes u, v, w); 0 disables them.
    steps : (coarse, fine)
        Adam steps against the blurred and then the sharp volume.
    keep : int
        Starts per slice kept from the coarse stage into the fine one (the best by NCC).

    Returns
    -------
    delta : (S, 4, 4) tensor
        World transforms to apply on top of the current poses (identity where nothing better was found).
    ncc_before, ncc_after : (S,) tensors
        NCC at the current pose (sharp volume) and at the returned one.
    """
    dev, dt = volume.device, volume.dtype
    s_n = geom.n_slices
    spacing = float(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).mean())
    # pixels: inside the mask, at most max_pixels per slice (a fixed random subset, same count per slice)
    pts = geom.pixel_to_world().reshape(s_n, -1, 3)
    tgt = targets.reshape(s_n, -1)
    msk = (masks.reshape(s_n, -1) > 0).to(dt)
    n_pix = pts.shape[1]
    if n_pix > max_pixels:
        gen = generator if generator is not None else torch.Generator(device="cpu").manual_seed(0)
        # per slice: prefer mask pixels (random key + 1 for mask pixels), keep the top max_pixels
        key = torch.rand(s_n, n_pix, generator=gen, device="cpu").to(dev) + msk
        idx = key.topk(max_pixels, dim=1).indices
        pts = torch.gather(pts, 1, idx[..., None].expand(-1, -1, 3))
        tgt = torch.gather(tgt, 1, idx)
        msk = torch.gather(msk, 1, idx)
    centre = geom.centre  # (S, 3)
    normal = geom.normal
    sig_w = thickness * FWHM_TO_SIGMA
    offsets = torch.tensor([-1.2 * sig_w, 0.0, 1.2 * sig_w], dtype=dt, device=dev)
    prof_w = torch.tensor([0.25, 0.5, 0.25], dtype=dt, device=dev)

    # starts: identity, neighbours, +- rotations about the slice axes (all about the slice centre)
    starts = [torch.eye(4, dtype=dt, device=dev).expand(s_n, 4, 4)]
    if neighbour_poses is not None:
        starts.extend(neighbour_poses.to(dev, dt).unbind(1))
    if start_deg > 0:
        for axis in range(3):
            for sign in (-1.0, 1.0):
                rv = geom.rotation[:, :, axis] * (sign * math.radians(start_deg))
                starts.append(rigid_matrix(rv, torch.zeros_like(rv), centre))
    init = torch.stack(starts, 1)  # (S, C, 4, 4)
    n_c = init.shape[1]

    def simulate(sample, mats, rv, tv):
        """Slice profiles at poses ``(rigid(rv, tv) about the moved centre) @ mats`` -> (S, C, P)."""
        moved_centre = (mats[..., :3, :3] @ centre[:, None, :, None])[..., 0] + mats[..., :3, 3]
        rot = axis_angle_to_matrix(rv)
        full_r = rot @ mats[..., :3, :3]  # (S, C, 3, 3)
        full_t = (rot @ (mats[..., :3, 3] - moved_centre)[..., None])[..., 0] + moved_centre + tv
        p = torch.einsum("scij,spj->scpi", full_r, pts) + full_t[:, :, None, :]
        nrm = torch.einsum("scij,sj->sci", full_r, normal)
        vals = 0.0
        for o, w in zip(offsets, prof_w):
            vals = vals + w * sample(p + o * nrm[:, :, None, :])
        return vals

    def refine(sample, mats, n_steps):
        rv = torch.zeros(*mats.shape[:2], 3, dtype=dt, device=dev, requires_grad=True)
        tv = torch.zeros(*mats.shape[:2], 3, dtype=dt, device=dev, requires_grad=True)
        opt = torch.optim.Adam([{"params": [rv], "lr": lr_rotation}, {"params": [tv], "lr": lr_translation}])
        with torch.enable_grad():  # callers may be inside no_grad
            for i in range(n_steps):
                for g, lr in zip(opt.param_groups, (lr_rotation, lr_translation)):
                    g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max(n_steps - 1, 1))))
                opt.zero_grad(set_to_none=True)
                score = _ncc(simulate(sample, mats, rv, tv), tgt[:, None, :], msk[:, None, :])
                (-score.sum()).backward()
                opt.step()
        with torch.no_grad():
            moved_centre = (mats[..., :3, :3] @ centre[:, None, :, None])[..., 0] + mats[..., :3, 3]
            return rigid_matrix(rv.detach(), tv.detach(), moved_centre) @ mats

    sharp = _sampler(volume, affine)
    coarse = _sampler(blur_volume(volume, sigma_coarse_mm / spacing), affine) if sigma_coarse_mm > 0 else sharp
    with torch.no_grad():
        before = _ncc(simulate(sharp, init[:, :1], torch.zeros(s_n, 1, 3, dtype=dt, device=dev), torch.zeros(s_n, 1, 3, dtype=dt, device=dev)), tgt[:, None], msk[:, None])[:, 0]
    mats = refine(coarse, init, steps[0]) if steps[0] > 0 else init
    zeros = torch.zeros(s_n, n_c, 3, dtype=dt, device=dev)
    with torch.no_grad():
        score = _ncc(simulate(coarse, mats, zeros, zeros), tgt[:, None], msk[:, None])
    k = min(keep, n_c)
    best = score.topk(k, dim=1).indices
    mats = torch.gather(mats, 1, best[..., None, None].expand(-1, -1, 4, 4))
    # the current pose always competes in the fine stage, unrefined (a slice that is already right stays)
    mats = torch.cat([init[:, :1], mats], 1)
    mats = torch.cat([mats[:, :1], refine(sharp, mats[:, 1:], steps[1])], 1) if steps[1] > 0 else mats
    zeros = torch.zeros(s_n, mats.shape[1], 3, dtype=dt, device=dev)
    with torch.no_grad():
        score = _ncc(simulate(sharp, mats, zeros, zeros), tgt[:, None], msk[:, None])
    pick = score.argmax(1)
    delta = mats[torch.arange(s_n, device=dev), pick]
    after = score[torch.arange(s_n, device=dev), pick]
    return delta, before, after
