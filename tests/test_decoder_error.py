"""The per-pixel decoder error model and DWGF's image-space step that uses it."""

from __future__ import annotations

import json

import pytest
import torch

from dwgf_sci.errors import ConfigError
from dwgf_sci.priors import DecoderErrorModel, LatentDiffusionPrior
from dwgf_sci.priors.decoder_error import gradient_magnitude
from dwgf_sci.solvers import DWGF
from dwgf_sci.training.evaluate import decoder_error_model, decoder_sigma
from tests.test_solvers import gaussian_problem


def test_fit_recovers_an_error_that_depends_on_the_value():
    g = torch.Generator().manual_seed(0)
    n = 64 * 16 * 16  # values in [-1, -0.5] and [0.5, 1], half each: the median edge is between
    sign = torch.ones(n)
    sign[: n // 2] = -1
    sign = sign[torch.randperm(n, generator=g)]
    decoded = (sign * (0.5 + 0.5 * torch.rand(n, generator=g))).reshape(64, 1, 16, 16)
    scale = torch.where(decoded > 0, 0.2, 0.01)
    error = scale * torch.randn(decoded.shape, generator=g)
    model = DecoderErrorModel.fit(decoded, error, value_bins=2, gradient_bins=1)
    assert len(model.sigma) == 2 and len(model.sigma[0]) == 1
    predicted = model(decoded)
    assert predicted.shape == decoded.shape
    assert torch.allclose(predicted, scale, rtol=0.05)


def test_fit_sees_edges_through_the_gradient():
    decoded = torch.zeros(32, 1, 16, 16)
    decoded[..., 8:] = 1.0  # a vertical edge between columns 7 and 8
    edge = gradient_magnitude(decoded) > 0
    assert edge[0, 0, :, 7:9].all() and not edge[0, 0, :, :6].any()
    g = torch.Generator().manual_seed(1)
    error = torch.where(edge, 0.3, 0.003) * torch.randn(decoded.shape, generator=g)
    model = DecoderErrorModel.fit(decoded, error, value_bins=1, gradient_bins=4)
    predicted = model(decoded)
    assert torch.allclose(predicted[edge], torch.tensor(0.3), rtol=0.1)
    assert torch.allclose(predicted[~edge], torch.tensor(0.003), rtol=0.1)


def test_sparse_cells_fall_back_to_their_value_bin():
    decoded = torch.linspace(-1, 1, 4096).reshape(1, 1, 64, 64)
    error = torch.full_like(decoded, 0.02)
    error[..., :32, :] = 0.05
    model = DecoderErrorModel.fit(decoded, error, value_bins=2, gradient_bins=3, min_count=10**6)
    for row, expected in zip(model.sigma, (0.05, 0.02), strict=True):
        assert row == pytest.approx((expected,) * 3, rel=1e-5)


def test_round_trip_and_malformed_tables():
    model = DecoderErrorModel((0.0,), (0.1, 0.2), ((0.01, 0.02, 0.03), (0.04, 0.05, 0.06)))
    data = json.loads(json.dumps(model.to_dict()))
    assert DecoderErrorModel.from_dict(data) == model
    bad = [
        ((), (), ()),  # empty
        ((0.0,), (), ((0.1,), (0.1, 0.2))),  # ragged
        ((0.0, 1.0), (), ((0.1,), (0.1,))),  # one edge too many
        ((1.0, 0.0), (), ((0.1,), (0.1,), (0.1,))),  # decreasing edges
        ((float("nan"),), (), ((0.1,), (0.1,))),
        ((0.0,), (), ((0.1,), (0.0,))),  # a zero sigma
        ((0.0,), (), ((0.1,), (float("inf"),))),
    ]
    for v, g, s in bad:
        with pytest.raises(ConfigError, match="decoder error model"):
            DecoderErrorModel(v, g, s)
    with pytest.raises(ConfigError, match="malformed"):
        DecoderErrorModel.from_dict({"value_edges": []})
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ConfigError, match="shape"):
        DecoderErrorModel.fit(x, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ConfigError, match="NaN"):
        DecoderErrorModel.fit(x, torch.full_like(x, float("nan")))
    with pytest.raises(ConfigError, match="bins"):
        DecoderErrorModel.fit(x, x, value_bins=0)


