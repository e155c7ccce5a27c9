r"""The intensity range of a prior's training images, recorded in its folder.

A learned prior knows images in the units it was trained on: the shipped galaxy prior's pixels
run from 0 to a few hundred, its images' total fluxes over about one decade. Data in other units
(counts, e-/s, nanomaggies, MJy/sr; attenuation in [0, 1] instead of 1/cm) ask it about images
it has never seen. :class:`IntensityRange` summarises the training images so that a solver can
see that before any work and rescale the problem (:mod:`dwgf_sci.solvers.flux_scale`):

- ``pixel``: quantiles of all training pixels (0.1%, 1%, 50%, 99%, 99.9%) and their extremes;
- ``total_flux``: quantiles of the per-image sum :math:`F = \sum_i x_i` (5%, 50%, 95%) and its
  extremes. The total flux is what a linear measurement determines best (for a normalised PSF
  it is the sum of the data), so it is the statistic data are compared with.

and whether the units are ``"relative"`` or ``"absolute"``. Relative: the brightness of an
image is a nuisance (a galaxy's flux depends on its distance and the exposure), so data may be
normalised to the training images' median flux whatever their units. Absolute: the values are
physical quantities the prior knows (attenuation coefficients of tissues in 1/cm), so data
already in range are solved as they are; only data far outside it are rescaled (normalising CT
data in the prior's own units cost 1.1 dB on three 20-view validation problems).

It lives in the prior's metadata (``dwgf_prior.json``, key ``"intensity"``): ``train-prior``
records it, and :func:`record_intensity` adds it to an existing folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "FLUX_QUANTILES",
    "PIXEL_QUANTILES",
    "UNITS",
    "IntensityRange",
    "measure_intensity",
    "record_intensity",
    "training_intensity",
]

#: Quantiles of the training pixels that are recorded.
PIXEL_QUANTILES = (0.001, 0.01, 0.5, 0.99, 0.999)
#: Quantiles of the training images' total fluxes that are recorded.
FLUX_QUANTILES = (0.05, 0.5, 0.95)
#: ``"relative"``: brightness is a nuisance; ``"absolute"``: the values are physical.
UNITS = ("relative", "absolute")
#: Pixels drawn at most for the pixel quantiles (torch.quantile's input limit is 2**24).
_MAX_PIXELS = 4_000_000


def _key(q: float) -> str:
    return f"{q:g}"


@dataclass(frozen=True)
class IntensityRange:
    """Pixel and total-flux statistics of a set of training images (physical units).

    :param dict pixel: ``{"0.001": ..., "0.5": ..., "min": ..., "max": ...}``.
    :param dict total_flux: ``{"0.05": ..., "0.5": ..., "0.95": ..., "min": ..., "max": ...}``.
    :param int n_images: how many images they summarise.
    :param str units: ``"relative"`` or ``"absolute"`` (see the module doc).
    :param int image_pixels: pixels per training image (``H * W``): a patch prior compares an
        image of another size with the fluxes scaled by the ratio of areas.
    """

    pixel: Mapping[str, float]
    total_flux: Mapping[str, float]
    n_images: int
    units: str = "relative"
    image_pixels: int | None = None

    @property
    def flux_median(self) -> float:
        """Median total flux of the training images: where ``flux_scale="auto"`` puts data."""
        return float(self.total_flux["0.5"])

    @property
    def flux_range(self) -> tuple[float, float]:
        """The 5% and 95% quantiles of the training images' total fluxes."""
        return float(self.total_flux["0.05"]), float(self.total_flux["0.95"])

    @property
    def pixel_range(self) -> tuple[float, float]:
        """The 1% and 99.9% quantiles of the training pixels."""
        return float(self.pixel["0.01"]), float(self.pixel["0.999"])

    def per_area(self, pixels: int) -> IntensityRange:
        """The range for images of ``pixels`` pixels: total fluxes scaled by the ratio of areas
        (a field of a patch prior holds as much light per pixel as its training crops)."""
        if self.image_pixels is None or pixels == self.image_pixels:
            return self
        ratio = pixels / self.image_pixels
        flux = {k: v * ratio for k, v in self.total_flux.items()}
        return IntensityRange(self.pixel, flux, self.n_images, self.units, pixels)

    def describe(self) -> str:
        """One phrase: the flux range and the pixel range."""
        lo, hi = self.flux_range
        p_lo, p_hi = self.pixel_range
        return (
            f"total flux {lo:.3g} to {hi:.3g} per image (5-95% of {self.n_images} training "
            f"images), pixels {p_lo:.3g} to {p_hi:.3g} (1-99.9%)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the prior's metadata."""
        return {
            "pixel": dict(self.pixel),
            "total_flux": dict(self.total_flux),
            "n_images": int(self.n_images),
            "units": self.units,
            "image_pixels": self.image_pixels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityRange:
        """Read the JSON form back; a malformed record is a :class:`ConfigError`."""
        try:
            pixel = {str(k): float(v) for k, v in data["pixel"].items()}
            flux = {str(k): float(v) for k, v in data["total_flux"].items()}
            n = int(data["n_images"])
            units = str(data.get("units", "relative"))
            pixels = data.get("image_pixels")
            pixels = None if pixels is None else int(pixels)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"the prior's intensity record is malformed: {exc}") from exc
        needed = [_key(q) for q in FLUX_QUANTILES] + ["0.01", "0.999"]
        values = [*pixel.values(), *flux.values()]
        if any(k not in {**pixel, **flux} for k in needed) or not all(map(math.isfinite, values)):
            raise ConfigError("the prior's intensity record lacks quantiles or is not finite")
        if units not in UNITS:
            raise ConfigError(
                f"the prior's intensity units must be one of {UNITS}, found {units!r}"
            )
        if not flux["0.5"] > 0:
            raise ConfigError(
                f"the prior's training images have a median total flux of {flux['0.5']:g}; "
                "a flux scale needs a positive one"
            )
        return cls(pixel=pixel, total_flux=flux, n_images=n, units=units, image_pixels=pixels)


def measure_intensity(images: Tensor, units: str = "relative") -> IntensityRange:
    """Statistics of ``images`` ``(N, C, H, W)`` in physical units (see the module doc).

    :raises ConfigError: if there are no images or they are not finite.
    """
    if units not in UNITS:
        raise ConfigError(f"intensity units must be one of {UNITS}, found {units!r}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConfigError(f"expected images (N, C, H, W), found {tuple(images.shape)}")
    x = images.detach().double()
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("the training images contain NaN or inf")
    pixels = x.flatten()
    if pixels.numel() > _MAX_PIXELS:  # a fixed, evenly spaced subset: reproducible
        step = math.ceil(pixels.numel() / _MAX_PIXELS)
        pixels = pixels[::step]
    flux = x.flatten(1).sum(1)
    pq = torch.quantile(pixels, torch.tensor(PIXEL_QUANTILES, dtype=torch.float64))
    fq = torch.quantile(flux, torch.tensor(FLUX_QUANTILES, dtype=torch.float64))
    pixel = {_key(q): float(v) for q, v in zip(PIXEL_QUANTILES, pq, strict=True)}
    pixel.update(min=float(x.min()), max=float(x.max()))
    total = {_key(q): float(v) for q, v in zip(FLUX_QUANTILES, fq, strict=True)}
    total.update(min=float(flux.min()), max=float(flux.max()))
    return IntensityRange(
        pixel=pixel,
        total_flux=total,
        n_images=int(x.shape[0]),
        units=units,
        image_pixels=int(x.shape[-2] * x.shape[-1]),
    )


def training_intensity(prior: Any) -> IntensityRange | None:
    """The intensity range recorded with ``prior`` (its ``metadata["intensity"]``), or None
    when the prior records none (a Stable Diffusion model, a prior built in code)."""
    metadata = getattr(prior, "metadata", None)
    if not isinstance(metadata, Mapping) or "intensity" not in metadata:
        return None
    return IntensityRange.from_dict(metadata["intensity"])


def record_intensity(folder: str | Path, images: Tensor, units: str = "relative") -> IntensityRange:
    """Add the intensity range of ``images`` (the prior's training images, physical units) to
    the prior folder ``folder`` (its ``dwgf_prior.json``), written atomically."""
    from ..io.atomic import atomic_output
    from .folders import PRIOR_CONFIG_NAME, read_prior_config

    config = read_prior_config(folder)
    if config is None:
        raise ConfigError(f"{folder} is not a prior folder (no {PRIOR_CONFIG_NAME})")
    found = measure_intensity(images, units)
    config.setdefault("metadata", {})["intensity"] = found.to_dict()
    with atomic_output(Path(folder) / PRIOR_CONFIG_NAME, overwrite=True) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return found


def intensity_units(dataset: str | None) -> str:
    """The units of a training set: ``"absolute"`` for the package's CT phantoms (attenuation
    in 1/cm), ``"relative"`` otherwise (edit ``dwgf_prior.json`` for other physical units)."""
    return "absolute" if dataset == "phantoms" else "relative"
