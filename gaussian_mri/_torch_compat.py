"""Small shims over PyTorch APIs that differ between the supported versions (torch >= 2.1).

Import this module only where torch is needed anyway: it imports torch lazily, inside the functions.
"""

from __future__ import annotations

__all__ = ["out_of_memory_errors", "resolve_device"]


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The out-of-memory exception classes of the running torch, for ``except out_of_memory_errors():``.

    ``torch.cuda.OutOfMemoryError`` exists since torch 1.13; the device-generic
    ``torch.OutOfMemoryError`` only since 2.5 (where the CUDA one is an alias of it). Both are
    ``RuntimeError`` subclasses. Looked up on every call, so that the ``except`` clause, which
    evaluates its expression only when an exception is being matched, sees the running API.
    """
    import torch

    found: list[type[BaseException]] = []
    for owner in (torch, getattr(torch, "cuda", None)):
        cls = getattr(owner, "OutOfMemoryError", None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def resolve_device(device=None):
    """The ``torch.device`` for ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    One resolver for the whole engine (SVR, cine, the ``devices`` command), with one error:
    :class:`ValueError` naming what is available when a CUDA device is asked for and absent.
    """
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} was requested but PyTorch sees no CUDA GPU; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r} does not exist: PyTorch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported: use auto, cpu, cuda or cuda:N")
    return dev
