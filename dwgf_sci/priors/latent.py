r"""Domain-trained latent-diffusion priors built from diffusers components.

A :class:`LatentDiffusionPrior` is an ``AutoencoderKL`` (encoder :math:`E`, decoder :math:`D`), an
unconditional ``UNet2DModel`` noise predictor and a scheduler that holds the training noise
schedule :math:`\bar\alpha_t`. Small ones are trained on scientific images by the package's
training command and shipped (see :func:`dwgf_sci.priors.loading.load_prior`); new, untrained
ones are made by :func:`build_latent_prior`.

**Latent scaling.** As in Stable Diffusion, the diffusion model sees latents scaled to unit
variance,

.. math::

    z = (\mu_E(x) - \text{shift}) \cdot \text{scale},
    \qquad D(z) = \text{decoder}(z / \text{scale} + \text{shift}),

where :math:`\mu_E(x)` is the mean of the encoder's posterior, ``scale`` is the VAE config's
``scaling_factor`` (one over the latent standard deviation fitted on the training data, see
:meth:`LatentDiffusionPrior.fit_latent_scaling`) and ``shift`` its ``shift_factor`` (``0`` when
absent or ``None``).

**Units.** Operators work in physical units, the networks in the model range. The map between
them is affine, ``x_phys = data_scale * x_model + data_offset``, optionally composed with an
invertible ``asinh`` stretch for data of high dynamic range (astronomical flux): with the
stretch parameter :math:`a > 0`,

.. math::

    x_\text{model} = \frac{\operatorname{asinh}(x_\text{phys} / a) - \text{data\_offset}}
    {\text{data\_scale}},
    \qquad
    x_\text{phys} = a \sinh(\text{data\_scale}\; x_\text{model} + \text{data\_offset}).

The stretch is linear (slope :math:`1/a`) for :math:`|x| \ll a` and logarithmic beyond, so faint
structure and bright cores both use the model range.

**Folder format** (written by :meth:`LatentDiffusionPrior.save_pretrained`)::

    folder/
      dwgf_prior.json          class name, units, stretch, image size/channels, metadata
      vae/config.json          diffusers AutoencoderKL (scaling_factor, shift_factor)
      vae/diffusion_pytorch_model.safetensors
      unet/config.json         diffusers UNet2DModel
      unet/diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json

Only safetensors weights are read; folders with pickled (``.bin``, ``.pt``, ``.ckpt``) weights
are refused.

This module also holds the machinery shared with
:class:`~dwgf_sci.priors.stable_diffusion.StableDiffusionPrior`: device/dtype resolution,
VAE scaling, channel mapping and the conversion of any prediction type to noise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, FileFormatError, OutputExistsError, ShapeError
from .base import LatentPrior
from .decoder_error import DecoderErrorModel

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL, UNet2DModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["PRIOR_CONFIG_NAME", "LatentDiffusionPrior", "build_latent_prior"]

#: Name of the file that describes a saved prior (class, units, settings).
PRIOR_CONFIG_NAME = "dwgf_prior.json"
#: Version of the ``dwgf_prior.json`` format written by this module.
FORMAT_VERSION = 1

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_STRETCHES = (None, "asinh")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


# ---------------------------------------------------------------------- shared helpers
def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to load a prior on: ``device``, else CUDA when available, else the CPU.

    :param device: a device, its name, or ``None``.
    :raises ConfigError: for a device name torch does not know.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from err


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, half_on_cuda: bool
) -> torch.dtype:
    """The floating dtype the networks compute in.

    ``None`` means float16 on CUDA when ``half_on_cuda`` and float32 otherwise. Half precision
    (float16, bfloat16) is only used on CUDA: on any other device it is replaced by float32 with a
    warning, since CPU half-precision convolutions are slow and inaccurate.

    :param dtype: a floating torch dtype, one of its names (``"fp16"``, ``"bfloat16"``, ...) or
        ``None``.
    :param torch.device device: the device the networks run on.
    :param bool half_on_cuda: default to float16 on CUDA.
    :raises ConfigError: for an unknown or non-floating dtype.
    """
    if dtype is None:
        return torch.float16 if (half_on_cuda and device.type == "cuda") else torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPE_NAMES)}")
        dtype = _DTYPE_NAMES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch dtype, found {dtype!r}")
    if dtype in (torch.float16, torch.bfloat16) and device.type != "cuda":
        warnings.warn(
            f"{dtype} is only used on CUDA; the prior runs in float32 on {device}",
            stacklevel=3,
        )
        return torch.float32
    return dtype


def unit_map(
    data_range: Sequence[float] | None,
    data_scale: float | None,
    data_offset: float | None,
    default_range: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[float, float]:
    """``(data_scale, data_offset)`` from a physical range or from the affine map itself.

    A physical range ``(lo, hi)`` is mapped onto the model range ``[-1, 1]``: ``data_scale =
    (hi - lo) / 2`` and ``data_offset = (hi + lo) / 2``.

    :param data_range: physical values ``(lo, hi)`` that map to ``-1`` and ``1``.
    :param data_scale: physical units per model unit (exclusive with ``data_range``).
    :param data_offset: physical value of model ``0`` (exclusive with ``data_range``).
    :param default_range: range used when nothing is given (``None``: scale 1, offset 0).
    :raises ConfigError: if both forms are given, or the range/scale is degenerate.
    """
    if data_range is not None:
        if data_scale is not None or data_offset is not None:
            raise ConfigError("give either data_range or data_scale/data_offset, not both")
        values = [float(v) for v in data_range]
        if len(values) != 2 or not all(math.isfinite(v) for v in values):
            raise ConfigError(f"data_range must be two finite numbers (lo, hi), found {data_range}")
        lo, hi = values
        if not hi > lo:
            raise ConfigError(f"data_range must satisfy lo < hi, found ({lo}, {hi})")
        return (hi - lo) / 2.0, (hi + lo) / 2.0
    if data_scale is None and data_offset is None and default_range is not None:
        return unit_map(default_range, None, None)
    scale = 1.0 if data_scale is None else float(data_scale)
    offset = 0.0 if data_offset is None else float(data_offset)
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"data_scale must be a positive finite number, found {data_scale}")
    if not math.isfinite(offset):
        raise ConfigError(f"data_offset must be finite, found {data_offset}")
    return scale, offset


def epsilon_from_output(
    output: Tensor, z_t: Tensor, alpha_bar: Tensor, prediction_type: str
) -> Tensor:
    r"""Convert a network output to the noise :math:`\epsilon`.

    With :math:`z_t = a z_0 + s \epsilon`, :math:`a = \sqrt{\bar\alpha_t}`,
    :math:`s = \sqrt{1 - \bar\alpha_t}`:

    * ``"epsilon"``: the output is :math:`\epsilon`;
    * ``"v_prediction"``: :math:`v = a \epsilon - s z_0`, so :math:`\epsilon = a v + s z_t`;
    * ``"sample"``: the output is :math:`z_0`, so :math:`\epsilon = (z_t - a z_0) / s`.

    :param Tensor output: network output ``(B, c, h, w)``.
    :param Tensor z_t: noisy latents, same shape.
    :param Tensor alpha_bar: :math:`\bar\alpha_t` per sample, ``(B,)``.
    :param str prediction_type: the scheduler's ``prediction_type``.
    """
    if prediction_type == "epsilon":
        return output
    ab = alpha_bar.to(device=z_t.device, dtype=z_t.dtype).view(-1, *([1] * (z_t.ndim - 1)))
    a, s = ab.sqrt(), (1.0 - ab).sqrt()
    if prediction_type == "v_prediction":
        return a * output + s * z_t
    if prediction_type == "sample":
        return (z_t - a * output) / s
    raise ConfigError(
        f"unsupported prediction_type {prediction_type!r}; expected one of {_PREDICTION_TYPES}"
    )


def read_prior_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``dwgf_prior.json`` of ``folder``, or ``None`` when the folder has none.

    :raises FileFormatError: if the file exists but is not a JSON object.
    """
    path = Path(folder) / PRIOR_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise FileFormatError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def write_prior_config(folder: Path, settings: Mapping[str, Any]) -> None:
    """Write ``settings`` (with the format version) to ``folder/dwgf_prior.json``."""
    from .._version import __version__ as package_version

    data = {"format_version": FORMAT_VERSION, "dwgf_sci_version": package_version, **settings}
    text = json.dumps(data, indent=2, sort_keys=False)
    (folder / PRIOR_CONFIG_NAME).write_text(text + "\n", encoding="utf-8")


