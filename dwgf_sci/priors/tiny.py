"""Tiny, randomly initialised priors with the real architectures, built offline in seconds.

They exercise exactly the code paths of real models (diffusers ``AutoencoderKL``,
``UNet2DConditionModel``/``UNet2DModel``, CLIP text encoder and tokenizer, safetensors folders)
without any download, so tests, tutorials and benchmarks of the machinery can run anywhere.
Their weights are random: samples are meaningless.

* :func:`build_tiny_stable_diffusion` writes a Stable-Diffusion-architecture pipeline folder:
  VAE with 4 levels (downsampling 8, channels ``(8, 8, 16, 16)``, 4 latent channels), a
  2-level cross-attention UNet (channels ``(16, 32)``, cross-attention dimension 32), a 2-layer
  CLIP text encoder (hidden size 32), a byte-level CLIP tokenizer (514 tokens, no merges) and a
  DDIM scheduler with SD's ``scaled_linear`` betas (0.00085 to 0.012, 1000 steps).
* :func:`build_tiny_latent_prior` returns an untrained
  :class:`~dwgf_sci.priors.latent.LatentDiffusionPrior`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .folders import prepare_save_folder
from .latent import LatentDiffusionPrior, build_latent_prior
from .stable_diffusion import save_pipeline_folder

__all__ = [
    "build_tiny_latent_prior",
    "build_tiny_stable_diffusion",
    "tiny_clip_tokenizer",
    "tiny_stable_diffusion_components",
]

#: Hidden size of the tiny CLIP text encoder, equal to the UNet's cross-attention dimension.
TINY_TEXT_DIM = 32


def _byte_unicode_table() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: a printable unicode character for each of the 256 bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A byte-level ``CLIPTokenizer`` built in memory (no vocabulary files, no merges).

    The vocabulary holds the 256 byte-level characters, the same characters with CLIP's
    end-of-word marker ``</w>``, then ``<|startoftext|>`` (id 512) and ``<|endoftext|>`` (id 513,
    also the padding and unknown token): every text tokenises, one token per byte.

    :param int model_max_length: padded/truncated sequence length (77 as in CLIP).
    """
    from transformers import CLIPTokenizer

    chars = list(_byte_unicode_table().values())
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in chars:
            vocab[ch + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=int(model_max_length))


def tiny_stable_diffusion_components(seed: int = 0, sample_size: int = 8) -> dict[str, Any]:
    """The components of the tiny Stable Diffusion pipeline, in memory.

    :param int seed: seed of the weight initialisation (the global RNG is left untouched).
    :param int sample_size: native latent size of the UNet (the image size is 8 times larger).
    :return: a dict with ``vae``, ``unet``, ``scheduler``, ``text_encoder`` and ``tokenizer``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if int(sample_size) < 2 or int(sample_size) % 2:
        raise ConfigError(f"sample_size must be an even integer >= 2, found {sample_size}")
    tokenizer = tiny_clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=int(tokenizer.model_max_length),
        projection_dim=TINY_TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=8 * int(sample_size),
        )
        unet = UNet2DConditionModel(
            sample_size=int(sample_size),
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "vae": vae.eval(),
        "unet": unet.eval(),
        "scheduler": scheduler,
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
    }


def build_tiny_stable_diffusion(
    folder: str | os.PathLike[str], seed: int = 0, sample_size: int = 8
) -> Path:
    """Write a tiny Stable-Diffusion-architecture pipeline folder (random weights, safetensors).

    The folder has the layout of a diffusers ``StableDiffusionPipeline`` (``model_index.json``,
    ``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) and loads with
    :meth:`StableDiffusionPrior.from_pretrained(folder)
    <dwgf_sci.priors.stable_diffusion.StableDiffusionPrior.from_pretrained>` or diffusers'
    ``StableDiffusionPipeline.from_pretrained``. Images of any size that is a multiple of 8
    work; the native size is ``8 * sample_size`` (64 by default).

    :param folder: target folder (created; an existing pipeline there is replaced).
    :param int seed: seed of the weights: same seed, same files.
    :param int sample_size: native latent size.
    :return: the folder.
    """
    parts = tiny_stable_diffusion_components(seed=seed, sample_size=sample_size)
    out = prepare_save_folder(folder, overwrite=True)
    save_pipeline_folder(out, **parts)
    return out


def build_tiny_latent_prior(image_size: int = 32, seed: int = 0) -> LatentDiffusionPrior:
    """An untrained single-channel :class:`LatentDiffusionPrior` with tiny networks.

    VAE channels ``(8, 16, 16)`` (downsampling 4, 4 latent channels), UNet channels ``(16, 32)``
    with attention at its lowest resolution, DDPM linear betas over 1000 steps, physical range
    ``[0, 1]``.

    :param int image_size: image side; a multiple of 8.
    :param int seed: seed of the weights.
    """
    return build_latent_prior(
        image_size=int(image_size),
        image_channels=1,
        latent_channels=4,
        vae_channels=(8, 16, 16),
        unet_channels=(16, 32),
        layers_per_block=1,
        attention=True,
        norm_num_groups=8,
        seed=seed,
        metadata={"name": "tiny", "trained": False},
    )
