r"""The latent randomise-then-optimise likelihood step (``likelihood_step="rto"``).

One damped Gauss-Newton step of :func:`~.rto.gauss_newton_rto` on
:math:`u \mapsto A(\mathrm{from\_model}(D(u)))`, through the decoder: ``cg_steps + 1``
decoder backward passes per particle and level. Exact for an affine decoder and a converged CG;
for a learned decoder, CG resolves the few stiff, data-dominated directions of the
ill-conditioned conditional first, and the rest keep the prior's draw. Poisson data use the
Gaussian approximation of their likelihood at the current particle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from .rto import gauss_newton_rto, real_flat
from .state import ParticleState
from .steps import LikelihoodStep

if TYPE_CHECKING:
    from ..base import Problem

__all__ = ["LatentRTOStep"]


class LatentRTOStep(LikelihoodStep):
    """RTO draw in latent space, started per ``cg_start`` (returns the fraction moved)."""

    name: ClassVar[str] = "rto"

    def draw(self, state: ParticleState, centre: Tensor, var: float, problem: Problem) -> float:
        solver, cfg = self.ops, self.config.rto
        shape = problem.latent_shape

        def apply(u: Tensor, sl: slice) -> Tensor:
            return real_flat(problem.physics.A(solver.render(u.reshape(-1, *shape))))

        new, phi, moved = gauss_newton_rto(
            solver,
            problem,
            state.z.detach(),
            centre,
            var,
            apply,
            cg_steps=cfg.cg_steps,
            line_search=cfg.line_search,
            decoder=True,
            start="centre" if cfg.starts_at_centre(var) else "current",
        )
        state.z, state.cache.phi = new, phi
        return moved
