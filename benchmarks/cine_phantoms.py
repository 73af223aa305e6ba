"""Dynamic multi-coil phantoms for the cine benchmarks, made without the model's own discretisation.

Fitting a model through ``fft2c`` to k-space that was itself made by ``fft2c`` of an image on the
reconstruction grid is an inverse crime (Guerquin-Kern et al., "Realistic analytical phantoms for
parallel magnetic resonance imaging", IEEE TMI 2012): the data are exactly representable and
band-limited the way the model assumes. Every phantom here is therefore either

* drawn on a grid ``FINE`` times finer than the reconstruction grid (the object, and for the grid
  phantoms the coil maps too), transformed there and cropped to the central k-space of the
  reconstruction grid, or
* evaluated analytically in k-space by another tool (BART's ``phantom -k``: the continuous Fourier
  transform of its ellipses, with its own coil sensitivities, Uecker et al.).

Noise is complex Gaussian, added to every k-space sample. The reference image is the noise-free
object transformed the same way (the band-limited object a fully sampled, noiseless acquisition
would show on the reconstruction grid) times the root-sum-of-squares of the coil maps (1 for the
heart, whose maps are normalised; BART's are not): what a coil combination with normalised maps
(ESPIRiT, as every method here uses) recovers.

Phantoms
--------
``heart``        the project's textured short-axis heart (:func:`gaussian_mri.cine.phantom.simulate_cine`)
                 drawn at 4x the resolution with its coil maps.
``bart-nist``    BART ``phantom --NIST -k -s C`` (tubes of the NIST T2 sphere) rotating back and forth
                 (``--rotation-angle``/``--rotation-steps``), analytic k-space and coils, both from BART.
``rings``        phantominator's ``dynamic`` (concentric rings, inner ring contracting over a cycle;
                 McKibben, MIT licence) drawn at 4x with BART's coil sensitivities (``phantom -S``).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gaussian_mri.mri.cfl import read_cfl
from gaussian_mri.mri.fft import crop_kspace, fft2c, ifft2c

FINE = 4
PHANTOMS = ("heart", "bart-nist", "rings")


@dataclass
class Phantom:
    name: str
    kspace: np.ndarray  # (T, C, ny, nx) complex64, fully sampled, with noise
    reference: np.ndarray  # (T, ny, nx) complex64, noise-free object on the reconstruction grid
    body: np.ndarray  # (ny, nx) bool, where the metrics are computed
    pixel_mm: float
    noise_std: float
    description: str


def _from_fine(images: np.ndarray, maps: np.ndarray, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Coil k-space and reference on the ``ny x nx`` grid from a fine object and fine coil maps.

    The reference is the band-limited object times the root-sum-of-squares of the coil maps at the
    reconstruction pixels (fine pixel ``FINE * p`` is coarse pixel ``p`` of the centred grids): what a
    coil combination with maps normalised to unit root-sum-of-squares (ESPIRiT) recovers.
    """
    img = torch.from_numpy(images.astype(np.complex64))
    rss = np.sqrt((np.abs(maps) ** 2).sum(0))[::FINE, ::FINE]
    ref = ifft2c(crop_kspace(fft2c(img), ny, nx)) * torch.from_numpy(rss.astype(np.float32))
    ks = []
    for s in torch.from_numpy(maps.astype(np.complex64)):  # one coil at a time: bounded memory
        ks.append(crop_kspace(fft2c(img * s), ny, nx))
    return torch.stack(ks, 1).numpy(), ref.numpy()


def _noise(kspace: np.ndarray, reference: np.ndarray, rel: float, seed: int) -> tuple[np.ndarray, float]:
    """Add complex noise of std ``rel * max|reference| * rms coil gain`` to every sample."""
    coil_images = ifft2c(torch.from_numpy(kspace)).numpy()
    gain = np.sqrt(np.mean(np.abs(coil_images) ** 2) / max(np.mean(np.abs(reference) ** 2), 1e-30))
    std = float(rel * np.abs(reference).max() * gain / np.sqrt(kspace.shape[1]))
    rng = np.random.default_rng(seed)
    noise = (rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)) * (std / np.sqrt(2))
    return (kspace + noise).astype(np.complex64), std


def _body(reference: np.ndarray, frac: float = 0.2, dilate: int = 3) -> np.ndarray:
    """Pixels where any frame of the object exceeds ``frac`` of its maximum, dilated by ``dilate`` pixels."""
    from scipy.ndimage import binary_dilation, binary_fill_holes

    mag = np.abs(reference).max(0)
    m = binary_fill_holes(mag > frac * mag.max())
    return binary_dilation(m, iterations=dilate)


def _bart(*args: str, cwd: Path) -> None:
    subprocess.run(["bart", *args], cwd=cwd, check=True, capture_output=True, text=True)


def _bart_array(path: Path) -> np.ndarray:
    """A BART ``.cfl`` with dims (x, y, 1, coils, ..., time at 10) as (time, coils, y, x)."""
    a = read_cfl(path)
    a = a.reshape(a.shape[:11] if a.ndim >= 11 else a.shape + (1,) * (11 - a.ndim))
    # (x, y, z, coils, maps, te, coeff, coeff2, iter, cslice, time) -> (time, coils, y, x)
    return np.ascontiguousarray(np.transpose(a[:, :, 0, :, 0, 0, 0, 0, 0, 0, :], (3, 2, 1, 0)))


