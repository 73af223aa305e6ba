"""Small simulated cine data for the MRI tests: a beating-ellipse phantom and smooth coil maps."""

from __future__ import annotations

import math

import torch


def _grid(ny: int, nx: int) -> tuple[torch.Tensor, torch.Tensor]:
    lin_y = torch.linspace(-1, 1, ny, dtype=torch.float64)
    lin_x = torch.linspace(-1, 1, nx, dtype=torch.float64)
    y, x = torch.meshgrid(lin_y, lin_x, indexing="ij")
    return y, x


def cine_phantom(
    n_frames: int = 8, ny: int = 48, nx: int = 48, *, dtype: torch.dtype = torch.complex64
) -> torch.Tensor:
    """``(frames, ny, nx)`` complex image series: a body ellipse, a static bright ellipse and a
    "ventricle" whose radius oscillates over one cardiac cycle; a smooth background phase."""
    y, x = _grid(ny, nx)
    frames = []
    for t in range(n_frames):
        r = 0.22 + 0.08 * math.sin(2 * math.pi * t / n_frames)
        img = 0.6 * ((x / 0.75) ** 2 + (y / 0.85) ** 2 <= 1).double()
        img = img + 0.4 * (((x + 0.3) / 0.15) ** 2 + ((y - 0.35) / 0.2) ** 2 <= 1).double()
        img = img + 0.8 * (((x - 0.15) / r) ** 2 + ((y + 0.1) / (1.2 * r)) ** 2 <= 1).double()
        frames.append(img)
    mag = torch.stack(frames)
    phase = torch.exp(1j * (0.4 * x + 0.2 * y))
    return (mag * phase).to(dtype)


def object_support(ny: int = 48, nx: int = 48) -> torch.Tensor:
    """``(ny, nx)`` bool: the body ellipse of :func:`cine_phantom`, eroded by a few pixels."""
    y, x = _grid(ny, nx)
    return (x / 0.65) ** 2 + (y / 0.75) ** 2 <= 1


def smooth_coil_maps(
    n_coils: int = 6, ny: int = 48, nx: int = 48, *, dtype: torch.dtype = torch.complex64
) -> torch.Tensor:
    """``(coils, ny, nx)`` smooth synthetic sensitivities: coils on a ring around the FOV with a broad
    Gaussian magnitude and a slowly varying phase, normalised to ``sum_c |c|^2 = 1`` everywhere."""
    y, x = _grid(ny, nx)
    maps = []
    for c in range(n_coils):
        a = 2 * math.pi * c / n_coils
        cx, cy = 1.3 * math.cos(a), 1.3 * math.sin(a)
        mag = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.9**2))
        phase = torch.exp(1j * (a + 0.5 * math.cos(a) * x - 0.5 * math.sin(a) * y))
        maps.append(mag * phase)
    maps_t = torch.stack(maps)
    maps_t = maps_t / maps_t.abs().pow(2).sum(0).sqrt()
    return maps_t.to(dtype)
