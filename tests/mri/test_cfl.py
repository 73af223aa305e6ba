"""Tests for gaussian_mri.mri.cfl: round trip, layout helpers, agreement with the bart binary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussian_mri.mri.bart import run_bart
from gaussian_mri.mri.cfl import from_bart_dims, read_cfl, to_bart_dims, write_cfl
from gaussian_mri.mri.fft import fft2c


def _crandn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_round_trip_and_file_layout(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = _crandn(rng, 3, 4, 1, 5)
    write_cfl(tmp_path / "a", x)
    assert (tmp_path / "a.hdr").read_text().splitlines() == ["# Dimensions", "3 4 1 5"]
    raw = np.fromfile(tmp_path / "a.cfl", dtype="<c8")
    # Fortran order: dim 0 varies fastest in the file
    np.testing.assert_array_equal(raw[:3], x[:, 0, 0, 0])
    np.testing.assert_array_equal(raw[3], x[0, 1, 0, 0])
    y = read_cfl(tmp_path / "a.cfl")  # suffix accepted
    assert y.dtype == np.complex64
    np.testing.assert_array_equal(y, x)


def test_trailing_singletons_dropped_and_real_input(tmp_path) -> None:
    write_cfl(tmp_path / "b", np.arange(6, dtype=np.float64).reshape(2, 3, 1, 1))
    y = read_cfl(tmp_path / "b")
    assert y.shape == (2, 3)
    np.testing.assert_array_equal(y.real, np.arange(6).reshape(2, 3))
    assert not y.imag.any()


def test_bart_dims_helpers() -> None:
    rng = np.random.default_rng(1)
    k = _crandn(rng, 4, 3, 6, 5)  # (frames, coils, ky, kx)
    b = to_bart_dims(k, ("frames", "coils", "ky", "kx"))
    assert b.shape == (5, 6, 1, 3, 1, 1, 1, 1, 1, 1, 4)
    assert b[2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 3] == k[3, 2, 1, 2]
    np.testing.assert_array_equal(from_bart_dims(b, ("frames", "coils", "ky", "kx")), k)
    with pytest.raises(ValueError, match="non-singleton dimensions"):
        from_bart_dims(b, ("coils", "ky", "kx"))
    with pytest.raises(ValueError, match="unknown names"):
        to_bart_dims(k, ("t", "coils", "ky", "kx"))


def test_errors(tmp_path) -> None:
    with pytest.raises(TypeError, match="array must be a numpy.ndarray"):
        write_cfl(tmp_path / "c", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cfl(tmp_path / "missing")
    write_cfl(tmp_path / "d", np.ones(4, dtype=np.complex64))
    (tmp_path / "d.hdr").write_text("# Dimensions\n5 1\n")
    with pytest.raises(ValueError, match=r"holds 4 complex values but its header"):
        read_cfl(tmp_path / "d")


@pytest.mark.bart
def test_reads_bart_ones_and_bart_reads_ours(tmp_path) -> None:
    run_bart(["ones", "3", "4", "1", "2", "o"], cwd=tmp_path)
    o = read_cfl(tmp_path / "o")
    assert o.shape == (4, 1, 2)
    np.testing.assert_array_equal(o, np.ones((4, 1, 2), dtype=np.complex64))
    # BART reads our layout: slicing index 1 of dim 0 must give x[1, :] (a transposed layout gives x[:, 1])
    x = np.arange(12, dtype=np.float32).reshape(3, 4) * (1 + 1j)
    write_cfl(tmp_path / "e", x.astype(np.complex64))
    run_bart(["slice", "0", "1", "e", "f"], cwd=tmp_path)
    f = read_cfl(tmp_path / "f")
    np.testing.assert_array_equal(f.reshape(-1), x[1, :])


@pytest.mark.bart
@pytest.mark.parametrize("shape", [(8, 12), (6, 10), (5, 7)])
def test_bart_fft_equals_fft2c(tmp_path, shape: tuple[int, int]) -> None:
    """BART's centred unitary FFT on (coils, y, x) data read back equals our fft2c (also odd sizes)."""
    rng = np.random.default_rng(2)
    x = _crandn(rng, 3, *shape)
    write_cfl(tmp_path / "x", to_bart_dims(x, ("coils", "y", "x")))
    run_bart(["fft", "-u", "3", "x", "k"], cwd=tmp_path)
    k = from_bart_dims(read_cfl(tmp_path / "k"), ("coils", "ky", "kx"))
    # complex64 FFT of 100 points: ~1e-6 absolute on unit-variance data
    np.testing.assert_allclose(k, fft2c(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=0)
