r"""What the two stages minimise, and the training images in latent space.

:class:`VAEObjective` and :class:`DenoiserObjective` are the forward passes of the stage losses
(modules, so that ``DistributedDataParallel`` can wrap them); :func:`diffusion_target` is the
regression target of the denoiser for the scheduler's ``prediction_type``; :func:`flip_images`
and :func:`flip_variants` are the flip augmentation; :func:`encode_stats` encodes images once,
scaled like ``prior.encode``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..priors.base import LatentPrior

__all__ = [
    "ENCODE_BATCH",
    "DenoiserObjective",
    "VAEObjective",
    "diffusion_target",
    "encode_stats",
    "flip_images",
    "flip_variants",
]

#: Images per encoder call when whole datasets are encoded.
ENCODE_BATCH = 64


class VAEObjective(nn.Module):
    """Forward of the VAE loss (a module, so that DistributedDataParallel can wrap it)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * noise
        return self.vae.decode(z).sample, dist.mean, dist.logvar


class DenoiserObjective(nn.Module):
    """Forward of the denoiser; ``cond`` is the cached prompt embedding of Stable Diffusion."""

    def __init__(self, unet: nn.Module, cond: Tensor | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.cond = cond

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        if self.cond is None:
            return self.unet(z_t, t, return_dict=False)[0]
        cond = self.cond.expand(z_t.shape[0], -1, -1)
        return self.unet(z_t, t, encoder_hidden_states=cond, return_dict=False)[0]


def flip_images(x: Tensor, codes: Tensor) -> Tensor:
    """Flip each image: code bit 0 horizontal, bit 1 vertical."""
    out = x.clone()
    for i, code in enumerate(codes.tolist()):
        dims = [d for bit, d in ((1, -1), (2, -2)) if code & bit]
        if dims:
            out[i] = torch.flip(x[i], dims)
    return out


def diffusion_target(prediction_type: str, z0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * z0
    return z0


@torch.no_grad()
def encode_stats(
    prior: LatentPrior, x_model: Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Encoder posterior means and standard deviations, scaled like ``prior.encode`` (CPU)."""
    vae = prior.vae  # type: ignore[attr-defined]
    scale, shift = prior.latent_scale, prior.latent_shift  # type: ignore[attr-defined]
    means, stds = [], []
    for start in range(0, x_model.shape[0], ENCODE_BATCH):
        h = x_model[start : start + ENCODE_BATCH].to(device=device, dtype=vae.dtype)
        if getattr(prior, "maps_gray_to_rgb", False):
            h = h.expand(-1, 3, -1, -1)
        dist = vae.encode(h).latent_dist
        means.append(((dist.mean - shift) * scale).float().cpu())
        stds.append((dist.std * scale).float().cpu())
    return torch.cat(means), torch.cat(stds)


def flip_variants(x: Tensor, augment: str) -> list[Tensor]:
    """The images under each flip code used by the augmentation (just ``[x]`` without it)."""
    if augment != "flips":
        return [x]
    return [x, torch.flip(x, [-1]), torch.flip(x, [-2]), torch.flip(x, [-2, -1])]
