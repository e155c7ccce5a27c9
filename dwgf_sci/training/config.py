"""Settings of a training run (:class:`TrainConfig`), checked before anything is computed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from .data import DATASETS

__all__ = ["RESULT_KEYS", "TrainConfig"]

_RECON_LOSSES = ("l1", "l2", "l1+l2")
_AUGMENTS = ("none", "flips")
_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Everything that defines a training run of :func:`~dwgf_sci.training.train_prior`.

    **Data**

    :param data: HDF5 file, folder of FITS files or glob (exclusive with ``dataset``).
    :param str data_key: dataset name in the HDF5 file.
    :param dataset: ``"galaxies"``, ``"phantoms"`` or ``"fields"``: generate ``n`` images of side
        ``size``.
    :param int n: images to generate (training + validation).
    :param int size: side of generated images.
    :param int data_seed: seed of the generated images.
    :param val: validation images (the last ones); default 10 %, at most 200, at least 1.
    :param patch_size: train a patch prior on random square crops of this side of the images
        (validation images cropped apart), for :class:`~dwgf_sci.priors.patches.PatchPrior`.
    :param int crops_per_image: crops per image with ``patch_size``.

    **Output**

    :param str out: output folder (the saved prior, model card, plots, checkpoints).
    :param bool overwrite: replace a prior or the checkpoints of an earlier run in ``out``.
    :param bool resume: continue from the latest checkpoints in ``out``.
    :param int checkpoint_every: save a checkpoint every this many steps of each stage (and at
        the end of each stage).
    :param bool keep_checkpoints: keep ``out/checkpoints`` after a successful run.

    **Units** (see :mod:`dwgf_sci.training.units`)

    :param stretch: ``None`` or ``"asinh"`` (latent-diffusion priors only).
    :param stretch_scale: asinh softening; default automatic.
    :param percentiles: training-pixel percentiles mapped to -1 and 1.

    **Architecture** (latent-diffusion priors; ignored with ``init_from``)

    :param int latent_channels: VAE latent channels.
    :param vae_channels: channels of the VAE levels (downsampling ``2 ** (levels - 1)``).
    :param unet_channels: channels of the UNet levels.
    :param int layers_per_block: ResNet blocks per level.
    :param bool attention: self-attention in the VAE mid-block and lowest UNet level.
    :param int norm_num_groups: GroupNorm groups.

    **Optimisation**

    :param int vae_steps: VAE optimisation steps (stage 1).
    :param int unet_steps: denoiser optimisation steps (stage 2).
    :param int batch_size: images per VAE step (global over processes).
    :param unet_batch_size: latents per denoiser step; default ``batch_size``.
    :param float vae_lr: peak learning rate of the VAE (AdamW).
    :param float unet_lr: peak learning rate of the denoiser.
    :param str lr_schedule: ``"cosine"`` (linear warmup, cosine decay to 10 %) or
        ``"constant"`` (linear warmup, then constant).
    :param warmup_steps: warmup steps; default 5 % of the stage, at most 200.
    :param float weight_decay: AdamW weight decay.
    :param float grad_clip: gradient-norm clipping (0: none).
    :param float ema_decay: EMA decay (see :class:`~dwgf_sci.training.ema.EMA`).
    :param str recon_loss: ``"l1"``, ``"l2"`` or ``"l1+l2"`` (model range).
    :param float kl_weight: weight of the KL term (per-element means of both terms).
    :param vae_logvar_init: initial log-variance of the encoder posterior (the bias of the
        logvar half of the VAE's ``quant_conv``); ``None`` keeps diffusers' initialisation
        (log-variance about 0, i.e. latent noise as large as the latents themselves, which the
        decoder must first learn to see through).
    :param bool latent_sample: train the denoiser on samples of the encoder posterior instead of
        its mean (the mean is what :meth:`LatentPrior.encode` returns).
    :param str augment: ``"none"`` or ``"flips"`` (random horizontal/vertical flips; only where
        the data distribution is mirror-symmetric, as for galaxies and the CT phantoms).
    :param int seed: seed of initialisation, batches and noise.

    **Fine-tuning**

    :param init_from: a Stable Diffusion folder: fine-tune its UNet (frozen VAE, empty prompt)
        instead of training a latent-diffusion prior from scratch.
    :param vae_from: a saved latent-diffusion prior: reuse its autoencoder (frozen), unit map and
        latent scaling, and train a new denoiser only (stage 2); the VAE settings are ignored.

    **Run and report**

    :param device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
    :param threads: CPU threads of torch (``torch.set_num_threads``, process-wide); default:
        torch's choice. On a CPU shared with other jobs, 1 thread per process is often faster.
    :param int eval_every: every this many steps of each stage, evaluate the EMA weights on the
        validation images (VAE: mean PSNR; denoiser: noise MSE at 10 noise levels) and plot it
        with the losses (0: only at the end). Does not change the trained weights.
    :param int sample_steps: DDIM steps of the sample grid and metrics.
    :param int eval_samples: prior samples for the distribution metrics of the model card
        (0: skip them).
    :param bool progress: show progress bars and messages.
    :param command: the command line, recorded in the model card.
    """

    data: str | None = None
    data_key: str = "x"
    dataset: str | None = None
    n: int = 2000
    size: int = 64
    data_seed: int = 0
    val: int | None = None
    patch_size: int | None = None
    crops_per_image: int = 8
    out: str = "prior"
    overwrite: bool = False
    resume: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: bool = False
    stretch: str | None = None
    stretch_scale: float | None = None
    percentiles: tuple[float, float] = (0.1, 99.9)
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention: bool = True
    norm_num_groups: int = 8
    vae_steps: int = 2000
    unet_steps: int = 4000
    batch_size: int = 16
    unet_batch_size: int | None = None
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    recon_loss: str = "l1"
    kl_weight: float = 1e-5
    vae_logvar_init: float | None = -8.0
    latent_sample: bool = False
    augment: str = "none"
    seed: int = 0
    init_from: str | None = None
    vae_from: str | None = None
    device: str | None = None
    threads: int | None = None
    eval_every: int = 0
    sample_steps: int = 100
    eval_samples: int = 200
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        self.vae_channels = tuple(int(c) for c in self.vae_channels)
        self.unet_channels = tuple(int(c) for c in self.unet_channels)
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        if self.stretch in ("none", ""):
            self.stretch = None
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` for any invalid setting (nothing is computed before)."""
        if (self.data is None) == (self.dataset is None):
            raise ConfigError("give exactly one data source: data=FILE|FOLDER|GLOB or dataset=")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {DATASETS}")
        positive = {
            "n": self.n,
            "size": self.size,
            "checkpoint_every": self.checkpoint_every,
            "latent_channels": self.latent_channels,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "batch_size": self.batch_size,
            "sample_steps": self.sample_steps,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, found {value!r}")
        for name in ("vae_steps", "unet_steps", "eval_samples", "seed", "data_seed", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, found {value!r}")
        for name in ("unet_batch_size", "warmup_steps", "val", "threads", "patch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer or None, found {value!r}")
        if self.unet_batch_size is not None and self.unet_batch_size < 1:
            raise ConfigError(f"unet_batch_size must be >= 1, found {self.unet_batch_size}")
        if self.patch_size is not None and self.patch_size < 8:
            raise ConfigError(f"patch_size must be >= 8, found {self.patch_size}")
        if (
            isinstance(self.crops_per_image, bool)
            or not isinstance(self.crops_per_image, int)
            or (self.crops_per_image < 1)
        ):
            raise ConfigError(f"crops_per_image must be >= 1, found {self.crops_per_image!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, found {self.threads}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, found {self.warmup_steps}")
        for name in ("vae_lr", "unet_lr"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, found {value}")
        for name in ("weight_decay", "grad_clip", "kl_weight"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a non-negative number, found {value}")
        if self.vae_logvar_init is not None and not math.isfinite(float(self.vae_logvar_init)):
            raise ConfigError(f"vae_logvar_init must be finite, found {self.vae_logvar_init}")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), found {self.ema_decay}")
        if self.recon_loss not in _RECON_LOSSES:
            raise ConfigError(
                f"recon_loss must be one of {_RECON_LOSSES}, found {self.recon_loss!r}"
            )
        if self.augment not in _AUGMENTS:
            raise ConfigError(f"augment must be one of {_AUGMENTS}, found {self.augment!r}")
        if self.lr_schedule not in _SCHEDULES:
            raise ConfigError(
                f"lr_schedule must be one of {_SCHEDULES}, found {self.lr_schedule!r}"
            )
        if self.stretch not in (None, "asinh"):
            raise ConfigError(f"stretch must be None or 'asinh', found {self.stretch!r}")
        if self.stretch_scale is not None and not float(self.stretch_scale) > 0:
            raise ConfigError(f"stretch_scale must be positive, found {self.stretch_scale}")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ConfigError(
                f"percentiles must be (lo, hi) with 0 <= lo < hi <= 100, found {self.percentiles}"
            )
        if not self.vae_channels or not self.unet_channels:
            raise ConfigError("vae_channels and unet_channels need at least one level each")
        for what, channels in (("vae", self.vae_channels), ("unet", self.unet_channels)):
            bad = [c for c in channels if c < 1 or c % self.norm_num_groups]
            if bad:
                raise ConfigError(
                    f"{what}_channels {channels} must be positive multiples of norm_num_groups="
                    f"{self.norm_num_groups}"
                )
        if self.vae_from is not None:
            if self.init_from is not None:
                raise ConfigError("give either init_from (Stable Diffusion) or vae_from, not both")
            self.vae_steps = 0  # the autoencoder of vae_from stays frozen
        elif self.init_from is not None:
            if self.stretch is not None:
                raise ConfigError(
                    "the asinh stretch is not available when fine-tuning Stable Diffusion "
                    "(its prior class maps units affinely); drop --stretch"
                )
            if self.vae_steps:
                self.vae_steps = 0  # the Stable Diffusion VAE stays frozen
        if self.init_from is None and self.vae_from is None and self.vae_steps < 1:
            raise ConfigError("vae_steps must be >= 1 when training a prior from scratch")

    # ------------------------------------------------------------------ derived values
    @property
    def total_downsampling(self) -> int:
        """VAE downsampling times UNet downsampling (image sides must be multiples of it)."""
        return 2 ** (len(self.vae_channels) - 1) * 2 ** (len(self.unet_channels) - 1)

    @property
    def denoiser_batch_size(self) -> int:
        """Latents per denoiser step."""
        return int(self.unet_batch_size or self.batch_size)

    def warmup_for(self, steps: int) -> int:
        """Warmup steps of a stage of ``steps`` steps."""
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return min(200, max(0, steps // 20))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        data = asdict(self)
        for key in ("vae_channels", "unet_channels", "percentiles"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output (unknown keys are refused)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**dict(data))

    def call_repr(self) -> str:
        """``TrainConfig(...)`` with the settings that differ from the defaults."""
        items = []
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default
            if f.name in ("progress", "command") or value == default:
                continue
            if isinstance(default, tuple) and tuple(value) == default:
                continue
            items.append(f"{f.name}={value!r}")
        return f"TrainConfig({', '.join(items)})"

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the trained weights (compared when resuming)."""
        data = self.to_dict()
        for key in RUN_ONLY_KEYS:
            data.pop(key, None)
        return data


#: Settings that do not change the trained weights (free to differ when resuming).
RUN_ONLY_KEYS = (
    "data",
    "out",
    "overwrite",
    "resume",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "threads",
    "eval_every",
    "sample_steps",
    "eval_samples",
    "progress",
    "command",
)
#: Settings that change the trained weights.
RESULT_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in RUN_ONLY_KEYS)
