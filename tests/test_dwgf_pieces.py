"""DWGF composed: options declared once, capabilities not classes, stages in the loop."""

from __future__ import annotations

import dataclasses
import math

import deepinv as dinv
import numpy as np
import pytest
import torch

from dwgf_sci.errors import ConfigError
from dwgf_sci.operators import MatrixOperator
from dwgf_sci.priors import GaussianMixturePrior
from dwgf_sci.priors.base import LatentPrior
from dwgf_sci.priors.gaussian_mixture import GaussianMixture
from dwgf_sci.solvers import DWGF
from dwgf_sci.solvers.dwgf import PRESETS, DWGFConfig, keywords


def _fields(config) -> list[tuple[str, str]]:
    """(section, field) of every leaf option of a config, by walking its dataclasses."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += [(f.name, g.name) for g in dataclasses.fields(value)]
        else:
            out.append(("", f.name))
    return out


def test_every_config_field_reaches_settings_and_takes_its_keyword():
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 3))
    table = keywords()
    leaves = _fields(DWGFConfig())
    assert len(table) == len(leaves)  # one keyword per field, no field without one
    assert {(s or None, f) for s, f in leaves} == set(table.values())
    for name, preset in PRESETS.items():
        settings = DWGF(prior, name).settings()
        for key, (section, field) in table.items():
            holder = preset.config if section is None else getattr(preset.config, section)
            value = getattr(holder, field)
            if key == "image_error" and value == "auto":  # resolved from the prior's hints
                value = False
            assert settings[key] == (list(value) if isinstance(value, tuple) else value), key
    # every keyword is accepted, validated in one place and readable back from the solver
    for key in table:
        value = DWGF(prior).settings()[key]
        solver = DWGF(prior, **{key: value})
        attribute = getattr(solver, key)  # the option itself (a tuple stays a tuple)
        assert solver.settings()[key] == value
        assert (list(attribute) if isinstance(attribute, tuple) else attribute) == value


def test_unknown_or_invalid_options_name_the_option():
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="cg_steps"):
        DWGF(prior, cg_step=3)
    for key, bad in [("precond_power", 2.0), ("precond_power", -0.5), ("init_noise", -1.0),
                     ("betas", (0.9, 1.5)), ("refine_steps", -1)]:  # fmt: skip
        with pytest.raises(ConfigError, match=key.split("_")[0]):
            DWGF(prior, **{key: bad})
    for key, bad in [("cg_steps", 5.5), ("betas", "ab"), ("sweeps", 1.5)]:
        with pytest.raises(ConfigError, match=key):
            DWGF(prior, **{key: bad})
    # None keeps the preset's value; numpy numbers and arrays become plain Python values
    odd = DWGF(prior, cg_steps=None, lr=np.float32(0.5), sweeps=np.int64(2), interaction=1,
               betas=np.array([0.8, 0.9]))  # fmt: skip
    assert odd.cg_steps == DWGF(prior).cg_steps
    assert (odd.lr, odd.sweeps, odd.interaction) == (0.5, 2, True)
    assert odd.betas == (0.8, 0.9) and type(odd.sweeps) is int and hash(odd.config)
    solver = DWGF(prior)
    solver.cg_steps = 9  # setting an option rebuilds the pieces from the new config
    assert solver.config.rto.cg_steps == 9 and solver.settings()["cg_steps"] == 9
    with pytest.raises(ConfigError, match="lr"):
        solver.lr = 0.0


class UserMixturePrior(LatentPrior):
    """A user's own prior, written against the interface only: the Gaussian mixture in the
    latent, an identity decoder and encoder, exact noise predictions."""

    affine_decoder = True

    def __init__(self, weights, means, var):
        super().__init__(
            GaussianMixturePrior(weights, means, var).alphas_cumprod,
            image_channels=means.shape[1], latent_channels=means.shape[1], downsample=1,
            image_size=(1, 1),
        )  # fmt: skip
        self.mixture = GaussianMixture(weights, means, var)

    def _encode(self, x):
        return x

    def _decode(self, z):
        return z

    def _predict_noise(self, z_t, t):
        abar = self.alphas_cumprod[t].to(z_t.dtype)
        score = self.mixture.score(z_t.flatten(1), abar)
        return (-torch.sqrt(1.0 - abar)[:, None] * score).reshape(z_t.shape)


def test_a_user_prior_with_an_affine_decoder_gets_our_mixture_s_sampler():
    weights, means = torch.tensor([0.3, 0.7]), torch.tensor([[2.0, 0.0, -1.0], [-2.0, 1.0, 1.0]])
    ours = GaussianMixturePrior(weights, means, 0.5)
    theirs = UserMixturePrior(weights, means, 0.5)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, generator=g)
    physics = MatrixOperator(a, img_size=(3, 1, 1))
    physics.set_noise_model(dinv.physics.GaussianNoise(0.2))
    y = torch.randn(2, 2, generator=g)
    for preset in ("default", "fast"):
        runs = [DWGF(p, preset, particles=8, steps=10, seed=1)(y, physics) for p in (ours, theirs)]
        assert runs[0].settings["scheme"] == "auto"
        assert DWGF(theirs, preset).resolved_scheme() == "smc"
        torch.testing.assert_close(runs[1].samples, runs[0].samples, rtol=1e-5, atol=1e-6)
        assert [set(h) for h in runs[0].history] == [set(h) for h in runs[1].history]
    # without the declaration the same prior is treated as a learned decoder
    theirs.affine_decoder = False
    assert DWGF(theirs).resolved_scheme() == "gibbs"


def test_final_step_and_retry_are_steps_of_the_loop(tiny_latent_prior, tiny_blur_problem):
    prior = tiny_latent_prior
    physics, y = tiny_blur_problem
    s = 10.0 * float(y.abs().max())
    ys = torch.cat([y, y + 5.0 * s])  # the second measurement cannot be fitted
    seen = []
    post = DWGF(
        prior, "fast", particles=2, steps=6, seed=0, noise_sigma=s, image_retry=3.0,
        decoder_error=0.01, callback=lambda i, t, info, state: seen.append((i, dict(info), state)),
    )(ys, physics)  # fmt: skip
    stages = [info.get("stage", "level") for _, info, _ in seen]
    assert [i for i, _, _ in seen] == list(range(len(seen)))
    assert stages[:6] == ["level"] * 6 and stages[6] == "refine"
    assert stages[-2:] == ["refine", "retry"] and "retry" in seen[-1][1]
    assert post.history == [info for _, info, _ in seen]
    # the callback sees the state each step moved: the retry's rerun has its own particles
    first, rerun = seen[0][2], seen[-1][2]
    assert rerun is not first and all(st is first for _, _, st in seen[:7])
    # timing per level counts the levels only; the mean's data fit is computed once per run
    assert post.timing["per_step_s"] * 6 <= post.timing["total_s"]
    assert post.fit["reduced_chi2"].shape == (2,)
    assert bool(post.fit["reduced_chi2"][1] > post.fit["limit"][1])
    assert math.isfinite(float(post.fit["reduced_chi2"][0]))


def test_the_exact_draw_does_not_depend_on_the_eigenbasis(monkeypatch):
    """J^T J has a null space (4 latents, 2 measurements), inside which LAPACK may return any
    orthonormal basis, and every eigenvector only up to its sign: the exact step's draw goes
    through the symmetric square root, so another basis gives the same samples (the same seed
    gives the same draw on every machine)."""
    from dwgf_sci.solvers.dwgf import exact

    g = torch.Generator().manual_seed(0)
    prior = GaussianMixturePrior(torch.tensor([0.4, 0.6]), torch.randn(2, 4, generator=g), 0.5)
    physics = MatrixOperator(torch.randn(2, 4, generator=g), img_size=(4, 1, 1))
    physics.set_noise_model(dinv.physics.GaussianNoise(0.2))
    y = torch.randn(2, 2, generator=g)

    def run():
        return DWGF(prior, particles=8, steps=6, seed=1, likelihood_step="exact")(y, physics)

    plain = run().samples
    eigh = torch.linalg.eigh

    def other_basis(mat):
        lam, q = eigh(mat)
        c, s = math.cos(0.7), math.sin(0.7)
        rot = torch.eye(q.shape[-1], dtype=q.dtype)
        rot[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=q.dtype)  # the null space
        return lam, q @ rot * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=q.dtype)

    monkeypatch.setattr(exact.torch.linalg, "eigh", other_basis)
    rotated = run().samples
    torch.testing.assert_close(rotated, plain, rtol=1e-5, atol=1e-5)
    # (before the symmetric square root, measured: this rotation moved the samples by O(1))
