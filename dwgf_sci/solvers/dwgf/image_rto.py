r"""The image-space likelihood step (``likelihood_step="image"``, the fast preset's).

The latent RTO step costs ``cg_steps + 1`` decoder backward passes per level, and the decoder
is the dearest network of these priors. This step solves the same conditional in image space:
draw the prior's :math:`\tilde c = c + \sqrt v\,\xi`, decode it (and, for the first particle of
each measurement, the centre :math:`c`). Near :math:`\tilde c` the decoded image
:math:`x = D(u) + e` has covariance :math:`v JJ^\top + S^2`, :math:`J = \partial D/\partial u`,
:math:`S` the decoder's per-pixel error (with ``image_error``; else 0). :math:`v JJ^\top` is
replaced by :math:`g I`, :math:`g = \|D(\tilde c) - D(c)\|^2/\dim u` (one draw of
:math:`v\,\mathrm{tr}(JJ^\top)` over the rank of :math:`J`). For a prior whose statistics are
local (``local_extent``, a patch prior on an image larger than its patches) :math:`g` is a map:
the same estimate over the window of that extent around each pixel, so a field's bright
objects and its empty sky each get their own scale. With :math:`T^2 = gI + S^2`, one
randomise-then-optimise step in image space

.. math::

    x^\star = \arg\min_x \tfrac12\|T^{-1}(x - D(\tilde c))\|^2
               + \tfrac12\|A(x) - \tilde y\|^2_{\Sigma^{-1}}

(perturbed data :math:`\tilde y`; :mod:`.image_cg`) is an exact draw of this linearised
conditional, and the encoder maps it back:
:math:`u = \tilde c + E(x^\star) - E(D(\tilde c))` (the difference cancels the autoencoder's
round-trip error at :math:`\tilde c`). Per particle and level: one UNet forward,
:math:`1 + 1/N` decoder and two encoder forwards, no backward pass. Exact when decoder and
encoder are the identity. Below noise level ``image_until``, and in the retry's rerun, the latent
RTO step takes over.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .image_cg import white_image_rto
from .latent_rto import LatentRTOStep
from .state import ImageCache, ParticleState
from .steps import LikelihoodStep

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem
    from .config import DWGFConfig
    from .refine import DecoderErrorStep

__all__ = ["ImageRTOStep"]


def window_mean(x: Tensor, extent: tuple[int, int]) -> Tensor:
    """Mean of ``x`` ``(..., H, W)`` over the ``extent`` window centred on each pixel (cut at
    the borders), by cumulative sums: linear in the image size."""
    out = x
    for dim, size in ((-2, extent[0]), (-1, extent[1])):
        length = out.shape[dim]
        lo = torch.arange(length, device=x.device) - size // 2
        hi = (lo + size).clamp(max=length)
        lo = lo.clamp(min=0)
        zero = torch.zeros_like(out.narrow(dim, 0, 1))
        csum = torch.cat([zero, out.cumsum(dim)], dim)
        total = csum.index_select(dim, hi) - csum.index_select(dim, lo)
        shape = [1] * out.ndim
        shape[dim] = length
        out = total / (hi - lo).to(out.dtype).reshape(shape)
    return out


class ImageRTOStep(LikelihoodStep):
    """RTO in image space, mapped back by the encoder; the latent step below ``image_until``."""

    name: ClassVar[str] = "image"

    def __init__(self, ops: LatentSolver, config: DWGFConfig, errors: DecoderErrorStep) -> None:
        super().__init__(ops, config)
        self.latent = LatentRTOStep(ops, config)
        self.errors = errors

    def new_cache(self) -> ImageCache:
        return ImageCache()

    def acts(self, state: ParticleState, var: float) -> bool:
        """Whether this level takes the image step (else the latent RTO step)."""
        until = self.config.image.until
        return not state.latent_only and var > until**2 / (1.0 + until**2)

    def draw(self, state: ParticleState, centre: Tensor, var: float, problem: Problem) -> float:
        cache = state.cache
        assert isinstance(cache, ImageCache)
        if not self.acts(state, var):
            cache.image = cache.image_base = None
            return self.latent.draw(state, centre, var, problem)
        solver, cfg = self.ops, self.config
        n, b, p, shape = problem.n, problem.batch, problem.particles, problem.latent_shape
        drawn = centre + math.sqrt(var) * solver.randn(tuple(centre.shape), problem)
        # the decoder's gain is measured on the first particle of each measurement only
        rows = torch.cat([drawn, centre.reshape(b, p, -1)[:, 0]]).reshape(n + b, *shape)
        with torch.no_grad():
            decoded = torch.cat([solver.prior.decode(rows[sl]) for sl in solver.chunks(n + b)])
        base = decoded[:n].flatten(1)
        first = base.reshape(b, p, -1)[:, 0]
        diff2 = (first - decoded[n:].flatten(1)).pow(2)
        gain = diff2.sum(1, keepdim=True) / centre.shape[1]
        extent = solver.prior.local_extent
        if extent is not None and any(
            s > e for s, e in zip(problem.image_shape[-2:], extent, strict=True)
        ):  # g per window of the prior's extent: the pixel mean there, over the rank
            local = window_mean(diff2.reshape(b, *problem.image_shape), extent)
            gain = local.flatten(1) * (diff2.shape[1] / centre.shape[1])
        tau = gain.repeat_interleave(p, 0)
        err = self.errors.error_map(decoded[:n]) if cfg.image.error else None
        if err is not None:  # x = D(u) + e: the decoder's error adds its variance per pixel
            tau = tau + err.flatten(1).pow(2)
        tau = tau.clamp_min(1e-24).sqrt()
        start = torch.zeros_like(base)
        if cache.image is not None and not cfg.rto.starts_at_centre(var):
            start = (cache.image - base) / tau
        w, phi, moved = white_image_rto(
            solver, problem, cfg, base, tau, start, cg_from="current", perturb_centre=False
        )
        cache.image = base + tau * w
        cache.image_base = base
        images = torch.cat([cache.image, base]).reshape(2 * n, *problem.image_shape)
        with torch.no_grad():
            encoded = torch.cat([solver.prior.encode(images[sl]) for sl in solver.chunks(2 * n)])
        state.z = drawn + (encoded[:n] - encoded[n:]).reshape(n, -1).to(drawn.dtype)
        cache.phi = phi
        return moved
