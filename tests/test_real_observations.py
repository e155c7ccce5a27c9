"""Measurements as users have them: numpy's float64, per-pixel noise, masked pixels."""

from __future__ import annotations

import pytest
import torch

from dwgf_sci.solvers import DWGF, LatentDPS


@pytest.mark.parametrize("preset", ["default", "fast", "reference"])
def test_float64_measurements_give_the_float32_result(preset, tiny_latent_prior, tiny_blur_problem):
    physics, y = tiny_blur_problem
    kw = {"particles": 2, "steps": 3, "seed": 0}
    y64 = y.double()
    got = DWGF(tiny_latent_prior, preset, **kw)(y64, physics)
    want = DWGF(tiny_latent_prior, preset, **kw)(y64.float(), physics)
    assert got.samples.dtype == torch.float32
    assert torch.equal(got.samples, want.samples)


def test_a_baseline_takes_float64_measurements(tiny_latent_prior, tiny_blur_problem):
    physics, y = tiny_blur_problem
    post = LatentDPS(tiny_latent_prior, particles=2, steps=3, seed=0)(y.double(), physics)
    assert post.samples.dtype == torch.float32 and torch.isfinite(post.samples).all()
