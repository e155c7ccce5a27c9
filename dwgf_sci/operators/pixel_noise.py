r"""Gaussian noise with a per-pixel variance map, and masked pixels.

Survey images come with a noise map in one of several conventions; :func:`variance_from_map`
turns each into a variance (measurement units squared):

- ``"sigma"``: standard deviation per pixel (JWST/HST ``ERR``), :math:`v = s^2`;
- ``"variance"``: (HSC ``VARIANCE``, JWST ``VAR_*``), :math:`v` itself;
- ``"ivar"``: inverse variance (``IVAR``), :math:`v = 1/w`;
- ``"weight"``: a weight proportional to the inverse variance (drizzle ``WHT``), :math:`v = c/w`
  with the scale :math:`c` given (1 by default).

A pixel whose weight is 0, whose variance is infinite, or which a mask flags carries no
information: its variance is :math:`+\infty` and it has no influence on anything a solver
computes (scarlet2's convention). :class:`PixelNoise` is the deepinv noise model that carries the
map; solvers read it from ``physics.noise_model``.
"""

from __future__ import annotations

from typing import Any

import torch
from deepinv.physics.noise import NoiseModel
from torch import Tensor

from ..errors import InvalidDataError

__all__ = ["MAP_KINDS", "PixelNoise", "variance_from_map"]

#: The noise-map conventions :func:`variance_from_map` understands.
MAP_KINDS = ("sigma", "variance", "ivar", "weight")


def variance_from_map(
    values: Any, kind: str = "sigma", mask: Any | None = None, weight_scale: float = 1.0
) -> Tensor:
    """The per-pixel variance of a noise map given in one of :data:`MAP_KINDS`.

    :param values: the map (array or tensor).
    :param kind: its convention.
    :param mask: optional boolean map, True where a pixel is bad (its variance becomes inf).
    :param weight_scale: the variance of a pixel of weight 1 (``kind="weight"`` only).
    :return: float32 (float64 for float64 input) variance, ``inf`` where masked.
    :raises InvalidDataError: for an unknown kind, NaN or negative values, or a sigma/variance of 0
        (zero noise is not a measurement anyone has; use a mask to drop a pixel).
    """
    if kind not in MAP_KINDS:
        raise InvalidDataError(f"unknown noise-map kind {kind!r}; choose one of {MAP_KINDS}")
    v = torch.as_tensor(values)
    v = v.to(torch.float64 if v.dtype == torch.float64 else torch.float32)
    if bool(torch.isnan(v).any()):
        raise InvalidDataError(
            f"the noise map ({kind}) has {int(torch.isnan(v).sum())} NaN values; flag those "
            "pixels in a mask instead"
        )
    if bool((v < 0).any()):
        raise InvalidDataError(f"the noise map ({kind}) has negative values (min {float(v.min())})")
    if kind in ("sigma", "variance"):
        if bool((v == 0).any()):
            raise InvalidDataError(
                f"the noise map ({kind}) is 0 at {int((v == 0).sum())} pixels: zero noise is "
                "not a measurement; mask those pixels instead"
            )
        var = v.pow(2) if kind == "sigma" else v.clone()
    else:  # inverse variance or weight: 0 means no information
        if not weight_scale > 0:
            raise InvalidDataError(f"weight_scale must be positive, found {weight_scale}")
        scale = 1.0 if kind == "ivar" else float(weight_scale)
        var = torch.where(v > 0, scale / v, torch.full_like(v, float("inf")))
    if mask is not None:
        bad = torch.as_tensor(mask, dtype=torch.bool, device=var.device)
        var = torch.where(bad, torch.full_like(var, float("inf")), var)
    return var


class PixelNoise(NoiseModel):
    r"""Gaussian noise of a per-pixel variance, :math:`y = z + \epsilon`,
    :math:`\epsilon_i \sim \mathcal{N}(0, v_i)`; a pixel of infinite variance is masked: it reads
    NaN, as a bad pixel does in a survey file.

    :param variance: the variance map, shape of one measurement ``(C, H, W)`` (or with a leading
        batch dimension of 1 or ``B``); ``inf`` marks a masked pixel.
    :param rng: optional generator of the noise draws.
    """

    def __init__(self, variance: Tensor, rng: torch.Generator | None = None) -> None:
        super().__init__(rng=rng)
        variance = torch.as_tensor(variance)
        if not variance.is_floating_point():
            variance = variance.float()
        if bool(torch.isnan(variance).any()) or bool((variance <= 0).any()):
            raise InvalidDataError("a variance map must be positive (inf for masked pixels)")
        if not bool(torch.isfinite(variance).any()):
            raise InvalidDataError("every pixel of the variance map is masked: nothing to fit")
        self.register_buffer("variance", variance)

    @property
    def mask(self) -> Tensor:
        """True where a pixel is masked (infinite variance)."""
        return ~torch.isfinite(self.variance)

    def batched(self, like: Tensor) -> Tensor:
        """The variance with a batch dimension, broadcastable against ``like``."""
        var = self.variance.to(device=like.device)
        return var if var.ndim == like.ndim else var.unsqueeze(0)

    def forward(self, x: Tensor, seed: int | None = None, **kwargs: Any) -> Tensor:
        """Noisy copy of ``x``: Gaussian noise of the map's variance, NaN at masked pixels."""
        self.rng_manual_seed(seed)
        var = self.batched(x).to(x.dtype)
        noise = self.randn_like(x) * torch.where(torch.isfinite(var), var, 0.0).sqrt()
        return torch.where(torch.isfinite(var), x + noise, torch.full_like(x, float("nan")))
