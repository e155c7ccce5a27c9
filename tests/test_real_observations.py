"""Measurements as users have them: numpy's float64, per-pixel noise, masked pixels."""

from __future__ import annotations

import math

import pytest
import torch

from dwgf_sci.errors import InvalidDataError
from dwgf_sci.operators import MatrixOperator
from dwgf_sci.operators.pixel_noise import PixelNoise, variance_from_map
from dwgf_sci.priors import GaussianMixturePrior
from dwgf_sci.solvers import DWGF, LatentDPS
from dwgf_sci.solvers.likelihood import chi2_limit


@pytest.mark.parametrize("preset", ["default", "fast", "reference"])
def test_float64_measurements_give_the_float32_result(preset, tiny_latent_prior, tiny_blur_problem):
    physics, y = tiny_blur_problem
    kw = {"particles": 2, "steps": 3, "seed": 0}
    y64 = y.double()
    got = DWGF(tiny_latent_prior, preset, **kw)(y64, physics)
    want = DWGF(tiny_latent_prior, preset, **kw)(y64.float(), physics)
    # computed in the prior's float32, returned in the input's float64
    assert got.samples.dtype == torch.float64 and got.mean.dtype == torch.float64
    assert torch.equal(got.samples, want.samples.double())
    half = DWGF(tiny_latent_prior, preset, **kw)(y.half(), physics)
    assert half.samples.dtype == torch.float16 and torch.isfinite(half.samples).all()


def test_a_baseline_takes_float64_measurements(tiny_latent_prior, tiny_blur_problem):
    physics, y = tiny_blur_problem
    post = LatentDPS(tiny_latent_prior, particles=2, steps=3, seed=0)(y.double(), physics)
    assert post.samples.dtype == torch.float64 and torch.isfinite(post.samples).all()


def test_bad_measurements_are_named_before_any_work(tiny_latent_prior, tiny_blur_problem):
    from dwgf_sci.errors import DwgfError, OperatorMismatchError, OperatorTypeError

    physics, y = tiny_blur_problem
    solver = DWGF(tiny_latent_prior, particles=2, steps=2)
    tiny_latent_prior.reset_calls()
    with pytest.raises(OperatorMismatchError, match=r"shape \(1, 32, 32\).*y\[None\]"):
        solver(y[0], physics)
    with pytest.raises(InvalidDataError, match="complex"):
        solver(y.to(torch.complex64), physics)
    with pytest.raises(OperatorTypeError, match="NoneType") as info:
        solver(y, None)
    assert isinstance(info.value, DwgfError) and isinstance(info.value, TypeError)
    assert sum(tiny_latent_prior.calls.values()) == 0
    with pytest.warns(UserWarning, match="constant"):
        solver(torch.zeros_like(y), physics)


