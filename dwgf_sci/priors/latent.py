r"""Domain-trained latent-diffusion priors built from diffusers components.

A :class:`LatentDiffusionPrior` is an ``AutoencoderKL`` (encoder :math:`E`, decoder :math:`D`), an
unconditional ``UNet2DModel`` noise predictor and a scheduler that holds the training noise
schedule :math:`\bar\alpha_t`. Small ones are trained on scientific images by the package's
training command and shipped (see :func:`dwgf_sci.priors.loading.load_prior`); new, untrained
ones are made by :func:`build_latent_prior`.

**Latent scaling.** As in Stable Diffusion, the diffusion model sees latents scaled to unit
variance (see :mod:`~dwgf_sci.priors.autoencoder`); the scale is fitted on the training data by
:meth:`LatentDiffusionPrior.fit_latent_scaling`.

**Units.** Operators work in physical units, the networks in the model range. The map between
them is affine, ``x_phys = data_scale * x_model + data_offset``, optionally composed with an
invertible ``asinh`` stretch for data of high dynamic range (astronomical flux); its formulas are
those of :mod:`dwgf_sci.units`.

**Folder format** (written by :meth:`LatentDiffusionPrior.save_pretrained`)::

    folder/
      dwgf_prior.json          class name, units, stretch, image size/channels, metadata
      vae/config.json          diffusers AutoencoderKL (scaling_factor, shift_factor)
      vae/diffusion_pytorch_model.safetensors
      unet/config.json         diffusers UNet2DModel
      unet/diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json

Only safetensors weights are read (:mod:`~dwgf_sci.priors.folders`). The encoding, decoding and
noise prediction shared with :class:`~dwgf_sci.priors.stable_diffusion.StableDiffusionPrior` are
in :class:`~dwgf_sci.priors.autoencoder.AutoencoderPrior`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import units
from ..errors import ConfigError, FileFormatError
from .autoencoder import PREDICTION_TYPES, AutoencoderPrior, epsilon_from_output
from .decoder_error import DecoderErrorModel
from .folders import (
    PRIOR_CONFIG_NAME,
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
    from diffusers import AutoencoderKL, UNet2DModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = [
    "PRIOR_CONFIG_NAME",
    "LatentDiffusionPrior",
    "build_latent_prior",
    "epsilon_from_output",
    "prepare_save_folder",
    "read_prior_config",
    "resolve_device",
]

_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


class LatentDiffusionPrior(AutoencoderPrior):
    r"""A latent-diffusion prior trained on a scientific domain.

    :param vae: a diffusers ``AutoencoderKL`` with ``image_channels`` input channels; its config's
        ``scaling_factor`` (and ``shift_factor``) normalise the latents.
    :param unet: an unconditional diffusers ``UNet2DModel`` on the latents.
    :param scheduler: a DDPM-family diffusers scheduler (``alphas_cumprod``, ``prediction_type``
        ``"epsilon"``, ``"v_prediction"`` or ``"sample"``).
    :param image_size: native ``(H, W)`` (or an int); default: the UNet's ``sample_size`` times
        the VAE's downsampling factor.
    :param int image_channels: default: the VAE's input channels.
    :param data_range: physical ``(lo, hi)`` mapped to the model range ``[-1, 1]`` (after the
        stretch, if any); exclusive with ``data_scale``/``data_offset``.
    :param float data_scale: physical (or stretched) units per model unit (default 1).
    :param float data_offset: physical (or stretched) value of model ``0`` (default 0).
    :param stretch: ``None`` or ``"asinh"`` (see the module docstring).
    :param float stretch_scale: the stretch parameter :math:`a > 0` (physical units).
    :param dict metadata: free JSON-serialisable information saved with the prior (training
        data, command, seed, metrics, ...).
    :param float decoder_sigma: RMS error of the autoencoder, ``decode(encode(x)) - x`` in model
        units, on held-out images (``train-prior`` measures it; 0: unknown, not modelled).
    :param decoder_error_model: the per-pixel model of that error
        (:class:`~dwgf_sci.priors.DecoderErrorModel` or its ``to_dict`` form; ``train-prior``
        fits it; None: none).
    :param dict solver_hints: solver settings chosen for this prior on validation problems,
        taken by a solver's ``"auto"`` options (see :attr:`LatentPrior.solver_hints`).
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        *,
        image_size: int | Sequence[int] | None = None,
        image_channels: int | None = None,
        data_range: Sequence[float] | None = None,
        data_scale: float | None = None,
        data_offset: float | None = None,
        stretch: str | None = None,
        stretch_scale: float = 1.0,
        metadata: Mapping[str, Any] | None = None,
        decoder_sigma: float = 0.0,
        decoder_error_model: DecoderErrorModel | Mapping[str, Any] | None = None,
        solver_hints: Mapping[str, Any] | None = None,
    ) -> None:
        scale, offset = units.affine_unit_map(
            data_range, data_scale, data_offset, default_range=None
        )
        decoder_sigma = float(decoder_sigma)
        if not (math.isfinite(decoder_sigma) and decoder_sigma >= 0):
            raise ConfigError(f"decoder_sigma must be >= 0 and finite, found {decoder_sigma}")
        if stretch in ("none", ""):
            stretch = None
        units.check_stretch(stretch)
        stretch_scale = float(stretch_scale)
        if not (math.isfinite(stretch_scale) and stretch_scale > 0):
            raise ConfigError(f"stretch_scale must be positive and finite, found {stretch_scale}")
        latent_channels = int(vae.config.latent_channels)
        if (
            int(unet.config.in_channels) != latent_channels
            or int(unet.config.out_channels) != latent_channels
        ):
            raise ConfigError(
                f"the UNet maps {unet.config.in_channels} to {unet.config.out_channels} channels; "
                f"the VAE has {latent_channels} latent channels"
            )
        downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        if image_size is None:
            sample = unet.config.sample_size
            if sample is None:
                raise ConfigError("image_size is required when the UNet has no sample_size")
            sizes = (sample, sample) if isinstance(sample, int) else tuple(sample)
            image_size = tuple(int(s) * downsample for s in sizes)
        elif isinstance(image_size, int):
            image_size = (image_size, image_size)
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) <= 0:
            raise ConfigError(f"image_size must be (H, W) with positive sizes, found {image_size}")
        if image_size[0] % downsample or image_size[1] % downsample:
            raise ConfigError(
                f"image_size {image_size} is not a multiple of the VAE's downsampling factor "
                f"{downsample}"
            )
        if image_channels is None:
            image_channels = int(vae.config.in_channels)
        super().__init__(
            vae,
            scheduler,
            image_channels=image_channels,
            image_size=image_size,
            data_scale=scale,
            data_offset=offset,
        )
        if self.maps_gray_to_rgb:
            raise ConfigError(
                "a LatentDiffusionPrior's VAE must have image_channels input channels; the "
                "gray-to-RGB mapping is for Stable Diffusion"
            )
        self.unet = unet
        self.unet.requires_grad_(False).eval()
        self.stretch = stretch
        self.stretch_scale = stretch_scale
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.decoder_sigma = decoder_sigma
        if isinstance(decoder_error_model, Mapping):
            decoder_error_model = DecoderErrorModel.from_dict(decoder_error_model)
        self.decoder_error_model = decoder_error_model
        self.solver_hints = dict(solver_hints or {})

    # ------------------------------------------------------------------ units
    def to_model(self, x: Tensor) -> Tensor:
        """Map an image from physical units to the model range (with the stretch, if any)."""
        return units.to_model(
            x, self.data_scale, self.data_offset, self.stretch, self.stretch_scale
        )

    def from_model(self, x: Tensor) -> Tensor:
        """Map an image from the model range to physical units (inverse of :meth:`to_model`)."""
        return units.from_model(
            x, self.data_scale, self.data_offset, self.stretch, self.stretch_scale
        )

    # ------------------------------------------------------------------ networks
    def _network(self, z_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(z_t.to(self.unet.dtype), t, return_dict=False)[0]

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the UNet (the network dtype)."""
        return self.unet.dtype

    @torch.no_grad()
    def fit_latent_scaling(self, x: Tensor, shift: bool = False) -> tuple[float, float]:
        """Set the VAE's ``scaling_factor`` (and optionally ``shift_factor``) from data.

        The scale is one over the standard deviation of the encoder means of ``x`` (as in Stable
        Diffusion), so the diffusion model sees latents of unit variance.

        :param Tensor x: training images in the model range ``(B, C, H, W)``.
        :param bool shift: also centre the latents (``shift_factor`` = their mean); otherwise the
            shift is left as it is.
        :return: ``(scaling_factor, shift_factor)`` now in the VAE config.
        """
        self._check_image(x)
        mean = self.vae.encode(x.to(device=self.device, dtype=self.vae.dtype)).latent_dist.mean
        mean = mean.double()
        new_shift = float(mean.mean()) if shift else self.latent_shift
        std = float((mean - new_shift).pow(2).mean().sqrt()) if shift else float(mean.std())
        if not (math.isfinite(std) and std > 0):
            raise ConfigError(f"cannot fit the latent scaling: latent std is {std}")
        updates: dict[str, float] = {"scaling_factor": 1.0 / std}
        if shift:
            updates["shift_factor"] = new_shift
        self.vae.register_to_config(**updates)
        return self.latent_scale, self.latent_shift

    # ------------------------------------------------------------------ persistence
    def settings(self) -> dict[str, Any]:
        """The JSON-serialisable settings written to ``dwgf_prior.json``."""
        return {
            "class": type(self).__name__,
            "image_size": list(self.image_size or ()),
            "image_channels": self.image_channels,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "data_scale": self.data_scale,
            "data_offset": self.data_offset,
            "stretch": self.stretch,
            "stretch_scale": self.stretch_scale,
            "latent_scaling_factor": self.latent_scale,
            "latent_shift_factor": self.latent_shift,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "decoder_sigma": self.decoder_sigma,
            "decoder_error_model": None
            if self.decoder_error_model is None
            else self.decoder_error_model.to_dict(),
            "solver_hints": self.solver_hints,
            "metadata": self.metadata,
        }

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], overwrite: bool = False
    ) -> Path:
        """Save the prior: ``vae/``, ``unet/``, ``scheduler/`` (safetensors) and
        ``dwgf_prior.json``.

        :param save_directory: target folder (created if needed).
        :param bool overwrite: replace a prior already saved there.
        :return: the folder.
        :raises OutputExistsError: if a prior is saved there and ``overwrite`` is false.
        """
        folder = prepare_save_folder(save_directory, overwrite)
        self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        write_prior_config(folder, self.settings())
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> LatentDiffusionPrior:
        """Load a prior saved by :meth:`save_pretrained` (local folder, safetensors only).

        :param folder: the saved prior's folder.
        :param device: default: CUDA when available, else the CPU.
        :param dtype: network dtype; default float32 (these priors are small).
        :raises FileFormatError: if the folder is missing, incomplete, holds another prior class,
            or holds pickled weights.
        """
        from diffusers import AutoencoderKL, UNet2DModel

        path = Path(folder).expanduser()
        if not path.is_dir():
            raise FileFormatError(f"no prior folder at {path}")
        settings = read_prior_config(path)
        if settings is None:
            raise FileFormatError(f"{path} has no {PRIOR_CONFIG_NAME}; it is not a saved prior")
        if settings.get("class") != cls.__name__:
            raise FileFormatError(
                f"{path} holds a {settings.get('class')!r} prior, not a {cls.__name__}; "
                "use dwgf_sci.priors.load_prior to load any saved prior"
            )
        require_subfolders(path, ("vae", "unet", "scheduler"), cls.__name__)
        refuse_pickle_weights(path, ("vae", "unet"))
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev, half_on_cuda=False)
        opts: dict[str, Any] = {
            "local_files_only": True,
            "use_safetensors": True,
            "dtype": dt,
            **network_load_options(),
        }
        try:
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **opts)
            unet = UNet2DModel.from_pretrained(path, subfolder="unet", **opts)
            scheduler = load_scheduler(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileFormatError(f"cannot load the prior in {path}: {err}") from err
        size = settings.get("image_size")
        prior = cls(
            vae,
            unet,
            scheduler,
            image_size=tuple(size) if size else None,
            image_channels=settings.get("image_channels"),
            data_scale=float(settings.get("data_scale", 1.0)),
            data_offset=float(settings.get("data_offset", 0.0)),
            stretch=settings.get("stretch"),
            stretch_scale=float(settings.get("stretch_scale", 1.0)),
            metadata=settings.get("metadata") or {},
            decoder_sigma=float(settings.get("decoder_sigma", 0.0)),
            decoder_error_model=settings.get("decoder_error_model"),
            solver_hints=settings.get("solver_hints"),
        )
        return prior.to(dev)

    def extra_repr(self) -> str:
        """Image and latent sizes, data scaling, stretch and prediction type, for ``repr``."""
        size = "x".join(str(s) for s in self.image_size or ())
        return (
            f"image={self.image_channels}x{size}, latent={self.latent_channels}x/"
            f"{self.downsample}, data_scale={self.data_scale:g}, data_offset={self.data_offset:g}, "
            f"stretch={self.stretch}, prediction_type={self.prediction_type}"
        )


def _check_groups(channels: Sequence[int], groups: int, what: str) -> None:
    bad = [c for c in channels if c % groups]
    if bad:
        raise ConfigError(
            f"{what} channels {tuple(channels)} must all be multiples of norm_num_groups={groups}"
        )


def build_latent_prior(
    image_size: int | Sequence[int] = 64,
    image_channels: int = 1,
    latent_channels: int = 4,
    vae_channels: Sequence[int] = (32, 64, 64),
    unet_channels: Sequence[int] = (64, 128),
    layers_per_block: int = 1,
    attention: bool = True,
    norm_num_groups: int = 8,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
    scaling_factor: float = 1.0,
    *,
    data_range: Sequence[float] | None = None,
    data_scale: float | None = None,
    data_offset: float | None = None,
    stretch: str | None = None,
    stretch_scale: float = 1.0,
    seed: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> LatentDiffusionPrior:
    """A new latent-diffusion prior with seeded random (untrained) weights.

    The VAE has ``len(vae_channels)`` resolution levels (downsampling ``2 ** (levels - 1)``), the
    UNet ``len(unet_channels)`` levels, with self-attention on its lowest resolution when
    ``attention``. Used by tests and as the starting point of the training command.

    :param image_size: ``H`` (square) or ``(H, W)``; a multiple of the total downsampling.
    :param int image_channels: channels of the images (VAE input/output).
    :param int latent_channels: channels of the latents.
    :param vae_channels: output channels of each VAE level.
    :param unet_channels: output channels of each UNet level.
    :param int layers_per_block: ResNet layers per level (VAE and UNet).
    :param bool attention: self-attention on the UNet's lowest resolution (and the VAE's
        mid-block).
    :param int norm_num_groups: GroupNorm groups; divides every channel count.
    :param int num_train_timesteps: length of the noise schedule.
    :param str beta_schedule: diffusers beta schedule (``"linear"``, ``"scaled_linear"``,
        ``"squaredcos_cap_v2"``).
    :param float beta_start: first beta.
    :param float beta_end: last beta.
    :param str prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
    :param float scaling_factor: VAE latent scaling (refit after training the VAE with
        :meth:`LatentDiffusionPrior.fit_latent_scaling`).
    :param data_range: physical ``(lo, hi)`` mapped to ``[-1, 1]``; default ``(0, 1)`` unless
        ``data_scale``/``data_offset`` give the affine map directly.
    :param float data_scale: see :class:`LatentDiffusionPrior`.
    :param float data_offset: see :class:`LatentDiffusionPrior`.
    :param stretch: ``None`` or ``"asinh"``.
    :param float stretch_scale: the stretch parameter.
    :param int seed: seed of the weight initialisation (the global RNG is left untouched).
    :param dict metadata: saved with the prior.
    :raises ConfigError: for inconsistent sizes, channels or options (before building anything).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sizes) != 2 or min(int(s) for s in sizes) <= 0:
        raise ConfigError(f"image_size must be H or (H, W) with positive sizes, found {image_size}")
    sizes = tuple(int(s) for s in sizes)
    vae_channels = tuple(int(c) for c in vae_channels)
    unet_channels = tuple(int(c) for c in unet_channels)
    if not vae_channels or not unet_channels:
        raise ConfigError("vae_channels and unet_channels need at least one level each")
    _check_groups(vae_channels, norm_num_groups, "vae")
    _check_groups(unet_channels, norm_num_groups, "unet")
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}"
        )
    if int(image_channels) < 1 or int(latent_channels) < 1:
        raise ConfigError("image_channels and latent_channels must be positive")
    if beta_schedule not in _BETA_SCHEDULES:
        raise ConfigError(
            f"unknown beta_schedule {beta_schedule!r}; expected one of {_BETA_SCHEDULES}"
        )
    scale, offset = units.affine_unit_map(
        data_range, data_scale, data_offset, default_range=(0.0, 1.0)
    )
    vae_factor, unet_factor = 2 ** (len(vae_channels) - 1), 2 ** (len(unet_channels) - 1)
    total = vae_factor * unet_factor
    if sizes[0] % total or sizes[1] % total:
        raise ConfigError(
            f"image_size {sizes} must be a multiple of {total} (VAE downsampling {vae_factor} "
            f"times UNet downsampling {unet_factor})"
        )
    latent_size = tuple(s // vae_factor for s in sizes)
    n_vae, n_unet = len(vae_channels), len(unet_channels)
    down = ["DownBlock2D"] * n_unet
    up = ["UpBlock2D"] * n_unet
    if attention and n_unet > 1:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        vae = AutoencoderKL(
            in_channels=int(image_channels),
            out_channels=int(image_channels),
            down_block_types=("DownEncoderBlock2D",) * n_vae,
            up_block_types=("UpDecoderBlock2D",) * n_vae,
            block_out_channels=vae_channels,
            layers_per_block=int(layers_per_block),
            latent_channels=int(latent_channels),
            norm_num_groups=int(norm_num_groups),
            sample_size=sizes[0],
            scaling_factor=float(scaling_factor),
            mid_block_add_attention=bool(attention),
        )
        unet = UNet2DModel(
            sample_size=latent_size[0] if latent_size[0] == latent_size[1] else latent_size,
            in_channels=int(latent_channels),
            out_channels=int(latent_channels),
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=unet_channels,
            layers_per_block=int(layers_per_block),
            norm_num_groups=int(norm_num_groups),
            attention_head_dim=min(8, unet_channels[-1]),
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
    )
    return LatentDiffusionPrior(
        vae,
        unet,
        scheduler,
        image_size=sizes,
        image_channels=int(image_channels),
        data_scale=scale,
        data_offset=offset,
        stretch=stretch,
        stretch_scale=stretch_scale,
        metadata=metadata,
    )
