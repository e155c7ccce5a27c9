r"""Operator specs: JSON-serialisable descriptions, presets, TOML files and ``--set`` overrides.

A spec is a flat dict: ``type``, ``img_size`` (``[C, H, W]`` or ``None``), the operator's
parameters, and a ``noise`` sub-dict. Example (the ``psf`` preset, resolved)::

    {"type": "psf", "img_size": None, "profile": "moffat", "padding": "same",
     "fwhm": 4.0, "beta": 3.0, "size": None,
     "noise": {"type": "gaussian", "sigma": 0.01, "seed": None}}

Operator types and their keys (defaults in brackets; ``*`` = required):

- ``psf``: ``profile`` [moffat] in gaussian / moffat / airy / kolmogorov / array, ``padding``
  [same] in same / circular / valid, then per profile ``fwhm*`` (pixels; kolmogorov: units of
  ``pixel_scale``), ``beta`` [3.0], ``lam_over_d*`` (pixels), ``obscuration`` [0.0],
  ``pixel_scale`` [1.0], ``size`` [auto, odd]; ``array``: ``source`` (FITS path or None) and
  ``psf_shape`` (the array is passed to :func:`build_operator` as ``psf=...``).
- ``ct``: ``n_views*``, ``angular_range`` [180 parallel, 360 fan beam] (degrees), ``start_angle``
  [0.0], ``geometry`` [parallel] / fanbeam, ``pixel_size`` [1.0]; fan beam adds
  ``source_radius``, ``detector_radius``, ``detector_spacing``, ``n_detectors`` [auto] (pixels).
- ``fourier``: ``pattern`` [random] / array; random: ``ratio`` [0.25], ``seed`` [0],
  ``centre_fraction`` [0.08]; array: ``mask_shape`` (pass ``mask=...``).
- ``random-cs``: ``m`` or ``ratio`` (exactly one), ``seed`` [0].
- ``hadamard``: ``m`` or ``ratio``, ``ordering`` [sequency] (random adds ``seed`` [0]).
- ``mask``: ``pattern`` [random] / array; random: ``fraction*`` (bad pixels), ``seed`` [0],
  ``cosmic_rays`` [0], ``track_length`` [8]; array: ``mask_shape`` (pass ``mask=...``, True = bad).
- ``inpaint-psf``: the keys of ``psf`` and of ``mask`` (blur, then bad-pixel mask).
- ``composed``: ``operators``, a list of operator specs applied in order.

Noise (``noise`` sub-dict, units of the measurements, see :mod:`dwgf_sci.operators.noise`):
``type`` [none] in none / gaussian (``sigma*``) / poisson (``gain*``, ``sky`` [0],
``clip_positive`` [True]) / poisson-gaussian (``gain*``, ``sigma*``, ``sky``, ``clip_positive``),
plus ``seed`` [None: torch's global generator] for the noise generator.

Presets (:data:`PRESETS`): ``psf``, ``ct-sparse``, ``ct-limited``, ``fourier``, ``random-cs``,
``inpaint-psf``, and ``hadamard``, ``mask``. Their Gaussian level is ``sigma = 0.01``: in
measurement units when an operator is built directly (1% of the peak for peak-1 data), and a
fraction of each noise-free measurement's peak in ``dwgf-sci simulate`` / ``demo`` (their default
``--noise-scale peak``; the absolute value used is stored in each file).

TOML files hold the same keys (TOML has no null: leave a key out for its default), either with
``type = ...`` (a full spec) or with ``preset = "name"`` plus keys that override the preset; the
noise is a ``[noise]`` table. Overrides are ``"key=value"`` strings, dotted for nested keys
(``"noise.sigma=0.05"``, ``"operators.0.fwhm=3"``); values are parsed as TOML literals, else taken
as strings (``geometry=fanbeam``), ``none``/``null`` give ``None`` and ``noise=none`` removes the
noise. Changing a selector (``type``, ``profile``, ``pattern``, ``geometry``, ``ordering``,
``noise.type``, or ``m`` vs ``ratio``) drops the keys the new choice does not use, unless they were
set explicitly, which is an error.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tomllib
import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.forward import ComposedLinearPhysics

from ..errors import ConfigError, OperatorMismatchError
from ._base import ComposedOperator, as_img_size
from .masks import BadPixelMask
from .noise import NOISE_TYPES, make_noise, noise_spec
from .psf import PADDINGS, PSF_PROFILES, PSFConvolution, normalise_psf
from .sensing import HADAMARD_ORDERINGS, FourierSampling, HadamardSensing, RandomSensing
from .tomography import GEOMETRIES, SparseViewCT

__all__ = [
    "PRESETS",
    "SPEC_TYPES",
    "build_operator",
    "canonical_noise_spec",
    "canonical_spec",
    "physics_spec",
    "resolve_spec",
]

_REQUIRED = object()


# ---------------------------------------------------------------------------------------------
# value checks: (path, value) -> normalised value, or ConfigError naming the key
# ---------------------------------------------------------------------------------------------
Check = Callable[[str, Any], Any]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _float(
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
        if not _is_number(v) or not math.isfinite(float(v)):
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


def _int(lo: int | None = None, *, optional: bool = False, odd: bool = False) -> Check:
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


def _choice(options: Sequence[str]) -> Check:
    def check(path: str, v: Any) -> Any:
        if v not in options:
            raise ConfigError(f"{path}: expected one of {list(options)}, found {v!r}")
        return v

    return check


def _bool(path: str, v: Any) -> bool:
    if not isinstance(v, bool | np.bool_):
        raise ConfigError(f"{path}: expected true or false, found {v!r}")
    return bool(v)


def _opt_str(path: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str | os.PathLike):
        raise ConfigError(f"{path}: expected a string or nothing, found {v!r}")
    return os.fspath(v)


def _opt_shape(path: str, v: Any) -> list[int] | None:
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
class _Field:
    check: Check
    default: Any = _REQUIRED


@dataclass(frozen=True)
class _Schema:
    """Keys of one spec type: ``base`` keys always, ``variants[selector][value]`` keys by choice."""

    fields: Mapping[str, _Field]
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


_PSF_FIELDS: dict[str, _Field] = {
    "profile": _Field(_choice(tuple(PSF_PROFILES)), "moffat"),
    "padding": _Field(_choice(PADDINGS), "same"),
    "fwhm": _Field(_float(0.0, lo_open=True)),
    "beta": _Field(_float(1.0, lo_open=True), 3.0),
    "size": _Field(_int(1, optional=True, odd=True), None),
    "lam_over_d": _Field(_float(0.0, lo_open=True)),
    "obscuration": _Field(_float(0.0, 1.0, hi_open=True), 0.0),
    "pixel_scale": _Field(_float(0.0, lo_open=True), 1.0),
    "source": _Field(_opt_str, None),
    "psf_shape": _Field(_opt_shape, None),
}
_MASK_PATTERNS = {
    "random": ("fraction", "seed", "cosmic_rays", "track_length"),
    "array": ("mask_shape",),
}
_MASK_FIELDS: dict[str, _Field] = {
    "pattern": _Field(_choice(tuple(_MASK_PATTERNS)), "random"),
    "fraction": _Field(_float(0.0, 1.0, hi_open=True)),
    "seed": _Field(_int(), 0),
    "cosmic_rays": _Field(_int(0), 0),
    "track_length": _Field(_int(1), 8),
    "mask_shape": _Field(_opt_shape, None),
}
_FAN_KEYS = ("source_radius", "detector_radius", "detector_spacing", "n_detectors")
_CT_FIELDS: dict[str, _Field] = {
    "n_views": _Field(_int(1)),
    "angular_range": _Field(_float(0.0, 360.0, lo_open=True, optional=True), None),
    "start_angle": _Field(_float(), 0.0),
    "geometry": _Field(_choice(GEOMETRIES), "parallel"),
    "pixel_size": _Field(_float(0.0, lo_open=True), 1.0),
    "source_radius": _Field(_float(0.0, lo_open=True, optional=True), None),
    "detector_radius": _Field(_float(0.0, lo_open=True, optional=True), None),
    "detector_spacing": _Field(_float(0.0, lo_open=True, optional=True), None),
    "n_detectors": _Field(_int(1, optional=True), None),
}
_FOURIER_PATTERNS = {"random": ("ratio", "seed", "centre_fraction"), "array": ("mask_shape",)}
_FOURIER_FIELDS: dict[str, _Field] = {
    "pattern": _Field(_choice(tuple(_FOURIER_PATTERNS)), "random"),
    "ratio": _Field(_float(0.0, 1.0, lo_open=True), 0.25),
    "seed": _Field(_int(), 0),
    "centre_fraction": _Field(_float(0.0, 1.0, hi_open=True), 0.08),
    "mask_shape": _Field(_opt_shape, None),
}
_COUNT_FIELDS: dict[str, _Field] = {
    "m": _Field(_int(1, optional=True), None),
    "ratio": _Field(_float(0.0, 1.0, lo_open=True, optional=True), None),
    "seed": _Field(_int(), 0),
    "ordering": _Field(_choice(HADAMARD_ORDERINGS), "sequency"),
}

_SCHEMAS: dict[str, _Schema] = {
    "psf": _Schema(_PSF_FIELDS, ("profile", "padding"), {"profile": PSF_PROFILES}),
    "ct": _Schema(
        _CT_FIELDS,
        ("n_views", "angular_range", "start_angle", "geometry", "pixel_size"),
        {"geometry": {"parallel": (), "fanbeam": _FAN_KEYS}},
    ),
    "fourier": _Schema(_FOURIER_FIELDS, ("pattern",), {"pattern": _FOURIER_PATTERNS}),
    "random-cs": _Schema(_COUNT_FIELDS, ("m", "ratio", "seed"), {}, exclusive=("m", "ratio")),
    "hadamard": _Schema(
        _COUNT_FIELDS,
        ("m", "ratio", "ordering"),
        {"ordering": {o: (("seed",) if o == "random" else ()) for o in HADAMARD_ORDERINGS}},
        exclusive=("m", "ratio"),
    ),
    "mask": _Schema(_MASK_FIELDS, ("pattern",), {"pattern": _MASK_PATTERNS}),
    "inpaint-psf": _Schema(
        {**_PSF_FIELDS, **_MASK_FIELDS},
        ("profile", "padding", "pattern"),
        {"profile": PSF_PROFILES, "pattern": _MASK_PATTERNS},
    ),
    "composed": _Schema({"operators": _Field(lambda p, v: v)}, ("operators",), {}),
}

#: operator spec types
SPEC_TYPES: tuple[str, ...] = tuple(_SCHEMAS)

_NOISE_SCHEMA = _Schema(
    {
        "type": _Field(_choice(tuple(NOISE_TYPES)), "none"),
        "sigma": _Field(_float(0.0)),
        "gain": _Field(_float(0.0, lo_open=True)),
        "sky": _Field(_float(0.0), 0.0),
        "clip_positive": _Field(_bool, True),
        "seed": _Field(_int(optional=True), None),
    },
    ("type",),
    {"type": NOISE_TYPES},
)

_COMMON = ("type", "img_size", "noise")


# ---------------------------------------------------------------------------------------------
# canonical specs
# ---------------------------------------------------------------------------------------------
def _fill(
    schema: _Schema, spec: Mapping[str, Any], path: str, what: str, common: tuple[str, ...] = ()
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
        if value is _REQUIRED:
            raise ConfigError(f"{path}{key}: required for {what}")
        out[key] = field.check(path + key, value)
    return out


def canonical_noise_spec(
    spec: Mapping[str, Any] | str | None, path: str = "noise"
) -> dict[str, Any]:
    """Validate a noise spec and fill in its defaults.

    :param spec: a dict, ``None`` / ``"none"`` (no noise) or a noise type name.
    :raises ConfigError: naming the offending key.
    """
    if spec is None:
        return {"type": "none"}
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a table/dict, found {spec!r}")
    kind = _NOISE_SCHEMA.selector_value(spec, "type", path + ".")
    body = _fill(_NOISE_SCHEMA, spec, path + ".", f"noise type {kind!r}")
    body["type"] = kind
    return body


def canonical_spec(spec: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Validate an operator spec and fill in its defaults (the form :func:`build_operator` reads).

    Components of a ``composed`` spec are canonicalised recursively (their noise must be
    ``none``; it belongs to the composition), and a CT spec without ``angular_range`` gets 180
    degrees (parallel beam) or 360 (fan beam).

    :param spec: the operator spec, a mapping with ``type`` (see the module docstring).
    :param path: dotted prefix of the spec's keys in error messages (for nested specs).
    :return: a new dict with ``type``, ``img_size`` (a list ``[C, H, W]`` or None), the type's
        keys with their defaults, and a canonical ``noise`` spec.
    :raises ConfigError: for an unknown type, unknown or unused keys, missing required keys or bad
        values; the message names the key (dotted path).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path or 'spec'}: expected a table/dict, found {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in _SCHEMAS:
        raise ConfigError(f"{path}type: expected one of {list(_SCHEMAS)}, found {kind!r}")
    schema = _SCHEMAS[kind]
    out: dict[str, Any] = {"type": kind, "img_size": None}
    if spec.get("img_size") is not None:
        out["img_size"] = list(as_img_size(spec["img_size"], name=f"{path}img_size"))
    body = _fill(schema, spec, path, f"operator type {kind!r}", _COMMON)
    if kind == "ct" and body["angular_range"] is None:
        body["angular_range"] = 180.0 if body["geometry"] == "parallel" else 360.0
    if schema.exclusive:
        given = [k for k in schema.exclusive if body.get(k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"{path}{' / '.join(schema.exclusive)}: give exactly one for operator type "
                f"{kind!r}, found {given or 'none'}"
            )
    if kind == "composed":
        ops = body["operators"]
        if not isinstance(ops, Sequence) or isinstance(ops, str) or len(ops) < 2:
            raise ConfigError(f"{path}operators: expected a list of at least two operator specs")
        parts = []
        for i, op in enumerate(ops):
            part = canonical_spec(op, path=f"{path}operators.{i}.")
            if part["noise"]["type"] != "none":
                raise ConfigError(
                    f"{path}operators.{i}.noise: noise belongs to the whole composition "
                    "(top-level 'noise'), not to a component"
                )
            part.pop("noise")
            parts.append(part)
        body["operators"] = parts
    out.update(body)
    out["noise"] = canonical_noise_spec(spec.get("noise"), path=f"{path}noise")
    return out


# ---------------------------------------------------------------------------------------------
# presets, TOML files and overrides
# ---------------------------------------------------------------------------------------------
_GAUSS = {"type": "gaussian", "sigma": 0.01}
_PSF_PRESET = {"profile": "moffat", "fwhm": 4.0, "beta": 3.0, "padding": "same"}

#: named specs (do not modify; :func:`resolve_spec` returns copies)
PRESETS: dict[str, dict[str, Any]] = {
    # Moffat seeing PSF, FWHM 4 px, beta 3; read noise 0.01 (1% of the peak for peak ~1 images)
    "psf": {"type": "psf", **_PSF_PRESET, "noise": dict(_GAUSS)},
    # 20 parallel-beam views over 180 degrees; sinogram noise 0.01 (1% of a unit-peak sinogram)
    "ct-sparse": {
        "type": "ct",
        "n_views": 20,
        "angular_range": 180.0,
        "geometry": "parallel",
        "noise": dict(_GAUSS),
    },
    # limited angle: 45 views over 90 degrees; 1% noise
    "ct-limited": {
        "type": "ct",
        "n_views": 45,
        "angular_range": 90.0,
        "geometry": "parallel",
        "noise": dict(_GAUSS),
    },
    # 25% of the uv / k-space frequencies, 8% centre block; noise per real / imaginary part
    "fourier": {
        "type": "fourier",
        "ratio": 0.25,
        "seed": 0,
        "centre_fraction": 0.08,
        "noise": dict(_GAUSS),
    },
    # dense Gaussian sensing with m = 25% of the pixels
    "random-cs": {"type": "random-cs", "ratio": 0.25, "seed": 0, "noise": dict(_GAUSS)},
    # 30% bad pixels after the psf preset's blur
    "inpaint-psf": {
        "type": "inpaint-psf",
        **_PSF_PRESET,
        "fraction": 0.3,
        "seed": 0,
        "noise": dict(_GAUSS),
    },
    # single-pixel camera, 25% of the Hadamard patterns in sequency order
    "hadamard": {"type": "hadamard", "ratio": 0.25, "ordering": "sequency", "noise": dict(_GAUSS)},
    # 10% bad pixels and 5 cosmic-ray tracks
    "mask": {"type": "mask", "fraction": 0.1, "seed": 0, "cosmic_rays": 5, "noise": dict(_GAUSS)},
}


def _parse_value(raw: str) -> Any:
    """Parse an override value: TOML literal, else float, else the string itself."""
    text = raw.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _schema_at(spec: Mapping[str, Any], parts: Sequence[str]) -> tuple[_Schema | None, bool]:
    """Schema of the container at ``parts`` (and whether it is an operator level)."""
    if parts and parts[-1] == "noise":
        return _NOISE_SCHEMA, False
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    return (_SCHEMAS.get(kind), True) if kind in _SCHEMAS else (None, True)


def _set(spec: dict[str, Any], key: str, value: Any, explicit: set[str]) -> None:
    """Apply one override ``key=value`` (dotted key) to ``spec`` in place."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {key!r}: empty key")
    container: Any = spec
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(container, list):
            if not part.isdigit() or int(part) >= len(container):
                raise ConfigError(f"{where}: no such list entry")
            container = container[int(part)]
        elif isinstance(container, dict):
            if part == "noise" and not isinstance(container.get("noise"), dict):
                container["noise"] = {"type": "none"}
            if part not in container or not isinstance(container[part], dict | list):
                raise ConfigError(f"{where}: unknown table; cannot set {key!r}")
            container = container[part]
        else:
            raise ConfigError(f"{where}: not a table; cannot set {key!r}")
    last = parts[-1]
    if not isinstance(container, dict):
        raise ConfigError(f"{key}: not a table entry")
    if last == "noise" and (value is None or isinstance(value, str)):
        value = {"type": "none" if value is None else value}
    container[last] = value
    explicit.add(key)
    prefix = ".".join(parts[:-1])
    prefix = prefix + "." if prefix else ""
    schema, op_level = _schema_at(container, parts[:-1])
    if schema is None:
        return
    changed_selector = last in schema.selectors or (op_level and last == "type")
    if not changed_selector:
        return
    if last in schema.exclusive:
        for other in schema.exclusive:
            if other != last and container.get(other) is not None:
                if prefix + other in explicit and value is not None:
                    raise ConfigError(f"{prefix}{last} and {prefix}{other}: give only one of them")
                container[other] = None
        return
    try:
        keep = set(schema.relevant(container, prefix))
    except ConfigError:
        return  # an invalid selector value: reported by the final validation
    if op_level:
        keep |= set(_COMMON)
    for k in list(container):
        if k not in keep:
            if prefix + k in explicit:
                raise ConfigError(f"{prefix}{k}: not used with {prefix}{last}={value!r}")
            del container[k]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, Mapping):
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((f"{prefix}{k}", v))
    return items


