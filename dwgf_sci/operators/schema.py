"""Spec validation machinery: value checks, fields and schemas.

A spec (operator or noise) is a flat dict checked against a :class:`Schema`: the keys it always
has (``base``), the keys a *selector* adds by its value (``variants``, e.g. ``profile="moffat"``
adds ``fwhm`` and ``beta``) and mutually exclusive keys (``exclusive``, e.g. ``m`` / ``ratio``).
Each key is a :class:`Field`: a check ``(path, value) -> normalised value`` that raises
:class:`~dwgf_sci.errors.ConfigError` naming the key, and a default (:data:`REQUIRED` if none).
:func:`fill` applies a schema to a spec. The schemas themselves live beside what they describe
(:mod:`~dwgf_sci.operators.noise`, :mod:`~dwgf_sci.operators.canonical`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = [
    "REQUIRED",
    "Check",
    "Field",
    "Schema",
    "boolean",
    "choice",
    "fill",
    "integer",
    "is_number",
    "number",
    "optional_shape",
    "optional_str",
]

#: Default of a field that has none: the key must be given.
REQUIRED = object()

Check = Callable[[str, Any], Any]


def is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> Check:
    def check(path: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not is_number(v) or not math.isfinite(float(v)):
            raise ConfigError(f"{path}: expected a finite number, found {v!r}")
        f = float(v)
        if lo is not None and (f < lo or (lo_open and f == lo)):
            raise ConfigError(
                f"{path}: expected a value {'>' if lo_open else '>='} {lo}, found {f}"
            )
        if hi is not None and (f > hi or (hi_open and f == hi)):
            raise ConfigError(
                f"{path}: expected a value {'<' if hi_open else '<='} {hi}, found {f}"
            )
        return f

    return check


def integer(lo: int | None = None, *, optional: bool = False, odd: bool = False) -> Check:
    def check(path: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, int | np.integer) or isinstance(v, bool):
            raise ConfigError(f"{path}: expected an integer, found {v!r}")
        if lo is not None and v < lo:
            raise ConfigError(f"{path}: expected an integer >= {lo}, found {v}")
        if odd and v % 2 == 0:
            raise ConfigError(f"{path}: expected an odd integer, found {v}")
        return int(v)

    return check


def choice(options: Sequence[str]) -> Check:
    def check(path: str, v: Any) -> Any:
        if v not in options:
            raise ConfigError(f"{path}: expected one of {list(options)}, found {v!r}")
        return v

    return check


def boolean(path: str, v: Any) -> bool:
    if not isinstance(v, bool | np.bool_):
        raise ConfigError(f"{path}: expected true or false, found {v!r}")
    return bool(v)


def optional_str(path: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str | os.PathLike):
        raise ConfigError(f"{path}: expected a string or nothing, found {v!r}")
    return os.fspath(v)


def optional_shape(path: str, v: Any) -> list[int] | None:
    if v is None:
        return None
    if (
        not isinstance(v, Sequence)
        or isinstance(v, str)
        or not all(
            isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 1 for d in v
        )
    ):
        raise ConfigError(f"{path}: expected a list of positive integers, found {v!r}")
    return [int(d) for d in v]


@dataclass(frozen=True)
class Field:
    check: Check
    default: Any = REQUIRED


@dataclass(frozen=True)
class Schema:
    """Keys of one spec type: ``base`` keys always, ``variants[selector][value]`` keys by choice."""

    fields: Mapping[str, Field]
    base: tuple[str, ...]
    variants: Mapping[str, Mapping[str, tuple[str, ...]]]
    exclusive: tuple[str, ...] = ()

    def selector_value(self, spec: Mapping[str, Any], key: str, path: str) -> Any:
        field = self.fields[key]
        value = spec.get(key, field.default)
        return field.check(path + key, value)

    def relevant(self, spec: Mapping[str, Any], path: str = "") -> list[str]:
        keys = list(self.base)
        for selector, table in self.variants.items():
            value = self.selector_value(spec, selector, path)
            keys += [k for k in table[value] if k not in keys]
        return keys

    @property
    def selectors(self) -> tuple[str, ...]:
        return tuple(self.variants) + self.exclusive


def fill(
    schema: Schema, spec: Mapping[str, Any], path: str, what: str, common: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check the keys of ``spec`` against ``schema`` and return its relevant keys, defaults filled.

    ``common`` keys are allowed but handled by the caller.
    """
    relevant = schema.relevant(spec, path)
    for key in spec:
        if key in relevant or key in common:
            continue
        if key in schema.fields:
            choice = ", ".join(
                f"{s}={schema.selector_value(spec, s, path)!r}" for s in schema.variants
            )
            raise ConfigError(f"{path}{key}: not used by {what} ({choice})")
        known = sorted(set(schema.fields) | set(common))
        raise ConfigError(f"{path}{key}: unknown key for {what}; known keys: {known}")
    out: dict[str, Any] = {}
    for key in relevant:
        field = schema.fields[key]
        value = spec.get(key, field.default)
        if value is REQUIRED:
            raise ConfigError(f"{path}{key}: required for {what}")
        out[key] = field.check(path + key, value)
    return out