def prepare_save_folder(save_directory: str | os.PathLike[str], overwrite: bool) -> Path:
    """Create ``save_directory``; refuse a folder that already holds a saved prior.

    :raises OutputExistsError: if ``dwgf_prior.json`` or ``model_index.json`` exists there and
        ``overwrite`` is false.
    :raises FileFormatError: if the path exists and is not a folder.
    """
    folder = Path(save_directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileFormatError(f"cannot save a prior to {folder}: it exists and is not a folder")
    if not overwrite:
        for name in (PRIOR_CONFIG_NAME, "model_index.json"):
            if (folder / name).exists():
                raise OutputExistsError(
                    f"{folder} already holds a saved model ({name}); pass overwrite=True to "
                    "replace it"
                )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def refuse_pickle_weights(folder: Path, subfolders: Sequence[str]) -> None:
    """Raise if a component folder holds pickled weights and no safetensors weights.

    :raises FileFormatError: naming the pickled files.
    """
    for sub in subfolders:
        path = folder / sub
        if not path.is_dir():
            continue
        files = [p for p in path.iterdir() if p.is_file()]
        has_safe = any(p.name.endswith(".safetensors") for p in files)
        pickled = sorted(p.name for p in files if p.name.endswith(_PICKLE_SUFFIXES))
        if pickled and not has_safe:
            raise FileFormatError(
                f"{path} holds pickled weights ({', '.join(pickled)}) and no .safetensors file; "
                "pickle files can run arbitrary code and are not loaded. Convert them with "
                "save_pretrained(..., safe_serialization=True) in a trusted environment"
            )


def require_subfolders(folder: Path, names: Sequence[str], what: str) -> None:
    """Raise :class:`FileFormatError` listing the component folders ``folder`` lacks."""
    missing = [n for n in names if not (folder / n).is_dir()]
    if missing:
        raise FileFormatError(
            f"{folder} is not a saved {what}: missing component folder(s) "
            f"{', '.join(m + '/' for m in missing)} (expected {', '.join(n + '/' for n in names)})"
        )


def network_load_options() -> dict[str, Any]:
    """Keyword options of diffusers' ``from_pretrained`` for our networks: without the optional
    ``accelerate`` package, the plain loading path, named explicitly (diffusers would choose it
    too, after a warning that asks the user to install a package they do not need)."""
    if importlib.util.find_spec("accelerate") is None:
        return {"low_cpu_mem_usage": False}
    return {}


def load_scheduler(source: str | os.PathLike[str], **kwargs: Any) -> SchedulerMixin:
    """Load the scheduler of a diffusers folder (or hub id), keeping its class when known.

    Schedulers without ``alphas_cumprod`` are replaced by a ``DDPMScheduler`` built from the same
    config (same betas, same ``prediction_type``).
    """
    import diffusers

    config = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler", **kwargs)
    cls = getattr(diffusers, str(config.get("_class_name", "DDPMScheduler")), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDPMScheduler
    scheduler = cls.from_config(config)
    if getattr(scheduler, "alphas_cumprod", None) is None:
        scheduler = diffusers.DDPMScheduler.from_config(config)
    return scheduler


# ---------------------------------------------------------------------- shared base
class AutoencoderPrior(LatentPrior):
    r"""Common base of priors made of a diffusers ``AutoencoderKL`` and a diffusers scheduler.

    It implements :meth:`_encode` / :meth:`_decode` (posterior mean, scaling and shift factors,
    single-channel images through an RGB autoencoder, casting to and from the network dtype) and
    the conversion of the network output to noise (:func:`epsilon_from_output`). Subclasses
    implement :meth:`_network` (the raw network output).

    The networks are frozen (``requires_grad=False``) and in eval mode: solvers differentiate
    through the decoder with respect to the latents, never the weights. Training code unfreezes
    them explicitly (``prior.vae.requires_grad_(True).train()``).

    :param vae: the ``AutoencoderKL``.
    :param scheduler: a diffusers scheduler with ``alphas_cumprod`` and a ``prediction_type``.
    :param int image_channels: channels of images in physical units; equal to the VAE's input
        channels, or 1 for an RGB VAE (repeated to 3 channels on encode, channel mean on decode).
    :param image_size: native ``(H, W)`` or ``None`` (any multiple of the downsampling factor).
    :param float data_scale: physical units per model unit.
    :param float data_offset: physical value of model ``0``.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        image_channels: int,
        image_size: Sequence[int] | None,
        data_scale: float,
        data_offset: float,
    ) -> None:
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ConfigError(
                f"the scheduler {type(scheduler).__name__} has no alphas_cumprod; use a DDPM-"
                "family scheduler (DDPMScheduler, DDIMScheduler, PNDMScheduler, ...)"
            )
        prediction_type = str(getattr(scheduler.config, "prediction_type", "epsilon"))
        if prediction_type not in _PREDICTION_TYPES:
            raise ConfigError(
                f"unsupported prediction_type {prediction_type!r} in the scheduler config; "
                f"expected one of {_PREDICTION_TYPES}"
            )
        vae_in = int(vae.config.in_channels)
        vae_out = int(vae.config.out_channels)
        image_channels = int(image_channels)
        if vae_in != vae_out:
            raise ConfigError(
                f"the VAE maps {vae_in}-channel images to {vae_out} channels; expected equal"
            )
        if image_channels != vae_in and not (image_channels == 1 and vae_in == 3):
            raise ConfigError(
                f"image_channels={image_channels} does not fit a VAE with {vae_in} input channels "
                f"(use {vae_in}, or 1 with an RGB VAE)"
            )
        super().__init__(
            torch.as_tensor(alphas).double(),
            image_channels=image_channels,
            latent_channels=int(vae.config.latent_channels),
            downsample=2 ** (len(vae.config.block_out_channels) - 1),
            image_size=image_size,
            data_scale=data_scale,
            data_offset=data_offset,
        )
        self.vae = vae
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.vae.requires_grad_(False).eval()

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the noise predictor (the network dtype)."""
        return self.vae.dtype

    @property
    def latent_scale(self) -> float:
        """The VAE config's ``scaling_factor`` (latents are multiplied by it after encoding)."""
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        """The VAE config's ``shift_factor``, ``0`` when absent or ``None``."""
        shift = getattr(self.vae.config, "shift_factor", None)
        return 0.0 if shift is None else float(shift)

    @property
    def maps_gray_to_rgb(self) -> bool:
        """Whether single-channel images go through an RGB autoencoder."""
        return self.image_channels == 1 and int(self.vae.config.in_channels) == 3

    # ------------------------------------------------------------------ memory options
    def enable_vae_slicing(self) -> None:
        """Encode/decode one image at a time (lower memory for large batches)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        """Encode/decode the whole batch at once (the default)."""
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode/decode large images in overlapping tiles (approximate; lower memory)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Encode/decode whole images (the default)."""
        self.vae.disable_tiling()

    # ------------------------------------------------------------------ speed options
    def _networks(self) -> list[nn.Module]:
        """The networks a reconstruction calls: the VAE's encoder and decoder, the denoiser."""
        unet = getattr(self, "unet", None)
        return [self.vae.encoder, self.vae.decoder, *([unet] if unet is not None else [])]

    def enable_channels_last(self) -> None:
        """Store the networks' 4-D weights channels-last (NHWC).

        On CUDA with float16/bfloat16 this lets cuDNN pick its NHWC tensor-core convolution
        kernels (the gain depends on the GPU and the network; it has not been measured here, where
        no GPU was available). Allowed on the CPU. Results agree with the default layout up to
        floating-point rounding.
        """
        for net in self._networks():
            net.to(memory_format=torch.channels_last)

    def compile_networks(self, **kwargs: Any) -> None:
        """Compile the encoder, decoder and denoiser with ``torch.compile``, in place.

        The parameter names (``state_dict``, :meth:`save_pretrained`) do not change. The first
        calls at each new batch size are slow (compilation); later ones are faster on CUDA.
        Gradients through the decoder (the data term) work as before.

        :param kwargs: options of :meth:`torch.nn.Module.compile` (``mode="max-autotune"``,
            ``backend=...``, ``dynamic=...``).
        """
        for net in self._networks():
            net.compile(**kwargs)

    # ------------------------------------------------------------------ networks
    def _check_image(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ShapeError(f"images must be a (B, C, H, W) tensor, found {shape}")
        if x.shape[1] != self.image_channels:
            raise ShapeError(
                f"the prior models {self.image_channels}-channel images, found {x.shape[1]} "
                f"channels in shape {tuple(x.shape)}"
            )

    def _check_latent(self, z: Tensor) -> None:
        if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ShapeError(
                f"latents must be a (B, {self.latent_channels}, h, w) tensor, found {shape}"
            )

    def _encode(self, x: Tensor) -> Tensor:
        self._check_image(x)
        h = x.to(self.vae.dtype)
        if self.maps_gray_to_rgb:
            h = h.expand(-1, 3, -1, -1)
        mean = self.vae.encode(h).latent_dist.mean
        z = (mean - self.latent_shift) * self.latent_scale
        return z.to(x.dtype)

    def _decode(self, z: Tensor) -> Tensor:
        self._check_latent(z)
        h = z.to(self.vae.dtype) / self.latent_scale + self.latent_shift
        x = self.vae.decode(h).sample
        if self.maps_gray_to_rgb:
            x = x.mean(dim=1, keepdim=True)
        return x.to(z.dtype)

    def _predict_noise(self, z_t: Tensor, t: Tensor) -> Tensor:
        self._check_latent(z_t)
        out = self._network(z_t, t).to(z_t.dtype)
        return epsilon_from_output(out, z_t, self.alphas_cumprod[t], self.prediction_type)

    def _network(self, z_t: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Raw network output (``prediction_type`` units) for ``z_t`` at timesteps ``t``."""
        raise NotImplementedError


# ---------------------------------------------------------------------- domain prior
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
        scale, offset = unit_map(data_range, data_scale, data_offset, default_range=None)
        decoder_sigma = float(decoder_sigma)
        if not (math.isfinite(decoder_sigma) and decoder_sigma >= 0):
            raise ConfigError(f"decoder_sigma must be >= 0 and finite, found {decoder_sigma}")
        if stretch in ("none", ""):
            stretch = None
        if stretch not in _STRETCHES:
            raise ConfigError(f"unknown stretch {stretch!r}; expected one of {_STRETCHES}")
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
        if self.stretch == "asinh":
            x = torch.asinh(x / self.stretch_scale)
        return (x - self.data_offset) / self.data_scale

    def from_model(self, x: Tensor) -> Tensor:
        """Map an image from the model range to physical units (inverse of :meth:`to_model`)."""
        x = x * self.data_scale + self.data_offset
        if self.stretch == "asinh":
            x = self.stretch_scale * torch.sinh(x)
        return x

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


# ---------------------------------------------------------------------- construction
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
    if prediction_type not in _PREDICTION_TYPES:
        raise ConfigError(
            f"unknown prediction_type {prediction_type!r}; expected one of {_PREDICTION_TYPES}"
        )
    if int(image_channels) < 1 or int(latent_channels) < 1:
        raise ConfigError("image_channels and latent_channels must be positive")
    if beta_schedule not in _BETA_SCHEDULES:
        raise ConfigError(
            f"unknown beta_schedule {beta_schedule!r}; expected one of {_BETA_SCHEDULES}"
        )
    scale, offset = unit_map(data_range, data_scale, data_offset, default_range=(0.0, 1.0))
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
