r"""The map between physical units and a prior's model range, written once.

Operators work in physical units; the networks of a prior in the model range (about
``[-1, 1]``). The map is affine, optionally composed with an invertible ``asinh`` stretch for
data of high dynamic range (astronomical flux): with the stretch parameter :math:`a > 0`,

.. math::

    s(x) = \begin{cases} x & \text{no stretch} \\
                         \operatorname{asinh}(x / a) & \text{asinh stretch} \end{cases},
    \qquad
    x_\text{model} = \frac{s(x_\text{phys}) - \text{data\_offset}}{\text{data\_scale}},

and its inverse :math:`x_\text{phys} = s^{-1}(\text{data\_scale}\, x_\text{model} +
\text{data\_offset})` with :math:`s^{-1}(u) = a \sinh(u)`. Both maps are strictly increasing and
smooth, so the map is invertible on the whole real line (no clipping anywhere). The stretch is
linear (slope :math:`1/a`) for :math:`|x| \ll a` and logarithmic beyond, so faint structure and
bright cores both use the model range.

:func:`to_model` and :func:`from_model` are the two formulas; a
:class:`~dwgf_sci.priors.latent.LatentDiffusionPrior` applies them with its own settings, and
:class:`UnitMap` (what training fits, :func:`dwgf_sci.training.fit_unit_map`) holds one set of
settings. :func:`affine_unit_map` turns a physical range into the affine part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = [
    "STRETCHES",
    "UnitMap",
    "affine_unit_map",
    "check_stretch",
    "from_model",
    "to_model",
]

#: The stretches a unit map may apply before its affine part.
STRETCHES = (None, "asinh")


def check_stretch(stretch: str | None) -> str | None:
    """Return ``stretch`` if it is one of :data:`STRETCHES`.

    :raises ConfigError: for any other value.
    """
    if stretch not in STRETCHES:
        raise ConfigError(f"unknown stretch {stretch!r}; expected one of {STRETCHES}")
    return stretch


def to_model(
    x: Tensor,
    data_scale: float,
    data_offset: float,
    stretch: str | None = None,
    stretch_scale: float = 1.0,
) -> Tensor:
    """Physical units -> model range: the stretch (if any), then the affine map.

    :param x: values in physical units.
    :param data_scale: (stretched) physical units per model unit.
    :param data_offset: (stretched) physical value of model ``0``.
    :param stretch: ``None`` or ``"asinh"``.
    :param stretch_scale: the asinh softening :math:`a` (unused without a stretch).
    :return: the values in the model range.
    """
    if stretch == "asinh":
        x = torch.asinh(x / stretch_scale)
    return (x - data_offset) / data_scale


def from_model(
    x: Tensor,
    data_scale: float,
    data_offset: float,
    stretch: str | None = None,
    stretch_scale: float = 1.0,
) -> Tensor:
    """Model range -> physical units (the inverse of :func:`to_model`, same parameters)."""
    x = x * data_scale + data_offset
    if stretch == "asinh":
        x = stretch_scale * torch.sinh(x)
    return x


def affine_unit_map(
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
        return affine_unit_map(default_range, None, None)
    scale = 1.0 if data_scale is None else float(data_scale)
    offset = 0.0 if data_offset is None else float(data_offset)
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"data_scale must be a positive finite number, found {data_scale}")
    if not math.isfinite(offset):
        raise ConfigError(f"data_offset must be finite, found {data_offset}")
    return scale, offset


@dataclass(frozen=True)
class UnitMap:
    """An invertible map between physical units and the model range.

    It is the map a trained prior stores in its ``dwgf_prior.json`` (``data_scale``,
    ``data_offset``, ``stretch``, ``stretch_scale``), applied by :func:`to_model` and
    :func:`from_model`.

    :param float data_scale: (stretched) physical units per model unit, ``> 0``.
    :param float data_offset: (stretched) physical value of model ``0``.
    :param stretch: ``None`` or ``"asinh"``.
    :param float stretch_scale: the asinh softening :math:`a > 0` (physical units; unused without
        a stretch).
    """

    data_scale: float
    data_offset: float
    stretch: str | None = None
    stretch_scale: float = 1.0

    def __post_init__(self) -> None:
        check_stretch(self.stretch)
        if not (math.isfinite(self.data_scale) and self.data_scale > 0):
            raise ConfigError(f"data_scale must be positive and finite, found {self.data_scale}")
        if not math.isfinite(self.data_offset):
            raise ConfigError(f"data_offset must be finite, found {self.data_offset}")
        if not (math.isfinite(self.stretch_scale) and self.stretch_scale > 0):
            raise ConfigError(
                f"stretch_scale must be positive and finite, found {self.stretch_scale}"
            )

    def to_model(self, x: Tensor) -> Tensor:
        """Physical units -> model range."""
        return to_model(x, self.data_scale, self.data_offset, self.stretch, self.stretch_scale)

    def from_model(self, x: Tensor) -> Tensor:
        """Model range -> physical units (the inverse of :meth:`to_model`)."""
        return from_model(x, self.data_scale, self.data_offset, self.stretch, self.stretch_scale)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the keys of :class:`~dwgf_sci.priors.latent.LatentDiffusionPrior`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitMap:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data_scale=float(data["data_scale"]),
            data_offset=float(data["data_offset"]),
            stretch=data.get("stretch"),
            stretch_scale=float(data.get("stretch_scale", 1.0)),
        )
