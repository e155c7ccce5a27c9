r"""The Metropolis-adjusted Langevin likelihood step (``likelihood_step="mala"``).

``mala_steps`` MALA steps target :math:`\mathcal{N}(u; v, \delta^2 I)\, e^{-\Phi(u)}` (both
factors tractable: any data term, physics and decoder), each one decoder forward and backward
per particle. The step size :math:`\tau = \eta/(1/\delta^2 + h)` uses the data term's mean
curvature :math:`h`, tracked from the proposals' gradients as the secant
:math:`\Delta u \cdot \Delta\nabla\Phi/\|\Delta u\|^2` (a Rayleigh quotient of the Hessian along
a random direction), so a stiff likelihood does not need :math:`\eta` to change by orders of
magnitude between levels; :math:`\eta` adapts per measurement towards ``mala_accept``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .state import MALACache, ParticleState
from .steps import LikelihoodStep

if TYPE_CHECKING:
    from ..base import Problem

__all__ = ["MALAStep"]


class MALAStep(LikelihoodStep):
    """MALA on the level's conditional (returns the mean acceptance rate)."""

    name: ClassVar[str] = "mala"

    def new_cache(self) -> MALACache:
        return MALACache()

    def start(self, state: ParticleState, centre: Tensor, var0: float, problem: Problem) -> None:
        """Data term and gradient at the initial particles; step-size factor 0.1."""
        cache = state.cache
        assert isinstance(cache, MALACache)
        cache.phi, cache.grad = self.data_and_grad(state.z, problem)
        z = state.z
        cache.eta = torch.full((problem.batch,), 0.1, dtype=torch.float64, device=z.device)
        cache.curv = torch.full((problem.batch,), -1.0, dtype=torch.float64, device=z.device)

    def data_and_grad(self, u: Tensor, problem: Problem) -> tuple[Tensor, Tensor]:
        """Data term :math:`\\Phi(u)` per particle and its gradient, through the decoder only
        (one decoder forward and backward per particle)."""
        solver = self.ops
        phis, grads = [], []
        for sl in solver.chunks(problem.n):
            zc = u[sl].detach().reshape(-1, *problem.latent_shape).requires_grad_(True)
            with torch.enable_grad():
                ax = problem.physics.A(solver.render(zc))
                phi = problem.data_term.rows(sl)(ax, problem.y_rep[sl])
                (grad,) = torch.autograd.grad(phi.sum(), zc)
            solver.prior.calls["decoder_backward"] += zc.shape[0]
            phis.append(phi.detach().to(u.dtype))
            grads.append(grad.reshape(zc.shape[0], -1).to(u.dtype))
        return torch.cat(phis), torch.cat(grads)

    def draw(self, state: ParticleState, v: Tensor, delta2: float, problem: Problem) -> float:
        solver, cfg = self.ops, self.config.mala
        cache = state.cache
        assert isinstance(cache, MALACache)
        b, p = problem.batch, problem.particles
        assert cache.eta is not None and cache.phi is not None and cache.grad is not None
        if cfg.start == "reference":  # exact in the directions the data do not see
            u = v + math.sqrt(delta2) * solver.randn(tuple(v.shape), problem)
            phi, grad = self.data_and_grad(u, problem)
        else:
            u, phi, grad = state.z, cache.phi, cache.grad

        def log_target(u: Tensor, phi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
            return -(u - v).pow(2).sum(1) / (2 * delta2) - phi, -(u - v) / delta2 - grad

        lg, gl = log_target(u, phi, grad)
        rates = []
        for _ in range(cfg.steps):
            assert cache.curv is not None
            tau_b = cache.eta / (1.0 / delta2 + cache.curv.clamp_min(0.0))
            tau = tau_b.repeat_interleave(p).to(u.dtype)[:, None]
            prop = u + tau * gl + (2 * tau).sqrt() * solver.randn(tuple(u.shape), problem)
            phi_p, grad_p = self.data_and_grad(prop, problem)
            self._update_curvature(cache, prop - u, grad_p - grad, problem)
            lg_p, gl_p = log_target(prop, phi_p, grad_p)
            fwd = -(prop - u - tau * gl).pow(2).sum(1) / (4 * tau[:, 0])
            bwd = -(u - prop - tau * gl_p).pow(2).sum(1) / (4 * tau[:, 0])
            log_alpha = torch.nan_to_num(lg_p - lg + bwd - fwd, nan=-math.inf)
            unif = torch.rand(u.shape[0], generator=problem.generator, device=problem.device)
            acc = torch.log(unif.to(u.dtype)) < log_alpha
            a2 = acc[:, None]
            u, phi = torch.where(a2, prop, u), torch.where(acc, phi_p, phi)
            grad = torch.where(a2, grad_p, grad)
            lg, gl = torch.where(acc, lg_p, lg), torch.where(a2, gl_p, gl)
            rate = acc.reshape(b, p).to(torch.float64).mean(1)
            cache.eta = (cache.eta * torch.exp(2.0 * (rate - cfg.accept))).clamp(1e-6, 1.0)
            rates.append(float(rate.mean()))
        state.z, cache.phi, cache.grad = u, phi, grad
        return sum(rates) / len(rates)

    @staticmethod
    def _update_curvature(cache: MALACache, du: Tensor, dg: Tensor, problem: Problem) -> None:
        """Track the mean curvature per measurement (see the module documentation)."""
        b, p = problem.batch, problem.particles
        num = (du * dg).to(torch.float64).sum(1)
        den = du.to(torch.float64).pow(2).sum(1).clamp_min(1e-300)
        new = torch.nan_to_num((num / den).reshape(b, p).mean(1), nan=0.0).clamp_min(0.0)
        assert cache.curv is not None
        first = cache.curv < 0
        cache.curv = torch.where(first, new, 0.5 * cache.curv + 0.5 * new)