def heteroscedastic_problem(d: int = 6, m: int = 8, seed: int = 2):
    """N(0, I) prior, y = A x + noise of a per-pixel sigma (0.1 to 0.8), one masked pixel (NaN
    in y): returns prior, physics, y and the exact posterior (the masked pixel left out)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g) * 3 / math.sqrt(d)
    sigma = torch.linspace(0.1, 0.8, m)
    var = sigma.pow(2)
    var[3] = math.inf
    physics = MatrixOperator(a, img_size=(d, 1, 1))
    physics.set_noise_model(PixelNoise(var))
    x0 = torch.randn(d, generator=g)
    y = a @ x0 + sigma * torch.randn(m, generator=g)
    y[3] = math.nan
    w = torch.where(torch.isfinite(var), 1.0 / var, 0.0)
    cov = torch.linalg.inv(torch.eye(d) + a.T @ (w[:, None] * a))
    mean = cov @ a.T @ (w * torch.nan_to_num(y))
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, d))
    return prior, physics, y[None], mean, cov


@pytest.mark.parametrize(
    "options",
    [
        {},  # split-Gibbs SMC, exact step (one factorisation per measurement)
        {"scheme": "gibbs", "likelihood_step": "rto", "cg_steps": 8},
        {"scheme": "gibbs", "likelihood_step": "image", "image_until": 0.0},
    ],
    ids=["smc-exact", "gibbs-rto", "gibbs-image"],
)
def test_per_pixel_noise_gives_the_heteroscedastic_posterior(options):
    prior, physics, y, mean, cov = heteroscedastic_problem()
    post = DWGF(prior, particles=512, steps=60, seed=3, **options)(y, physics)
    s = post.samples.flatten(1).double()
    sd = cov.diagonal().sqrt().double()
    assert float(((s.mean(0) - mean.double()) / sd).pow(2).mean().sqrt()) < 0.2
    assert 0.75 < float((s.var(0) / cov.diagonal().double()).mean()) < 1.3
    # the data fit counts the informative pixels only, against their own limit
    assert float(post.fit["limit"][0]) == chi2_limit(7)
    assert torch.isfinite(post.fit["reduced_chi2"]).all()


@pytest.mark.parametrize("preset", ["default", "fast"])
def test_masked_pixels_have_no_influence(preset, tiny_latent_prior, tiny_blur_problem):
    physics, y = tiny_blur_problem
    sigma = float(physics.noise_model.sigma)
    var = torch.full(y.shape[1:], sigma**2)
    var[0, 5:9, 3:20] = math.inf  # a streak of bad pixels
    var[0, 20, 20] = math.inf
    physics.noise_model = PixelNoise(var)
    kw = {"particles": 2, "steps": 3, "seed": 0}
    runs = []
    for bad in (0.0, 1e6, math.nan):
        y_bad = y.clone()
        y_bad[0, 0, 5:9, 3:20] = bad
        y_bad[0, 0, 20, 20] = -bad
        runs.append(DWGF(tiny_latent_prior, preset, **kw)(y_bad, physics))
    assert torch.isfinite(runs[0].samples).all()
    for other in runs[1:]:
        assert torch.equal(other.samples, runs[0].samples)
        assert torch.equal(other.mean, runs[0].mean)
    # a NaN where the map says the pixel is good is refused before any work
    y_bad = y.clone()
    y_bad[0, 0, 0, 0] = math.nan
    with pytest.raises(InvalidDataError, match="unmasked"):
        DWGF(tiny_latent_prior, preset, **kw)(y_bad, physics)


def test_noise_maps_in_every_convention():
    s = torch.tensor([0.5, 2.0, 1.0])
    v = s.pow(2)
    torch.testing.assert_close(variance_from_map(s, "sigma"), v)
    torch.testing.assert_close(variance_from_map(v, "variance"), v)
    torch.testing.assert_close(variance_from_map(1 / v, "ivar"), v)
    torch.testing.assert_close(variance_from_map(3 / v, "weight", weight_scale=3.0), v)
    ivar = torch.tensor([4.0, 0.0, 1.0])  # weight 0: no information
    assert torch.isinf(variance_from_map(ivar, "ivar")[1])
    masked = variance_from_map(s, "sigma", mask=torch.tensor([False, False, True]))
    assert torch.isinf(masked[2]) and torch.isfinite(masked[:2]).all()
    for bad, kind, match in [
        (torch.tensor([1.0, math.nan]), "sigma", "NaN"),
        (torch.tensor([1.0, -1.0]), "variance", "negative"),
        (torch.tensor([1.0, 0.0]), "sigma", "zero noise"),
        (s, "rms", "kind"),
    ]:
        with pytest.raises(InvalidDataError, match=match):
            variance_from_map(bad, kind)
    noisy = PixelNoise(masked)(torch.zeros(2, 3))
    assert torch.isnan(noisy[:, 2]).all() and torch.isfinite(noisy[:, :2]).all()


def test_a_constant_map_is_the_scalar_data_term():
    # the map's data term, chi-square and RTO variance equal the scalar sigma's (MALA, the flow
    # and the baselines use the data term itself); a stiff problem like the one above is beyond
    # MALA in 60 levels with either description of the noise (measured: same error for both)
    import deepinv as dinv

    from dwgf_sci.solvers.likelihood import DataTerm

    g = torch.Generator().manual_seed(0)
    ax, y = torch.randn(6, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    physics = dinv.physics.Denoising()
    physics.noise_model = dinv.physics.GaussianNoise(0.3)
    scalar = DataTerm("gaussian").resolve(physics)
    physics.noise_model = PixelNoise(torch.full((1, 8, 8), 0.09))
    mapped = DataTerm("gaussian").resolve(physics)
    y_rep = y.repeat_interleave(2, 0)
    torch.testing.assert_close(mapped(ax, y_rep), scalar(ax, y_rep), rtol=1e-5, atol=0)
    torch.testing.assert_close(mapped.reduced_chi2(ax, y_rep), scalar.reduced_chi2(ax, y_rep))
    torch.testing.assert_close(mapped.variance(ax), scalar.variance(ax))


@pytest.mark.parametrize("name", ["dps", "psld", "resample", "reddiff", "pigdm", "reference"])
def test_baselines_ignore_masked_pixels(name, tiny_latent_prior, tiny_blur_problem):
    from dwgf_sci.solvers import PSLD, PiGDM, REDDiff, ReSample

    physics, y = tiny_blur_problem
    var = torch.full(y.shape[1:], float(physics.noise_model.sigma) ** 2)
    var[0, 10:12, :] = math.inf
    physics.noise_model = PixelNoise(var)
    make = {
        "dps": lambda p: LatentDPS(p, particles=2, steps=4, seed=0, zeta=0.1),
        "psld": lambda p: PSLD(p, particles=2, steps=4, seed=0, zeta=0.1),
        "resample": lambda p: ReSample(
            p, particles=2, steps=6, seed=0, pixel_iters=5, latent_iters=3, every=1
        ),
        "reddiff": lambda p: REDDiff(p, steps=4, seed=0),
        "pigdm": lambda p: PiGDM(p, particles=2, steps=4, seed=0),
        "reference": lambda p: DWGF.reference(p, particles=2, steps=4, seed=0),
    }[name]
    runs = []
    for bad in (0.0, math.nan, 1e4):
        y_bad = y.clone()
        y_bad[0, 0, 10:12, :] = bad
        runs.append(make(tiny_latent_prior)(y_bad, physics))
    assert torch.isfinite(runs[0].samples).all()
    assert all(torch.equal(r.samples, runs[0].samples) for r in runs[1:])


def test_pigdm_gives_the_heteroscedastic_posterior():
    """ΠGDM's covariance with the noise map, diag(v), is exact for an N(0, I) prior: its samples
    (constant guidance scale, as the paper) match the closed-form posterior, the masked pixel
    left out; the CG solve of the whitened covariance equals the dense one."""
    from dwgf_sci.solvers import PiGDM

    prior, physics, y, mean, cov = heteroscedastic_problem()
    post = PiGDM(prior, particles=1500, steps=200, seed=0, zeta=None)(y, physics)
    s = post.samples.flatten(1).double()
    sd = cov.diagonal().sqrt().double()
    assert float(((s.mean(0) - mean.double()) / sd).pow(2).mean().sqrt()) < 0.1
    assert 0.85 < float((s.var(0) / cov.diagonal().double()).mean()) < 1.1
    assert float(post.fit["limit"][0]) == chi2_limit(7)
    # the check can fail: one scalar sigma (the map's mean, mask ignored) gives another posterior
    var = physics.noise_model.variance
    scalar = MatrixOperator(physics.matrix, img_size=(6, 1, 1))
    scalar.set_noise_model(PixelNoise(torch.full_like(var, float(var[torch.isfinite(var)].mean()))))
    wrong = PiGDM(prior, particles=1500, steps=200, seed=0, zeta=None)(torch.nan_to_num(y), scalar)
    off = (wrong.samples.flatten(1).double().mean(0) - mean) / sd
    assert float(off.pow(2).mean().sqrt()) > 0.3
    kw = {"particles": 4, "steps": 10, "seed": 2}
    dense = PiGDM(prior, solve="dense", **kw)(y, physics)
    cg = PiGDM(prior, solve="cg", cg_tol=1e-12, **kw)(y, physics)
    # float32 CG on weights spanning 1.6-100 (measured: 2e-5 apart after 10 steps)
    torch.testing.assert_close(dense.samples, cg.samples, rtol=1e-4, atol=1e-4)


def test_classical_methods_weigh_the_map_and_skip_masked_pixels(tiny_blur_problem):
    import deepinv as dinv

    from dwgf_sci.errors import ConfigError
    from dwgf_sci.solvers import RichardsonLucy, TVReconstruction, Wiener

    physics, y = tiny_blur_problem
    y = y.abs()
    sigma = float(physics.noise_model.sigma)
    scalar = dinv.physics.BlurFFT(img_size=(1, 32, 32), filter=physics.filter)
    scalar.noise_model = dinv.physics.GaussianNoise(sigma)
    physics.noise_model = PixelNoise(torch.full(y.shape[1:], sigma**2))
    # a constant map without masked pixels is the unweighted method
    for method in (
        RichardsonLucy(iterations=20),
        TVReconstruction(lam=0.01, iterations=20, stepsize=0.9),
    ):
        # (the weighted forms round differently: agreement to float32 accuracy)
        torch.testing.assert_close(
            method(y, physics).mean, method(y, scalar).mean, rtol=1e-4, atol=1e-4
        )
    torch.testing.assert_close(Wiener()(y, physics).mean, Wiener()(y, scalar).mean)
    # masked pixels: any value gives the same result; Wiener refuses
    var = torch.full(y.shape[1:], sigma**2)
    var[0, 12:14, 4:28] = math.inf
    var[0, :, 0] = 4 * sigma**2
    physics.noise_model = PixelNoise(var)
    for method in (
        RichardsonLucy(iterations=20),
        TVReconstruction(lam=0.01, iterations=20, stepsize=0.9),
    ):
        outs = []
        for bad in (0.0, math.nan, 50.0):
            y_bad = y.clone()
            y_bad[0, 0, 12:14, 4:28] = bad
            outs.append(method(y_bad, physics).mean)
        assert torch.isfinite(outs[0]).all()
        assert all(torch.equal(o, outs[0]) for o in outs[1:])
    with pytest.raises(ConfigError, match="one noise level"):
        Wiener()(y, physics)


@pytest.mark.parametrize(
    "make",
    [
        lambda p, **kw: DWGF(p, scheme="flow", optimizer="sgd", temperature=0.0, lr=0.05, **kw),
        lambda p, **kw: DWGF(p, scheme="gibbs", likelihood_step="mala", **kw),
        lambda p, **kw: LatentDPS(p, zeta=0.1, **kw),
    ],
    ids=["flow", "gibbs-mala", "dps"],
)
def test_a_map_per_measurement_follows_its_particles_through_chunks(make):
    # two measurements with their own maps, particles evaluated in chunks that do not align
    # with the measurements: every particle must still see its own measurement's map. (The RTO
    # steps take the map for all rows at once; their forward differences amplify the last-bit
    # differences of batched matrix products of another size, so they are not compared here.)
    prior, physics, y, *_ = heteroscedastic_problem()
    var = physics.noise_model.variance
    maps = torch.stack([var, torch.flip(var, [0]) * 3.0])
    physics.set_noise_model(PixelNoise(maps))
    ys = torch.cat([y, y.flip(1)])
    kw = {"particles": 4, "steps": 6, "seed": 1}
    whole = make(prior, **kw)(ys, physics)
    for max_batch in (3, 2):
        chunked = make(prior, max_batch=max_batch, **kw)(ys, physics)
        torch.testing.assert_close(chunked.samples, whole.samples, rtol=1e-4, atol=1e-5)


def test_a_fully_masked_measurement_is_refused(tiny_latent_prior, tiny_blur_problem):
    physics, y = tiny_blur_problem
    var = torch.full((2, *y.shape[1:]), 1e-4)
    var[1] = math.inf
    physics.noise_model = PixelNoise(var)
    with pytest.raises(InvalidDataError, match=r"measurement\(s\) \[1\]"):
        DWGF(tiny_latent_prior, particles=2, steps=2)(torch.cat([y, y]), physics)
