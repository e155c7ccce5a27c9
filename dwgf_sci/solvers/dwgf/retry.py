r"""The image step's retry: rerun the last levels with the latent step where the mean misses.

On some measurements the image-space likelihood step ends with a latent whose decoded image
misses the data. With ``image_retry`` :math:`= \rho_r > 0` the Gibbs run keeps a copy of its
state before the first level at noise level :math:`\le \rho_r`; after the final step it checks
the posterior mean of each measurement, and for one whose reduced chi-square exceeds
:func:`~dwgf_sci.solvers.likelihood.chi2_limit` it reruns those levels from the copy with the
latent RTO step (then the final step again) and replaces that measurement's particles. The
levels run for the whole batch; a measurement that fits keeps its first result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..likelihood import chi2_limit
from .rto import real_flat
from .state import ParticleState

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem

__all__ = ["ImageRetry"]

Result = tuple[Tensor, Tensor, "Tensor | None"]


class ImageRetry:
    """When to keep the copy, which measurements to redo, and how to merge the rerun.

    :param LatentSolver ops: the solver (for :math:`\\bar\\alpha_t`).
    :param float level: :math:`\\rho_r` (``image_retry``; 0: never).
    """

    def __init__(self, ops: LatentSolver, level: float) -> None:
        self.ops = ops
        self.level = level

    def arms(self, state: ParticleState, t: int, problem: Problem) -> bool:
        """Whether the level at timestep ``t`` is one at noise level at most :math:`\\rho_r` on
        an image-step run that can check its data fit (keep the state before it)."""
        if not self.level > 0 or state.step != "image" or state.latent_only:
            return False
        if problem.data_term.kind == "mse":
            return False
        ab = self.ops.alpha_bar(t, problem)
        return (1.0 - ab) / ab <= self.level**2

    def misses(self, result: Result, problem: Problem) -> tuple[Tensor, Tensor]:
        """Reduced chi-square of each measurement's posterior mean and whether it exceeds its
        limit."""
        _, x, means = result
        b, p = problem.batch, problem.particles
        mean = (x if means is None else means).reshape(b, p, *x.shape[1:]).mean(1)
        with torch.no_grad():
            ax = real_flat(problem.physics.A(mean))
            chi2 = problem.data_term.reduced_chi2(ax, real_flat(problem.y))
            informative = problem.data_term.informative(ax)
        limits = torch.tensor([chi2_limit(int(k)) for k in informative], device=chi2.device)
        return chi2, chi2 > limits

    @staticmethod
    def merge(result: Result, again: Result, bad: Tensor, particles: int) -> Result:
        """The first result with the rows of the measurements flagged in ``bad`` replaced."""
        z, x, means = result
        z2, x2, means2 = again
        rows = bad.repeat_interleave(particles)
        z[rows], x[rows] = z2[rows], x2[rows]
        if means is not None and means2 is not None:
            means[rows] = means2[rows]
        return z, x, means
