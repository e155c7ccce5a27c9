r"""Per-pixel model of an autoencoder's reconstruction error.

An autoencoder does not reproduce its images exactly: :math:`x = D(z) + e`. How large
:math:`e` is depends strongly on where one looks. On the shipped galaxy prior its RMS is about
:math:`3\times10^{-4}` (model units) on the sky background and :math:`5\times10^{-2}` on the
brightest tenth of the pixels; on CT phantoms it is largest along edges. A single
:math:`\sigma_D` for every pixel (the prior's ``decoder_sigma``) overstates the error on the
background by two orders of magnitude, and a sampler that models it that way lets noise into
the places where the autoencoder is nearly exact.

:class:`DecoderErrorModel` predicts the error's standard deviation at each pixel from two
features of the decoded image :math:`D(z)` itself (model units): its value, and the magnitude
of its gradient (central differences). Both are binned at their quantiles on held-out images,
and the model stores the RMS error of each (value, gradient) cell:

.. math::
    e_p \sim \mathcal{N}\big(0,\ \sigma^2(D(z)_p,\ |\nabla D(z)|_p)\big)
    \quad\text{independently per pixel } p.

:meth:`DecoderErrorModel.fit` builds it from decoded images and their errors; cells with fewer
than ``min_count`` pixels take the RMS of their value bin. The model is stored with the prior
(``dwgf_prior.json``); :class:`~dwgf_sci.solvers.DWGF` uses it for its image-space step
(``decoder_error="auto"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["DecoderErrorModel", "gradient_magnitude"]


def gradient_magnitude(x: Tensor) -> Tensor:
    r""":math:`|\nabla x|` per pixel and channel by central differences (one-sided at the
    border), for images ``(N, C, H, W)``."""
    if x.ndim != 4:
        raise ConfigError(f"expected images (N, C, H, W), found shape {tuple(x.shape)}")
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return torch.sqrt(gx * gx + gy * gy)


def _quantile_edges(values: Tensor, bins: int, max_points: int = 2_000_000) -> Tensor:
    """The ``bins - 1`` inner quantile edges of ``values`` (a subsample when there are many)."""
    flat = values.flatten().double()
    if flat.numel() > max_points:
        stride = math.ceil(flat.numel() / max_points)
        flat = flat[::stride]
    probs = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    return torch.quantile(flat, probs)


@dataclass(frozen=True)
class DecoderErrorModel:
    """RMS decoder error per (value, gradient) cell of the decoded image (see the module doc).

    :param value_edges: the ``len(sigma) - 1`` increasing inner edges of the value bins.
    :param gradient_edges: the ``len(sigma[0]) - 1`` increasing inner edges of the gradient
        bins.
    :param sigma: RMS error (model units) of each cell, ``[value bin][gradient bin]``.
    """

    value_edges: tuple[float, ...]
    gradient_edges: tuple[float, ...]
    sigma: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        rows = len(self.sigma)
        cols = {len(r) for r in self.sigma}
        if rows == 0 or len(cols) != 1 or 0 in cols:
            raise ConfigError("decoder error model: sigma must be a non-empty rectangular table")
        (n_grad,) = cols
        if len(self.value_edges) != rows - 1 or len(self.gradient_edges) != n_grad - 1:
            raise ConfigError(
                f"decoder error model: a {rows}x{n_grad} table needs {rows - 1} value edges and "
                f"{n_grad - 1} gradient edges, found {len(self.value_edges)} and "
                f"{len(self.gradient_edges)}"
            )
        for name, edges in (("value", self.value_edges), ("gradient", self.gradient_edges)):
            if any(not math.isfinite(e) for e in edges) or any(
                b < a for a, b in zip(edges[:-1], edges[1:], strict=True)
            ):
                raise ConfigError(f"decoder error model: {name} edges must be finite, increasing")
        flat = [s for r in self.sigma for s in r]
        if any(not (math.isfinite(s) and s > 0) for s in flat):
            raise ConfigError("decoder error model: every sigma must be positive and finite")

    # ------------------------------------------------------------------ use
    def __call__(self, decoded: Tensor) -> Tensor:
        """Standard deviation of the error at each pixel of ``decoded`` (model units, ``(N, C,
        H, W)``), same shape and dtype."""
        table = torch.tensor(self.sigma, dtype=decoded.dtype, device=decoded.device)
        v_edges = torch.tensor(self.value_edges, dtype=decoded.dtype, device=decoded.device)
        g_edges = torch.tensor(self.gradient_edges, dtype=decoded.dtype, device=decoded.device)
        row = torch.bucketize(decoded.detach(), v_edges)
        col = torch.bucketize(gradient_magnitude(decoded.detach()), g_edges)
        return table[row, col]

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        decoded: Tensor,
        error: Tensor,
        value_bins: int = 32,
        gradient_bins: int = 8,
        min_count: int = 50,
    ) -> DecoderErrorModel:
        """Fit the table on decoded images and their errors ``decoded - x`` (model units).

        :param Tensor decoded: ``(N, C, H, W)`` decoded held-out images :math:`D(E(x))`.
        :param Tensor error: same shape, :math:`D(E(x)) - x`.
        :param int value_bins: quantile bins of the decoded value (default 32).
        :param int gradient_bins: quantile bins of the gradient magnitude (default 8).
        :param int min_count: cells with fewer pixels take their value bin's RMS.
        """
        if decoded.shape != error.shape or decoded.ndim != 4:
            raise ConfigError(
                f"decoded and error must be (N, C, H, W) of one shape, found "
                f"{tuple(decoded.shape)} and {tuple(error.shape)}"
            )
        if value_bins < 1 or gradient_bins < 1:
            raise ConfigError(f"bins must be >= 1, found {value_bins}, {gradient_bins}")
        if not (bool(torch.isfinite(decoded).all()) and bool(torch.isfinite(error).all())):
            raise ConfigError("decoded images or errors contain NaN or infinite values")
        decoded, error = decoded.detach().float(), error.detach()
        grad = gradient_magnitude(decoded)
        v_edges = _quantile_edges(decoded, value_bins)
        g_edges = _quantile_edges(grad, gradient_bins)
        row = torch.bucketize(decoded, v_edges.float()).flatten()
        col = torch.bucketize(grad, g_edges.float()).flatten()
        cell = row * gradient_bins + col
        sq = error.flatten().double().pow(2)
        n_cells = value_bins * gradient_bins
        count = torch.bincount(cell, minlength=n_cells).double()
        total = torch.bincount(cell, weights=sq, minlength=n_cells)
        row_count = count.reshape(value_bins, gradient_bins).sum(1, keepdim=True)
        row_total = total.reshape(value_bins, gradient_bins).sum(1, keepdim=True)
        overall = float(sq.mean())
        row_ms = torch.where(row_count > 0, row_total / row_count.clamp_min(1), overall)
        cell_ms = (total / count.clamp_min(1)).reshape(value_bins, gradient_bins)
        ms = torch.where(count.reshape(value_bins, gradient_bins) >= min_count, cell_ms, row_ms)
        floor = max(overall, 1e-30) * 1e-6  # a cell of exact pixels still gets a tiny spread
        sigma = ms.clamp_min(floor).sqrt()
        return cls(
            tuple(float(e) for e in v_edges),
            tuple(float(e) for e in g_edges),
            tuple(tuple(float(s) for s in r) for r in sigma),
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in ``dwgf_prior.json``)."""
        return {
            "features": ["value", "gradient_magnitude"],
            "value_edges": list(self.value_edges),
            "gradient_edges": list(self.gradient_edges),
            "sigma": [list(r) for r in self.sigma],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecoderErrorModel:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` for a malformed table."""
        try:
            return cls(
                tuple(float(e) for e in data["value_edges"]),
                tuple(float(e) for e in data["gradient_edges"]),
                tuple(tuple(float(s) for s in r) for r in data["sigma"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"malformed decoder error model: {err!r}") from err
