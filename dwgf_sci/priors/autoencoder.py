r"""The common base of priors made of a diffusers ``AutoencoderKL`` and scheduler.

:class:`AutoencoderPrior` implements encoding and decoding (posterior mean, latent scaling and
shift, single-channel images through an RGB autoencoder, network dtype) and the conversion of any
prediction type to noise (:func:`epsilon_from_output`); it is the base of
:class:`~dwgf_sci.priors.latent.LatentDiffusionPrior` and
:class:`~dwgf_sci.priors.stable_diffusion.StableDiffusionPrior`.

**Latent scaling.** As in Stable Diffusion, the diffusion model sees latents scaled to unit
variance,

.. math::

    z = (\mu_E(x) - \text{shift}) \cdot \text{scale},
    \qquad D(z) = \text{decoder}(z / \text{scale} + \text{shift}),

where :math:`\mu_E(x)` is the mean of the encoder's posterior, ``scale`` is the VAE config's
``scaling_factor`` (one over the latent standard deviation fitted on the training data, see
:meth:`~dwgf_sci.priors.latent.LatentDiffusionPrior.fit_latent_scaling`) and ``shift`` its
``shift_factor`` (``0`` when absent or ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from .base import LatentPrior

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["PREDICTION_TYPES", "AutoencoderPrior", "epsilon_from_output"]

#: The scheduler ``prediction_type`` values a prior accepts.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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
        f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}"
    )


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
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unsupported prediction_type {prediction_type!r} in the scheduler config; "
                f"expected one of {PREDICTION_TYPES}"
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
