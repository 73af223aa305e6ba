"""Compiled CPU rasteriser: ``splat2d.c`` built with the machine's C compiler on first use, called by ctypes.

The PyTorch rasteriser (:mod:`gaussian_mri.render.splat2d`) evaluates every splat on a square window
with tensor operations: gathers, masks and scatters dominate a CPU fit. The C kernels evaluate the
same sum pixel by pixel, visiting only the pixels of each splat's ellipse, forward and backward, with
OpenMP threads when the compiler has them (``torch.get_num_threads()`` threads).

Nothing is compiled at install time (the engine stays a pure-Python package, also inside Slicer). On
the first call the source is compiled with ``$CC`` (else ``cc``, ``gcc`` or ``clang``) into
``$GAUSSIAN_MRI_CACHE/native`` (default ``~/.cache/gaussian-mri/native``, else a private folder
of this user under the system temporary directory), named by the hash of the source, flags and
compiler command, written to a temporary name and renamed (two processes compiling at once both end
with a whole library). A compiler that fails (e.g. Apple clang on ``-fopenmp``) leaves a ``.failed``
note and is not retried by later processes; the build without OpenMP is tried next. Where no compiler works (Windows without
build tools, a locked-down machine) :func:`available` is ``False``, :func:`unavailable_reason` says
why, and the renderers use PyTorch. ``GAUSSIAN_MRI_KERNELS=torch`` turns the compiled kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

__all__ = ["available", "unavailable_reason", "library_path", "rasterize_splats_native", "MAX_CHANNELS"]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("splat2d.c")
ABI = 1
MAX_CHANNELS = 64
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno"]


def _cache_dirs() -> list[Path]:
    """Where the library may be built: ``$GAUSSIAN_MRI_CACHE/native`` or ``~/.cache/gaussian-mri/native``,
    then a private folder under the system temporary directory."""
    dirs = []
    root = os.environ.get("GAUSSIAN_MRI_CACHE")
    try:
        dirs.append((Path(root) if root else Path.home() / ".cache" / "gaussian-mri") / "native")
    except (RuntimeError, KeyError):  # no home directory (a container with an arbitrary user)
        pass
    uid = os.getuid() if hasattr(os, "getuid") else 0
    dirs.append(Path(tempfile.gettempdir()) / f"gaussian-mri-native-{uid}")
    return dirs


def _private(folder: Path) -> bool:
    """Create ``folder`` (mode 0700) and check that only this user can write into it: a library found
    there is loaded into the process, so a shared temporary folder must not be someone else's."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not hasattr(os, "getuid"):
        return True
    st = folder.stat()
    return st.st_uid == os.getuid() and not (st.st_mode & 0o022)


def _compilers() -> list[list[str]]:
    """Compiler commands to try: ``$CC`` (with its arguments), then ``cc``, ``gcc``, ``clang``."""
    commands = [shlex.split(os.environ["CC"])] if os.environ.get("CC", "").strip() else []
    commands += [["cc"], ["gcc"], ["clang"]]
    found: list[list[str]] = []
    for cmd in commands:
        path = shutil.which(cmd[0])
        if path and [path, *cmd[1:]] not in found:
            found.append([path, *cmd[1:]])
    if sys.platform == "darwin" and subprocess.run(["xcode-select", "-p"], capture_output=True).returncode != 0:
        # /usr/bin/cc without the command-line tools opens an installer dialog: do not call it
        found = [c for c in found if not c[0].startswith("/usr/bin/")]
    return found


def _compile(cc: list[str], flags: list[str], target: Path) -> str | None:
    """Compile to ``target`` (atomically); return None or the compiler's error."""
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-2000:] or f"exit status {proc.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suf in ("f32", "f64"):
        fwd = getattr(lib, f"gm_splat_forward_{suf}")
        fwd.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, ptr, cint]
        fwd.restype = None
        bwd = getattr(lib, f"gm_splat_backward_{suf}")
        bwd.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, cint]
        bwd.restype = None
    lib.gm_native_abi.restype = cint
    lib.gm_native_openmp.restype = cint
    if lib.gm_native_abi() != ABI:
        raise OSError(f"library ABI {lib.gm_native_abi()} != {ABI}")
    return lib


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None, Path | None]:
    if sys.platform == "win32":
        return None, "compiled CPU kernels are not built on Windows; the PyTorch rasteriser is used", None
    if not SOURCE.is_file():
        return None, f"{SOURCE} is missing (an incomplete install); the PyTorch rasteriser is used", None
    compilers = _compilers()
    if not compilers:
        return None, "no C compiler found ($CC, cc, gcc, clang); the PyTorch rasteriser is used", None
    source = SOURCE.read_bytes()
    errors = []
    for cc in compilers:
        for openmp in (True, False):
            flags = _FLAGS + (["-fopenmp"] if openmp else [])
            key = hashlib.sha256(source + " ".join([*cc, *flags, sys.platform, os.uname().machine]).encode()).hexdigest()[:16]
            for folder in _cache_dirs():
                target = folder / f"splat2d-{key}.so"
                failed = folder / f"splat2d-{key}.failed"  # a compiler that failed once is not retried
                try:
                    if not _private(folder):
                        errors.append(f"{folder}: not a private folder of this user; skipped")
                        continue
                    if failed.exists():
                        break
                    if not target.exists():
                        err = _compile(cc, flags, target)
                        if err is not None:
                            failed.write_text(err)
                            errors.append(f"{Path(cc[0]).name}{' -fopenmp' if openmp else ''}: {err.splitlines()[-1]}")
                            break  # another folder will not help a compiler error
                    return _bind(ctypes.CDLL(str(target))), None, target
                except OSError as exc:  # unwritable cache, or a library that does not load
                    errors.append(f"{target}: {exc}")
    return None, "the C kernels did not build (" + "; ".join(errors[-3:]) + "); the PyTorch rasteriser is used", None


