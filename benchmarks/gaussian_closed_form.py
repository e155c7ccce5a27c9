r"""DWGF against the closed-form posterior of a Gaussian prior and a linear operator.

Prior :math:`x \sim \mathcal{N}(0, I_d)` (a one-component
:class:`~dwgf_sci.priors.GaussianMixturePrior`, identity decoder), operator
:math:`A \in \mathbb{R}^{m \times d}` with i.i.d. :math:`\mathcal{N}(0, 9/d)` entries, observation
:math:`y = A x_0 + \sigma n`. The posterior is :math:`\mathcal{N}(\mu, \Sigma)` with
:math:`\Sigma = (I + A^\top A/\sigma^2)^{-1}`, :math:`\mu = \Sigma A^\top y / \sigma^2`.

For each case it reports the RMS over coordinates of the mean error in posterior standard
deviations, :math:`\sqrt{\mathrm{mean}_i ((\hat\mu_i - \mu_i)/\Sigma_{ii}^{1/2})^2}` (Monte Carlo
level with :math:`N` particles: about :math:`N^{-1/2}`), and the ratio of sample to exact
marginal variances (mean, min, max over coordinates; 1 is calibrated), for

* ``default``: ``DWGF(prior, particles=N, steps=200)`` (the split-Gibbs SMC, which the default
  preset uses for an affine decoder, exact likelihood step);
* ``default-mala``: the same with ``likelihood_step="mala"`` (the path once used for non-linear
  decoders and likelihoods);
* ``gibbs``: the diffused-posterior Gibbs scheme (the default for learned decoders) with the
  exact likelihood step, the preset's 50 levels;
* ``gibbs-rto``: the same with the randomise-then-optimise likelihood step (5 CG iterations), the
  path every learned-decoder prior takes;
* ``flow``: the previous default, ``scheme="flow"`` (annealed preconditioned Langevin);
* ``reference``: ``DWGF.reference(prior, particles=64)`` (the reference implementation's
  settings, 1000 steps), for contrast.

Run::

    python benchmarks/gaussian_closed_form.py

It writes ``benchmarks/results/gaussian_closed_form.md`` and ``.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import deepinv as dinv
import torch

from dwgf_sci.operators import MatrixOperator
from dwgf_sci.priors import GaussianMixturePrior
from dwgf_sci.solvers import DWGF

RESULTS = Path(__file__).parent / "results"
CASES = [(8, 4, 0.3), (16, 4, 0.1), (32, 8, 0.3), (64, 16, 0.05)]
PARTICLES = 1000
METHODS: dict[str, dict[str, Any]] = {
    "default": {"particles": PARTICLES, "steps": 200},
    "default-mala": {"particles": PARTICLES, "steps": 200, "likelihood_step": "mala"},
    "gibbs": {"particles": PARTICLES, "scheme": "gibbs"},
    "gibbs-rto": {"particles": PARTICLES, "scheme": "gibbs", "likelihood_step": "rto"},
    "flow": {"particles": PARTICLES, "scheme": "flow"},
    "reference": {"preset": "reference", "particles": 64},
}


def problem(d: int, m: int, sigma: float, seed: int = 0):
    """Prior, physics, measurement and exact posterior mean and covariance (float64)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g, dtype=torch.float64) * 3 / math.sqrt(d)
    physics = MatrixOperator(a, img_size=(d, 1, 1))
    physics.set_noise_model(dinv.physics.GaussianNoise(sigma))
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, d, dtype=torch.float64))
    x0 = torch.randn(d, generator=g, dtype=torch.float64)
    y = a @ x0 + sigma * torch.randn(m, generator=g, dtype=torch.float64)
    cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + a.T @ a / sigma**2)
    mean = cov @ a.T @ y / sigma**2
    return prior, physics, y[None], mean, cov


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for d, m, sigma in CASES:
        prior, physics, y, mean, cov = problem(d, m, sigma)
        sd = cov.diagonal().sqrt()
        cond = float(torch.linalg.cond(torch.linalg.inv(cov)))
        for name, cfg in METHODS.items():
            cfg = dict(cfg)
            preset = cfg.pop("preset", "default")
            start = time.perf_counter()
            post = DWGF(prior, preset=preset, seed=1, **cfg)(y, physics)
            seconds = time.perf_counter() - start
            s = post.samples.reshape(-1, d).double()
            err = float(((s.mean(0) - mean) / sd).pow(2).mean().sqrt())
            ratio = s.var(0) / cov.diagonal()
            steps = len(post.history)
            n = s.shape[0]
            rows.append(
                {
                    "d": d,
                    "m": m,
                    "sigma": sigma,
                    "condition": cond,
                    "method": name,
                    "particles": n,
                    "steps": steps,
                    "mean_err_sd": err,
                    "var_ratio_mean": float(ratio.mean()),
                    "var_ratio_min": float(ratio.min()),
                    "var_ratio_max": float(ratio.max()),
                    "calls": dict(post.calls),
                    "seconds": seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gaussian_closed_form.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# DWGF vs the closed-form Gaussian posterior",
        "",
        "Made by `python benchmarks/gaussian_closed_form.py` (N(0, I) prior, A with N(0, 9/d)",
        "entries, seed 0). Mean error: RMS over coordinates, in posterior standard deviations",
        "(Monte Carlo level about 1/sqrt(particles)); variance ratio: sample / exact marginal",
        "variance (mean [min, max] over coordinates). `cond`: condition number of the posterior",
        "precision. Calls are per run (all particles).",
        "",
        "| d | m | sigma | cond | method | particles | steps | mean err (sd) | var ratio | calls |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        calls = ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items()))
        lines.append(
            f"| {r['d']} | {r['m']} | {r['sigma']} | {r['condition']:.0f} | {r['method']} | "
            f"{r['particles']} | {r['steps']} | {r['mean_err_sd']:.3f} | "
            f"{r['var_ratio_mean']:.2f} [{r['var_ratio_min']:.2f}, {r['var_ratio_max']:.2f}] | "
            f"{calls} |"
        )
    (RESULTS / "gaussian_closed_form.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