def test_measured_on_a_prior_and_saved_with_it(tiny_latent_prior, tmp_path):
    prior = tiny_latent_prior
    images = prior.from_model(torch.rand(6, 1, 32, 32) * 2 - 1)
    model = decoder_error_model(prior, images, value_bins=4, gradient_bins=2)
    # the cells' mean squared error, weighted by their pixels, is the overall one
    with torch.no_grad():
        decoded = prior.decode(prior.encode(prior.to_model(images)))
    assert float(model(decoded).pow(2).mean().sqrt()) == pytest.approx(
        decoder_sigma(prior, images), rel=0.5
    )
    prior.decoder_error_model = model
    try:
        out = prior.save_pretrained(tmp_path / "ldm")
        loaded = LatentDiffusionPrior.from_pretrained(out, device="cpu")
    finally:
        prior.decoder_error_model = None
    assert loaded.decoder_error_model == model
    config = json.loads((out / "dwgf_prior.json").read_text())
    config["decoder_error_model"]["sigma"] = [[-1.0]]
    (out / "dwgf_prior.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="decoder error model"):
        LatentDiffusionPrior.from_pretrained(out, device="cpu")


def _finalize(prior, model, n=4000, **kw):
    _, physics, y, *_ = gaussian_problem(d=6, m=4, sigma=0.2, seed=5)
    prior.decoder_error_model = model
    solver = DWGF(prior, particles=n, seed=0, refine_cg_steps=6, **kw)
    problem = solver.prepare(y, physics)
    base = torch.tensor([-1.0, -0.5, -0.2, 0.3, 0.8, 1.5]).reshape(1, 6, 1, 1)
    x = base.expand(problem.n, 6, 1, 1).clone()
    samples, means = solver.errors(x, None, problem)  # the final decoder-error step
    return physics, y, base, samples, means


def test_image_step_draws_the_exact_gaussian_conditional_with_a_per_pixel_error():
    # x = b + e, e ~ N(0, S^2) with S from the table of b, y = A x + 0.2 n: Gaussian in x
    prior, *_ = gaussian_problem(d=6, m=4, sigma=0.2, seed=5)
    model = DecoderErrorModel((0.0,), (), ((0.05,), (0.5,)))
    physics, y, base, samples, means = _finalize(prior, model)
    a = physics.A(torch.eye(6).reshape(6, 6, 1, 1)).T
    s2 = torch.where(base.flatten() > 0, 0.25, 0.0025)
    cov = torch.linalg.inv(torch.diag(1 / s2) + a.T @ a / 0.2**2)
    mean = base.flatten() + cov @ a.T @ (y.flatten() - a @ base.flatten()) / 0.2**2
    draws = samples.flatten(1)
    sd = cov.diagonal().sqrt()
    assert float(((draws.mean(0) - mean) / sd).abs().max()) < 0.1
    assert float((draws.var(0) / cov.diagonal() - 1).abs().max()) < 0.1
    # without perturbations: the conditional mean (CG on forward differences: not to 1e-6)
    assert float(((means.flatten(1)[0] - mean) / sd).abs().max()) < 0.05


def test_white_and_auto_choose_the_error_model():
    prior, *_ = gaussian_problem(d=6, m=4, sigma=0.2, seed=5)
    prior.decoder_sigma = 0.1
    flat = DecoderErrorModel((0.0,), (), ((0.1,), (0.1,)))
    _, _, _, s_table, m_table = _finalize(prior, flat, n=8)
    _, _, _, s_white, m_white = _finalize(prior, flat, n=8, decoder_error="white")
    _, _, _, s_none, m_none = _finalize(prior, None, n=8)  # no table: the scalar under "auto"
    # a table with one sigma everywhere is the white model: same draws, same means
    assert torch.allclose(s_table, s_white, atol=1e-5)
    assert torch.allclose(m_table, m_white, atol=1e-5)
    assert torch.allclose(s_none, s_white, atol=1e-5)
    solver = DWGF(prior, decoder_error="white")
    assert solver.settings()["decoder_error_model"] is False
    prior.decoder_error_model = flat
    assert DWGF(prior).settings()["decoder_error_model"] is True
    assert DWGF(prior, decoder_error=0.0).decoder_error_map(torch.zeros(1, 6, 1, 1)) is None
    prior.decoder_error_model = None
    with pytest.raises(ConfigError, match="white"):
        DWGF(prior, decoder_error="pink")


def test_shipped_priors_carry_a_measured_error_model():
    from dwgf_sci.priors import load_prior

    for name in ("galaxy-64", "ct-64"):
        prior = load_prior(name, device="cpu")
        model = prior.decoder_error_model
        assert model is not None, name
        flat = [s for row in model.sigma for s in row]
        # far more uneven than one sigma: the background is nearly exact
        assert min(flat) < 0.05 * prior.decoder_sigma < max(flat), name


def test_dwgf_end_to_end_uses_the_prior_model(tiny_latent_prior, tiny_blur_problem):
    prior = tiny_latent_prior
    physics, y = tiny_blur_problem
    prior.decoder_sigma = 0.05
    prior.decoder_error_model = DecoderErrorModel((0.0,), (), ((1e-6,), (0.05,)))
    try:
        post = DWGF(prior, particles=2, steps=3, seed=0)(y, physics)
    finally:
        prior.decoder_sigma, prior.decoder_error_model = 0.0, None
    assert post.settings["decoder_error_model"] is True
    with torch.no_grad():
        decoded = prior.to_model(prior.from_model(prior.decode(post.latents[0])))
    moved = (prior.to_model(post.samples) - decoded).abs()
    assert float(moved[decoded < 0].max()) < 1e-4  # sigma 1e-6 there
    assert float(moved[decoded > 0].max()) > 1e-3
