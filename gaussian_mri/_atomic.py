"""Atomic file writes: write to a temporary name in the destination folder, then rename into place.

A failed write leaves neither a half-written target nor a stray temporary file, and an existing
target is only ever replaced by a complete file (``os.replace`` within one folder is atomic on
POSIX and Windows). Temporary files are created with mode ``0o666`` so that the umask gives them
the permissions a plain ``open(path, "w")`` would (``tempfile.mkstemp`` would give ``0o600``).

* :func:`atomic_path` -- context manager yielding a temporary path for a writer that takes a path;
* :func:`atomic_write` -- the same as a call: ``atomic_write(path, lambda tmp: writer(tmp))``;
* :func:`atomic_write_bytes` / :func:`atomic_write_text` -- one-call writes of a payload;
* :func:`atomic_dir` -- a temporary folder for formats written as several files (``.nhdr`` + data).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_dir",
    "full_suffix",
]

_DOUBLE_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def full_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix writers dispatch on: ``.nii.gz`` for ``a.nii.gz``, ``.json`` for ``a.b.json``."""
    suffixes = Path(path).suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in _DOUBLE_SUFFIXES:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _create_temp(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty, new file ``folder/prefix<random>suffix`` with mode 0o666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask (and default ACLs)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"No free temporary file name in {folder}")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file exists (empty) when the block starts and ends with ``suffix`` (default:
    :func:`full_suffix` of ``path``, so ``.nii.gz`` / ``.npz`` writers that look at the name, or
    append a missing suffix, behave as for ``path``). On an exception inside the block the
    temporary file is removed, ``path`` is left as it was, and the exception propagates.
    """
    path = Path(path)
    if suffix is None:
        suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix and path.name.endswith(suffix) else path.stem
    tmp = _create_temp(path.parent, f".tmp_{stem}_", suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], object], suffix: str | None = None
) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path`` (see :func:`atomic_path`), then rename it
    onto ``path``; returns ``Path(path)``."""
    path = Path(path)
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically; returns ``Path(path)``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (encoded, no newline translation); returns ``Path(path)``."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` for a writer that produces several files.

    Write ``folder / path.name`` (and any companion files, e.g. the ``.raw.gz`` of an ``.nhdr``)
    into the yielded folder. When the block succeeds every file in it is renamed into
    ``path.parent`` -- companions first, the file named ``path.name`` (the one readers open) last --
    and the folder is removed. On an exception the folder and its contents are removed and the
    exception propagates; nothing beside ``path`` is touched.
    """
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=".tmp_write_", dir=path.parent))
    try:
        yield folder
        for f in sorted(folder.iterdir(), key=lambda f: f.name == path.name):
            os.replace(f, path.parent / f.name)
        folder.rmdir()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
