"""The BART wrapper, run for real: ecalib layout, pics on fully and under-sampled cine, errors."""

from __future__ import annotations

import pytest
import torch
from _cine_sim import cine_phantom, object_support, smooth_coil_maps

from gaussian_mri.mri.bart import BartError, bart_ecalib, bart_pics, run_bart
from gaussian_mri.mri.baselines import zero_filled_sense
from gaussian_mri.mri.operators import SenseOp
from gaussian_mri.mri.sampling import gro_mask

pytestmark = pytest.mark.bart  # skipped without BART (tests/conftest.py says how to install it)

FRAMES, COILS, NY, NX = 12, 6, 40, 36


@pytest.fixture(autouse=True)
def _bart_single_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny problems on a shared 2-core box: OpenMP threads make BART ~10x slower, not faster."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


@pytest.fixture(scope="module")
def cine() -> dict[str, torch.Tensor]:
    return {"image": cine_phantom(FRAMES, NY, NX), "maps": smooth_coil_maps(COILS, NY, NX)}


@pytest.mark.parametrize("regularizer", ["tv", "llr"])
def test_pics_fully_sampled_reconstructs_truth(cine: dict[str, torch.Tensor], regularizer: str) -> None:
    image, maps = cine["image"], cine["maps"]
    mask = torch.ones(FRAMES, NY, dtype=torch.bool)
    k = SenseOp(maps, mask)(image)
    rec = bart_pics(k, mask, maps, regularizer=regularizer, lam=1e-4, iterations=30)  # type: ignore[arg-type]
    assert rec.shape == image.shape and rec.dtype == torch.complex64
    # measured ~1e-4 (lam=1e-4 adds a small bias); a wrong dims layout gives O(1)
    assert _nrmse(rec, image) < 0.01


@pytest.mark.parametrize(("regularizer", "lam", "bound"), [("tv", 0.01, 0.15), ("llr", 0.01, 0.2)])
def test_pics_undersampled_beats_zero_filled(
    cine: dict[str, torch.Tensor], regularizer: str, lam: float, bound: float
) -> None:
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(NY, FRAMES, 4)
    k = SenseOp(maps, mask)(image)
    rec = bart_pics(k, mask, maps, regularizer=regularizer, lam=lam, iterations=50)  # type: ignore[arg-type]
    err = _nrmse(rec, image)
    err_zf = _nrmse(zero_filled_sense(k, mask, maps), image)
    # measured at 48x48, 16 frames, R=4: TV 0.04, LLR 0.06 vs zero-filled 0.58
    assert err < bound < err_zf, (err, err_zf)


def test_temporal_tv_acts_along_time(cine: dict[str, torch.Tensor]) -> None:
    """A strong T:1024 penalty must flatten the series over frames (it would be a no-op on a size-1 dim)."""
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(NY, FRAMES, 4)
    k = SenseOp(maps, mask)(image)
    weak = bart_pics(k, mask, maps, regularizer="tv", lam=1e-4, iterations=50)
    strong = bart_pics(k, mask, maps, regularizer="tv", lam=10.0, iterations=50)

    def temporal_variation(x: torch.Tensor) -> float:
        return float((x[1:] - x[:-1]).abs().sum() / x.abs().sum())

    assert temporal_variation(strong) < 0.1 * temporal_variation(weak)


def test_pics_normalisation_makes_lambda_scale_free(cine: dict[str, torch.Tensor]) -> None:
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(NY, FRAMES, 4)
    k = SenseOp(maps, mask)(image)
    a = bart_pics(k, mask, maps, regularizer="tv", lam=0.01, iterations=20)
    b = bart_pics(k * 1000.0, mask, maps, regularizer="tv", lam=0.01, iterations=20)
    # float32 inside BART; same iterations on the same normalised data
    torch.testing.assert_close(b / 1000.0, a, rtol=0, atol=1e-4 * float(a.abs().max()))


def test_ecalib_layout(cine: dict[str, torch.Tensor]) -> None:
    image, maps = cine["image"], cine["maps"]
    mask = gro_mask(NY, FRAMES, 4)
    k = SenseOp(maps, mask)(image)
    est = bart_ecalib(k, mask, calib=16)
    assert est.shape == (COILS, NY, NX) and est.dtype == torch.complex64
    support = object_support(NY, NX)
    norms = est.abs().pow(2).sum(0).sqrt() * maps.abs().pow(2).sum(0).sqrt()
    cos = (est.conj() * maps).sum(0).abs() / norms
    assert float(cos[support].min()) > 0.99


def test_bart_failure_reports_stderr(tmp_path, cine: dict[str, torch.Tensor]) -> None:
    pattern = r"(?s)'.*bart pics .*' failed with (exit status|signal) \d+:\n.*No such file"
    with pytest.raises(BartError, match=pattern):
        run_bart(["pics", "missing_ksp", "missing_maps", "out"], cwd=tmp_path, threads=1)
    with pytest.raises(ValueError, match="regularizer must be 'tv' or 'llr', got 'l1'"):
        bart_pics(torch.zeros(1, COILS, NY, NX, dtype=torch.complex64), torch.ones(1, NY), cine["maps"],
                  regularizer="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mask must have shape \(frames, 40\)"):
        bart_pics(torch.zeros(2, COILS, NY, NX, dtype=torch.complex64), torch.ones(2, NX), cine["maps"])
