"""The prior a training run starts from: a new one, a saved autoencoder, or Stable Diffusion."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ConfigError, FileFormatError, ShapeError
from ..priors.base import LatentPrior
from ..priors.latent import LatentDiffusionPrior, build_latent_prior
from .config import TrainConfig
from .data import TrainingData
from .units import UnitMap

__all__ = [
    "build_new_prior",
    "denoiser_for",
    "load_base_prior",
    "load_stable_diffusion",
    "sd_multiple",
]


def build_new_prior(config: TrainConfig, data: TrainingData, units: UnitMap) -> LatentPrior:
    c, h, w = data.image_shape
    prior = build_latent_prior(
        image_size=(h, w),
        image_channels=c,
        latent_channels=config.latent_channels,
        vae_channels=config.vae_channels,
        unet_channels=config.unet_channels,
        layers_per_block=config.layers_per_block,
        attention=config.attention,
        norm_num_groups=config.norm_num_groups,
        data_scale=units.data_scale,
        data_offset=units.data_offset,
        stretch=units.stretch,
        stretch_scale=units.stretch_scale,
        seed=config.seed,
    )
    conv = getattr(prior.vae, "quant_conv", None)
    if config.vae_logvar_init is not None and conv is not None and conv.bias is not None:
        with torch.no_grad():
            conv.bias[config.latent_channels :] = float(config.vae_logvar_init)
    return prior


def load_stable_diffusion(
    config: TrainConfig, data: TrainingData, units: UnitMap, device: torch.device
) -> LatentPrior:
    from ..priors.stable_diffusion import StableDiffusionPrior

    c = data.image_shape[0]
    if c not in (1, 3):
        raise ConfigError(f"Stable Diffusion fine-tuning needs 1- or 3-channel images, found {c}")
    prior = StableDiffusionPrior.from_pretrained(
        config.init_from,
        device=device,
        dtype="float32",
        data_scale=units.data_scale,
        data_offset=units.data_offset,
        image_channels=c,
        prompt="",
        guidance_scale=1.0,
    )
    return prior


def load_base_prior(config: TrainConfig) -> LatentDiffusionPrior:
    """The saved prior whose autoencoder ``vae_from`` reuses."""
    path = Path(str(config.vae_from)).expanduser()
    if not path.is_dir():
        raise FileFormatError(f"--vae-from {path}: no saved prior there")
    return LatentDiffusionPrior.from_pretrained(path, device="cpu")


def denoiser_for(
    config: TrainConfig, data: TrainingData, base: LatentDiffusionPrior
) -> LatentDiffusionPrior:
    """A prior with the frozen autoencoder of ``base`` and a new, seeded denoiser."""
    if base.image_size is not None and data.image_shape != (base.image_channels, *base.image_size):
        raise ShapeError(
            f"the training images are {data.image_shape}, the autoencoder of --vae-from models "
            f"{(base.image_channels, *base.image_size)}"
        )
    fresh = build_latent_prior(
        image_size=data.image_shape[1:],
        image_channels=base.image_channels,
        latent_channels=base.latent_channels,
        vae_channels=tuple(base.vae.config.block_out_channels),
        unet_channels=config.unet_channels,
        layers_per_block=config.layers_per_block,
        attention=config.attention,
        norm_num_groups=config.norm_num_groups,
        data_scale=base.data_scale,
        data_offset=base.data_offset,
        stretch=base.stretch,
        stretch_scale=base.stretch_scale,
        seed=config.seed,
    )
    return LatentDiffusionPrior(
        base.vae,
        fresh.unet,
        fresh.scheduler,
        image_size=data.image_shape[1:],
        image_channels=base.image_channels,
        data_scale=base.data_scale,
        data_offset=base.data_offset,
        stretch=base.stretch,
        stretch_scale=base.stretch_scale,
    )


def sd_multiple(config: TrainConfig) -> int:
    """Image sides a Stable Diffusion folder accepts: 8 times its UNet downsampling."""
    path = Path(str(config.init_from)).expanduser()
    if not path.is_dir():
        raise FileFormatError(f"--init-from {path}: no Stable Diffusion folder there")
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FileFormatError(
            f"--init-from {path} is not a Stable Diffusion folder (unet/ and vae/ configs): {err}"
        ) from None
    vae_f = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    return vae_f * 2 ** (len(unet.get("block_out_channels", [0])) - 1)
