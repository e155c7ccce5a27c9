r"""The final decoder-error step: samples that hold what the autoencoder cannot represent.

A latent sample :math:`z` decodes to :math:`D(z)`, but the image is
:math:`x = \mathrm{from\_model}(D(z) + e)` with the decoder's error
:math:`e \sim \mathcal{N}(0, S^2)`, :math:`S = \mathrm{diag}(\sigma_p)`: the prior's per-pixel
:class:`~dwgf_sci.priors.DecoderErrorModel` of :math:`D(z)`, or one :math:`\sigma_D` (the
autoencoder's RMS error on held-out images) everywhere. Each sample is drawn from
:math:`e \propto \mathcal{N}(0, S^2)\, L(A(x))` by one randomise-then-optimise step in image
space on :math:`w = S^{-1}e`, whose prior is white (:mod:`.image_cg`; no network call). The
same step without perturbations gives each particle's conditional mean
:math:`\mathbb{E}[x \mid z, y]`; their average is the posterior mean returned (Rao-Blackwellised:
the per-particle image noise of the draws does not enter it). After an image-space level the
step continues from that level's draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...priors.decoder_error import DecoderErrorModel
from .config import DECODER_ERRORS
from .image_cg import white_image_rto
from .state import ImageCache

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem
    from .config import DWGFConfig
    from .state import FlowState, ParticleState

__all__ = ["DecoderErrorStep"]


class DecoderErrorStep:
    """The decoder-error model a run uses (``decoder_error``) and the final step drawing it.

    Off (no error model, no final step) for the flow scheme under ``"auto"``/``"white"``, for a
    prior that measured nothing, and for the unweighted ``"mse"`` data term.

    :param LatentSolver ops: the solver whose prior and random draws the step uses.
    :param DWGFConfig config: the run's options.
    :param str scheme: the scheme the run uses (resolved).
    """

    def __init__(self, ops: LatentSolver, config: DWGFConfig, scheme: str) -> None:
        self.ops = ops
        self.config = config
        self.scheme = scheme

    @property
    def _setting(self) -> str | float:
        return self.config.refine.decoder_error

    def error_model(self) -> DecoderErrorModel | None:
        """The prior's per-pixel decoder error model, if ``decoder_error`` uses it."""
        if self._setting != "auto" or self.scheme == "flow":
            return None
        return getattr(self.ops.prior, "decoder_error_model", None)

    def sigma(self) -> float:
        """The single :math:`\\sigma_D` (0: none; see :meth:`error_map` for the per-pixel
        model)."""
        if self._setting in DECODER_ERRORS:
            if self.scheme == "flow":
                return 0.0
            return float(getattr(self.ops.prior, "decoder_sigma", 0.0) or 0.0)
        return float(self._setting)

    def error_map(self, decoded: Tensor) -> Tensor | None:
        """Standard deviation of the decoder's error at each pixel of ``decoded`` (model
        units), or None when the step is off."""
        model = self.error_model()
        if model is not None:
            return model(decoded)
        sigma_d = self.sigma()
        return None if sigma_d <= 0 else torch.full_like(decoded, sigma_d)

    def __call__(
        self, x: Tensor, state: ParticleState | FlowState, problem: Problem
    ) -> tuple[Tensor, Tensor | None]:
        """The samples and each one's conditional mean (None when the step is off) from the
        decoded samples ``x`` (physical units) of the run's final ``state``."""
        if problem.data_term.kind == "mse":
            return x, None
        solver = self.ops
        cache = getattr(state, "cache", None)
        continued = isinstance(cache, ImageCache) and cache.image is not None
        with torch.no_grad():
            decoded = solver.prior.to_model(x)
            if continued:  # the last level was an image step: its decoded prior draw
                decoded = cache.image_base.reshape(x.shape)
            scale = self.error_map(decoded)
        if scale is None:
            return x, None
        base, scale = decoded.flatten(1), scale.flatten(1)
        start, cg_from = torch.zeros_like(base), "centre"
        if continued:  # continue from the last level's draw
            start, cg_from = (cache.image - base) / scale, "current"
        images = []
        for perturb in (True, False):
            w, _, _ = white_image_rto(
                solver,
                problem,
                self.config,
                base,
                scale,
                start,
                cg_from=cg_from,
                perturb=perturb,
            )
            with torch.no_grad():
                images.append(solver.prior.from_model((base + scale * w).reshape(x.shape)))
        return images[0], images[1]
