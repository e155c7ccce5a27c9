r"""The map between physical units and the model range, fitted on the training data.

Operators work in physical units; the networks of a prior in the model range (about
``[-1, 1]``). :class:`~dwgf_sci.units.UnitMap` (re-exported here) is the map a trained prior
stores in its ``dwgf_prior.json``; its formulas, the affine map optionally after an ``asinh``
stretch, are written once in :mod:`dwgf_sci.units` and are those a
:class:`~dwgf_sci.priors.latent.LatentDiffusionPrior` applies. This module fits it.

**Fitting** (:func:`fit_unit_map`). The robust percentiles ``(p_lo, p_hi)`` (default 0.1 % and
99.9 %) of the (stretched) training pixels are mapped to ``-1`` and ``1``. Pixels beyond them
(the brightest galaxy cores, the densest bone) land slightly outside ``[-1, 1]``, which the
networks handle; the percentiles keep a handful of extreme pixels from squeezing everything else
into a small part of the range.

**The asinh stretch** (astronomy). Galaxy images span orders of magnitude: within one image
(bright core, faint disk) and between images (fluxes from 1e3 to 1e5 counts). With a linear map
the faint images would use a tiny part of the model range, and a small error in model units
would be a large relative error for them. :math:`\operatorname{asinh}(x/a)` is linear for
:math:`|x| \ll a` (so noise and negative values pass through unharmed) and logarithmic for
:math:`|x| \gg a`, so each factor of ten in brightness gets about the same share of the model
range. The softening :math:`a` (``stretch_scale``) is, unless given, a fraction
(:data:`AUTO_STRETCH_FRACTION`) of the median over training images of their brightest pixel:
faint galaxies are then still resolved and bright cores compressed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InvalidDataError
from ..units import STRETCHES, UnitMap

__all__ = ["AUTO_STRETCH_FRACTION", "DEFAULT_PERCENTILES", "UnitMap", "fit_unit_map"]

#: Percentiles of the training pixels (after the stretch) mapped to -1 and 1.
DEFAULT_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: Default asinh softening: this fraction of the median per-image maximum of the training data.
AUTO_STRETCH_FRACTION = 0.02
#: At most this many pixels (an evenly strided subset) enter the percentile computation.
_MAX_PIXELS = 4_000_000


def _subset(values: Tensor) -> np.ndarray:
    """All values, or an evenly strided subset of at most ``_MAX_PIXELS`` (deterministic)."""
    flat = values.detach().reshape(-1).double().cpu()
    step = max(1, math.ceil(flat.numel() / _MAX_PIXELS))
    return flat[::step].numpy()


def fit_unit_map(
    x: Tensor,
    stretch: str | None = None,
    stretch_scale: float | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> UnitMap:
    """Fit the physical -> model map on training images (see the module docstring).

    :param Tensor x: training images in physical units ``(N, C, H, W)``.
    :param stretch: ``None`` (affine map only) or ``"asinh"``.
    :param float stretch_scale: the asinh softening; default: :data:`AUTO_STRETCH_FRACTION`
        times the median over images of their maximum (of their largest absolute value for data
        with negative values).
    :param percentiles: ``(p_lo, p_hi)`` in percent, ``0 <= p_lo < p_hi <= 100``, mapped to -1
        and 1.
    :raises ConfigError: for invalid options.
    :raises InvalidDataError: for non-finite or constant data.
    """
    if stretch in ("none", ""):
        stretch = None
    if stretch not in STRETCHES:
        raise ConfigError(f"unknown stretch {stretch!r}; expected one of {STRETCHES}")
    try:
        p_lo, p_hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ConfigError(f"percentiles must be two numbers, found {percentiles!r}") from None
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= lo < hi <= 100, found {percentiles!r}")
    if not torch.is_tensor(x) or x.ndim != 4 or x.numel() == 0:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise InvalidDataError(f"expected training images (N, C, H, W), found {shape}")
    if not bool(torch.isfinite(x).all()):
        raise InvalidDataError("the training images hold NaN or Inf values")
    scale_a = 1.0
    if stretch == "asinh":
        if stretch_scale is None:
            peaks = x.detach().abs().flatten(1).amax(dim=1).double()
            scale_a = AUTO_STRETCH_FRACTION * float(peaks.median())
            if not (math.isfinite(scale_a) and scale_a > 0):
                raise InvalidDataError(
                    "cannot choose the asinh stretch scale: the training images are all zero"
                )
        else:
            scale_a = float(stretch_scale)
            if not (math.isfinite(scale_a) and scale_a > 0):
                raise ConfigError(f"stretch_scale must be positive, found {stretch_scale}")
        values = torch.asinh(x.double() / scale_a)
    else:
        values = x
    lo, hi = (float(v) for v in np.percentile(_subset(values), [p_lo, p_hi]))
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        raise InvalidDataError(
            f"the training images are constant ({lo:g} after the stretch): nothing to learn"
        )
    return UnitMap(
        data_scale=(hi - lo) / 2.0,
        data_offset=(hi + lo) / 2.0,
        stretch=stretch,
        stretch_scale=scale_a,
    )