def heart(n_frames: int, n_coils: int, ny: int = 128, nx: int = 160, pixel_mm: float = 2.1,
          noise: float = 0.02, seed: int = 0) -> Phantom:
    from gaussian_mri.cine.phantom import simulate_cine

    sim = simulate_cine(n_frames=n_frames, ny=FINE * ny, nx=FINE * nx, n_coils=n_coils, noise=0.0, seed=seed,
                        pixel_spacing_mm=pixel_mm / FINE)
    k, ref = _from_fine(sim.images, sim.coil_maps, ny, nx)
    body = sim.body_mask.reshape(ny, FINE, nx, FINE).any((1, 3))
    k, std = _noise(k, ref, noise, seed + 1)
    return Phantom("heart", k, ref, body, pixel_mm, std,
                   f"simulate_cine drawn at {FINE}x ({FINE * ny}x{FINE * nx}, {pixel_mm / FINE:g} mm) with its "
                   f"coil maps, k-space cropped to {ny}x{nx} ({pixel_mm:g} mm), noise {noise:g}")


def _oscillation(n_frames: int) -> list[int]:
    """Frame indices 0, 1, ..., h, h-1, ..., 1 of ``h + 1`` rotation steps: a rotation back and forth."""
    half = n_frames // 2
    return list(range(half + 1)) + list(range(half - 1, 0, -1))


def bart_nist(n_frames: int, n_coils: int, n: int = 128, pixel_mm: float = 2.0, noise: float = 0.02,
              seed: int = 0, angle_deg: float = 3.0) -> Phantom:
    """BART's NIST phantom rotating by ``angle_deg`` per frame up to ``n_frames/2`` frames and back."""
    steps = n_frames // 2 + 1
    rot = ["--NIST", "--rotation-angle", f"{angle_deg:g}", "--rotation-steps", str(steps)]
    with tempfile.TemporaryDirectory(prefix="bart_phantom_") as tmp:
        t = Path(tmp)
        _bart("phantom", "-k", "-s", str(n_coils), "-x", str(n), *rot, "k", cwd=t)
        _bart("phantom", "-k", "-x", str(n), *rot, "k0", cwd=t)
        _bart("phantom", "-S", str(n_coils), "-x", str(n), "s", cwd=t)
        k = _bart_array(t / "k")
        k0 = _bart_array(t / "k0")[:, 0]
        rss = np.sqrt((np.abs(_bart_array(t / "s")[0]) ** 2).sum(0))
    order = _oscillation(n_frames)
    k, k0 = k[order], k0[order]
    # the object seen through coil maps of unit root-sum-of-squares (see _from_fine)
    ref = ifft2c(torch.from_numpy(k0.astype(np.complex64))).numpy() * rss
    scale = 1.0 / np.abs(ref).max()
    k, ref = (k * scale).astype(np.complex64), (ref * scale).astype(np.complex64)
    k, std = _noise(k, ref, noise, seed + 1)
    return Phantom("bart-nist", k, ref, _body(ref), pixel_mm, std,
                   f"BART phantom --NIST -k -s {n_coils} -x {n} rotating {angle_deg:g} deg/frame to "
                   f"{angle_deg * (steps - 1):g} deg and back (analytic k-space and coils), noise {noise:g}")


def rings(n_frames: int, n_coils: int, n: int = 128, pixel_mm: float = 2.0, noise: float = 0.02,
          seed: int = 0) -> Phantom:
    """phantominator.dynamic at ``FINE`` x resolution (80 % of the field of view) with BART coil maps."""
    from phantominator import dynamic

    fine = FINE * n
    inner = int(round(0.8 * fine)) // 2 * 2
    obj = np.zeros((n_frames, fine, fine), np.float32)
    pad = (fine - inner) // 2
    obj[:, pad : pad + inner, pad : pad + inner] = np.moveaxis(dynamic(inner, n_frames), -1, 0)
    # a smooth phase, as real images have (linear across the field of view, 0.6 rad)
    yy, xx = np.mgrid[0:fine, 0:fine] / fine - 0.5
    obj = obj * np.exp(1j * 0.6 * (xx + 0.5 * yy))[None]
    with tempfile.TemporaryDirectory(prefix="bart_phantom_") as tmp:
        t = Path(tmp)
        _bart("phantom", "-S", str(n_coils), "-x", str(fine), "s", cwd=t)
        maps = _bart_array(t / "s")[0]
    k, ref = _from_fine(obj, maps, n, n)
    k, std = _noise(k, ref, noise, seed + 1)
    return Phantom("rings", k, ref, _body(ref), pixel_mm, std,
                   f"phantominator.dynamic({inner}, {n_frames}) padded to {fine}x{fine} with BART phantom -S "
                   f"{n_coils} coil maps, k-space cropped to {n}x{n}, noise {noise:g}")


def make(name: str, n_frames: int = 20, n_coils: int = 8, noise: float = 0.02, seed: int = 0) -> Phantom:
    if name == "heart":
        return heart(n_frames, n_coils, noise=noise, seed=seed)
    if name == "bart-nist":
        return bart_nist(n_frames, n_coils, noise=noise, seed=seed)
    if name == "rings":
        return rings(n_frames, n_coils, noise=noise, seed=seed)
    raise ValueError(f"unknown phantom {name!r}; choose from {PHANTOMS}")
