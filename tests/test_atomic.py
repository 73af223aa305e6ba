"""``gaussian_mri._atomic``: atomic writes leave either the complete new file or the old state."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from gaussian_mri._atomic import (
    atomic_dir,
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    full_suffix,
)


class Boom(RuntimeError):
    pass


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_full_suffix():
    assert full_suffix("a/recon.nii.gz") == ".nii.gz"
    assert full_suffix("a.b.json") == ".json"
    assert full_suffix("cine.h5") == ".h5"
    assert full_suffix("noext") == ""


def test_atomic_path_success(tmp_path):
    target = tmp_path / "recon.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp.name.startswith(".tmp_recon_")
        assert tmp.is_file() and tmp.stat().st_size == 0  # exists (empty) inside the block
        assert not target.exists()  # not visible before the block ends
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon.nii.gz"]


def test_atomic_path_explicit_suffix_and_npz_writer(tmp_path):
    # np.savez_compressed appends ".npz" to a name without it: the temp name must already end with it
    target = tmp_path / "gaussians.npz"
    with atomic_path(target, ".npz") as tmp:
        np.savez_compressed(tmp, a=np.arange(3))
    with np.load(target) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["gaussians.npz"]


def test_failure_leaves_neither_target_nor_temp(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            raise Boom()
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, half written")
            raise Boom()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failure_when_writer_removed_the_temp(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.unlink()
            raise Boom()
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_cleans_up(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_existing_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    assert atomic_write_text(target, "new\n") == target
    assert target.read_bytes() == b"new\n"  # no newline translation
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_helpers(tmp_path):
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert atomic_write_text(str(tmp_path / "t.txt"), "h\u00e9") == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_bytes() == "h\u00e9".encode()
    seen = []
    written = atomic_write(tmp_path / "c.nii.gz", lambda p: (seen.append(p), p.write_text("c")))
    assert written == tmp_path / "c.nii.gz"
    assert seen[0].name.endswith(".nii.gz") and (tmp_path / "c.nii.gz").read_text() == "c"
    with pytest.raises(Boom):
        atomic_write(tmp_path / "d.txt", lambda p: (_ for _ in ()).throw(Boom()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.nii.gz", "t.txt"]


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no" / "x.bin", b"")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        with atomic_path(tmp_path / "p.png") as tmp:
            tmp.write_bytes(b"png")
        atomic_write(tmp_path / "w.npz", lambda p: np.savez_compressed(p, a=np.zeros(2)))
        with atomic_dir(tmp_path / "d.nhdr") as folder:
            (folder / "d.nhdr").write_text("h")
        after = os.umask(previous)
    finally:
        os.umask(previous)
    assert after == mask  # the umask is never changed
    for name in ("b.bin", "p.png", "w.npz", "d.nhdr"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_replacing_keeps_normal_permissions_not_the_old_ones(tmp_path, umask_022):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    atomic_write_bytes(target, b"new")
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_dir_moves_companions_then_main(tmp_path, monkeypatch):
    target = tmp_path / "img.nhdr"
    order = []
    real_replace = os.replace

    def spy(src, dst):
        order.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    with atomic_dir(target) as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".tmp_write_")
        (folder / "img.nhdr").write_text("header")
        (folder / "img.raw.gz").write_bytes(b"data")
    assert order == ["img.raw.gz", "img.nhdr"]  # the file readers open comes last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nhdr", "img.raw.gz"]
    assert target.read_text() == "header"


def test_atomic_dir_failure_cleans_up_and_keeps_existing(tmp_path):
    target = tmp_path / "img.nhdr"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(target) as folder:
            (folder / "img.nhdr").write_text("new")
            (folder / "img.raw.gz").write_bytes(b"data")
            raise Boom()
    assert [p.name for p in tmp_path.iterdir()] == ["img.nhdr"]
    assert target.read_text() == "old"
