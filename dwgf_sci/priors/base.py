r"""The prior interface shared by every solver.

A latent-diffusion prior is a triple (encoder :math:`E`, decoder :math:`D`, noise predictor
:math:`\epsilon_\theta`) trained with the variance-preserving forward process

.. math::

    z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,
    \qquad \epsilon \sim \mathcal{N}(0, I),

so that
:math:`\nabla_{z_t} \log p_t(z_t) \approx -\epsilon_\theta(z_t, t) / \sqrt{1 - \bar\alpha_t}`.

Images live in two unit systems: *physical* units (counts, attenuation; what operators see) and the
*model range* the networks were trained on (``[-1, 1]`` for diffusers VAEs). Each prior carries its
own map between the two (:meth:`LatentPrior.to_model`, :meth:`LatentPrior.from_model`), kept in
its config; solvers compose ``physics(from_model(decode(z)))`` and never rescale inside an operator.

Every network call goes through the public methods below, which count them in
:attr:`LatentPrior.calls` so that solvers can report their cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import OperatorMismatchError, ShapeError
from .decoder_error import DecoderErrorModel


def linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    r"""Cumulative products :math:`\bar\alpha_t` of the DDPM linear beta schedule (float64).

    With :math:`\beta_t` evenly spaced from ``beta_start`` to ``beta_end`` (both included),
    :math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`, :math:`t = 0, \dots, T-1`.

    :param num_train_timesteps: number of training timesteps :math:`T`.
    :param beta_start: :math:`\beta_0`.
    :param beta_end: :math:`\beta_{T-1}`.
    :return: :math:`\bar\alpha_t`, shape ``(T,)``, float64, decreasing.
    """
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class LatentPrior(nn.Module):
    r"""Base class of latent-diffusion priors.

    Subclasses implement :meth:`_encode`, :meth:`_decode` and :meth:`_predict_noise`; users and
    solvers call the public, counted :meth:`encode`, :meth:`decode` and :meth:`predict_noise`.

    :param Tensor alphas_cumprod: :math:`\bar\alpha_t` over the training timesteps, shape ``(T,)``.
    :param int image_channels: channels of images in physical units (1 for most science images).
    :param int latent_channels: channels of the latent tensor.
    :param int downsample: spatial factor between image and latent (8 for Stable Diffusion,
        1 for an identity decoder).
    :param tuple image_size: native ``(H, W)`` of the prior, or ``None`` when any size that is a
        multiple of ``downsample`` is accepted.
    :param float data_scale: physical units per model unit: ``x_phys = data_scale * x_model +
        data_offset``.
    :param float data_offset: see ``data_scale``.

    **Capabilities.** A prior declares what solvers may rely on through class attributes; no
    solver tests a prior's concrete class, so a user's own subclass that declares the same
    capabilities gets exactly the same sampler as ours.

    * :attr:`affine_decoder`: the decoder is affine, :math:`D(z) = W z + b` (an identity or
      linear decoder). Solvers then evaluate the likelihood at noisy latents (DWGF's
      split-Gibbs SMC) and, for a linear physics with Gaussian noise, draw the likelihood step
      exactly from the matrix of :math:`z \mapsto A(D(z))`.
    * :attr:`local_extent`: ``(height, width)`` in pixels of the region over which the prior's
      statistics are local (a patch prior's patches; ``None``: the whole image). Solvers then
      estimate image-space scales per region of that size rather than over the whole image.
    """

    #: The decoder is affine in the latent (see the class documentation). False unless a
    #: subclass declares it.
    affine_decoder: ClassVar[bool] = False
    #: Pixel extent of the prior's local statistics (see the class documentation).
    local_extent: tuple[int, int] | None = None

    def __init__(
        self,
        alphas_cumprod: Tensor,
        image_channels: int = 1,
        latent_channels: int = 4,
        downsample: int = 8,
        image_size: Sequence[int] | None = None,
        data_scale: float = 1.0,
        data_offset: float = 0.0,
    ) -> None:
        super().__init__()
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if alphas_cumprod.numel() < 2 or not bool(
            ((alphas_cumprod > 0) & (alphas_cumprod < 1 + 1e-12)).all()
        ):
            raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1]")
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.image_channels = int(image_channels)
        self.latent_channels = int(latent_channels)
        self.downsample = int(downsample)
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        self.data_scale = float(data_scale)
        self.data_offset = float(data_offset)
        #: RMS error of ``decode(encode(x))`` in model units on held-out images (0: unknown).
        #: Solvers can model the decoder's error with it (see ``DWGF(decoder_error=...)``).
        self.decoder_sigma = 0.0
        #: Per-pixel model of that error (:class:`~dwgf_sci.priors.DecoderErrorModel`), or None.
        self.decoder_error_model: DecoderErrorModel | None = None
        #: Solver settings chosen for this prior on its validation problems, which solvers
        #: take where an option is ``"auto"`` (e.g. ``{"image_error": True}``, see
        #: :class:`~dwgf_sci.solvers.DWGF`); ``LatentDiffusionPrior`` saves them in its
        #: ``dwgf_prior.json``, other priors start empty.
        self.solver_hints: dict[str, Any] = {}
        self.calls: Counter[str] = Counter()

    # ------------------------------------------------------------------ units
    def to_model(self, x: Tensor) -> Tensor:
        """Map an image from physical units to the model range."""
        return (x - self.data_offset) / self.data_scale

    def from_model(self, x: Tensor) -> Tensor:
        """Map an image from the model range to physical units."""
        return x * self.data_scale + self.data_offset

    # ------------------------------------------------------------------ shapes
    @property
    def num_train_timesteps(self) -> int:
        """Number of training timesteps :math:`T`."""
        return int(self.alphas_cumprod.numel())

    @property
    def device(self) -> torch.device:
        """Device of the prior's buffers and parameters."""
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the networks compute in."""
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """Latent shape ``(c, h, w)`` for an image of shape ``(C, H, W)``.

        :raises OperatorMismatchError: if the image does not fit the prior (channels, size).
        """
        if len(image_shape) != 3:
            raise ShapeError(f"image_shape must be (C, H, W), found {tuple(image_shape)}")
        c, h, w = (int(s) for s in image_shape)
        if c != self.image_channels:
            raise OperatorMismatchError(
                f"the prior models {self.image_channels}-channel images, the operator expects {c}"
            )
        if self.image_size is not None and (h, w) != self.image_size:
            raise OperatorMismatchError(
                f"the prior models {self.image_size[0]}x{self.image_size[1]} images, "
                f"the operator expects {h}x{w}: apply it by shifted patches (reconstruct "
                "--patches; PatchPrior(prior) in Python), cut the image to that size (astropy's "
                "Cutout2D keeps the WCS) or train a prior on your images (train-prior)"
            )
        f = self.downsample
        if h % f or w % f:
            raise OperatorMismatchError(
                f"image size {h}x{w} is not a multiple of the prior's downsampling factor {f}"
            )
        return (self.latent_channels, h // f, w // f)

    # ------------------------------------------------------------------ networks
    def encode(self, x: Tensor) -> Tensor:
        """Encode images in the model range to latents (posterior mean of the encoder)."""
        self.calls["encoder"] += x.shape[0]
        return self._encode(x)

    def decode(self, z: Tensor) -> Tensor:
        """Decode latents to images in the model range."""
        self.calls["decoder"] += z.shape[0]
        return self._decode(z)

    def predict_noise(self, z_t: Tensor, t: Tensor | int) -> Tensor:
        r"""Predict the noise :math:`\epsilon_\theta(z_t, t)`.

        :param Tensor z_t: noisy latents ``(B, c, h, w)``.
        :param t: integer timestep(s) in ``[0, T)``, a scalar or a ``(B,)`` tensor.
        """
        self.calls["unet"] += z_t.shape[0]
        if not torch.is_tensor(t):
            t = torch.tensor(int(t), device=z_t.device)
        if t.ndim == 0:
            t = t.expand(z_t.shape[0])
        return self._predict_noise(z_t, t.to(z_t.device).long())

    def score(self, z_t: Tensor, t: Tensor | int) -> Tensor:
        r"""Score :math:`\nabla \log p_t(z_t) \approx -\epsilon_\theta / \sqrt{1-\bar\alpha_t}`."""
        ab = self.alphas_cumprod[int(t) if not torch.is_tensor(t) else t.long()]
        sigma = torch.sqrt(1 - ab).to(z_t.dtype)
        if sigma.ndim:
            sigma = sigma.view(-1, *([1] * (z_t.ndim - 1)))
        return -self.predict_noise(z_t, t) / sigma

    def reset_calls(self) -> None:
        """Reset the network-call counters."""
        self.calls.clear()

    def _encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict_noise(self, z_t: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
