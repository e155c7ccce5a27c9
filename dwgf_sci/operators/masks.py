r"""Bad-pixel and cosmic-ray masks: :class:`BadPixelMask` (deepinv ``Inpainting``).

The operator zeroes the bad pixels,

.. math::

    A x = w \odot x, \qquad w = 1 - \mathbb 1_\mathrm{bad} \in \{0, 1\}^{H \times W},

which is self-adjoint, :math:`A^\top = A`, with pseudo-inverse :math:`A^\dagger = A`. Noise is added
by deepinv's ``Inpainting.noise``, which keeps bad pixels at zero in the measurements.

**Convention**: arrays given to this module mark **bad** pixels (``True`` / non-zero = bad, as in a
data-quality or bad-pixel map). deepinv's ``mask`` buffer holds the complementary weights :math:`w`
(1 = kept); :attr:`BadPixelMask.bad` returns the boolean bad-pixel map.

Compose with a PSF as ``BadPixelMask(...) * PSFConvolution(...)`` (blur first, then mask); the
mask's ``img_size`` is the PSF's output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from deepinv.physics import Inpainting
from deepinv.physics.noise import NoiseModel, ZeroNoise

from ..errors import ConfigError, OperatorMismatchError
from ._base import ImgSize, OperatorMixin, as_bool_map, as_img_size, check_dtype

__all__ = ["BadPixelMask", "random_bad_pixel_mask"]


def _fraction(value: float, name: str = "fraction") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected a fraction in [0, 1), found {value!r}") from exc
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"{name}: expected a fraction in [0, 1), found {value!r}")
    return v


def random_bad_pixel_mask(
    img_size: int | Sequence[int],
    fraction: float = 0.0,
    seed: int = 0,
    cosmic_rays: int = 0,
    track_length: int = 8,
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    r"""Random bad-pixel map: isolated bad pixels plus cosmic-ray tracks.

    - exactly :math:`\mathrm{round}(\mathrm{fraction}\cdot HW)` isolated pixels, drawn uniformly
      without replacement (hot / dead pixels);
    - ``cosmic_rays`` straight tracks, each from a uniform random start pixel in a uniform random
      direction, of a uniform random length in :math:`[1, \mathrm{track\_length}]` pixels,
      rasterised by rounding one sample per pixel step and clipped at the edges.

    The total bad fraction is at least ``fraction`` (tracks may overlap the isolated pixels).

    :param img_size: ``(H, W)``, ``(C, H, W)`` (channels ignored) or ``N``.
    :param fraction: fraction of isolated bad pixels, in [0, 1).
    :param seed: seed (a CPU generator, so the map is the same on every device).
    :param cosmic_rays: number of cosmic-ray tracks.
    :param track_length: maximum track length in pixels.
    :param device: device of the result.
    :return: boolean ``(H, W)`` tensor, ``True`` = bad pixel.
    """
    _, H, W = as_img_size(img_size)
    fraction = _fraction(fraction)
    if isinstance(cosmic_rays, bool) or int(cosmic_rays) != cosmic_rays or cosmic_rays < 0:
        raise ConfigError(f"cosmic_rays: expected an integer >= 0, found {cosmic_rays!r}")
    if isinstance(track_length, bool) or int(track_length) != track_length or track_length < 1:
        raise ConfigError(f"track_length: expected an integer >= 1, found {track_length!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed: expected an integer, found {seed!r}")
    gen = torch.Generator("cpu").manual_seed(int(seed))
    bad = torch.zeros(H * W, dtype=torch.bool)
    n_bad = round(fraction * H * W)
    if n_bad:
        bad[torch.randperm(H * W, generator=gen)[:n_bad]] = True
    bad = bad.reshape(H, W)
    for _ in range(int(cosmic_rays)):
        r0 = float(torch.rand((), generator=gen)) * (H - 1)
        c0 = float(torch.rand((), generator=gen)) * (W - 1)
        angle = float(torch.rand((), generator=gen)) * math.pi
        length = 1 + int(torch.randint(int(track_length), (), generator=gen))
        steps = torch.arange(length, dtype=torch.float64)
        rows = torch.round(r0 + steps * math.sin(angle)).long()
        cols = torch.round(c0 + steps * math.cos(angle)).long()
        inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
        bad[rows[inside], cols[inside]] = True
    return bad.to(device)


class BadPixelMask(OperatorMixin, Inpainting):
    r"""Masking of bad pixels and cosmic rays (deepinv ``Inpainting``), :math:`A x = w \odot x`.

    :param mask: either a float, the fraction of isolated bad pixels of a random map (drawn by
        :func:`random_bad_pixel_mask` with ``seed``, ``cosmic_rays``, ``track_length``), or a
        bad-pixel map (``True`` / non-zero = **bad**): ``(H, W)``, ``(C, H, W)``, ``(1, C, H, W)``
        or ``(B, C, H, W)`` for one map per batch item. Note that deepinv's ``Inpainting`` takes the
        fraction of *kept* pixels; here it is the fraction of *bad* ones.
    :param img_size: image size ``(C, H, W)``.
    :param seed: seed of the random map.
    :param cosmic_rays: number of cosmic-ray tracks in the random map.
    :param track_length: maximum track length (pixels) in the random map.
    :param device: device of the mask.
    :param dtype: floating dtype of the weights.
    :param noise_model: deepinv noise model (bad pixels stay zero in noisy measurements).
    """

    spec_type: ClassVar[str] = "mask"

    def __init__(
        self,
        mask: float | torch.Tensor | np.ndarray,
        img_size: int | Sequence[int],
        seed: int = 0,
        cosmic_rays: int = 0,
        track_length: int = 8,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
    ) -> None:
        size = as_img_size(img_size)
        check_dtype(dtype)
        C, H, W = size
        if isinstance(mask, float | int) and not isinstance(mask, bool):
            bad = random_bad_pixel_mask(size, float(mask), seed, cosmic_rays, track_length)
            bad4 = bad[None, None]
            self_pattern = "random"
            params: dict[str, Any] = {
                "fraction": float(mask),
                "seed": int(seed),
                "cosmic_rays": int(cosmic_rays),
                "track_length": int(track_length),
            }
        else:
            t = as_bool_map(mask, name="mask")
            if t.ndim == 2:
                t = t[None, None]
            elif t.ndim == 3:
                t = t[None]
            if t.ndim != 4 or tuple(t.shape[-2:]) != (H, W) or t.shape[1] not in (1, C):
                raise OperatorMismatchError(
                    f"BadPixelMask: expected a bad-pixel map of shape (H, W) = ({H}, {W}) "
                    f"(optionally with leading (B, C) or (C,) dims, C in (1, {C})), "
                    f"found {tuple(mask.shape)}"
                )
            bad4 = t
            self_pattern = "array"
            params = {"mask_shape": list(bad4.shape)}
        weights = (~bad4).to(dtype)
        Inpainting.__init__(
            self,
            img_size=size,
            mask=weights,
            device=device,
            noise_model=noise_model or ZeroNoise(),
        )
        self.img_size: ImgSize = size
        self._pattern = self_pattern
        self._params = params

    @property
    def bad(self) -> torch.Tensor:
        """Boolean bad-pixel map (``True`` = bad), 4-D."""
        return self.mask == 0

    @property
    def bad_fraction(self) -> float:
        """Fraction of bad pixels (over all stored maps)."""
        return float(self.bad.float().mean())

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """Shape of one measurement, ``(C, H, W)``: the image with its bad pixels set to zero."""
        return tuple(self.img_size)

    def _spec_params(self) -> dict[str, Any]:
        return {"pattern": self._pattern, **self._params}

    def _check_batch(self, t: torch.Tensor) -> None:
        n = self.mask.shape[0]
        if n > 1 and t.shape[0] != n:
            raise OperatorMismatchError(
                f"BadPixelMask: this operator holds {n} per-item maps, so inputs must have "
                f"batch size {n}, found {t.shape[0]}"
            )

    def A(self, x: torch.Tensor, mask: Any = None, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`A x = w \odot x`."""
        self._check_image(x)
        self._check_batch(x)
        return x * self.mask.to(dtype=x.dtype)

    def A_adjoint(self, y: torch.Tensor, mask: Any = None, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`A^\top y = w \odot y`."""
        self._check_measurement(y)
        self._check_batch(y)
        return y * self.mask.to(dtype=y.dtype)

    def A_adjoint_A(self, x: torch.Tensor, mask: Any = None, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`A^\top A x = w \odot x` (binary weights)."""
        return self.A(x)

    def A_A_adjoint(self, y: torch.Tensor, mask: Any = None, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`A A^\top y = w \odot y`."""
        return self.A_adjoint(y)

    def A_dagger(  # noqa: N802
        self, y: torch.Tensor, reg: float = 0.0, **kwargs: Any
    ) -> torch.Tensor:
        r"""Closed form :math:`w \odot y / (w^2 + \mathrm{reg})` (:math:`w \odot y` for reg=0)."""
        self._check_measurement(y)
        self._check_batch(y)
        if reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        w = self.mask.to(dtype=y.dtype)
        return y * w / (w * w + reg) if reg > 0 else y * w
