"""DWGF and the shared solver skeleton on priors whose posterior is known in closed form."""

from __future__ import annotations

import math

import deepinv as dinv
import pytest
import torch

from dwgf_sci.errors import ConfigError, InvalidDataError, OperatorMismatchError
from dwgf_sci.operators import MatrixOperator
from dwgf_sci.priors import GaussianMixturePrior
from dwgf_sci.solvers import DWGF, Posterior
from dwgf_sci.solvers.dwgf import (
    REFERENCE,
    image_cg,
    latent_rto,
    log_weight_increment,
)
from dwgf_sci.solvers.dwgf.image_cg import image_jacobian
from dwgf_sci.solvers.dwgf.rto import gauss_newton_rto


def gaussian_problem(d: int = 8, m: int = 4, sigma: float = 0.3, seed: int = 1):
    """N(0, I) prior, y = A x + sigma n: returns prior, physics, y and the exact posterior."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g) * 3 / math.sqrt(d)
    physics = MatrixOperator(a, img_size=(d, 1, 1))
    physics.set_noise_model(dinv.physics.GaussianNoise(sigma))
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, d))
    x0 = torch.randn(1, d, 1, 1, generator=g)
    y = a @ x0.flatten() + sigma * torch.randn(m, generator=g)
    precision = torch.eye(d) + a.T @ a / sigma**2
    cov = torch.linalg.inv(precision)
    mean = cov @ a.T @ y / sigma**2
    return prior, physics, y[None], mean, cov


def test_default_preset_matches_gaussian_posterior():
    prior, physics, y, mean, cov = gaussian_problem()
    post = DWGF(prior, particles=512, steps=200, seed=3)(y, physics)
    s = post.samples.flatten(1).double()
    sd = cov.diagonal().sqrt().double()
    mean_err = ((s.mean(0) - mean.double()) / sd).pow(2).mean().sqrt()
    var_ratio = s.var(0) / cov.diagonal().double()
    assert mean_err < 0.2, mean_err
    assert 0.7 < float(var_ratio.mean()) < 1.4, var_ratio
    # the reference preset collapses its particles: far too little spread (a known property)
    ref = DWGF.reference(prior, particles=16, steps=100, seed=3)(y, physics)
    assert float((ref.samples.flatten(1).var(0) / cov.diagonal()).mean()) < 0.3


def test_mala_likelihood_step_matches_gaussian_posterior():
    # the generic likelihood step (any decoder, any data term) on the same problem
    prior, physics, y, mean, cov = gaussian_problem()
    post = DWGF(prior, particles=256, steps=60, likelihood_step="mala", seed=3)(y, physics)
    s = post.samples.flatten(1).double()
    sd = cov.diagonal().sqrt().double()
    assert float(((s.mean(0) - mean.double()) / sd).pow(2).mean().sqrt()) < 0.25
    assert 0.7 < float((s.var(0) / cov.diagonal().double()).mean()) < 1.4
    assert 0.2 < post.history[-1]["accept"] < 0.95


@pytest.mark.parametrize("step", ["exact", "rto", "image"])
def test_gibbs_scheme_matches_gaussian_posterior(step):
    # the diffused-posterior Gibbs sampler keeps the posterior invariant when the Tweedie
    # Gaussian is exact (unit-variance Gaussian prior); RTO with a converged CG is an exact draw
    # for an affine decoder, and so is the image-space step for this prior (decoder and encoder
    # the identity), so every likelihood step must give the closed form
    prior, physics, y, mean, cov = gaussian_problem()
    post = DWGF(
        prior,
        particles=512,
        steps=60,
        scheme="gibbs",
        likelihood_step=step,
        cg_steps=8,
        image_until=0.0,
        seed=3,
    )(y, physics)
    if step == "image":  # two decoder and two encoder forwards per level, no backward
        assert post.calls["encoder"] == 2 * 512 * 60 and "decoder_backward" not in post.calls
    s = post.samples.flatten(1).double()
    sd = cov.diagonal().sqrt().double()
    assert float(((s.mean(0) - mean.double()) / sd).pow(2).mean().sqrt()) < 0.2
    assert 0.8 < float((s.var(0) / cov.diagonal().double()).mean()) < 1.25
    assert {"data", "rho"} <= set(post.history[-1])


def test_rto_step_in_the_smc_scheme_and_a_truncated_cg():
    prior, physics, y, mean, cov = gaussian_problem()
    post = DWGF(prior, particles=256, steps=40, likelihood_step="rto", cg_steps=8, seed=4)(
        y, physics
    )
    s = post.samples.flatten(1).double()
    sd = cov.diagonal().sqrt().double()
    assert float(((s.mean(0) - mean.double()) / sd).pow(2).mean().sqrt()) < 0.25
    assert 0.7 < float((s.var(0) / cov.diagonal().double()).mean()) < 1.4
    # a single CG iteration is not converged. Started from the current particle the draws are
    # then further from the posterior; started from the prior centre (the default) the
    # directions CG has not reached take the prior's draw, and over 40 levels the chain still
    # lands on the posterior
    for start in ("current", "centre"):
        one = DWGF(
            prior,
            particles=256,
            steps=40,
            scheme="gibbs",
            likelihood_step="rto",
            cg_steps=1,
            cg_start=start,
            seed=4,
        )(y, physics)
        s1 = one.samples.flatten(1).double()
        err1 = float(((s1.mean(0) - mean.double()) / sd).pow(2).mean().sqrt())
        var1 = float((s1.var(0) / cov.diagonal().double()).mean())
        close = err1 < 0.25 and 0.7 < var1 < 1.4
        assert close == (start == "centre"), (start, err1, var1)


def test_scheme_auto_and_rto_needs_a_gaussian_data_term(tiny_latent_prior):
    prior, physics, y, *_ = gaussian_problem()
    assert DWGF(prior).resolved_scheme() == "smc"  # affine decoder: weighted SMC
    assert DWGF(tiny_latent_prior).resolved_scheme() == "gibbs"  # learned decoder
    assert DWGF(prior, scheme="gibbs").resolved_scheme() == "gibbs"
    prior.reset_calls()
    with pytest.raises(ConfigError, match="rto"):
        DWGF(prior, likelihood_step="rto", data_term="mse", steps=3)(y, physics)
    assert sum(prior.calls.values()) == 0
    for kw in ({"cg_steps": 0}, {"line_search": 0}):
        with pytest.raises(ConfigError, match="cg_steps"):
            DWGF(prior, **kw)


def test_default_preset_fits_the_data_with_a_learned_decoder(tiny_latent_prior):
    # a learned (non-affine) decoder: Gibbs scheme and the RTO likelihood step; the particles
    # must end far closer to the data than where they start, and the line search must keep
    # every particle finite
    prior = tiny_latent_prior
    g = torch.Generator().manual_seed(0)
    x = prior.from_model(
        prior.decode(torch.randn(1, *prior.latent_shape((1, 32, 32)), generator=g))
    )
    physics = dinv.physics.BlurFFT(
        img_size=(1, 32, 32), filter=dinv.physics.blur.gaussian_blur(1.0)
    )
    sigma = 0.01 * float(x.abs().max())
    physics.noise_model = dinv.physics.GaussianNoise(sigma)
    y = physics(x)
    post = DWGF(prior, particles=2, steps=8, seed=0)(y, physics)
    assert post.settings["scheme"] == "auto" and torch.isfinite(post.samples).all()
    first, last = post.history[0]["data"], post.history[-1]["data"]
    assert last < 0.6 * first, (first, last)
    per_level = post.calls["unet"] / 8
    assert per_level == 2  # one UNet forward per particle and level
    # this untrained network's prior centres are noise and its decoder is far from linear over
    # the large moves to them: the CG started at the current particle accumulates the data fit
    # over the levels instead of restarting it at each prior draw
    current = DWGF(prior, particles=2, steps=8, seed=0, cg_start="current")(y, physics)
    first, last = current.history[0]["data"], current.history[-1]["data"]
    assert torch.isfinite(current.samples).all() and last < 0.2 * first, (first, last)


def test_image_step_runs_without_decoder_backward(tiny_latent_prior, tiny_blur_problem):
    # the image-space likelihood step needs no gradient through the decoder: above image_until
    # a level runs decoder and encoder forwards only, below it the latent RTO step takes over
    prior = tiny_latent_prior
    physics, y = tiny_blur_problem
    post = DWGF(prior, particles=2, steps=8, seed=0, likelihood_step="image", image_until=0.0)(
        y, physics
    )
    assert torch.isfinite(post.samples).all()
    assert post.calls.get("decoder_backward", 0) == 0
    assert post.calls["encoder"] == 2 * 2 * 8 and post.calls["unet"] == 2 * 8
    solver = DWGF(prior, particles=2, steps=8, seed=0, likelihood_step="image", image_until=3.0)
    post = solver(y, physics)
    rho = [h["rho"] for h in post.history]
    latent_levels = sum(r < 3.0 for r in rho)
    assert 0 < latent_levels < 8, rho
    assert post.calls["encoder"] == 2 * 2 * (8 - latent_levels)
    # the latent RTO levels: one backward for the gradient and one per CG iteration
    assert post.calls["decoder_backward"] == 2 * latent_levels * (solver.cg_steps + 1)
    # the fast preset takes the image step at every level: a decoder backward pass only when it
    # retries (this untrained prior's mean misses the data, so it does here)
    fast = DWGF(prior, "fast", particles=2, steps=4, seed=0)(y, physics)
    retried = any("retry" in h for h in fast.history)
    assert (fast.calls.get("decoder_backward", 0) > 0) == retried
    plain = DWGF(prior, "fast", particles=2, steps=4, seed=0, image_retry=0.0)(y, physics)
    assert plain.calls.get("decoder_backward", 0) == 0
    with pytest.raises(ConfigError, match="image_until"):
        DWGF(prior, image_until=-1.0)
    with pytest.raises(ConfigError, match="image"):
        DWGF(prior, likelihood_step="image", data_term="mse", steps=2)(y, physics)


def test_image_error_auto_takes_the_prior_s_hint(tiny_latent_prior, tiny_blur_problem):
    prior = tiny_latent_prior
    physics, y = tiny_blur_problem
    kw = {"preset": "fast", "particles": 2, "steps": 4, "seed": 0, "decoder_error": 0.05}
    assert prior.solver_hints == {} and DWGF(prior, preset="fast").image_error is False
    off = DWGF(prior, **kw)(y, physics)
    on = DWGF(prior, image_error=True, **kw)(y, physics)
    prior.solver_hints = {"image_error": True}
    try:
        auto = DWGF(prior, **kw)
        assert auto.image_error is True and auto.settings()["image_error"] is True
        hinted = auto(y, physics)
        assert DWGF(prior, image_error=False, **kw).image_error is False  # explicit wins
    finally:
        prior.solver_hints = {}
    # the hint changes the run exactly as the explicit setting does
    assert torch.equal(hinted.samples, on.samples)
    assert not torch.equal(on.samples, off.samples)
    with pytest.raises(ConfigError, match="image_error"):
        DWGF(prior, image_error="yes")


def test_image_retry_reruns_the_last_levels_where_the_mean_misses_the_data(
    tiny_latent_prior, tiny_blur_problem
):
    # two measurements with a noise level ten times the signal: the first fits any draw of
    # the prior (reduced chi2 << 1), the second is offset by five noise levels and cannot fit
    prior = tiny_latent_prior
    physics, y = tiny_blur_problem
    s = 10.0 * float(y.abs().max())
    ys = torch.cat([y, y + 5.0 * s])
    kw = {"particles": 2, "steps": 6, "seed": 0, "likelihood_step": "image", "noise_sigma": s}
    plain = DWGF(prior, **kw)(ys, physics)
    retried = DWGF(prior, image_retry=3.0, **kw)(ys, physics)
    assert "retry" not in plain.history[-1] and plain.calls.get("decoder_backward", 0) == 0
    entry = retried.history[-1]
    assert entry["retry"] == 1 and entry["chi2_before"] > 10, entry
    # the latent RTO step ran again for the levels at noise level <= 3 only; the loop's
    # history shows each rerun level (and the final step) as a "retry" stage
    first = [h for h in retried.history if "stage" not in h]
    redo = sum(h["rho"] <= 3.0 for h in first)
    assert 0 < redo < 6 and len(first) == 6
    rerun = [h for h in retried.history if h.get("stage") == "retry" and "rho" in h]
    assert [h["rho"] for h in rerun] == [h["rho"] for h in first if h["rho"] <= 3.0]
    assert retried.calls["decoder_backward"] == 2 * 2 * redo * (DWGF(prior).cg_steps + 1)
    # the measurement that fits keeps exactly its first run; the other one is replaced
    assert torch.equal(retried.samples[0], plain.samples[0])
    assert torch.equal(retried.mean[0], plain.mean[0])
    assert torch.equal(retried.latents[0], plain.latents[0])
    assert not torch.equal(retried.samples[1], plain.samples[1])
    assert torch.isfinite(retried.samples).all()
    # nothing to redo when every mean fits
    alone = DWGF(prior, image_retry=3.0, **kw)(y, physics)
    assert "retry" not in alone.history[-1] and alone.calls.get("decoder_backward", 0) == 0
    # the fast preset retries, and only on its last levels (noise level below 1)
    assert 0 < DWGF(prior, "fast").image_retry < 1.0
    with pytest.raises(ConfigError, match="image_retry"):
        DWGF(prior, image_retry=-0.1)


def test_image_step_jacobian_products_match_autograd(
    monkeypatch, tiny_latent_prior, tiny_blur_problem
):
    # for a linear physics the image-space CG applies A and A^T directly; with the prior's
    # asinh stretch (a nonlinear unit map) both products must equal autograd's J d and J^T v
    physics, y = tiny_blur_problem
    prior = tiny_latent_prior
    monkeypatch.setattr(prior, "stretch", "asinh")
    monkeypatch.setattr(prior, "stretch_scale", 0.3)
    solver = DWGF(prior, particles=2, steps=2, seed=0, likelihood_step="image")
    problem = solver.prepare(y, physics)
    g = torch.Generator().manual_seed(3)
    n, dim = problem.n, math.prod(problem.image_shape)
    base, scale = torch.randn(n, dim, generator=g), 0.1 + torch.rand(n, dim, generator=g)
    d, v = torch.randn(n, dim, generator=g), torch.randn(n, y[0].numel(), generator=g)

    def apply(w):
        shaped = (base + scale * w).reshape(n, *problem.image_shape)
        return physics.A(prior.from_model(shaped)).flatten(1)

    w0 = torch.zeros(n, dim)
    _, jd_ref = torch.func.jvp(apply, (w0,), (d,))
    _, vjp = torch.func.vjp(apply, w0)
    jd, jt, diagonal = image_jacobian(solver, base, scale, problem)
    torch.testing.assert_close(jd(d), jd_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(jt(v), vjp(v)[0], rtol=1e-4, atol=1e-6)
    # the CG preconditioner: 1/v + c (m s)^2, c estimating the mean diagonal of A^T S^-1 A,
    # for this circular blur ||kernel||^2 / sigma^2 at every pixel (one probe: 25% slack)
    sigma2 = float(physics.noise_model.sigma) ** 2
    c_true = float(physics.filter.pow(2).sum()) / sigma2
    gain2 = (jt(torch.ones_like(v)) / physics.A_adjoint(torch.ones_like(y)).flatten(1)).pow(2)
    precond = diagonal(torch.full_like(v, sigma2), 0.5)
    torch.testing.assert_close(precond, 2.0 + c_true * gain2, rtol=0.25, atol=0.0)
    # a nonlinear physics keeps the generic path (stored graph and forward differences)
    nonlinear = dinv.physics.Physics(A=lambda x: x.pow(2), noise_model=physics.noise_model)
    assert (
        image_jacobian(solver, base, scale, solver.prepare(y, nonlinear, img_size=(1, 32, 32)))
        is None
    )


def test_image_cg_stops_early_at_its_tolerance(monkeypatch, tiny_latent_prior, tiny_blur_problem):
    # refine_cg_tol ends the image-space CG once every row's residual has dropped by that
    # factor: fewer adjoint applications, and the setting is checked
    physics, y = tiny_blur_problem
    counts = []
    original = physics.A_adjoint

    def counted(v, *args, **kwargs):
        counts[-1] += 1
        return original(v, *args, **kwargs)

    monkeypatch.setattr(physics, "A_adjoint", counted)
    for tol in (0.0, 0.5):
        counts.append(0)
        solver = DWGF(
            tiny_latent_prior, particles=2, steps=3, seed=0, likelihood_step="image",
            refine_cg_tol=tol,
        )  # fmt: skip
        post = solver(y, physics)
        assert torch.isfinite(post.samples).all()
    assert counts[1] < counts[0], counts
    with pytest.raises(ConfigError, match="refine_cg_tol"):
        DWGF(tiny_latent_prior, refine_cg_tol=1.0)


def test_decoder_error_step_continues_the_last_image_draw(
    monkeypatch, tiny_latent_prior, tiny_blur_problem
):
    # after an image-space level the final decoder-error step starts from that level's draw
    # (centred on its decoded prior draw); after a latent level it starts from the decoded
    # latent, as before
    physics, y = tiny_blur_problem
    for step, continued in (("image", True), ("rto", False)):
        solver = DWGF(
            tiny_latent_prior,
            particles=2,
            steps=3,
            seed=0,
            likelihood_step=step,
            decoder_error=0.01,
        )
        starts: list[tuple[float, str]] = []

        def spy(*args, _orig=gauss_newton_rto, _starts=starts, **kw):
            if kw.get("perturb_centre", True):  # the final decoder-error step
                _starts.append((float(args[2].abs().sum()), kw["start"]))
            return _orig(*args, **kw)

        monkeypatch.setattr(image_cg, "gauss_newton_rto", spy)
        post = solver(y, physics)
        assert torch.isfinite(post.samples).all() and len(starts) == 2  # sample, then mean
        for size, start in starts:
            assert (size > 0) == continued and start == ("current" if continued else "centre")


def test_smc_weight_increment_is_exact_for_unit_gaussian_data():
    # log p_rho_n(u) - log p_rho_{n-1}(u) from the network's noise prediction alone
    d = 3
    prior = GaussianMixturePrior(torch.ones(1), torch.tensor([[1.0, -2.0, 0.5]]).double())
    u = 3 * torch.randn(64, d, 1, 1, generator=torch.Generator().manual_seed(0)).double()
    t_new, t_old = 300, 320
    ab = prior.alphas_cumprod
    r2n, r2o = [float((1 - ab[t]) / ab[t]) for t in (t_new, t_old)]

    def log_p_rho(r2):  # density of u = z_t / a with z_t ~ p_t
        return prior.log_prob(u / math.sqrt(1 + r2), t_new if r2 == r2n else t_old)

    eps = prior.predict_noise(u / math.sqrt(1 + r2n), t_new)
    inc = log_weight_increment(eps, r2n, r2o)
    exact = log_p_rho(r2n) - log_p_rho(r2o)
    torch.testing.assert_close(inc - inc.mean(), exact - exact.mean(), rtol=1e-8, atol=1e-8)


def test_laplacian_correction_brings_weights_closer_to_exact_between_modes():
    from types import SimpleNamespace

    from dwgf_sci.solvers.dwgf import ParticleState
    from dwgf_sci.solvers.dwgf.state import StepCache

    d = 2
    means = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    prior = GaussianMixturePrior(torch.tensor([0.3, 0.7]), means)
    gen = torch.Generator().manual_seed(0)
    u = 2.5 * torch.randn(400, d, generator=gen).double()
    t_new, t_old = 150, 160
    ab = prior.alphas_cumprod
    r2n, r2o = [float((1 - ab[t]) / ab[t]) for t in (t_new, t_old)]

    def log_p_rho(r2, t):
        return prior.log_prob((u / math.sqrt(1 + r2)).reshape(-1, d, 1, 1), t)

    exact = log_p_rho(r2n, t_new) - log_p_rho(r2o, t_old)
    a = 1 / math.sqrt(1 + r2n)
    eps = prior.predict_noise((a * u).reshape(-1, d, 1, 1), t_new).reshape(-1, d)
    plain = log_weight_increment(eps, r2n, r2o)
    solver = DWGF(prior, laplacian_probes=8)
    problem = SimpleNamespace(
        generator=gen,
        device=torch.device("cpu"),
        n=400,
        latent_shape=(d, 1, 1),
        dtype=torch.float64,
    )
    state = ParticleState(u, torch.zeros(1, 400, dtype=torch.float64), "exact", StepCache())
    fixed = plain + solver.kernel.laplacian_correction(state, eps, a, t_new, r2n, r2o, problem)

    def err(inc):
        return float((inc - inc.mean() - (exact - exact.mean())).abs().mean())

    # measured: 0.0007 against 0.019 without the correction
    assert err(fixed) < 0.2 * err(plain), (err(fixed), err(plain))


def test_smc_reweighting_gets_the_mode_weights():
    # two modes, the measurement favours one: the weights move mass between modes, which local
    # moves alone (no reweighting, or the Langevin flow) cannot do
    d, sigma = 4, 1.5
    means = torch.zeros(2, d, dtype=torch.float64)
    means[0], means[1] = 3.0, -3.0
    prior = GaussianMixturePrior(torch.tensor([0.5, 0.5]), means)
    a = torch.zeros(1, d, dtype=torch.float64)
    a[0, 0] = 1.0
    physics = MatrixOperator(a, img_size=(d, 1, 1))
    physics.set_noise_model(dinv.physics.GaussianNoise(sigma))
    y = torch.tensor([[1.0]], dtype=torch.float64)
    exact = float(prior.posterior(a, y, sigma).weights[0])  # 0.864

    def first_mode(**kw):
        post = DWGF(prior, particles=500, steps=50, seed=0, **kw)(y, physics)
        return float((post.samples.reshape(-1, d).sum(1) > 0).double().mean())

    assert abs(first_mode() - exact) < 0.06
    assert abs(first_mode(resample_ess=0.0) - exact) > 0.12


def test_smc_options_are_checked():
    prior, physics, y, *_ = gaussian_problem()
    for kw, match in [
        ({"split": 0.0}, "split"),
        ({"split": 1.5}, "split"),
        ({"resample_ess": 2.0}, "resample_ess"),
        ({"sweeps": 0}, "sweeps"),
        ({"likelihood_step": "newton"}, "likelihood_step"),
        ({"mala_accept": 1.0}, "mala_accept"),
        ({"mala_start": "middle"}, "mala_start"),
        ({"scheme": "ode"}, "scheme"),
    ]:
        with pytest.raises(ConfigError, match=match):
            DWGF(prior, **kw)
    # an exact Gaussian step needs a Gaussian data term: refused before any network call
    prior.reset_calls()
    with pytest.raises(ConfigError, match="gaussian"):
        DWGF(prior, likelihood_step="exact", data_term="mse", steps=3)(y, physics)
    assert sum(prior.calls.values()) == 0
    settings = DWGF(prior).settings()
    assert settings["scheme"] == "auto" and DWGF.reference(prior).settings()["scheme"] == "flow"


def test_reference_preset_settings():
    prior, *_ = gaussian_problem()
    solver = DWGF.reference(prior)
    settings = solver.settings()
    expected = {**REFERENCE.solver, **REFERENCE.config.settings()}
    for key in ("particles", "steps", "lr", "prior_weight", "encoder_weight", "decoder_noise"):
        assert settings[key] == expected[key]
    assert settings["optimizer"] == "adam" and settings["data_term"] == "mse"
    assert settings["betas"] == [0.9, 0.999] and settings["interaction"] is True
    assert DWGF(prior, preset="reference", steps=10).steps == 10


def test_network_calls_per_step_and_history():
    prior, physics, y, *_ = gaussian_problem()
    seen = []
    post = DWGF.reference(prior, particles=3, steps=5)(
        y, physics, callback=lambda i, t, info, state: seen.append((i, t))
    )
    assert post.calls == {
        "unet": 15,
        "decoder": 3 * 5 * 2 + 3,
        "encoder": 15,
        "decoder_backward": 15,
    }
    assert [i for i, _ in seen] == list(range(5)) and seen[0][1] > seen[-1][1]
    assert len(post.history) == 5 and {"data", "chi2", "t"} <= set(post.history[0])
    # the flow without the encoder term: one decoder pass per particle and step
    post = DWGF(prior, scheme="flow", particles=3, steps=5)(y, physics)
    assert post.calls == {"unet": 15, "decoder": 15 + 3, "decoder_backward": 15}
    # default (split-Gibbs SMC, exact Gaussian likelihood step): one UNet forward per particle and
    # step; the decoder only to probe J once (d + 1 = 9 images) and to render the samples
    post = DWGF(prior, particles=3, steps=5)(y, physics)
    assert post.calls == {"unet": 15, "decoder": 9 + 3}
    assert {"ess", "data", "chi2"} <= set(post.history[-1])
    # MALA likelihood step: per level a reference draw plus mala_steps proposals, each one decoder
    # forward and backward; one more pair at the start
    post = DWGF(prior, particles=3, steps=5, likelihood_step="mala", mala_steps=2)(y, physics)
    passes = 3 + 3 * 5 * (1 + 2)
    assert post.calls == {"unet": 15, "decoder": passes + 3, "decoder_backward": passes}


def test_same_seed_same_samples_and_chunking():
    prior, physics, y, *_ = gaussian_problem()
    a = DWGF.reference(prior, particles=6, steps=20, seed=7)(y, physics)
    b = DWGF.reference(prior, particles=6, steps=20, seed=7)(y, physics)
    c = DWGF.reference(prior, particles=6, steps=20, seed=8)(y, physics)
    d = DWGF.reference(prior, particles=6, steps=20, seed=7, max_batch=4)(y, physics)
    assert torch.equal(a.samples, b.samples)
    assert not torch.allclose(a.samples, c.samples)
    torch.testing.assert_close(a.samples, d.samples, rtol=1e-4, atol=1e-5)


def test_posterior_is_the_mean_tensor_and_a_deepinv_reconstructor():
    prior, physics, y, *_ = gaussian_problem()
    solver = DWGF(prior, particles=4, steps=10)
    assert isinstance(solver, dinv.models.Reconstructor)
    post = solver(y, physics)
    assert isinstance(post, Posterior)
    assert post.samples.shape == (4, 8, 1, 1) and post.mean.shape == (1, 8, 1, 1)
    torch.testing.assert_close(post.as_tensor(), post.samples.mean(0, keepdim=True))
    torch.testing.assert_close(post.std, post.samples.std(0, keepdim=True))
    assert type(post + 1) is torch.Tensor
    lo, hi = post.credible_interval(0.9)
    assert bool((lo <= hi).all())


def test_deepinv_test_loop_runs_unchanged():
    prior, physics, *_ = gaussian_problem()
    x = prior.sample(6, generator=torch.Generator().manual_seed(0)).float()
    loader = torch.utils.data.DataLoader(list(x), batch_size=3)  # items are images x
    solver = DWGF(prior, particles=2, steps=5)
    metrics = dinv.test(
        solver,
        loader,
        physics,
        metrics=[dinv.metric.MSE()],
        online_measurements=True,
        show_progress_bar=False,
        verbose=False,
        compare_no_learning=False,
    )
    assert math.isfinite(metrics["MSE"])


def test_nonlinear_and_composed_physics():
    prior, physics, y, *_ = gaussian_problem()
    nonlinear = dinv.physics.Physics(
        A=lambda x: torch.tanh(physics.A(x)), noise_model=dinv.physics.GaussianNoise(0.3)
    )
    post = DWGF(prior, particles=2, steps=5)(y.tanh(), nonlinear, img_size=(8, 1, 1))
    assert torch.isfinite(post.samples).all()
    mask = torch.ones(8, 1, 1)
    mask[2] = 0
    composed = physics * dinv.physics.Inpainting(img_size=(8, 1, 1), mask=mask)
    post = DWGF(prior, particles=2, steps=5, noise_sigma=0.3)(y, composed, img_size=(8, 1, 1))
    assert torch.isfinite(post.samples).all()


def test_pinv_init_and_poisson_data_term():
    prior, physics, y, *_ = gaussian_problem()
    post = DWGF(prior, particles=2, steps=5, init="pinv", init_noise=0.1)(y, physics)
    assert torch.isfinite(post.samples).all() and post.calls["encoder"] == 1
    pois = MatrixOperator(torch.rand(4, 8), img_size=(8, 1, 1))
    pois.set_noise_model(dinv.physics.PoissonNoise(gain=0.1))
    shifted = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 8), data_offset=5.0)
    yp = pois(torch.full((1, 8, 1, 1), 5.0))
    post = DWGF(shifted, particles=2, steps=5, data_term="poisson")(yp, pois)
    assert torch.isfinite(post.samples).all()


def test_bad_inputs_fail_before_any_network_call():
    prior, physics, y, *_ = gaussian_problem()
    solver = DWGF(prior, particles=2, steps=5)
    cases = [
        (torch.zeros(1, 5), OperatorMismatchError),  # wrong measurement size
        (torch.full((1, 4), float("nan")), InvalidDataError),
        (torch.full((1, 4), float("inf")), InvalidDataError),
    ]
    for bad, err in cases:
        prior.reset_calls()
        with pytest.raises(err):
            solver(bad, physics)
        assert sum(prior.calls.values()) == 0
    small = MatrixOperator(torch.randn(4, 6), img_size=(6, 1, 1))
    small.set_noise_model(dinv.physics.GaussianNoise(0.1))
    with pytest.raises(OperatorMismatchError, match="8-channel"):
        solver(y, small)
    with pytest.raises(InvalidDataError, match="positive"):
        DWGF(prior, noise_sigma=0.0)
    with pytest.raises(InvalidDataError, match="positive"):
        DWGF(prior, noise_sigma=-1.0)
    noiseless = MatrixOperator(torch.randn(4, 8), img_size=(8, 1, 1))
    with pytest.raises(ConfigError, match="noise_sigma"):
        solver(y, noiseless)
    for bad_particles in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="particles"):
            DWGF(prior, particles=bad_particles)
    with pytest.raises(ConfigError, match="preset"):
        DWGF(prior, preset="fast-and-wrong")
    with pytest.raises(ConfigError, match="adam"):
        DWGF(prior, optimizer="adam", temperature=1.0)


@pytest.mark.parametrize("cg_start", ["current", "centre"])
def test_gauss_newton_rto_is_an_exact_draw_for_an_affine_map(cg_start):
    # the core of the "rto" likelihood step and of the decoder-error step: for an affine map and
    # a converged CG, perturb-then-optimise draws exactly from N(u; c, v I) N(y; F(u), s^2 I)
    prior, physics, y, *_ = gaussian_problem(d=6, m=4, sigma=0.2, seed=5)
    solver = DWGF(prior, particles=4000, seed=0)
    problem = solver.prepare(y, physics)
    a = physics.A(torch.eye(6).reshape(6, 6, 1, 1)).T  # (m, d)
    centre, var = torch.full((problem.n, 6), 0.3), 0.5

    def apply(u, sl):
        return physics.A(u.reshape(-1, 6, 1, 1)).reshape(u.shape[0], -1)

    u, phi, moved = gauss_newton_rto(
        solver, problem, torch.zeros(problem.n, 6), centre, var, apply,
        cg_steps=6, line_search=3, decoder=False, start=cg_start,
    )  # fmt: skip
    precision = torch.eye(6) / var + a.T @ a / 0.2**2
    cov = torch.linalg.inv(precision)
    mean = cov @ (centre[0] / var + a.T @ y.flatten() / 0.2**2)
    sd = cov.diagonal().sqrt()
    assert moved == 1.0 and phi.shape == (problem.n,)
    assert float(((u.mean(0) - mean) / sd).abs().max()) < 0.1
    assert float((u.var(0) / cov.diagonal() - 1).abs().max()) < 0.1
    # without perturbations the step lands on the conditional mean
    m, _, _ = gauss_newton_rto(
        solver, problem, torch.zeros(problem.n, 6), centre, var, apply,
        cg_steps=6, line_search=3, decoder=False, perturb=False,
    )  # fmt: skip
    assert torch.allclose(m[0], mean, atol=1e-3)


def test_cg_started_at_the_centre_is_exact_where_the_data_see_nothing():
    # 6 unknowns, 2 measurements: a 4-dimensional null space. One CG iteration is far from
    # converged, but started from the prior centre every iteration stays in the range of A^T, so
    # the null-space part of the step's result is the centre's exactly; started from the
    # current particle it is not
    prior, physics, y, *_ = gaussian_problem(d=6, m=2, sigma=0.2, seed=6)
    a = physics.A(torch.eye(6).reshape(6, 6, 1, 1)).T  # (m, d)
    null = torch.eye(6) - torch.linalg.pinv(a) @ a  # projector on the null space of A
    centre = torch.linspace(-1.0, 1.0, 6).repeat(3, 1)

    def apply(u, sl):
        return physics.A(u.reshape(-1, 6, 1, 1)).reshape(u.shape[0], -1)

    gaps = {}
    for start in ("centre", "current"):
        solver = DWGF(prior, particles=3, seed=0, line_search=1)
        problem = solver.prepare(y, physics)
        u, _, moved = gauss_newton_rto(
            solver, problem, torch.zeros(3, 6), centre, 0.5, apply,
            cg_steps=1, line_search=1, decoder=False, perturb=False, start=start,
        )  # fmt: skip
        assert moved == 1.0
        gaps[start] = float(((u - centre) @ null).abs().max())
    assert gaps["centre"] < 1e-4 < 1e-2 < gaps["current"], gaps
    with pytest.raises(ConfigError, match="cg_start"):
        DWGF(prior, cg_start="middle")
    with pytest.raises(ConfigError, match="cg_switch"):
        DWGF(prior, cg_switch=-1.0)


def test_cg_start_switches_from_the_centre_to_the_current_particle_at_low_noise(
    monkeypatch, tiny_latent_prior
):
    # cg_start="switch" starts each level's CG from the prior centre while rho > cg_switch and
    # from the current particle below; "centre" and "current" keep one start at every level
    prior = tiny_latent_prior
    physics = dinv.physics.BlurFFT(
        img_size=(1, 32, 32), filter=dinv.physics.blur.gaussian_blur(1.0)
    )
    physics.noise_model = dinv.physics.GaussianNoise(0.05)
    y = physics(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    for cg_start, switch in (("switch", 1.0), ("switch", 5.0), ("centre", 1.0), ("current", 1.0)):
        seen: list[tuple[float, str]] = []
        solver = DWGF(prior, particles=2, steps=12, seed=0, cg_start=cg_start, cg_switch=switch)

        def spy(*args, start="centre", _orig=gauss_newton_rto, _seen=seen, **kw):
            _seen.append((args[4], start))  # the levels' latent likelihood steps
            return _orig(*args, start=start, **kw)

        monkeypatch.setattr(latent_rto, "gauss_newton_rto", spy)
        solver(y, physics)
        assert len(seen) == 12
        for var, start in seen:
            rho = math.sqrt(var / (1.0 - var))  # var = rho^2 / (1 + rho^2)
            expected = cg_start if cg_start != "switch" else "centre" if rho > switch else "current"
            assert start == expected, (cg_start, switch, rho, start)
        starts = {start for _, start in seen}
        assert starts == ({"centre", "current"} if cg_start == "switch" else {cg_start})


def test_decoder_error_refines_the_images_and_the_mean(tiny_latent_prior, tiny_blur_problem):
    prior = tiny_latent_prior
    physics, y = tiny_blur_problem
    off = DWGF(prior, particles=3, steps=4, seed=0)(y, physics)  # the prior has no sigma_D
    assert off.settings["decoder_sigma"] == 0.0
    with torch.no_grad():
        decoded = prior.from_model(prior.decode(off.latents[0]))
    assert torch.allclose(off.samples, decoded, atol=1e-5)
    assert torch.allclose(off.mean, off.samples.mean(0, keepdim=True), atol=1e-6)
    on = DWGF(prior, particles=3, steps=4, seed=0, decoder_error=0.05)(y, physics)
    assert on.settings["decoder_sigma"] == 0.05
    assert on.calls["unet"] == off.calls["unet"]  # the image-space step calls no network
    with torch.no_grad():
        decoded = prior.from_model(prior.decode(on.latents[0]))
    assert not torch.allclose(on.samples, decoded, atol=1e-4)
    # the mean is the average of the conditional means, not of the draws
    assert not torch.allclose(on.mean, on.samples.mean(0, keepdim=True), atol=1e-5)
    # the prior's own measured value is used by default
    prior.decoder_sigma = 0.05
    try:
        auto = DWGF(prior, particles=3, steps=4, seed=0)(y, physics)
        assert torch.allclose(auto.samples, on.samples)
    finally:
        prior.decoder_sigma = 0.0
    with pytest.raises(ConfigError, match="decoder_error"):
        DWGF(prior, decoder_error=-1.0)
    with pytest.raises(ConfigError, match="decoder_error"):
        DWGF(prior, decoder_error="big")


def test_posterior_mean_override_is_checked():
    s = torch.randn(1, 3, 1, 4, 4)
    post = Posterior(s, mean=torch.zeros(1, 1, 4, 4))
    assert torch.equal(post.as_tensor(), torch.zeros(1, 1, 4, 4))
    assert torch.allclose(post.std, s.std(1))
    with pytest.raises(ValueError, match="mean"):
        Posterior(s, mean=torch.zeros(1, 4, 4))