def _load_toml(path: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"operator file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    preset = data.pop("preset", None)
    if preset is None:
        return data, []
    if preset not in PRESETS:
        raise ConfigError(f"{path}: preset: expected one of {list(PRESETS)}, found {preset!r}")
    # selectors first, so that switching e.g. the profile drops the preset's unused keys
    items = _flatten(data)
    items.sort(
        key=lambda kv: (
            kv[0].split(".")[-1] not in ("type", "profile", "pattern", "geometry", "ordering")
        )
    )
    return copy.deepcopy(PRESETS[preset]), items


def resolve_spec(
    name_or_path: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Turn a preset name, a TOML file or a spec dict plus ``key=value`` overrides into a spec.

    :param name_or_path: a :data:`PRESETS` name, the path of a TOML file, or a spec dict.
    :param overrides: strings like ``"fwhm=3"`` or ``"noise.sigma=0.05"`` (CLI ``--set``).
    :return: the canonical spec (see :func:`canonical_spec`).
    :raises ConfigError: for an unknown preset or file, invalid TOML, a malformed override, or any
        key or value the spec rejects (the message names the key).
    """
    explicit: set[str] = set()
    if isinstance(name_or_path, Mapping):
        spec = copy.deepcopy(dict(name_or_path))
        items: list[tuple[str, Any]] = []
    else:
        name = os.fspath(name_or_path)
        if name in PRESETS:
            spec, items = copy.deepcopy(PRESETS[name]), []
        elif name.endswith(".toml") or os.path.isfile(name):
            spec, items = _load_toml(name)
        else:
            raise ConfigError(
                f"unknown operator {name!r}: expected a preset ({', '.join(PRESETS)}) "
                "or a .toml file"
            )
    for key, value in items:
        _set(spec, key, value, explicit)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r}: expected 'key=value'")
        key, _, raw = item.partition("=")
        _set(spec, key.strip(), _parse_value(raw), explicit)
    return canonical_spec(spec)


# ---------------------------------------------------------------------------------------------
# building and describing
# ---------------------------------------------------------------------------------------------
def _take(arrays: dict[str, Any], used: set[str], name: str, what: str) -> Any:
    if name not in arrays or arrays[name] is None:
        raise ConfigError(
            f"this spec describes a user-given {what} ('array'); pass it as {name}=..."
        )
    used.add(name)
    return arrays[name]


def _check_shape(recorded: list[int] | None, found: Sequence[int], what: str) -> None:
    if recorded is not None and list(recorded) != list(found):
        raise OperatorMismatchError(
            f"the spec records a {what} of shape {tuple(recorded)}, the given one has "
            f"shape {tuple(found)}"
        )


def _build_psf(
    spec: dict[str, Any],
    size: tuple[int, int, int],
    arrays: dict[str, Any],
    used: set[str],
    device: Any,
    dtype: torch.dtype,
) -> PSFConvolution:
    profile = spec["profile"]
    if profile != "array":
        params = {k: spec[k] for k in PSF_PROFILES[profile]}
        return PSFConvolution.from_profile(
            size, profile, spec["padding"], device=device, dtype=dtype, **params
        )
    source = spec.get("source")
    if arrays.get("psf") is None and source is not None and os.path.isfile(source):
        psf: Any = source
        op = PSFConvolution(psf, size, spec["padding"], device=device, dtype=dtype)
        _check_shape(spec.get("psf_shape"), op.psf.shape, "PSF")
        return op
    psf = _take(arrays, used, "psf", "PSF")
    shape = normalise_psf(psf).shape if not isinstance(psf, str | os.PathLike) else None
    if shape is not None:
        _check_shape(spec.get("psf_shape"), shape, "PSF")
    op = PSFConvolution(psf, size, spec["padding"], device=device, dtype=dtype)
    if source is not None and op._profile.get("source") is None:
        op._profile["source"] = source
    return op


def _build_mask(
    spec: dict[str, Any],
    size: tuple[int, int, int],
    arrays: dict[str, Any],
    used: set[str],
    device: Any,
    dtype: torch.dtype,
) -> BadPixelMask:
    if spec["pattern"] == "random":
        return BadPixelMask(
            spec["fraction"],
            size,
            spec["seed"],
            spec["cosmic_rays"],
            spec["track_length"],
            device=device,
            dtype=dtype,
        )
    mask = _take(arrays, used, "mask", "bad-pixel map")
    op = BadPixelMask(mask, size, device=device, dtype=dtype)
    _check_shape(spec.get("mask_shape"), op.mask.shape, "bad-pixel map")
    return op


def _count_from(spec: dict[str, Any], size: tuple[int, int, int]) -> int:
    if spec.get("m") is not None:
        return int(spec["m"])
    return max(1, round(float(spec["ratio"]) * size[1] * size[2]))


def _build(
    spec: dict[str, Any],
    size: tuple[int, int, int],
    arrays: dict[str, Any],
    used: set[str],
    device: Any,
    dtype: torch.dtype,
) -> LinearPhysics:
    kind = spec["type"]
    if kind == "psf":
        return _build_psf(spec, size, arrays, used, device, dtype)
    if kind == "mask":
        return _build_mask(spec, size, arrays, used, device, dtype)
    if kind == "ct":
        fan = {k: spec[k] for k in _FAN_KEYS if k in spec}
        return SparseViewCT(
            size,
            spec["n_views"],
            spec["angular_range"],
            spec["start_angle"],
            spec["geometry"],
            pixel_size=spec["pixel_size"],
            device=device,
            dtype=dtype,
            **fan,
        )
    if kind == "fourier":
        if spec["pattern"] == "random":
            return FourierSampling(
                size,
                spec["ratio"],
                spec["seed"],
                None,
                spec["centre_fraction"],
                device=device,
                dtype=dtype,
            )
        mask = _take(arrays, used, "mask", "Fourier mask")
        op = FourierSampling(size, mask=mask, device=device, dtype=dtype)
        _check_shape(spec.get("mask_shape"), op.mask.shape, "Fourier mask")
        return op
    if kind == "random-cs":
        return RandomSensing(
            size, _count_from(spec, size), spec["seed"], device=device, dtype=dtype
        )
    if kind == "hadamard":
        return HadamardSensing(
            size,
            _count_from(spec, size),
            spec["ordering"],
            spec.get("seed", 0),
            device=device,
            dtype=dtype,
        )
    if kind == "inpaint-psf":
        blur = _build_psf(spec, size, arrays, used, device, dtype)
        mask = _build_mask(spec, blur.measurement_shape, arrays, used, device, dtype)
        return ComposedOperator(blur, mask, alias="inpaint-psf")
    # composed
    ops: list[LinearPhysics] = []
    current = size
    for i, part in enumerate(spec["operators"]):
        if part.get("img_size") is not None and tuple(part["img_size"]) != tuple(current):
            raise OperatorMismatchError(
                f"operators.{i}.img_size: expected {list(current)} (the previous output), "
                f"found {part['img_size']}"
            )
        op = _build(part, current, arrays, used, device, dtype)
        ops.append(op)
        shape = tuple(getattr(op, "measurement_shape", ()))
        if i < len(spec["operators"]) - 1 and len(shape) != 3:
            raise ConfigError(
                f"operators.{i}: its measurements {shape} are not images, so no operator can "
                "follow it"
            )
        current = shape  # type: ignore[assignment]
    return ComposedOperator(*ops)


def build_operator(
    spec: Mapping[str, Any],
    img_size: int | Sequence[int] | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **arrays: Any,
) -> LinearPhysics:
    """Build an operator (with its noise model) from a spec.

    :param spec: an operator spec (see the module docstring; canonicalised first).
    :param img_size: image size ``(C, H, W)``; default: the spec's ``img_size``. If both are
        given they must agree.
    :param device: device of the operator.
    :param dtype: floating dtype of its buffers.
    :param arrays: user-given arrays the spec refers to: ``psf=...`` (profile ``array``; a FITS
        path also works), ``mask=...`` (a Fourier mask, or a bad-pixel map with True = bad).
    :return: a :class:`deepinv.physics.LinearPhysics` with ``spec()``.
    :raises ConfigError: for invalid specs, missing or unused arrays.
    :raises OperatorMismatchError: if ``img_size`` disagrees with the spec's, or an array's shape
        with the one the spec records.
    """
    spec = canonical_spec(spec)
    if img_size is None and spec["img_size"] is None:
        raise ConfigError("img_size: the spec has none, so pass img_size=(C, H, W)")
    size = as_img_size(img_size if img_size is not None else spec["img_size"])
    if spec["img_size"] is not None and list(size) != list(spec["img_size"]):
        raise OperatorMismatchError(
            f"img_size: the spec was made for images {tuple(spec['img_size'])}, found {size}"
        )
    used: set[str] = set()
    arrays = dict(arrays)
    op = _build(spec, size, arrays, used, device, dtype)
    unused = sorted(k for k, v in arrays.items() if v is not None and k not in used)
    if unused:
        raise ConfigError(
            f"array(s) {unused} are not used by a {spec['type']!r} spec"
            + (" (its PSF / mask is not 'array')" if spec["type"] != "composed" else "")
        )
    op.set_noise_model(make_noise(spec["noise"], device=device))
    return op


def physics_spec(physics: LinearPhysics) -> dict[str, Any]:
    """JSON-serialisable spec of an operator and its noise (the inverse of :func:`build_operator`).

    Works for every dwgf-sci operator and for deepinv compositions of them.

    :param physics: the operator; its ``spec()`` is used when it has one, else a deepinv
        ``ComposedLinearPhysics`` is described as a ``composed`` spec of its components.
    :return: the spec, with ``type``, ``img_size``, the operator's parameters and ``noise``.
    :raises ConfigError: for physics that cannot be described.
    """
    if hasattr(physics, "spec") and callable(physics.spec):
        return physics.spec()
    if isinstance(physics, ComposedLinearPhysics):
        parts = []
        for p in physics.physics_list:
            if not hasattr(p, "spec"):
                raise ConfigError(f"cannot describe {type(p).__name__} (it has no spec())")
            part = p.spec()
            part.pop("noise", None)
            parts.append(part)
        return {
            "type": "composed",
            "img_size": parts[0]["img_size"],
            "operators": parts,
            "noise": noise_spec(physics.noise_model),
        }
    raise ConfigError(f"cannot describe {type(physics).__name__}: it has no spec()")
