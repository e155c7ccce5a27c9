r"""The diffused-posterior Gibbs sampler (``scheme="gibbs"``; ``"auto"`` for learned decoders).

The split-Gibbs SMC evaluates the likelihood at a noisy latent, which a learned decoder was
never trained on (decoded, a latent at :math:`\rho \gg 1` gives meaningless, extremely stiff
likelihoods). This scheme attaches the likelihood to the clean latent instead and targets

.. math::

    \pi_\rho(u_0, u) \propto p_0(u_0)\, L(u_0)\, \mathcal{N}(u; u_0, \rho^2 I),

whose :math:`u_0`-marginal is the posterior at every level, by alternating its conditionals:
:math:`u \mid u_0 = \mathcal{N}(u_0, \rho^2 I)` exactly, and
:math:`u_0 \mid u \propto p(u_0 \mid u)\, L(u_0)` with the Tweedie Gaussian
:math:`p(u_0 \mid u) \approx \mathcal{N}(u - \rho\hat\epsilon, v_\rho I)`,
:math:`v_\rho = \rho^2/(1+\rho^2)`, :math:`\hat\epsilon = \epsilon_\theta(a u, t)` (one UNet
forward), drawn by the likelihood step. Each level leaves the posterior invariant up to the
Tweedie approximation (exact for unit-variance Gaussian data); the descending levels serve
mixing, so no weights are needed. The construction underlies DAPS (Zhang et al., 2024), here
with the Tweedie variance instead of a hand-set schedule.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from .kernel import SamplingKernel
from .state import ParticleState

if TYPE_CHECKING:
    from ..base import Problem

__all__ = ["GibbsKernel"]


class GibbsKernel(SamplingKernel):
    """One level: noise the clean particles to :math:`\\rho`, denoise them with the network
    (Tweedie mean and variance) and draw them again with the likelihood step."""

    name: ClassVar[str] = "gibbs"

    def initial_variance(self, problem: Problem) -> float:
        """The particles are clean latents: unit variance."""
        return 1.0

    def step(self, state: ParticleState, t: int, problem: Problem) -> dict[str, float]:
        ops = self.ops
        ab = ops.alpha_bar(t, problem)
        a, rho2 = math.sqrt(ab), (1.0 - ab) / ab
        rho = math.sqrt(rho2)
        var = rho2 / (1.0 + rho2)
        accept = float("nan")
        for _ in range(self.config.sweeps):
            u = state.z + rho * ops.randn(tuple(state.z.shape), problem)
            z_t = (a * u).reshape(problem.n, *problem.latent_shape).to(problem.dtype)
            eps = ops.predict_noise(z_t, t).reshape(problem.n, -1).to(state.z.dtype)
            centre = u - rho * eps
            accept = self.move(state, centre, var, problem)
        return {"rho": rho, **self.level_info(state, accept, problem)}
