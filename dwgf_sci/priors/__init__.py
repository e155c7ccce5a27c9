"""Latent-diffusion priors: one interface (:class:`LatentPrior`) for every solver."""

from __future__ import annotations

from .base import LatentPrior, linear_alphas_cumprod
from .decoder_error import DecoderErrorModel
from .gaussian_mixture import GaussianMixture, GaussianMixturePrior
from .latent import LatentDiffusionPrior
from .loading import SHIPPED_PRIORS, available_priors, load_prior
from .patches import PatchPrior
from .stable_diffusion import StableDiffusionPrior

__all__ = [
    "SHIPPED_PRIORS",
    "DecoderErrorModel",
    "GaussianMixture",
    "GaussianMixturePrior",
    "LatentDiffusionPrior",
    "LatentPrior",
    "PatchPrior",
    "StableDiffusionPrior",
    "available_priors",
    "linear_alphas_cumprod",
    "load_prior",
]
