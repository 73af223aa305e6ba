"""Tests for gaussian_mri.mri.sampling: line counts, density, incoherence, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaussian_mri.mri.sampling import (
    expand_line_mask,
    gro_mask,
    lines_per_frame,
    random_vd_mask,
    round_half_away,
    sampling_density,
    uniform_mask,
)

GENERATORS = {
    "gro": lambda n, f, r: gro_mask(n, f, r),
    "uniform": lambda n, f, r: uniform_mask(n, f, r),
    "random_vd": lambda n, f, r: random_vd_mask(n, f, r, seed=3),
}


def test_round_half_away_from_zero() -> None:
    values = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.49])
    np.testing.assert_array_equal(round_half_away(values), [1, 2, 3, -1, -3, 2])
    # 2.5 lines per frame (N=5, R=2) -> 3, where numpy's round() would give 2
    assert lines_per_frame(5, 2) == 3
    assert lines_per_frame(10, 4) == 3  # 2.5 -> 3
    assert lines_per_frame(12, 8) == 2  # 1.5 -> 2


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize(("n_ky", "R"), [(64, 4), (96, 6), (50, 3.3), (128, 8), (64, 1), (40, 1.7)])
def test_exact_line_count_and_type(kind: str, n_ky: int, R: float) -> None:  # noqa: N803
    mask = GENERATORS[kind](n_ky, 20, R)
    assert mask.dtype == torch.bool
    assert mask.shape == (20, n_ky)
    n = int(math.floor(n_ky / R + 0.5))
    assert (mask.sum(dim=1) == n).all(), mask.sum(dim=1)


@pytest.mark.parametrize("kind", ["gro", "random_vd"])
def test_centre_denser_than_edge(kind: str) -> None:
    n_ky = 128
    mask = GENERATORS[kind](n_ky, 64, 6)
    density = sampling_density(mask)
    centre = density[n_ky // 2 - 8 : n_ky // 2 + 8].mean()
    edge = torch.cat([density[:16], density[-16:]]).mean()
    assert centre > 2 * edge, (float(centre), float(edge))


def test_gro_density_profile_follows_the_stretch() -> None:
    """Centre density ~ s / R (the shrunk grid is barely stretched there); every line gets sampled."""
    n_ky, r, s = 128, 6, 2.2
    density = sampling_density(gro_mask(n_ky, 200, r, s=s))
    expected_centre = lines_per_frame(n_ky, r) / math.ceil(n_ky / s)  # n / Ns
    # +-0.05: the golden-ratio offsets equidistribute over 200 frames to within ~1/200 per line
    assert abs(float(density[n_ky // 2 - 3 : n_ky // 2 + 3].mean()) - expected_centre) < 0.05
    assert bool((density > 0).all())
    # s = 1 and alpha = 1: no shrink, no stretch, so a flat density n / N
    flat = sampling_density(gro_mask(n_ky, 200, r, s=1.0, alpha=1.0))
    assert float(flat.max() - flat.min()) < 0.05


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_frames_differ(kind: str) -> None:
    mask = GENERATORS[kind](96, 12, 6)
    distinct = {tuple(row.tolist()) for row in mask}
    # GRO/random: every frame new; uniform: the shift cycles with period R = 6
    assert len(distinct) == (6 if kind == "uniform" else 12)
    # consecutive frames differ
    assert bool((mask[1:] != mask[:-1]).any(dim=1).all())


def test_uniform_is_regular_and_interleaved() -> None:
    mask = uniform_mask(32, 4, 4)
    for t in range(4):
        idx = torch.nonzero(mask[t]).flatten()
        assert bool((torch.diff(idx) == 4).all())
    assert bool(mask[0, 16])  # frame 0 holds the centre line
    assert bool(mask.any(dim=0).all())  # R consecutive frames cover the grid


def test_random_vd_deterministic_with_seed_and_full_centre() -> None:
    a = random_vd_mask(96, 10, 5, seed=7, n_center=8)
    b = random_vd_mask(96, 10, 5, seed=7, n_center=8)
    c = random_vd_mask(96, 10, 5, seed=8, n_center=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool(a[:, 48 - 4 : 48 + 4].all())
    # the global RNGs are untouched
    state = np.random.get_state()[1].copy()
    random_vd_mask(96, 10, 5, seed=1)
    assert np.array_equal(np.random.get_state()[1], state)


def test_gro_deterministic_and_continues_sequence() -> None:
    assert torch.equal(gro_mask(64, 8, 4), gro_mask(64, 8, 4))
    full = gro_mask(64, 10, 4)
    tail = gro_mask(64, 4, 4, frame_offset=6)
    assert torch.equal(full[6:], tail)


# Lines of the reference MATLAB code (OSU-CMR/GRO-CAVA ``gro_fun.m``, E = 1, PF = 0, s = 2.2, k = 3,
# first 6 frames), 0-based: what that code returns minus one. Computed once from a transcription of it.
GRO_REFERENCE = {
    (16, 4): [[0, 6, 8, 11], [4, 7, 9, 13], [2, 6, 8, 11], [5, 8, 10, 15], [3, 7, 9, 13], [1, 6, 8, 11]],
    (17, 4): [[0, 5, 8, 11], [4, 7, 9, 14], [1, 6, 8, 12], [5, 8, 10, 15], [3, 7, 9, 13], [0, 6, 8, 11]],
    (32, 6): [[0, 8, 13, 16, 19, 24], [6, 12, 15, 18, 21, 28], [2, 10, 14, 17, 20, 25], [8, 13, 16, 18, 23, 30],
              [5, 11, 15, 17, 21, 27], [1, 9, 13, 16, 19, 24]],
    (31, 6): [[0, 8, 12, 15, 18, 22], [5, 11, 14, 17, 20, 27], [2, 9, 13, 16, 19, 24], [7, 12, 15, 17, 22, 29],
              [4, 10, 14, 16, 20, 26], [0, 8, 13, 15, 18, 23]],
}


@pytest.mark.parametrize("n_ky, n", list(GRO_REFERENCE))
def test_gro_lines_are_those_of_the_reference_code(n_ky: int, n: int) -> None:
    """Same lines as ``gro_fun.m`` (whose even grids are shifted half a line onto the DC line N // 2)."""
    mask = gro_mask(n_ky, 6, n_ky / n)
    assert [torch.nonzero(m).flatten().tolist() for m in mask] == GRO_REFERENCE[(n_ky, n)]


@pytest.mark.parametrize("n_ky", [16, 17, 64, 65, 160, 191])
def test_gro_is_centred_on_the_dc_line(n_ky: int) -> None:
    """The k-space centre of fft2c is line N // 2 for even and odd N. Mirroring a GRO frame about it
    gives the frame of the mirrored golden-ratio offset (offset o -> 1 - o) exactly; and over many frames
    the sampled lines average to N // 2 (excluding line 0 of an even grid, which has no mirror line)."""
    from gaussian_mri.mri.sampling import _gro_frame

    n = lines_per_frame(n_ky, 6)
    mirror = (2 * (n_ky // 2) - np.arange(n_ky)) % n_ky  # line l <-> line 2 (N // 2) - l
    rng = np.random.default_rng(n_ky)
    for offset in rng.uniform(0.001, 0.999, 50):
        a = _gro_frame(n_ky, n, float(offset), 2.2, 3.0)
        b = _gro_frame(n_ky, n, float(1.0 - offset), 2.2, 3.0)
        np.testing.assert_array_equal(a[mirror], b, err_msg=f"offset {offset}")
    mask = gro_mask(n_ky, 400, 6).numpy()
    lines = np.nonzero(mask)[1]
    if n_ky % 2 == 0:
        lines = lines[lines != 0]
    assert abs(float(np.mean(lines)) - n_ky // 2) < 0.1


def test_expand_line_mask() -> None:
    lines = gro_mask(16, 3, 4)
    full = expand_line_mask(lines, 5)
    assert full.shape == (3, 16, 5)
    assert torch.equal(full[..., 2], lines)
    assert torch.equal(full.all(dim=-1), lines)
    assert torch.equal(sampling_density(full)[:, 0], sampling_density(lines))


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_bad_acceleration_raises(kind: str) -> None:
    with pytest.raises(ValueError, match=r"R \(acceleration\) must be a finite number >= 1, got 0.5"):
        GENERATORS[kind](64, 4, 0.5)
    with pytest.raises(ValueError, match=r"R=50 is too high for n_ky=64: .* 2 are needed"):
        GENERATORS[kind](64, 4, 50)


def test_other_bad_arguments_raise() -> None:
    with pytest.raises(TypeError, match="n_ky must be an int, got float"):
        gro_mask(64.0, 4, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_frames must be >= 1, got 0"):
        gro_mask(64, 0, 4)
    with pytest.raises(ValueError, match=r"s \(shrink factor\) must be a finite number >= 1"):
        gro_mask(64, 4, 4, s=0.5)
    with pytest.raises(ValueError, match=r"n_center=20 exceeds the 16 lines per frame"):
        random_vd_mask(64, 4, 4, n_center=20)
    with pytest.raises(ValueError, match=r"mask must be a \(frames, ky\) line mask"):
        expand_line_mask(torch.ones(2, 3, 4, dtype=torch.bool), 4)
