"""Which implementation renders: the PyTorch reference (any device), the fused Triton kernels (CUDA) or
the compiled C kernels (CPU).

``backend`` arguments of the renderers take ``"auto"`` (Triton on a CUDA device when the ``triton``
package imports; on the CPU the compiled C rasteriser of :mod:`gaussian_mri.render.native` when it
builds, else PyTorch), ``"torch"``, ``"triton"`` or ``"native"``. The PyTorch path is the reference
the other kernels are tested against. On a CPU, ``"triton"`` runs only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the kernels are checked on machines without a GPU. The
environment variable ``GAUSSIAN_MRI_KERNELS`` (``torch`` / ``triton`` / ``native``) overrides ``"auto"``.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["KERNEL_BACKENDS", "triton_available", "triton_interpreted", "resolve_kernel_backend", "on_device"]

KERNEL_BACKENDS = ("auto", "torch", "triton", "native")


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
    """``"torch"``, ``"triton"`` or ``"native"`` for a tensor on ``device``.

    :raises ValueError: unknown name, ``"triton"`` where it cannot run (no triton package; a CPU
        tensor without ``TRITON_INTERPRET=1``), ``"native"`` for a GPU tensor or where the C kernels
        do not build.
    """
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        forced = os.environ.get("GAUSSIAN_MRI_KERNELS", "").strip().lower()
        if forced in ("torch", "triton", "native"):
            backend = forced
        elif device.type == "cuda":
            return "triton" if triton_available() else "torch"
        else:
            from . import native

            return "native" if device.type == "cpu" and native.available() else "torch"
    if backend == "native":
        from . import native

        if device.type != "cpu":
            raise ValueError(f"the compiled C kernels run on the CPU (tensors are on {device}); use auto, torch or triton")
        if not native.available():
            raise ValueError(f"{native.unavailable_reason()}; use the torch backend")
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
