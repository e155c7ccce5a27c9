"""Argument checks and seeding shared by the synthetic datasets (private)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError


def check_count(value: object, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int ``>= minimum``; raise :class:`ConfigError` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, found {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{name} must be an integer, found {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, found {number}")
    return number


def check_range(
    value: Sequence[float],
    name: str,
    low: float = -np.inf,
    high: float = np.inf,
    positive: bool = False,
) -> tuple[float, float]:
    """``(lo, hi)`` as floats, ``low <= lo <= hi <= high`` (and ``lo > 0`` if ``positive``)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a (low, high) pair of numbers, found {value!r}"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ConfigError(
            f"{name} must be a finite (low, high) pair with low <= high, found {value!r}"
        )
    if lo < low or hi > high:
        raise ConfigError(f"{name} must lie within [{low}, {high}], found {value!r}")
    if positive and lo <= 0:
        raise ConfigError(f"{name} must be positive, found {value!r}")
    return lo, hi


def check_index(index: object, n: int, name: str) -> int:
    """Normalise a dataset index (negative counts from the end); IndexError when out of range."""
    try:
        i = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} indices must be integers, found {type(index).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"{name} index {index} out of range for {n} items")
    return i


def item_rng(tag: int, seed: int, index: int) -> np.random.Generator:
    """Random generator for item ``index`` of a dataset: a function of ``(tag, seed, index)`` only.

    Items are therefore reproducible one by one, in any order, in any worker process. ``tag``
    separates datasets that share a seed.
    """
    return np.random.default_rng(np.random.SeedSequence([tag, seed, index]))
