r"""Likelihood steps: draws of :math:`u \propto \mathcal{N}(u; c, v I)\, L(u)`.

Both sampling schemes reduce each level to this conditional (the SMC's likelihood half-step,
the Gibbs scheme's :math:`u_0 \mid u`); a likelihood step draws from it. Each step is a small
class with one :meth:`LikelihoodStep.draw`, its cache (:mod:`.state`) and a start:

* :class:`~.exact.ExactStep`: exact Gaussian draw (Gaussian data, linear physics, a prior that
  declares an affine decoder);
* :class:`~.latent_rto.LatentRTOStep`: randomise-then-optimise through the decoder;
* :class:`~.image_rto.ImageRTOStep`: the same in image space, mapped back by the encoder;
* :class:`~.mala.MALAStep`: Metropolis-adjusted Langevin (any data term, physics, decoder).

:func:`resolve_step_name` turns ``likelihood_step="auto"`` into one of them for a problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from deepinv.physics import LinearPhysics
from torch import Tensor

from ...errors import ConfigError
from .config import DWGFConfig
from .state import ParticleState, StepCache

if TYPE_CHECKING:
    from ...priors.base import LatentPrior
    from ..base import LatentSolver, Problem

__all__ = ["EXACT_MAX_DIM", "LikelihoodStep", "resolve_step_name"]

#: Largest latent dimension for which ``likelihood_step="auto"`` builds the dense matrix J.
EXACT_MAX_DIM = 4096


class LikelihoodStep:
    r"""Base class: draws the particles from :math:`\mathcal{N}(u; c, v I)\, L(u)`.

    :param LatentSolver ops: the solver whose networks, chunks and random draws the step uses.
    :param DWGFConfig config: the run's options.
    """

    #: The ``likelihood_step`` value that selects this step.
    name: ClassVar[str] = ""
    #: Whether :meth:`draw` returns an acceptance statistic worth recording.
    reports_accept: ClassVar[bool] = True

    def __init__(self, ops: LatentSolver, config: DWGFConfig) -> None:
        self.ops = ops
        self.config = config

    def new_cache(self) -> StepCache:
        """An empty cache for this step."""
        return StepCache()

    def start(self, state: ParticleState, centre: Tensor, var0: float, problem: Problem) -> None:
        """Condition the initial particles :math:`\\mathcal{N}(c, v_0 I)` on the data where
        the step can (default: nothing)."""

    def draw(self, state: ParticleState, centre: Tensor, var: float, problem: Problem) -> float:
        """Replace ``state.z`` by a draw of the conditional; return the acceptance statistic
        (fraction of particles moved or accepted; NaN when it has none)."""
        raise NotImplementedError

    def misfit(self, state: ParticleState, problem: Problem) -> dict[str, float]:
        """Mean data term of the particles (and reduced chi-square where it is free), without
        a network call."""
        assert state.cache.phi is not None
        return {"data": float(state.cache.phi.mean())}


def resolve_step_name(config: DWGFConfig, prior: LatentPrior, problem: Problem, dim: int) -> str:
    """The likelihood step a run uses: ``"auto"`` resolved, ``"exact"`` refused where it cannot
    apply. Called before any network call."""
    wanted = config.likelihood_step
    kind = problem.data_term.kind
    reasons = []
    if kind != "gaussian":
        reasons.append(f"the data term is {kind!r}, not 'gaussian'")
    if not isinstance(problem.physics, LinearPhysics):
        reasons.append("the physics is not a deepinv LinearPhysics")
    if not prior.affine_decoder:
        reasons.append("the prior does not declare an affine decoder (affine_decoder)")
    if wanted == "exact":
        if reasons:
            raise ConfigError("likelihood_step='exact' needs " + "; ".join(reasons))
        return "exact"
    if wanted == "auto" and not reasons and dim <= EXACT_MAX_DIM:
        return "exact"
    if wanted in ("rto", "image") and kind == "mse":
        raise ConfigError(
            f"likelihood_step={wanted!r} needs a Gaussian or Poisson data term, found 'mse'; "
            "use 'mala'"
        )
    if wanted == "image":
        return "image"
    if wanted in ("auto", "rto") and kind != "mse":
        return "rto"
    return "mala"
