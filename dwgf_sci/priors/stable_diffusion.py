r"""Stable Diffusion 1.x / 2.x as a latent prior, through diffusers components.

:class:`StableDiffusionPrior` wraps the ``AutoencoderKL`` (``vae``), the text-conditional
``UNet2DConditionModel`` (``unet``), a scheduler (for :math:`\bar\alpha_t` and the
``prediction_type``), and the CLIP text encoder and tokenizer. The text is encoded **once**, when
the prior is built (or when :meth:`StableDiffusionPrior.set_prompt` is called): every noise
prediction reuses the cached embedding.

* **Prompt and guidance.** The default prompt is empty (the unconditional model). With a
  ``guidance_scale`` :math:`w \neq 1` the negative-prompt embedding is cached as well and the
  noise is :math:`\epsilon_u + w (\epsilon_c - \epsilon_u)`, both evaluated in one batched UNet
  call.
* **Latent scaling.** ``encode`` returns ``(mean - shift_factor) * scaling_factor`` from the VAE
  config (``shift_factor`` is 0 when absent or ``None``); ``decode`` inverts it.
* **Channels.** Science images usually have one channel: with ``image_channels=1`` they are
  repeated to RGB before encoding and decoded images are averaged over the three channels.
* **Precision.** On CUDA the networks run in float16 by default (``dtype="bfloat16"`` or
  ``"float32"`` on request); on the CPU they run in float32. Inputs are cast to the network dtype
  and outputs back to the input dtype, so solvers keep float32 state.
* **Prediction type.** ``"epsilon"`` (SD 1.x, SD 2.x base) and ``"v_prediction"`` (SD 2.x
  768-v) models both return noise (:math:`\epsilon = \sqrt{\bar\alpha_t} v +
  \sqrt{1-\bar\alpha_t} z_t`).

**Units.** The SD VAE works on ``[-1, 1]``; ``data_range=(lo, hi)`` (default ``(0, 1)``) says
which physical values map to ``-1`` and ``1`` (or give ``data_scale``/``data_offset`` directly,
``x_phys = data_scale * x_model + data_offset``).

**Folder format** (written by :meth:`StableDiffusionPrior.save_pretrained`; it is also a valid
diffusers ``StableDiffusionPipeline`` folder)::

    folder/
      model_index.json         diffusers pipeline index (no safety checker)
      dwgf_prior.json          class name, data_scale/offset, image_channels, prompt, guidance
      vae/  unet/  text_encoder/   config.json + *.safetensors
      tokenizer/  scheduler/
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import ConfigError, FileFormatError
from ..units import affine_unit_map
from .autoencoder import AutoencoderPrior
from .folders import (
    load_scheduler,
    network_load_options,
    prepare_save_folder,
    read_prior_config,
    refuse_pickle_weights,
    require_subfolders,
    resolve_device,
    resolve_dtype,
    write_prior_config,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["StableDiffusionPrior", "save_pipeline_folder"]

_COMPONENTS = ("vae", "unet", "scheduler", "text_encoder", "tokenizer")


def _hub_offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than a hub id ``owner/name``."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in name:
        return True
    return name.count("/") != 1 or os.path.splitext(name)[1].lower() in {
        ".ckpt",
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
    }


def save_pipeline_folder(
    folder: Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
) -> None:
    """Write Stable Diffusion components as a diffusers ``StableDiffusionPipeline`` folder.

    Each component goes to its subfolder through its own ``save_pretrained`` (safetensors
    weights), and ``model_index.json`` names their classes (no safety checker, no feature
    extractor), exactly as ``StableDiffusionPipeline.save_pretrained`` would.

    :param folder: the pipeline folder (created if needed; existing files are overwritten).
    :param vae: the ``AutoencoderKL``, saved to ``vae/``.
    :param unet: the ``UNet2DConditionModel``, saved to ``unet/``.
    :param scheduler: the diffusers scheduler, saved to ``scheduler/``.
    :param text_encoder: the ``CLIPTextModel``, saved to ``text_encoder/``.
    :param tokenizer: the ``CLIPTokenizer``, saved to ``tokenizer/``.
    """
    import diffusers

    folder = Path(folder)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", type(text_encoder).__name__],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "unet": ["diffusers", type(unet).__name__],
        "vae": ["diffusers", type(vae).__name__],
    }
    text = json.dumps(index, indent=2, sort_keys=True)
    (folder / "model_index.json").write_text(text + "\n", encoding="utf-8")


class StableDiffusionPrior(AutoencoderPrior):
    r"""Stable Diffusion 1.x/2.x as a :class:`~dwgf_sci.priors.base.LatentPrior`.

    Build it with :meth:`from_pretrained` (a local folder, or a hub id when online) or from
    components. The networks are frozen and in eval mode.

    :param vae: the ``AutoencoderKL`` (3 input channels for SD).
    :param unet: the ``UNet2DConditionModel``.
    :param scheduler: a DDPM-family diffusers scheduler (``alphas_cumprod``, ``prediction_type``).
    :param text_encoder: the ``CLIPTextModel``.
    :param tokenizer: the ``CLIPTokenizer``.
    :param str prompt: text condition (default empty: the unconditional model).
    :param str negative_prompt: text of the unconditional branch of classifier-free guidance.
    :param float guidance_scale: classifier-free guidance weight :math:`w`; ``1`` uses the
        conditional prediction only.
    :param int image_channels: 1 (gray, mapped to/from RGB) or 3.
    :param data_range: physical ``(lo, hi)`` mapped to ``[-1, 1]`` (default ``(0, 1)``).
    :param float data_scale: physical units per model unit (exclusive with ``data_range``).
    :param float data_offset: physical value of model ``0`` (exclusive with ``data_range``).
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        guidance_scale: float = 1.0,
        image_channels: int = 1,
        data_range: Sequence[float] | None = None,
        data_scale: float | None = None,
        data_offset: float | None = None,
    ) -> None:
        if int(image_channels) not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, found {image_channels}")
        scale, offset = affine_unit_map(
            data_range, data_scale, data_offset, default_range=(0.0, 1.0)
        )
        latent_channels = int(vae.config.latent_channels)
        if int(unet.config.in_channels) != latent_channels:
            raise ConfigError(
                f"the UNet takes {unet.config.in_channels} input channels but the VAE has "
                f"{latent_channels} latent channels (inpainting and depth models are not "
                "supported)"
            )
        cross_dim = unet.config.cross_attention_dim
        hidden = int(text_encoder.config.hidden_size)
        if isinstance(cross_dim, int) and cross_dim != hidden:
            raise ConfigError(
                f"the UNet's cross_attention_dim {cross_dim} does not match the text encoder's "
                f"hidden size {hidden}"
            )
        super().__init__(
            vae,
            scheduler,
            image_channels=int(image_channels),
            image_size=None,
            data_scale=scale,
            data_offset=offset,
        )
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(False).eval()
        self.prompt = ""
        self.negative_prompt = ""
        self.guidance_scale = 1.0
        self.register_buffer("prompt_embeds", None, persistent=False)
        self.register_buffer("negative_prompt_embeds", None, persistent=False)
        self.set_prompt(prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale)

    # ------------------------------------------------------------------ text conditioning
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the UNet (the network dtype)."""
        return self.unet.dtype

    @property
    def uses_guidance(self) -> bool:
        """Whether classifier-free guidance is on (``guidance_scale != 1``)."""
        return self.guidance_scale != 1.0

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> Tensor:
        """CLIP embeddings ``(len(texts), L, D)`` of ``texts`` in one text-encoder call."""
        tok = self.tokenizer
        max_length = int(tok.model_max_length)
        inputs = tok(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )
        for text in texts:
            n = len(tok(text, truncation=False)["input_ids"])
            if n > max_length:
                warnings.warn(
                    f"the prompt has {n} tokens; CLIP keeps the first {max_length}",
                    stacklevel=3,
                )
        device = self.text_encoder.device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = inputs["attention_mask"].to(device)
        out = self.text_encoder(inputs["input_ids"].to(device), attention_mask=mask)
        return out[0].to(self.unet.dtype)

    def set_prompt(
        self, prompt: str = "", negative_prompt: str = "", guidance_scale: float | None = None
    ) -> None:
        """Encode a new prompt (one text-encoder call) and cache its embedding.

        :param str prompt: the condition; empty for the unconditional model.
        :param str negative_prompt: the unconditional branch of classifier-free guidance.
        :param float guidance_scale: new guidance weight; ``None`` keeps the current one.
        """
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise ConfigError("prompt and negative_prompt must be strings")
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        if not math.isfinite(scale):
            raise ConfigError(f"guidance_scale must be finite, found {guidance_scale}")
        texts = [prompt] if scale == 1.0 else [negative_prompt, prompt]
        embeds = self._embed(texts)
        self.prompt, self.negative_prompt, self.guidance_scale = prompt, negative_prompt, scale
        self.prompt_embeds = embeds[-1:].detach()
        self.negative_prompt_embeds = embeds[:1].detach() if scale != 1.0 else None

    # ------------------------------------------------------------------ noise prediction
    def _network(self, z_t: Tensor, t: Tensor) -> Tensor:
        b = z_t.shape[0]
        z = z_t.to(self.unet.dtype)
        cond = self.prompt_embeds.expand(b, -1, -1)
        if not self.uses_guidance:
            return self.unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
        uncond = self.negative_prompt_embeds.expand(b, -1, -1)
        out = self.unet(
            torch.cat([z, z]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([uncond, cond]),
            return_dict=False,
        )[0].to(z_t.dtype)
        out_u, out_c = out.chunk(2)
        return out_u + self.guidance_scale * (out_c - out_u)

    # ------------------------------------------------------------------ persistence
    def settings(self) -> dict[str, Any]:
        """The JSON-serialisable settings written to ``dwgf_prior.json``."""
        return {
            "class": type(self).__name__,
            "data_scale": self.data_scale,
            "data_offset": self.data_offset,
            "image_channels": self.image_channels,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "guidance_scale": self.guidance_scale,
            "prediction_type": self.prediction_type,
        }

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], overwrite: bool = False
    ) -> Path:
        """Save the components (safetensors), a diffusers ``model_index.json`` and
        ``dwgf_prior.json``.

        The folder loads back with :meth:`from_pretrained`, with
        :func:`dwgf_sci.priors.load_prior`, and as a diffusers ``StableDiffusionPipeline``.

        :param save_directory: target folder (created if needed).
        :param bool overwrite: replace a model already saved there.
        :return: the folder.
        :raises OutputExistsError: if a model is saved there and ``overwrite`` is false.
        """
        folder = prepare_save_folder(save_directory, overwrite)
        save_pipeline_folder(
            folder, self.vae, self.unet, self.scheduler, self.text_encoder, self.tokenizer
        )
        write_prior_config(folder, self.settings())
        return folder

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str],
        prompt: str | None = None,
        guidance_scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        data_range: Sequence[float] | None = None,
        *,
        data_scale: float | None = None,
        data_offset: float | None = None,
        negative_prompt: str | None = None,
        image_channels: int | None = None,
        local_files_only: bool | None = None,
        variant: str | None = None,
    ) -> StableDiffusionPrior:
        """Load Stable Diffusion from a local folder or, when online, a Hugging Face Hub id.

        A local folder (a diffusers ``StableDiffusionPipeline`` folder, or one written by
        :meth:`save_pretrained`) is always read with ``local_files_only=True``. A hub id
        (``"owner/name"``) is fetched only when the Hub is reachable (``HF_HUB_OFFLINE`` unset and
        ``local_files_only`` not true); offline, only a copy already in the Hugging Face cache is
        used. Settings saved in the folder's ``dwgf_prior.json`` are the defaults of the
        arguments below; arguments given here win.

        :param path_or_id: folder or hub id.
        :param str prompt: text condition (default ``""``).
        :param float guidance_scale: classifier-free guidance weight (default 1: none).
        :param device: default: CUDA when available, else the CPU.
        :param dtype: network dtype; default float16 on CUDA, float32 elsewhere (half precision
            is only used on CUDA).
        :param data_range: physical ``(lo, hi)`` mapped to ``[-1, 1]`` (default ``(0, 1)``).
        :param float data_scale: physical units per model unit (exclusive with ``data_range``).
        :param float data_offset: physical value of model ``0``.
        :param str negative_prompt: unconditional text for guidance (default ``""``).
        :param int image_channels: 1 (default) or 3.
        :param bool local_files_only: never contact the Hub (hub ids then need the cache).
        :param str variant: weight variant of a hub repository (e.g. ``"fp16"``).
        :raises FileFormatError: for a missing or incomplete folder, or a hub id that cannot be
            fetched (offline and not cached).
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        name = os.fspath(path_or_id)
        path = Path(name).expanduser()
        saved: dict[str, Any] = {}
        if path.is_dir():
            source, local, is_hub = str(path), True, False
            saved = read_prior_config(path) or {}
            if saved.get("class", cls.__name__) != cls.__name__:
                raise FileFormatError(
                    f"{path} holds a {saved.get('class')!r} prior, not a {cls.__name__}; use "
                    "dwgf_sci.priors.load_prior to load any saved prior"
                )
            require_subfolders(path, _COMPONENTS, "Stable Diffusion model")
            refuse_pickle_weights(path, ("vae", "unet", "text_encoder"))
        elif path.exists():
            raise FileFormatError(
                f"{path} is a file; expected a diffusers Stable Diffusion folder (single-file "
                "checkpoints are not supported: convert them with diffusers' "
                "StableDiffusionPipeline.from_single_file(...).save_pretrained(folder))"
            )
        elif isinstance(path_or_id, os.PathLike) or _looks_like_path(name):
            raise FileFormatError(f"no Stable Diffusion folder at {path}")
        else:
            offline = bool(local_files_only) or _hub_offline()
            source, local, is_hub = name, offline, True
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev, half_on_cuda=True)
        opts: dict[str, Any] = {"local_files_only": local}
        # safetensors only, for hub ids too: a pickled .bin can run arbitrary code when loaded
        weights: dict[str, Any] = {**opts, "dtype": dt, "use_safetensors": True}
        if variant is not None:
            weights["variant"] = variant
        try:
            with warnings.catch_warnings():
                # diffusers passes an argument huggingface_hub deprecated: not the user's concern
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                nets = {**weights, **network_load_options()}
                vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **nets)
                unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **nets)
                text_encoder = CLIPTextModel.from_pretrained(
                    source, subfolder="text_encoder", **weights
                )
                tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **opts)
                scheduler = load_scheduler(source, **opts)
        except (OSError, ValueError) as err:
            if is_hub and local:
                raise FileFormatError(
                    f"cannot load {name!r}: there is no local folder {str(path)!r}, the Hugging "
                    "Face Hub is offline (HF_HUB_OFFLINE or local_files_only) and the model is "
                    "not in the local cache. The weights must "
                    "be a local folder: on a machine with internet access run "
                    f"StableDiffusionPipeline.from_pretrained({name!r}).save_pretrained(folder) "
                    "and pass that folder"
                ) from err
            raise FileFormatError(f"cannot load Stable Diffusion from {name!r}: {err}") from err
        for module in (vae, unet, text_encoder):
            module.to(dev)
        data_given = data_range is not None or data_scale is not None or data_offset is not None
        if not data_given and "data_scale" in saved:
            data_scale = float(saved["data_scale"])
            data_offset = float(saved.get("data_offset", 0.0))
        prior = cls(
            vae,
            unet,
            scheduler,
            text_encoder,
            tokenizer,
            prompt=saved.get("prompt", "") if prompt is None else prompt,
            negative_prompt=(
                saved.get("negative_prompt", "") if negative_prompt is None else negative_prompt
            ),
            guidance_scale=(
                float(saved.get("guidance_scale", 1.0))
                if guidance_scale is None
                else guidance_scale
            ),
            image_channels=(
                int(saved.get("image_channels", 1)) if image_channels is None else image_channels
            ),
            data_range=data_range,
            data_scale=data_scale,
            data_offset=data_offset,
        )
        return prior.to(dev)

    def extra_repr(self) -> str:
        """Channels, downsampling, prompt, guidance, prediction type, data scaling (``repr``)."""
        return (
            f"image_channels={self.image_channels}, latent={self.latent_channels}x/"
            f"{self.downsample}, prompt={self.prompt!r}, guidance_scale={self.guidance_scale:g}, "
            f"prediction_type={self.prediction_type}, data_scale={self.data_scale:g}, "
            f"data_offset={self.data_offset:g}"
        )
