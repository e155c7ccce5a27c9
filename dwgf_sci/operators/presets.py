"""Named operator specs (:data:`PRESETS`), TOML spec files and ``key=value`` overrides.

:func:`resolve_spec` turns a preset name, a TOML file or a spec dict plus ``--set`` overrides into
a canonical spec (:func:`~dwgf_sci.operators.canonical.canonical_spec`); see
:mod:`dwgf_sci.operators.specs` for the format.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tomllib

from ..errors import ConfigError
from .canonical import COMMON_KEYS, SCHEMAS, canonical_spec
from .noise import NOISE_SCHEMA
from .schema import Schema

__all__ = ["PRESETS", "resolve_spec"]

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


def _schema_at(spec: Mapping[str, Any], parts: Sequence[str]) -> tuple[Schema | None, bool]:
    """Schema of the container at ``parts`` (and whether it is an operator level)."""
    if parts and parts[-1] == "noise":
        return NOISE_SCHEMA, False
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    return (SCHEMAS.get(kind), True) if kind in SCHEMAS else (None, True)


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
        keep |= set(COMMON_KEYS)
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
