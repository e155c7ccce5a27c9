r"""The annealed split-Gibbs SMC (``scheme="smc"``; ``"auto"`` for an affine decoder).

With :math:`\rho_t = s_t/a_t` and :math:`p_\rho = p_0 * \mathcal{N}(0, \rho^2 I)`, the particles
:math:`u` target :math:`\pi_\rho(u) \propto p_\rho(u)\, L(u)` along the descending grid, with
:math:`\nabla\log p_\rho(u) = -\epsilon_\theta(a u, t)/\rho`. Each level:

1. **Reweighting**: :math:`\log w_n = -c_n\rho_n^2\|\hat\epsilon\|^2 / (2(1 - c_n v_n))`,
   :math:`c_n = \rho_n^{-2} - \rho_{n-1}^{-2}`, :math:`v_n = \rho_n^2/(1+\rho_n^2)`, from the
   same network call as the move (exact for unit-variance Gaussian data; optionally corrected
   by a Hutchinson estimate of the Laplacian, ``laplacian_probes``); systematic resampling
   when the effective sample size falls below ``resample_ess``.
2. **Prior half-step**: with :math:`\delta^2 = \kappa\rho^2` (``split``),
   :math:`v = u - \kappa\rho\hat\epsilon + \sqrt{\delta^2(1+\rho^2-\delta^2)/(1+\rho^2)}\,\xi`.
3. **Likelihood half-step**: :math:`u \mid v \propto \mathcal{N}(u; v, \delta^2 I)\, L(u)`, by
   the likelihood step.

The derivations are in ``docs/method.md``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .kernel import SamplingKernel
from .state import ParticleState

if TYPE_CHECKING:
    from ..base import Problem

__all__ = ["SMCKernel", "log_weight_increment"]


def log_weight_increment(eps: Tensor, rho2: float, rho2_prev: float) -> Tensor:
    """:math:`\\log p_{\\rho_n}(u) - \\log p_{\\rho_{n-1}}(u)` up to a constant, from
    :math:`\\hat\\epsilon = \\epsilon_\\theta(a_n u, t_n)` (exact for unit-variance Gaussian
    data).

    :param Tensor eps: noise predictions ``(n, ...)`` at the new level.
    :param float rho2: :math:`\\rho_n^2`; ``rho2_prev``: :math:`\\rho_{n-1}^2 > \\rho_n^2`.
    :return: ``(n,)`` float64.
    """
    c, v_n = 1.0 / rho2 - 1.0 / rho2_prev, rho2 / (1.0 + rho2)
    sq = eps.to(torch.float64).flatten(1).pow(2).sum(1)
    return -c * rho2 * sq / (2.0 * (1.0 - c * v_n))


class SMCKernel(SamplingKernel):
    """One level of the annealed split-Gibbs SMC: reweight, resample, prior and likelihood
    half-steps."""

    name: ClassVar[str] = "smc"

    def initial_variance(self, problem: Problem) -> float:
        """The particles are noisy latents at the first level: :math:`1 + \\rho_0^2`."""
        ab = self.ops.alpha_bar(int(problem.grid[0]), problem)
        return 1.0 + (1.0 - ab) / ab

    def step(self, state: ParticleState, t: int, problem: Problem) -> dict[str, float]:
        ops, cfg = self.ops, self.config.smc
        ab = ops.alpha_bar(t, problem)
        a, rho2 = math.sqrt(ab), (1.0 - ab) / ab
        rho = math.sqrt(rho2)
        b, p = problem.batch, problem.particles
        ess, accept = 1.0, float("nan")
        for sweep in range(self.config.sweeps):
            z_t = (a * state.z).reshape(problem.n, *problem.latent_shape).to(problem.dtype)
            eps = ops.predict_noise(z_t, t).reshape(problem.n, -1).to(state.z.dtype)
            prev = state.rho2_prev
            if sweep == 0 and cfg.resample_ess > 0 and prev is not None and rho2 < prev:
                inc = log_weight_increment(eps, rho2, prev)
                if cfg.laplacian_probes:
                    inc = inc + self.laplacian_correction(state, eps, a, t, rho2, prev, problem)
                state.log_w = state.log_w + inc.reshape(b, p)
                w = torch.softmax(state.log_w, dim=1)
                ess_b = 1.0 / w.pow(2).sum(1) / p
                ess = float(ess_b.mean())
                low = ess_b < cfg.resample_ess
                if bool(low.any()):
                    eps = eps[self.resample(state, problem, low)]
            delta2 = cfg.split * rho2
            rest2 = rho2 - delta2
            noise = ops.randn(tuple(state.z.shape), problem)
            v = state.z - cfg.split * rho * eps
            v = v + math.sqrt(delta2 * (1.0 + rest2) / (1.0 + rho2)) * noise
            accept = self.move(state, v, delta2, problem)
        state.rho2_prev = rho2
        info = {"ess": ess, "resamples": float(state.resamples), "rho": rho}
        info.update(self.level_info(state, accept, problem))
        return info

    def laplacian_correction(
        self,
        state: ParticleState,
        eps: Tensor,
        a: float,
        t: int,
        rho2: float,
        prev: float,
        problem: Problem,
    ) -> Tensor:
        r"""Correction of :func:`log_weight_increment` for non-Gaussian data.

        The increment takes :math:`\mathrm{tr}\,\mathrm{Cov}[x \mid u]` to be :math:`D v_n`. By
        the heat equation :math:`\partial_\tau\log p_\tau = \tfrac12(\Delta\log p_\tau +
        \|\nabla\log p_\tau\|^2)`, :math:`\tau = \rho^2`, and :math:`\Delta\log p_\rho =
        (\mathrm{tr}\,\mathrm{Cov}[x \mid u] - D\rho^2)/\rho^4`, the missing term is
        :math:`-\tfrac{\Delta\tau}{2}(\mathrm{tr}\,\mathrm{Cov}[x \mid u] - D v_n)/\rho^4`.
        Tweedie's second identity gives :math:`\mathrm{Cov}[x \mid u] = \rho^2\,\partial\hat x
        /\partial u`, :math:`\hat x(u) = u - \rho\,\epsilon_\theta(a u, t)`, whose trace is a
        Hutchinson estimate with Rademacher probes :math:`r` and a forward difference of step
        :math:`h = 0.1\rho`: :math:`D - \rho\, r\cdot(\epsilon_\theta(a(u + h r)) -
        \epsilon_\theta(a u))/h`. One UNet forward per probe and particle, no backward."""
        ops, probes = self.ops, self.config.smc.laplacian_probes
        dim = state.z.shape[1]
        rho = math.sqrt(rho2)
        h = 0.1 * rho
        trace = torch.zeros(state.z.shape[0], dtype=torch.float64, device=state.z.device)
        for _ in range(probes):
            r = torch.randint(
                0, 2, tuple(state.z.shape), generator=problem.generator, device=problem.device
            )
            r = (2 * r - 1).to(state.z.dtype)
            z_t = (a * (state.z + h * r)).reshape(problem.n, *problem.latent_shape)
            eps_h = ops.predict_noise(z_t.to(problem.dtype), t).reshape(problem.n, -1)
            diff = (r * (eps_h.to(eps.dtype) - eps)).to(torch.float64).sum(1)
            trace += (dim - rho * diff / h) / probes
        v_n = rho2 / (1.0 + rho2)
        return -0.5 * (prev - rho2) * (rho2 * trace - dim * v_n) / rho2**2
