"""The state a DWGF run carries from level to level.

A scheme keeps its particles in a :class:`ParticleState` (sampling schemes) or a
:class:`FlowState` (the optimiser-driven flow). What a likelihood step remembers between levels
lives in that step's own cache (:class:`StepCache` subclasses), so the state is not the union of
every step's fields: resampling permutes a cache's per-particle tensors through
:meth:`StepCache.take`, and the retry's snapshot copies it with :meth:`StepCache.clone`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

__all__ = ["FlowState", "ImageCache", "MALACache", "ParticleState", "StepCache"]


def _rows(**kwargs):
    """A dataclass field holding one row per particle (permuted on resampling)."""
    return field(metadata={"rows": True}, **kwargs)


@dataclass
class StepCache:
    """What a likelihood step keeps between levels. ``phi``: the data term
    :math:`\\Phi` of each particle (unperturbed data) after the last draw, or None."""

    phi: Tensor | None = _rows(default=None)

    def take(self, rows: Tensor) -> None:
        """Reorder the per-particle tensors after resampling (``rows``: the new order)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("rows") and isinstance(value, Tensor):
                setattr(self, f.name, value[rows])

    def clone(self) -> StepCache:
        """A copy whose tensors do not share memory with this one."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).clone()
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )


@dataclass
class ExactCache(StepCache):
    """The exact step's factors of :math:`u \\mapsto A(D(u))` (shared by all particles)."""

    factors: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class MALACache(StepCache):
    """MALA's gradient at each particle, its step-size factor ``eta`` and the data term's
    tracked mean curvature ``curv`` per measurement (negative: not measured yet)."""

    grad: Tensor | None = _rows(default=None)
    eta: Tensor | None = None
    curv: Tensor | None = None


@dataclass
class ImageCache(StepCache):
    """The image step's last draw :math:`x^\\star` and decoded prior draw :math:`D(\\tilde c)`
    (model units, flattened), where the final decoder-error step continues; None after a level
    of the latent step."""

    image: Tensor | None = _rows(default=None)
    image_base: Tensor | None = _rows(default=None)


@dataclass
class ParticleState:
    """Particles of the sampling schemes (``"smc"``, ``"gibbs"``).

    :param z: particles, flattened latents ``(n, dim)``.
    :param log_w: log-weights ``(batch, particles)`` (float64; zero in the Gibbs scheme).
    :param step: the name of the run's likelihood step (``likelihood_step`` resolved).
    :param cache: that step's cache.
    :param rho2_prev: the previous level's :math:`\\rho^2` (SMC reweighting).
    :param resamples: measurements resampled so far.
    :param latent_only: levels use the latent RTO step even where the image step would act
        (the retry's rerun).
    """

    z: Tensor
    log_w: Tensor
    step: str
    cache: StepCache
    rho2_prev: float | None = None
    resamples: int = 0
    latent_only: bool = False

    def take(self, rows: Tensor) -> None:
        """Reorder the particles and their cache (resampling)."""
        self.z = self.z[rows]
        self.cache.take(rows)

    def clone(self) -> ParticleState:
        """A copy that shares no tensor memory with this state."""
        return replace(self, z=self.z.clone(), log_w=self.log_w.clone(), cache=self.cache.clone())


@dataclass
class FlowState:
    """Particles and optimiser state of the flow scheme (``sq_avg``: pSGLD's running mean of
    squared gradients per measurement)."""

    z: Tensor
    optimizer: torch.optim.Optimizer | None
    sq_avg: Tensor | None = None
