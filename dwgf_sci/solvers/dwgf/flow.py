r"""The optimiser-driven flow (``scheme="flow"``), as the reference implementation runs it.

Particles :math:`z^{(i)}` start from :math:`\mathcal{N}(0, I)` (or the encoded
:math:`A^\dagger y`) and take one optimiser step per timestep of the descending grid. At
timestep :math:`t`, with :math:`a = \sqrt{\bar\alpha_t}`, :math:`s = \sqrt{1-\bar\alpha_t}`:

1. :math:`z_t = a z + s\epsilon` and :math:`\hat\epsilon = \epsilon_\theta(z_t, t)` (no gradient);
2. the prior drift :math:`g = w_t\big[\tfrac{s}{a}(\hat\epsilon - \epsilon) - (z - \bar z)\big]`
   with :math:`\bar z^{(i)} = \sum_j r_{ij} z^{(j)}`, responsibilities
   :math:`r_{ij} \propto \exp(-\|z_t^{(i)} - a z^{(j)}\|^2/2s^2)` (the particles'
   interaction), applied as the surrogate :math:`\langle z, \mathrm{sg}(g)\rangle`;
3. the data term :math:`\ell(y, A(\mathrm{from\_model}(D(z) + \xi)))`, through the decoder only;
4. optionally the encoder term :math:`\gamma\langle x, \mathrm{sg}(x - D(E(x + \xi)))\rangle`.

With ``data_term="mse"`` every term is an element mean (the reference); otherwise terms are sums
and ``prior_weight_schedule="score"`` makes the drift an unbiased prior score. ``temperature >
0`` adds the Langevin noise of the Wasserstein gradient flow of the KL divergence
(preconditioned SGLD): the flow becomes an approximate posterior sampler.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .state import FlowState

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem
    from .config import DWGFConfig

__all__ = ["FlowKernel"]


class FlowKernel:
    """One optimiser step of the flow per timestep.

    :param LatentSolver ops: the solver whose networks, chunks and random draws it uses.
    :param DWGFConfig config: the run's options (``config.flow``, ``init``, ``init_noise``).
    """

    name: ClassVar[str] = "flow"

    def __init__(self, ops: LatentSolver, config: DWGFConfig) -> None:
        self.ops = ops
        self.config = config

    def init_state(self, problem: Problem) -> FlowState:
        """Start the particles (random or pseudo-inverse) and the optimiser."""
        ops, cfg, flow = self.ops, self.config, self.config.flow
        shape = (problem.n, *problem.latent_shape)
        if cfg.init == "random":
            z = ops.randn(shape, problem)
        else:
            z0 = ops.encode_physical(ops.pseudo_inverse(problem)).to(problem.dtype)
            z = z0.repeat_interleave(problem.particles, 0)
            z = z + cfg.init_noise * ops.randn(shape, problem)
        z.requires_grad_(True)
        opt: torch.optim.Optimizer | None = None
        if flow.optimizer == "adam":
            opt = torch.optim.Adam([z], lr=flow.lr, betas=flow.betas)
        elif flow.optimizer == "sgd":
            opt = torch.optim.SGD([z], lr=flow.lr)
        return FlowState(z=z, optimizer=opt)

    def weight(self, ab: float) -> float:
        """Prior weight :math:`w_t` at :math:`\\bar\\alpha_t = ab`."""
        flow = self.config.flow
        if flow.prior_weight_schedule == "score":
            return flow.prior_weight * ab / (1.0 - ab)
        return flow.prior_weight

    @staticmethod
    def mixture_offset(z: Tensor, z_t: Tensor, a: float, s: float, groups: int) -> Tensor:
        """:math:`z^{(i)} - \\bar z^{(i)}`, the particle-interaction part of the prior drift."""
        n = z.shape[0] // groups
        flat = z.reshape(groups, n, -1)
        noisy = z_t.reshape(groups, n, -1)
        d2 = torch.cdist(noisy, a * flat).pow(2)
        resp = torch.softmax(-d2 / (2 * s * s), dim=-1)
        return (flat - resp @ flat).reshape(z.shape)

    def step(self, state: FlowState, t: int, problem: Problem) -> dict[str, float]:
        """One optimiser step at timestep ``t`` (see the module documentation)."""
        ops, flow = self.ops, self.config.flow
        prior = ops.prior
        z = state.z
        ab = ops.alpha_bar(t, problem)
        a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
        with torch.no_grad():
            eps = ops.randn(tuple(z.shape), problem) if flow.score_noise else torch.zeros_like(z)
            z_t = a * z + s * eps
            drift = (s / a) * (ops.predict_noise(z_t, t) - eps)
            if flow.interaction and problem.particles > 1:
                drift -= self.mixture_offset(z, z_t, a, s, problem.batch)
            drift *= self.weight(ab)
        mean_mode = problem.data_term.kind == "mse"

        def reduce(v: Tensor) -> Tensor:
            v = v.flatten(1)
            return v.mean(1) if mean_mode else v.sum(1)

        xi = None
        if flow.decoder_noise > 0:  # drawn once for all particles: chunking changes nothing
            xi = flow.decoder_noise * ops.randn((problem.n, *problem.image_shape), problem)
        z.grad = None
        data_sum = chi2_sum = 0.0
        for sl in ops.chunks(problem.n):
            zc = z[sl]
            x = prior.decode(zc)
            x_noisy = x if xi is None else x + xi[sl]
            ax = problem.physics.A(prior.from_model(x_noisy))
            term = problem.data_term.rows(sl)
            data = term(ax, problem.y_rep[sl])
            loss = data + reduce(zc * drift[sl])
            if flow.encoder_weight > 0:
                with torch.no_grad():
                    x_re = prior.decode(prior.encode(x_noisy))
                loss = loss + flow.encoder_weight * reduce(x * (x - x_re))
            total = loss.sum() / problem.n if mean_mode else loss.sum()
            total.backward()
            prior.calls["decoder_backward"] += zc.shape[0]
            with torch.no_grad():
                data_sum += float(data.sum())
                chi2_sum += float(term.reduced_chi2(ax, problem.y_rep[sl]).sum())
        self.update(state, problem)
        return {
            "data": data_sum / problem.n,
            "chi2": chi2_sum / problem.n,
            "weight": self.weight(ab),
        }

    def update(self, state: FlowState, problem: Problem) -> None:
        """The optimiser step (Adam, SGD), or the (preconditioned) Langevin step."""
        flow = self.config.flow
        z = state.z
        if state.optimizer is not None and flow.temperature == 0:
            state.optimizer.step()
            return
        with torch.no_grad():
            g = z.grad
            if flow.optimizer == "psgld":
                # squared gradients averaged over time and over the particles of a measurement:
                # a preconditioner that hardly depends on any one particle keeps the Langevin
                # dynamics' stationary law (no divergence correction needed)
                beta = flow.betas[1]
                groups = g.reshape(problem.batch, problem.particles, *g.shape[1:])
                sq = groups.pow(2).mean(dim=1, keepdim=True)
                if state.sq_avg is None:
                    state.sq_avg = sq
                else:
                    state.sq_avg.mul_(beta).add_(sq, alpha=1 - beta)
                scale = state.sq_avg.pow(0.5 * flow.precond_power) + 1e-12
                precond = (1.0 / scale).expand_as(groups).reshape(g.shape)
            else:
                precond = torch.ones_like(z)
            step = flow.lr * precond
            z -= step * g
            if flow.temperature > 0:
                noise = self.ops.randn(tuple(z.shape), problem)
                z += flow.temperature * torch.sqrt(2 * step) * noise

    def final_latents(self, state: FlowState, problem: Problem) -> Tensor:
        """The particles after the last step."""
        return state.z
