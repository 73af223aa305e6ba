"""Noise level of stacks (gaussian_mri.svr.noise.noise_sigma, Immerkaer 1996 with a median)."""

from __future__ import annotations

import numpy as np
import pytest

from gaussian_mri.svr.noise import noise_sigma


def _anatomy(shape=(6, 80, 90)):
    """Smooth background, a bright disc with a sharp edge and a dark band: edges a mean-based estimator would count."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    img = 1.0 + 0.3 * np.sin(j / 13.0) * np.cos(i / 17.0) + 0.002 * (i - 40) ** 2 / 40
    img += 0.8 * (((j - 40) ** 2 + (i - 45) ** 2) < 25.0**2)
    img -= 0.5 * ((i > 60) & (i < 66))
    return img


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_estimate_matches_the_added_noise(sigma):
    rng = np.random.default_rng(0)
    img = _anatomy()
    est = noise_sigma(img + rng.normal(0, sigma, img.shape))
    assert est == pytest.approx(sigma, rel=0.12)


def test_mask_limits_the_measurement_to_the_region():
    rng = np.random.default_rng(1)
    img = _anatomy()
    noise = rng.normal(0, 0.02, img.shape)
    noise[:, :, 45:] *= 5.0  # the right half is five times noisier
    mask = np.zeros(img.shape, bool)
    mask[:, :, :40] = True
    assert noise_sigma(img + noise, mask) == pytest.approx(0.02, rel=0.12)
    assert noise_sigma(img + noise, ~mask) > 0.06


def test_noise_free_smooth_image_gives_almost_zero():
    k, j, i = np.meshgrid(np.arange(3.0), np.arange(30.0), np.arange(30.0), indexing="ij")
    assert noise_sigma(2.0 + 0.1 * i - 0.05 * j + 0.01 * i * j) == pytest.approx(0.0, abs=1e-10)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="3 x 3"):
        noise_sigma(np.zeros((4, 2, 10)))
    with pytest.raises(ValueError, match="mask is too small"):
        m = np.zeros((2, 10, 10), bool)
        m[0, 4, 4] = True
        noise_sigma(np.random.default_rng(0).normal(size=(2, 10, 10)), m)
    with pytest.raises(ValueError, match="mask shape"):
        noise_sigma(np.zeros((2, 10, 10)), np.ones((2, 10, 9), bool))


def test_cli_smoothness_option():
    from gaussian_mri.cli import build_parser
    from gaussian_mri.commands.svr import config_overrides

    parse = lambda *a: build_parser().parse_args(["svr", "--stacks", "a.nii.gz", "--output-dir", "o", *a])  # noqa: E731
    assert config_overrides(parse()).get("smoothness") == "auto"
    assert config_overrides(parse("--smoothness", "off"))["smoothness"] == 0.0
    assert config_overrides(parse("--smoothness", "0.02"))["smoothness"] == 0.02
    assert "registration_rounds" not in config_overrides(parse())
    from gaussian_mri.svr import SEVERE_MOTION_ROUNDS

    assert config_overrides(parse("--severe-motion"))["registration_rounds"] == SEVERE_MOTION_ROUNDS
    for bad in ("-1", "strong"):
        with pytest.raises(SystemExit):
            parse("--smoothness", bad)