def available() -> bool:
    """``True`` when the compiled kernels load (compiling them on the first call)."""
    return _load()[0] is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is ``False`` (``None`` when it is ``True``)."""
    return _load()[1]


def library_path() -> Path | None:
    return _load()[2]


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class _NativeSplats(torch.autograd.Function):
    """First derivatives only (``backward`` is not itself differentiable)."""
    @staticmethod
    def forward(ctx, means, conics, amplitudes, batch_index, q_max, n_batch, height, width):  # type: ignore[override]
        lib = _load()[0]
        suf = "f32" if means.dtype == torch.float32 else "f64"
        m, c, a = means.detach().contiguous(), conics.detach().contiguous(), amplitudes.detach().contiguous()
        b, q = batch_index.contiguous(), q_max.detach().contiguous()
        n_chan = a.shape[1]
        out = torch.empty(n_batch, n_chan, height, width, dtype=means.dtype, device="cpu")
        getattr(lib, f"gm_splat_forward_{suf}")(
            m.shape[0], _ptr(m), _ptr(c), _ptr(a), _ptr(b), _ptr(q), n_chan, n_batch, height, width, _ptr(out),
            torch.get_num_threads(),
        )
        ctx.save_for_backward(m, c, a, b, q)
        ctx.meta = (n_batch, height, width)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        lib = _load()[0]
        m, c, a, b, q = ctx.saved_tensors
        n_batch, height, width = ctx.meta
        need_m, need_c, need_a = ctx.needs_input_grad[:3]
        g = grad_out.to(m.dtype).contiguous()
        g_m = torch.empty_like(m) if need_m else None
        g_c = torch.empty_like(c) if need_c else None
        g_a = torch.empty_like(a) if need_a else None
        suf = "f32" if m.dtype == torch.float32 else "f64"
        getattr(lib, f"gm_splat_backward_{suf}")(
            m.shape[0], _ptr(m), _ptr(c), _ptr(a), _ptr(b), _ptr(q), a.shape[1], n_batch, height, width, _ptr(g),
            _ptr(g_m) if need_m else None, _ptr(g_c) if need_c else None, _ptr(g_a) if need_a else None,
            torch.get_num_threads(),
        )
        return g_m, g_c, g_a, None, None, None, None, None


def rasterize_splats_native(
    means: torch.Tensor, conics: torch.Tensor, amplitudes: torch.Tensor, batch_index: torch.Tensor, q_max: torch.Tensor,
    *, n_batch: int, height: int, width: int,
) -> torch.Tensor:
    """The compiled-kernel path of :func:`gaussian_mri.render.splat2d.rasterize_splats` (checked inputs,
    CPU tensors of one float dtype, at most ``MAX_CHANNELS`` channels); ``(n_batch, C, height, width)``."""
    if not available():
        raise RuntimeError(unavailable_reason())
    tensors = {"means": means, "conics": conics, "amplitudes": amplitudes, "batch_index": batch_index, "q_max": q_max}
    off_cpu = [f"{k} on {t.device}" for k, t in tensors.items() if t.device.type != "cpu"]
    if off_cpu:
        raise ValueError(f"the compiled C kernels need CPU tensors, got {', '.join(off_cpu)}")
    if amplitudes.shape[1] > MAX_CHANNELS:
        raise ValueError(f"the compiled C kernels take at most {MAX_CHANNELS} channels, got {amplitudes.shape[1]}; "
                         "use the torch backend")
    if batch_index.dtype != torch.int64 or not (means.dtype == conics.dtype == amplitudes.dtype == q_max.dtype) or \
            means.dtype not in (torch.float32, torch.float64):
        raise TypeError("means, conics, amplitudes and q_max must share float32 or float64, batch_index int64")
    return _NativeSplats.apply(means, conics, amplitudes, batch_index, q_max, int(n_batch), int(height), int(width))
