"""Which implementation renders: the PyTorch reference (any device) or the fused Triton kernels (CUDA).

``backend`` arguments of the renderers take ``"auto"`` (Triton on a CUDA device when the ``triton``
package imports, else PyTorch), ``"torch"`` or ``"triton"``. The PyTorch path is the reference the
Triton kernels are tested against. On a CPU, ``"triton"`` runs only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the kernels are checked on machines without a GPU. The
environment variable ``GAUSSIAN_MRI_KERNELS`` (``torch`` / ``triton``) overrides ``"auto"``.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["KERNEL_BACKENDS", "triton_available", "triton_interpreted", "resolve_kernel_backend", "on_device"]

KERNEL_BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    """``True`` when the ``triton`` package imports."""
    return _triton_import_error() is None


def triton_interpreted() -> bool:
    """``True`` when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_kernel_backend(backend: str, device: torch.device | str) -> str:
    """``"torch"`` or ``"triton"`` for a tensor on ``device``.

    :raises ValueError: unknown name, or ``"triton"`` where it cannot run (no triton package; a CPU
        tensor without ``TRITON_INTERPRET=1``).
    """
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        forced = os.environ.get("GAUSSIAN_MRI_KERNELS", "").strip().lower()
        if forced in ("torch", "triton"):
            backend = forced
        else:
            return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(f"the Triton kernels were requested but triton does not import ({_triton_import_error()}); "
                             "pip install triton, or use the torch backend")
        if device.type != "cuda" and not triton_interpreted():
            raise ValueError(f"the Triton kernels need a CUDA device (tensors are on {device}); on a CPU they run only "
                             "in Triton's interpreter (TRITON_INTERPRET=1, for tests); use the torch backend")
    return backend


def on_device(device: torch.device):
    """Context in which Triton launches go to ``device`` (kernels launch on the *current* CUDA device,
    which is not always the tensors' one, e.g. ``cuda:1``)."""
    import contextlib

    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
