"""Coverage of per-pixel credible intervals and its exact-sample reference value."""

from __future__ import annotations

import pytest
import torch

from dwgf_sci.errors import InvalidDataError, ShapeError
from dwgf_sci.metrics import coverage, coverage_reference


def _gaussian_posterior(n: int, scale: float = 1.0, seed: int = 0):
    """Truth and ``n`` samples of a per-pixel Gaussian posterior (means and widths vary by
    pixel); ``scale`` widens or narrows the samples' spread against the truth's."""
    gen = torch.Generator().manual_seed(seed)
    mu = 5.0 * torch.rand(1, 1, 128, 128, generator=gen)
    sd = 0.01 + torch.rand(1, 1, 128, 128, generator=gen)
    truth = mu + sd * torch.randn(1, 1, 128, 128, generator=gen)
    samples = mu + scale * sd * torch.randn(n, 1, 128, 128, generator=gen)
    return samples, truth


@pytest.mark.parametrize("n", [4, 16])
def test_exact_samples_reach_the_reference_coverage(n):
    samples, truth = _gaussian_posterior(n)
    # 16384 pixels: the estimate's standard error is about 0.004
    assert coverage(samples, truth, 0.9) == pytest.approx(coverage_reference(n), abs=0.02)


def test_reference_values_grow_with_samples_and_stay_below_the_level():
    values = [coverage_reference(n) for n in (2, 4, 8, 16, 64)]
    assert values == sorted(values) and values[-1] < 0.9
    assert values[1] == pytest.approx(0.557, abs=0.01)  # 4 samples
    assert coverage_reference(16, 0.5) < coverage_reference(16, 0.9)


def test_miscalibrated_samples_are_told_apart():
    ref = coverage_reference(8)
    narrow, truth = _gaussian_posterior(8, scale=0.3)
    wide, _ = _gaussian_posterior(8, scale=3.0)
    assert coverage(narrow, truth) < ref - 0.3
    assert coverage(wide, truth) > ref + 0.2


def test_bad_requests_are_refused():
    with pytest.raises(InvalidDataError, match="n_samples >= 2"):
        coverage_reference(1)
    with pytest.raises(InvalidDataError, match="level"):
        coverage_reference(4, 1.5)
    with pytest.raises(ShapeError, match="N >= 2"):
        coverage(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
