"""ESPIRiT coil sensitivity maps (one set of maps) from time-averaged cine k-space.

Own implementation (torch, complex128 internally, on the device of the k-space: a one-off setup, so
double precision is kept on a GPU too) of the calibration of Uecker et al. 2014:

1. time-average the undersampled k-space (:func:`time_average_kspace`);
2. take the central ``calib x calib`` region and build its Hankel (calibration) matrix of
   ``kernel x kernel x coils`` patches;
3. keep the right singular vectors whose singular value exceeds ``threshold * sigma_max``
   (the signal subspace);
4. turn the subspace projector into one ``coils x coils`` matrix ``G(x)`` per pixel (image-domain
   ESPIRiT operator) and take its dominant eigenvector (``torch.linalg.eigh``);
5. rotate the phase so that the reference coil is real and non-negative, and zero the pixels whose
   eigenvalue is not ``> crop`` (ESPIRiT eigenvalues are ~1 where there is signal).

Checked against BART ``ecalib -m1 -r 16`` in ``tests/mri/test_espirit.py`` (``@pytest.mark.bart``).
"""

from __future__ import annotations

import torch

from gaussian_mri._checks import require_tensor
from gaussian_mri.mri.fft import ifft2c
from gaussian_mri.mri.operators import mask_as_weights

__all__ = ["espirit_maps", "time_average_kspace"]


