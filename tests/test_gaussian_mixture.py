"""Exactness tests of the Gaussian-mixture prior, the sliced Wasserstein distance and the MCGdiff
mixture benchmark (all CPU, float64 where exactness is checked). The dense ``MatrixOperator``
passes the operator contract in test_operators.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from dwgf_sci.benchmark import (
    evaluate,
    exact_samples,
    make_mixture_problem,
    mode_weights,
    noise_floor,
    oracle_ancestral_sampler,
)
from dwgf_sci.errors import (
    ConfigError,
    InvalidDataError,
    ShapeError,
)
from dwgf_sci.metrics import sliced_wasserstein
from dwgf_sci.operators.matrix import MatrixOperator
from dwgf_sci.priors.gaussian_mixture import GaussianMixture, GaussianMixturePrior

F64 = torch.float64


def _spd(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    b = torch.randn(k, d, d, generator=g, dtype=F64)
    return b @ b.mT / d + 0.3 * torch.eye(d, dtype=F64)


def _covariances(kind: str, k: int, d: int, g: torch.Generator):
    if kind == "scalar":
        return 0.7
    if kind == "isotropic":
        return torch.rand(k, generator=g, dtype=F64) + 0.3
    if kind == "diagonal":
        return torch.rand(k, d, generator=g, dtype=F64) + 0.3
    return _spd(k, d, g)


def _prior(kind: str, k: int = 4, d: int = 3, seed: int = 0, **kw) -> GaussianMixturePrior:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=g, dtype=F64) + 0.1
    means = 3 * torch.randn(k, d, generator=g, dtype=F64)
    return GaussianMixturePrior(weights, means, _covariances(kind, k, d, g), **kw)


# ---------------------------------------------------------------------------------- prior
@pytest.mark.parametrize("kind", ["scalar", "isotropic", "diagonal", "full"])
def test_predict_noise_is_scaled_autograd_score(kind):
    prior = _prior(kind)
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(16, 3, 1, 1, generator=g, dtype=F64)
    t = torch.randint(0, prior.num_train_timesteps, (16,), generator=g)
    zr = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.log_prob(zr, t).sum(), zr)
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = -torch.sqrt(1 - abar) * grad
    eps = prior.predict_noise(z, t)
    assert eps.shape == z.shape and eps.dtype == F64
    torch.testing.assert_close(eps, expected, rtol=1e-10, atol=1e-12)
    assert prior.calls["unet"] == 16
    # a scalar timestep broadcasts and agrees with the per-sample path
    torch.testing.assert_close(
        prior.predict_noise(z, 500), prior.predict_noise(z, torch.full((16,), 500)), rtol=0, atol=0
    )


def test_log_prob_is_normalised_in_1d():
    prior = GaussianMixturePrior([0.3, 0.7], [[-2.0], [3.0]], [0.5, 2.0], dtype=F64)
    grid = torch.linspace(-20, 20, 40001, dtype=F64)[:, None]
    for t in (None, 300):
        dens = prior.log_prob(grid, t).exp()
        assert abs(float(torch.trapezoid(dens, grid[:, 0])) - 1) < 1e-8


def test_float32_input_gives_float32_output_close_to_float64():
    prior = _prior("full")
    z = torch.randn(8, 3, 1, 1, dtype=F64)
    e64 = prior.predict_noise(z, 100)
    e32 = prior.predict_noise(z.float(), 100)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32, e64.float(), rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_and_matches_moments():
    prior = _prior("full", k=3, d=2)
    a = prior.sample(20000, torch.Generator().manual_seed(5))
    b = prior.sample(20000, torch.Generator().manual_seed(5))
    assert a.shape == (20000, 2, 1, 1) and torch.equal(a, b)
    x = a.reshape(-1, 2)
    mix = prior.mixture
    scale = float(mix.cov().diagonal().max().sqrt())
    assert float((x.mean(0) - mix.mean()).abs().max()) < 0.05 * scale
    assert float((torch.cov(x.T) - mix.cov()).abs().max()) < 0.05 * scale**2


def test_linear_decoder_encoder_round_trip_and_shapes():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 3, generator=g, dtype=F64)
    b = torch.randn(5, generator=g, dtype=F64)
    prior = _prior("diagonal", decoder=w, decoder_bias=b)
    assert prior.latent_shape((5, 1, 1)) == (3, 1, 1)
    z = prior.sample(4, g)
    x = prior.decode(z)
    assert x.shape == (4, 5, 1, 1)
    torch.testing.assert_close(x.reshape(4, 5), z.reshape(4, 3) @ w.T + b)
    torch.testing.assert_close(prior.encode(x), z)
    # the image-space mixture is the pushforward of the latent one
    img = prior.decode_mixture(prior.mixture)
    torch.testing.assert_close(img.mean(), w @ prior.mixture.mean() + b)
    torch.testing.assert_close(img.cov(), w @ prior.mixture.cov() @ w.T)


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ShapeError):
        GaussianMixturePrior([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], torch.ones(3))
    with pytest.raises(InvalidDataError):
        GaussianMixturePrior([-0.5, 1.5], [[0.0], [1.0]])
    with pytest.raises(InvalidDataError):
        GaussianMixturePrior([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    prior = _prior("scalar")
    with pytest.raises(InvalidDataError):
        prior.posterior(torch.ones(1, 3), torch.ones(1), 0.0)
    with pytest.raises(ShapeError):
        prior.posterior(torch.ones(1, 4), torch.ones(1), 0.1)
    with pytest.raises(ShapeError):
        prior.predict_noise(torch.zeros(2, 4, 1, 1), 10)


# ---------------------------------------------------------------------------------- posterior
def test_single_component_posterior_matches_information_form():
    g = torch.Generator().manual_seed(7)
    d, big_d, m = 3, 5, 2
    mu = torch.randn(1, d, generator=g, dtype=F64)
    cov = _spd(1, d, g)
    w = torch.randn(big_d, d, generator=g, dtype=F64)
    b = torch.randn(big_d, generator=g, dtype=F64)
    a = torch.randn(m, big_d, generator=g, dtype=F64)
    y = torch.randn(1, m, generator=g, dtype=F64)
    sigma = 0.4
    prior = GaussianMixturePrior([1.0], mu, cov, decoder=w, decoder_bias=b)
    post = prior.posterior(a, y, sigma)
    h = a @ w
    prec = torch.linalg.inv(cov[0]) + h.T @ h / sigma**2
    c = torch.linalg.inv(prec)
    m_post = c @ (h.T @ (y[0] - a @ b) / sigma**2 + torch.linalg.solve(cov[0], mu[0]))
    torch.testing.assert_close(post.covs[0], c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.means[0], m_post, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.weights, torch.ones(1, dtype=F64))
    # accepts an operator object too
    op = MatrixOperator(a, (big_d, 1, 1))
    torch.testing.assert_close(prior.posterior(op, y, sigma).means, post.means)


def _grid_2d(lim: float, step: float) -> tuple[torch.Tensor, float]:
    ax = torch.arange(-lim, lim + step / 2, step, dtype=F64)
    gx, gy = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), step * step


def test_mixture_posterior_matches_quadrature_in_2d():
    g = torch.Generator().manual_seed(11)
    prior = GaussianMixturePrior(
        [0.2, 0.5, 0.3],
        torch.tensor([[-3.0, 1.0], [2.0, 2.0], [0.5, -3.0]], dtype=F64),
        _spd(3, 2, g),
    )
    a = torch.tensor([[1.0, 0.5]], dtype=F64)
    y, sigma = torch.tensor([0.8], dtype=F64), 0.7
    post = prior.posterior(a, y, sigma)

    pts, area = _grid_2d(14.0, 0.05)
    log_joint = prior.log_prob(pts) - 0.5 * ((pts @ a.T - y) ** 2).sum(1) / sigma**2
    p = torch.softmax(log_joint, 0)  # normalised posterior mass on the grid
    resp = prior.mixture.responsibilities(pts)
    torch.testing.assert_close(post.weights, p @ resp, rtol=1e-7, atol=1e-9)
    mean = p @ pts
    cov = (pts - mean).T @ ((pts - mean) * p[:, None])
    torch.testing.assert_close(post.mean(), mean, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(post.cov(), cov, rtol=1e-7, atol=1e-8)
    # and the posterior density itself
    log_post = log_joint - torch.logsumexp(log_joint, 0) - math.log(area)
    idx = torch.arange(0, pts.shape[0], 9973)
    torch.testing.assert_close(post.log_prob(pts[idx]), log_post[idx], rtol=1e-6, atol=1e-6)


def test_noisy_posterior_score_matches_brute_force_in_2d():
    g = torch.Generator().manual_seed(13)
    w_dec = torch.tensor([[1.0, 0.3], [-0.4, 1.2], [0.5, 0.5]], dtype=F64)
    prior = GaussianMixturePrior(
        [0.4, 0.6],
        torch.tensor([[-2.0, 1.0], [2.5, -1.0]], dtype=F64),
        _spd(2, 2, g),
        decoder=w_dec,
    )
    a = torch.tensor([[1.0, 0.0, 0.5], [0.2, -1.0, 0.3]], dtype=F64)
    y, sigma = torch.tensor([[0.5, -1.0]], dtype=F64), 0.6
    pts, _ = _grid_2d(12.0, 0.05)
    log_base = prior.log_prob(pts) - 0.5 * ((pts @ (a @ w_dec).T - y) ** 2).sum(1) / sigma**2
    z_t = torch.tensor([[0.3, -0.2], [-1.0, 0.8], [1.5, 1.5]], dtype=F64)
    t = torch.tensor([150, 400, 800])
    # log p(y, z_t) = log int p(y | z0) p(z0) q(z_t | z0) dz0 (up to constants), by quadrature
    zr = z_t.clone().requires_grad_(True)
    abar = prior.alphas_cumprod[t]
    q = -0.5 * ((zr[:, None, :] - abar.sqrt()[:, None, None] * pts[None]) ** 2).sum(-1)
    log_joint = torch.logsumexp(log_base[None] + q / (1 - abar)[:, None], dim=1)
    (expected,) = torch.autograd.grad(log_joint.sum(), zr)
    got = prior.noisy_posterior_score(z_t.reshape(3, 2, 1, 1), t, a, y, sigma)
    assert got.shape == (3, 2, 1, 1)
    torch.testing.assert_close(got.reshape(3, 2), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------- metric
def test_sliced_wasserstein_properties():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(400, 5, generator=g)
    b = torch.randn(400, 5, generator=g)
    assert float(sliced_wasserstein(a, a)) < 1e-12
    assert float(sliced_wasserstein(a, b, generator=3)) == pytest.approx(
        float(sliced_wasserstein(b, a, generator=3)), rel=1e-12
    )
    # (n, d, 1, 1) is accepted and gives the same value
    assert float(sliced_wasserstein(a[..., None, None], b)) == float(sliced_wasserstein(a, b))
    # a translation by v moves every projection by theta.v: SW_2 = |v| / sqrt(d) on average
    v = torch.full((5,), 2.0)
    shifted = float(sliced_wasserstein(a, a + v, n_directions=2000))
    assert shifted == pytest.approx(float(v.norm()) / math.sqrt(5), rel=0.05)
    dists = [float(sliced_wasserstein(a, b + s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert dists == sorted(dists)


def test_sliced_wasserstein_is_exact_in_one_dimension():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(300, generator=g, dtype=F64)
    b = 0.5 + 2 * torch.randn(300, generator=g, dtype=F64)
    w2 = float(((a.sort().values - b.sort().values) ** 2).mean().sqrt())
    assert float(sliced_wasserstein(a[:, None], b[:, None])) == pytest.approx(w2, rel=1e-12)
    # unequal sizes: exact W1 of the empirical laws (scipy as reference)
    c = b[:170]
    w1 = wasserstein_distance(a.numpy(), c.numpy())
    assert float(sliced_wasserstein(a, c, p=1)) == pytest.approx(w1, rel=1e-10)


# ---------------------------------------------------------------------------------- benchmark
def test_mixture_problem_is_deterministic_and_well_formed():
    p1 = make_mixture_problem(8, 2, seed=3)
    p2 = make_mixture_problem(8, 2, seed=3)
    p3 = make_mixture_problem(8, 2, seed=4)
    assert torch.equal(p1.A, p2.A) and torch.equal(p1.y, p2.y) and p1.sigma == p2.sigma
    assert torch.equal(p1.prior.weights, p2.prior.weights)
    assert not torch.equal(p1.A, p3.A)
    assert (p1.d, p1.d_y) == (8, 2)
    assert p1.A.shape == (2, 8) and p1.y.shape == (1, 2) and p1.x0.shape == (1, 8, 1, 1)
    assert p1.prior.means.shape == (25, 8) and p1.prior.image_dim == 8
    # means: the 2-D grid point (8i, 8j) tiled d/2 times
    assert torch.equal(p1.prior.means[:, :2].repeat(1, 4), p1.prior.means)
    assert set(p1.prior.means[:, 0].tolist()) == {-16.0, -8.0, 0.0, 8.0, 16.0}
    s = p1.operator.singular_values
    assert torch.all(s[:-1] >= s[1:]) and 0 < float(s[-1]) and float(s[0]) < 1
    assert 0 < p1.sigma < float(s[0])
    assert float(p1.operator.noise_model.sigma) == pytest.approx(p1.sigma, rel=1e-6)
    torch.testing.assert_close(p1.operator.A(p1.x0), p1.x0.reshape(1, 8) @ p1.A.T)
    assert float(p1.posterior.weights.sum()) == pytest.approx(1.0)
    xs = exact_samples(p1, 10, torch.Generator().manual_seed(0))
    assert xs.shape == (10, 8, 1, 1)
    assert float(mode_weights(xs, p1).sum()) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        make_mixture_problem(7, 2, 0)
    with pytest.raises(ConfigError):
        make_mixture_problem(8, 9, 0)


def test_oracle_sampler_reaches_the_noise_floor_and_wrong_samplers_do_not():
    problem = make_mixture_problem(8, 2, seed=0)  # a posterior with five modes
    # With several modes one run's SW is dominated by how many samples land in each mode and
    # spreads over a factor ~4 around the floor whatever n is; averaging runs is what tightens it.
    n, runs = 100, 16
    floor = noise_floor(problem, n, generator=1, repeats=64)

    def mean_scores(samples: torch.Tensor, seed: int) -> tuple[float, float]:
        scores = [
            evaluate(samples[i * n : (i + 1) * n], problem, generator=seed + i, floor=floor)
            for i in range(runs)
        ]
        return float(np.mean([s["sw"] for s in scores])), float(
            np.mean([s["mode_tv"] for s in scores])
        )

    # one batched oracle call = `runs` independent runs of n samples
    samples = oracle_ancestral_sampler(problem, n * runs, steps=200, generator=2)
    assert samples.shape == (n * runs, 8, 1, 1) and bool(torch.isfinite(samples).all())
    sw, tv = mean_scores(samples, 10)
    assert 0.67 < sw / floor < 1.5, sw / floor
    assert tv < 0.1

    # the same check fails for prior samples and for the right modes with the wrong weights
    post = problem.posterior
    used = (post.weights > 1e-3).to(F64)
    wrong = GaussianMixture(used / used.sum(), post.means, post.covs)
    g = torch.Generator().manual_seed(3)
    for bad, min_ratio in (
        (problem.prior.sample(n * runs, g), 3.0),
        (wrong.sample(n * runs, g), 1.5),
    ):
        sw, tv = mean_scores(bad, 100)
        assert sw / floor > min_ratio, sw / floor
        assert tv > 0.2
