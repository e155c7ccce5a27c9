"""Latent-diffusion priors: one interface (:class:`LatentPrior`) for every solver."""

from __future__ import annotations

from .base import LatentPrior, linear_alphas_cumprod
from .gaussian_mixture import GaussianMixture, GaussianMixturePrior

__all__ = ["GaussianMixture", "GaussianMixturePrior", "LatentPrior", "linear_alphas_cumprod"]