def time_average_kspace(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average undersampled cine k-space over frames, per location, over the frames that sampled it.

    Parameters
    ----------
    kspace
        ``(frames, coils, ky, kx)`` complex k-space, zero where not acquired; a ``(coils, ky, kx)``
        tensor is returned unchanged (already one frame).
    mask
        ``(frames, ky)`` or ``(frames, ky, kx)`` sampling mask (bool or 0/1). ``None``: a location counts
        as sampled in a frame where any coil is non-zero.

    Returns
    -------
    torch.Tensor
        ``(coils, ky, kx)``: ``sum_t kspace_t / count`` with ``count`` the number of frames sampling each
        location (locations never sampled stay 0).

    Raises
    ------
    TypeError, ValueError
        If ``kspace`` is not a complex 3-D/4-D tensor or ``mask`` does not match it.
    """
    require_tensor("kspace", kspace)
    if not kspace.is_complex():
        raise TypeError(f"kspace must be complex, got {kspace.dtype}")
    if kspace.dim() == 3:
        return kspace
    if kspace.dim() != 4:
        raise ValueError(
            f"kspace must be (frames, coils, ky, kx) or (coils, ky, kx), got {tuple(kspace.shape)}"
        )
    n_frames, _, n_ky, n_kx = kspace.shape
    if mask is None:
        sampled = (kspace != 0).any(dim=1, keepdim=True).to(kspace.real.dtype)
    else:
        sampled = mask_as_weights(mask, n_ky, n_kx).to(kspace.real.dtype)
        if sampled.shape[0] != n_frames:
            raise ValueError(f"mask has {sampled.shape[0]} frames but kspace has {n_frames}; they must match")
        sampled = sampled.expand(n_frames, 1, n_ky, n_kx)
    count = sampled.sum(dim=0)  # (1, ky, kx)
    total = (kspace * sampled).sum(dim=0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def espirit_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    calib: int = 16,
    kernel: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    reference_coil: int = 0,
    return_eigenvalues: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Estimate one set of ESPIRiT coil maps.

    Parameters
    ----------
    kspace
        ``(frames, coils, ky, kx)`` undersampled cine k-space (zero-filled) or ``(coils, ky, kx)``
        already averaged / fully sampled k-space; complex64 or complex128.
    mask
        Sampling mask for the time average (see :func:`time_average_kspace`); ``None`` infers it from
        the non-zero samples.
    calib
        Width of the square calibration region at the k-space centre (as BART ``ecalib -r``); every
        location in it must be sampled in at least one frame.
    kernel
        Kernel width (as BART ``ecalib -k``, sigpy ``kernel_width``).
    threshold
        Singular values ``> threshold * sigma_max`` of the calibration matrix span the signal subspace
        (sigpy's convention and default).
    crop
        Pixels whose dominant eigenvalue is ``<= crop`` are set to zero (sigpy default 0.95).
    reference_coil
        The maps are rotated so that this coil's map is real and ``>= 0``.
    return_eigenvalues
        Also return the ``(ny, nx)`` dominant-eigenvalue map.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        Coil maps ``(coils, ny, nx)`` in the dtype of ``kspace``, unit norm over coils where kept
        (``sum_c |c|^2 = 1``), zero elsewhere; and, if asked, the eigenvalue map ``(ny, nx)`` (real).

    Raises
    ------
    ValueError
        If the sizes do not fit (``kernel > calib``, ``calib`` larger than the k-space, image smaller than
        ``2 kernel - 1``), ``reference_coil`` is out of range, or the calibration region has
        never-sampled locations.

    Notes
    -----
    Derivation of step 4: a calibration patch ``p`` (coils x kernel offsets ``q``) lies in the row space
    spanned by the kept right singular vectors ``v_r``; averaging ``p = P p`` (``P = sum_r v_r v_r^H``)
    over the ``K = kernel^2`` patches containing a sample gives a k-space convolution
    ``y_c(m) = sum_{c', d} h_{cc'}(d) y_{c'}(m - d)`` with ``h_{cc'}(d) = (1/K) sum_{q - q' = d}
    P[(c, q), (c', q')]``. In the image this is ``G(x) s(x) = s(x)``, ``G(x) = sum_d h(d) e^{+2 pi i d x}``,
    computed here by an inverse centred FFT of ``h`` zero-padded to the image size, so only a
    ``(coils, coils, 2 kernel - 1, 2 kernel - 1)`` kernel is formed (memory ``coils^2 ny nx``).

    References
    ----------
    .. [UEC2014] Uecker M, Lai P, Murphy MJ, et al. ESPIRiT - an eigenvalue approach to autocalibrating
       parallel MRI: where SENSE meets GRAPPA. Magn Reson Med 2014; 71:990-1001.
    """
    avg = time_average_kspace(kspace, mask)
    n_coils, n_ky, n_kx = avg.shape
    for name, value in (("calib", calib), ("kernel", kernel)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if kernel > calib:
        raise ValueError(f"kernel={kernel} must not exceed calib={calib}; lower kernel or raise calib")
    if calib > min(n_ky, n_kx):
        raise ValueError(
            f"calib={calib} exceeds the k-space size ({n_ky}, {n_kx}); use calib <= {min(n_ky, n_kx)}"
        )
    if 2 * kernel - 1 > min(n_ky, n_kx):
        raise ValueError(f"kernel={kernel} is too large for a {n_ky} x {n_kx} image; need 2*kernel-1 <= size")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not 0 <= crop < 1:
        raise ValueError(f"crop must be in [0, 1), got {crop}")
    ref_ok = isinstance(reference_coil, int) and not isinstance(reference_coil, bool)
    if not ref_ok or not 0 <= reference_coil < n_coils:
        raise ValueError(f"reference_coil must be an int in [0, {n_coils}), got {reference_coil!r}")

    out_dtype = avg.dtype
    work = avg.to(torch.complex128)
    y0 = n_ky // 2 - calib // 2
    x0 = n_kx // 2 - calib // 2
    cal = work[:, y0 : y0 + calib, x0 : x0 + calib]
    if mask is not None or kspace.dim() == 4:
        n_missing = int((cal == 0).all(dim=0).sum())
        if n_missing:
            raise ValueError(
                f"the central {calib} x {calib} calibration region has {n_missing} locations that no frame "
                "sampled; lower calib or use a mask whose time average covers the centre"
            )

    # Calibration (Hankel) matrix: one row per kernel position, columns ordered (coil, qy, qx).
    patches = cal.unfold(1, kernel, 1).unfold(2, kernel, 1)  # (C, py, px, k, k)
    a = patches.permute(1, 2, 0, 3, 4).reshape(-1, n_coils * kernel * kernel)
    _, sv, vh = torch.linalg.svd(a, full_matrices=False)
    v = vh[sv > threshold * sv[0]]  # (r, C k k): kept right singular vectors (rows span the patches)

    # Projector P[(c, q), (c', q')] = sum_r v_r[c, q] conj(v_r[c', q']) -> h(d), d = q - q'.
    proj = (v.T @ v.conj()).reshape(n_coils, kernel, kernel, n_coils, kernel, kernel)
    h = torch.zeros(n_coils, n_coils, 2 * kernel - 1, 2 * kernel - 1, dtype=torch.complex128, device=work.device)
    for qy in range(kernel):
        for qx in range(kernel):
            # q' = (a, b) lands at d + (k-1) = (qy - a + k - 1, qx - b + k - 1): a flipped k x k block.
            h[:, :, qy : qy + kernel, qx : qx + kernel] += proj[:, qy, qx].flip(-2, -1)
    h /= kernel * kernel

    padded = torch.zeros(n_coils, n_coils, n_ky, n_kx, dtype=torch.complex128, device=work.device)
    py = n_ky // 2 - (kernel - 1)
    px = n_kx // 2 - (kernel - 1)
    padded[:, :, py : py + 2 * kernel - 1, px : px + 2 * kernel - 1] = h
    # ifft2c is unitary: multiply by sqrt(ny nx) to get the plain sum over d.
    g = ifft2c(padded) * (n_ky * n_kx) ** 0.5  # (C, C, ny, nx)
    g = g.permute(2, 3, 0, 1)
    g = 0.5 * (g + g.conj().transpose(-2, -1))  # Hermitian up to round-off

    eigval, eigvec = torch.linalg.eigh(g)
    lam = eigval[..., -1]  # (ny, nx), ascending order -> last is dominant
    maps = eigvec[..., -1].permute(2, 0, 1)  # (C, ny, nx), unit norm

    ref = maps[reference_coil]
    ref_abs = ref.abs()
    phase = torch.where(ref_abs > 0, ref.conj() / ref_abs.clamp_min(1e-300), torch.ones_like(ref))
    maps = maps * phase[None]
    maps = torch.where((lam > crop)[None], maps, torch.zeros_like(maps))

    maps = maps.to(out_dtype)
    if return_eigenvalues:
        return maps, lam.to(avg.real.dtype)
    return maps
