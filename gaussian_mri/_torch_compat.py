"""Small shims over PyTorch APIs that differ between the supported versions (torch >= 2.1).

Import this module only where torch is needed anyway: it imports torch lazily, inside the functions.
"""

from __future__ import annotations

__all__ = ["out_of_memory_errors"]


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
