"""Random-ellipse CT phantoms (linear attenuation maps) as a torch Dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ._common import check_count, check_index, check_range, item_rng

__all__ = ["PhantomDataset"]

_TAG = 0xC7  # separates the phantom random streams from other datasets with the same seed

#: Tissue classes of the inner ellipses: (name, probability, attenuation range in 1/cm at ~70 keV).
TISSUES: tuple[tuple[str, float, tuple[float, float]], ...] = (
    ("soft", 0.5, (0.15, 0.28)),
    ("air", 0.25, (0.0, 0.05)),
    ("bone", 0.25, (0.35, 0.6)),
)


class PhantomDataset(Dataset):
    r"""Random-ellipse phantoms for CT: linear attenuation coefficients in 1/cm, nonnegative.

    Item ``i`` is a float32 tensor ``(1, size, size)``, a function of ``(seed, i)`` only (any order
    of access, any worker). :meth:`params` returns the ellipses drawn for an item.

    Each phantom is a body ellipse of water-like tissue with inner ellipses painted over it in the
    order drawn (a later ellipse replaces what is below it, and nothing is painted outside the
    body), so values stay within the physical range. Coordinates are normalised to [-1, 1] across
    the image.

    ==================  ====================================================================
    body                centre uniform in [-0.03, 0.03]^2; semi-axes uniform in [0.70, 0.90]
                        (x) and [0.55, 0.80] (y); rotation uniform in [-10, 10] degrees;
                        value uniform in ``body_value`` (default 0.18-0.22 1/cm, water/soft
                        tissue at ~70 keV)
    inner ellipses      count uniform in ``n_ellipses`` (default 3 to 8); centre uniform
                        over the inner 70 % of the body (by area); semi-axes uniform in
                        ``axis_range`` (default 0.04 to 0.25); rotation uniform in [0, 180)
    tissue of each      soft 50 % (0.15-0.28 1/cm), air/lung 25 % (0-0.05), bone 25 %
                        (0.35-0.6), value uniform within the class range
    ==================  ====================================================================

    Edges are anti-aliased: each pixel is the mean over ``supersample`` x ``supersample`` sub-pixels
    (partial-volume effect), so the phantoms are not strictly piecewise constant on the pixel grid.
    The ellipses are evaluated analytically (no ``skimage.draw`` rounding); deepinv's
    ``RandomPhantomDataset`` is not used because it draws from the global random state, so its
    items depend on the order of access.

    :param n: number of phantoms.
    :param size: image side in pixels (>= 8).
    :param seed: non-negative integer seed.
    :param n_ellipses: (min, max) number of inner ellipses, inclusive.
    :param axis_range: range of the inner semi-axes, as a fraction of the half-width of the image.
    :param body_value: range of the body attenuation (1/cm).
    :param supersample: sub-pixels per pixel and axis (1 disables anti-aliasing).
    """

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        *,
        n_ellipses: Sequence[int] = (3, 8),
        axis_range: Sequence[float] = (0.04, 0.25),
        body_value: Sequence[float] = (0.18, 0.22),
        supersample: int = 4,
    ) -> None:
        self.n = check_count(n, "n")
        self.size = check_count(size, "size", minimum=8)
        self.seed = check_count(seed, "seed")
        lo, hi = check_range(n_ellipses, "n_ellipses", 0, 100)
        if lo != int(lo) or hi != int(hi):
            raise ConfigError(f"n_ellipses must be a pair of integers, found {n_ellipses!r}")
        self.n_ellipses = (int(lo), int(hi))
        self.axis_range = check_range(axis_range, "axis_range", 0, 1, positive=True)
        self.body_value = check_range(body_value, "body_value", 0, 10)
        self.supersample = check_count(supersample, "supersample", minimum=1)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, size={self.size}, seed={self.seed})"

    def params(self, index: int) -> dict[str, Any]:
        """The ellipses drawn for item ``index``.

        :return: ``{"body": ellipse, "ellipses": [ellipse, ...]}`` where each ellipse is a dict with
            ``cx``, ``cy``, ``a``, ``b`` (normalised coordinates), ``angle`` (degrees), ``value``
            (1/cm) and ``tissue`` (``"body"``, ``"soft"``, ``"air"`` or ``"bone"``).
        :raises IndexError: if ``index`` is out of range.
        """
        i = check_index(index, self.n, type(self).__name__)
        rng = item_rng(_TAG, self.seed, i)
        body = {
            "cx": float(rng.uniform(-0.03, 0.03)),
            "cy": float(rng.uniform(-0.03, 0.03)),
            "a": float(rng.uniform(0.70, 0.90)),
            "b": float(rng.uniform(0.55, 0.80)),
            "angle": float(rng.uniform(-10.0, 10.0)),
            "value": float(rng.uniform(*self.body_value)),
            "tissue": "body",
        }
        theta = math.radians(body["angle"])
        names = [t[0] for t in TISSUES]
        probs = np.array([t[1] for t in TISSUES])
        ellipses = []
        for _ in range(int(rng.integers(self.n_ellipses[0], self.n_ellipses[1] + 1))):
            radius = 0.7 * math.sqrt(rng.uniform())
            phi = rng.uniform(0.0, 2.0 * math.pi)
            u, v = radius * body["a"] * math.cos(phi), radius * body["b"] * math.sin(phi)
            kind = int(rng.choice(len(TISSUES), p=probs))
            ellipses.append(
                {
                    "cx": body["cx"] + u * math.cos(theta) - v * math.sin(theta),
                    "cy": body["cy"] + u * math.sin(theta) + v * math.cos(theta),
                    "a": float(rng.uniform(*self.axis_range)),
                    "b": float(rng.uniform(*self.axis_range)),
                    "angle": float(rng.uniform(0.0, 180.0)),
                    "value": float(rng.uniform(*TISSUES[kind][2])),
                    "tissue": names[kind],
                }
            )
        return {"body": body, "ellipses": ellipses}

    def __getitem__(self, index: int) -> torch.Tensor:
        """Render phantom ``index`` as a float32 tensor ``(1, size, size)`` in 1/cm."""
        params = self.params(index)
        fine = self.size * self.supersample
        centres = (np.arange(fine, dtype=np.float64) + 0.5) / fine * 2.0 - 1.0
        body = _inside(params["body"], centres, slice(0, fine), slice(0, fine))
        image = np.zeros((fine, fine), dtype=np.float64)
        image[body] = params["body"]["value"]
        for ellipse in params["ellipses"]:
            # only the ellipse's bounding box: a circle of radius max(a, b) around its centre
            reach = max(ellipse["a"], ellipse["b"])
            rows = _span(ellipse["cy"], reach, fine)
            cols = _span(ellipse["cx"], reach, fine)
            inside = _inside(ellipse, centres, rows, cols) & body[rows, cols]
            image[rows, cols][inside] = ellipse["value"]
        s = self.supersample
        image = image.reshape(self.size, s, self.size, s).mean(axis=(1, 3))
        return torch.from_numpy(image.astype(np.float32))[None]


def _span(centre: float, reach: float, fine: int) -> slice:
    """Grid indices whose coordinate lies within ``centre +- reach`` (coordinates in [-1, 1])."""
    lo = math.floor((centre - reach + 1.0) / 2.0 * fine)
    hi = math.ceil((centre + reach + 1.0) / 2.0 * fine) + 1
    return slice(min(max(lo, 0), fine), min(max(hi, 0), fine))


def _inside(ellipse: dict[str, Any], centres: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Boolean mask of the grid points ``(rows, cols)`` inside an ellipse (x: columns, y: rows)."""
    theta = math.radians(ellipse["angle"])
    dx = centres[cols][np.newaxis, :] - ellipse["cx"]
    dy = centres[rows][:, np.newaxis] - ellipse["cy"]
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    return (u / ellipse["a"]) ** 2 + (v / ellipse["b"]) ** 2 <= 1.0
