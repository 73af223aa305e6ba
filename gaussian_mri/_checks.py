"""Small argument checks used at public boundaries (messages name the argument and the value)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_shape(name: str, value: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Check ``value.shape`` against ``shape`` where ``None`` matches any size."""
    ok = value.dim() == len(shape) and all(s is None or s == v for s, v in zip(shape, value.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")


def require_last_dim(name: str, value: torch.Tensor, size: int) -> None:
    if value.dim() == 0 or value.shape[-1] != size:
        raise ValueError(f"{name} must have last dimension {size}, got shape {tuple(value.shape)}")


def require_floating(name: str, value: torch.Tensor) -> None:
    if value.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {value.dtype}")


def require_finite(name: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        n_bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite values; clean the input first")


def require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
