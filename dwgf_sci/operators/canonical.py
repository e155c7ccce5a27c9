"""Canonical operator specs: the schema of each operator type and :func:`canonical_spec`.

See :mod:`dwgf_sci.operators.specs` for the keys of each type; noise specs are checked by
:func:`~dwgf_sci.operators.noise.canonical_noise_spec`, beside the noise models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ._base import as_img_size
from .noise import canonical_noise_spec
from .psf import PADDINGS, PSF_PROFILES
from .schema import (
    Field,
    Schema,
    boolean,  # noqa: F401
    choice,
    fill,
    integer,
    number,
    optional_shape,
    optional_str,
)
from .sensing import HADAMARD_ORDERINGS
from .tomography import GEOMETRIES

__all__ = ["COMMON_KEYS", "SCHEMAS", "SPEC_TYPES", "canonical_spec"]

_PSF_FIELDS: dict[str, Field] = {
    "profile": Field(choice(tuple(PSF_PROFILES)), "moffat"),
    "padding": Field(choice(PADDINGS), "same"),
    "fwhm": Field(number(0.0, lo_open=True)),
    "beta": Field(number(1.0, lo_open=True), 3.0),
    "size": Field(integer(1, optional=True, odd=True), None),
    "lam_over_d": Field(number(0.0, lo_open=True)),
    "obscuration": Field(number(0.0, 1.0, hi_open=True), 0.0),
    "pixel_scale": Field(number(0.0, lo_open=True), 1.0),
    "source": Field(optional_str, None),
    "psf_shape": Field(optional_shape, None),
}
_MASK_PATTERNS = {
    "random": ("fraction", "seed", "cosmic_rays", "track_length"),
    "array": ("mask_shape",),
}
_MASK_FIELDS: dict[str, Field] = {
    "pattern": Field(choice(tuple(_MASK_PATTERNS)), "random"),
    "fraction": Field(number(0.0, 1.0, hi_open=True)),
    "seed": Field(integer(), 0),
    "cosmic_rays": Field(integer(0), 0),
    "track_length": Field(integer(1), 8),
    "mask_shape": Field(optional_shape, None),
}
_FAN_KEYS = ("source_radius", "detector_radius", "detector_spacing", "n_detectors")
_CT_FIELDS: dict[str, Field] = {
    "n_views": Field(integer(1)),
    "angular_range": Field(number(0.0, 360.0, lo_open=True, optional=True), None),
    "start_angle": Field(number(), 0.0),
    "geometry": Field(choice(GEOMETRIES), "parallel"),
    "pixel_size": Field(number(0.0, lo_open=True), 1.0),
    "source_radius": Field(number(0.0, lo_open=True, optional=True), None),
    "detector_radius": Field(number(0.0, lo_open=True, optional=True), None),
    "detector_spacing": Field(number(0.0, lo_open=True, optional=True), None),
    "n_detectors": Field(integer(1, optional=True), None),
}
_FOURIER_PATTERNS = {"random": ("ratio", "seed", "centre_fraction"), "array": ("mask_shape",)}
_FOURIER_FIELDS: dict[str, Field] = {
    "pattern": Field(choice(tuple(_FOURIER_PATTERNS)), "random"),
    "ratio": Field(number(0.0, 1.0, lo_open=True), 0.25),
    "seed": Field(integer(), 0),
    "centre_fraction": Field(number(0.0, 1.0, hi_open=True), 0.08),
    "mask_shape": Field(optional_shape, None),
}
_COUNT_FIELDS: dict[str, Field] = {
    "m": Field(integer(1, optional=True), None),
    "ratio": Field(number(0.0, 1.0, lo_open=True, optional=True), None),
    "seed": Field(integer(), 0),
    "ordering": Field(choice(HADAMARD_ORDERINGS), "sequency"),
}

SCHEMAS: dict[str, Schema] = {
    "psf": Schema(_PSF_FIELDS, ("profile", "padding"), {"profile": PSF_PROFILES}),
    "ct": Schema(
        _CT_FIELDS,
        ("n_views", "angular_range", "start_angle", "geometry", "pixel_size"),
        {"geometry": {"parallel": (), "fanbeam": _FAN_KEYS}},
    ),
    "fourier": Schema(_FOURIER_FIELDS, ("pattern",), {"pattern": _FOURIER_PATTERNS}),
    "random-cs": Schema(_COUNT_FIELDS, ("m", "ratio", "seed"), {}, exclusive=("m", "ratio")),
    "hadamard": Schema(
        _COUNT_FIELDS,
        ("m", "ratio", "ordering"),
        {"ordering": {o: (("seed",) if o == "random" else ()) for o in HADAMARD_ORDERINGS}},
        exclusive=("m", "ratio"),
    ),
    "mask": Schema(_MASK_FIELDS, ("pattern",), {"pattern": _MASK_PATTERNS}),
    "inpaint-psf": Schema(
        {**_PSF_FIELDS, **_MASK_FIELDS},
        ("profile", "padding", "pattern"),
        {"profile": PSF_PROFILES, "pattern": _MASK_PATTERNS},
    ),
    "composed": Schema({"operators": Field(lambda p, v: v)}, ("operators",), {}),
}

#: operator spec types
SPEC_TYPES: tuple[str, ...] = tuple(SCHEMAS)

COMMON_KEYS = ("type", "img_size", "noise")


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
    if kind not in SCHEMAS:
        raise ConfigError(f"{path}type: expected one of {list(SCHEMAS)}, found {kind!r}")
    schema = SCHEMAS[kind]
    out: dict[str, Any] = {"type": kind, "img_size": None}
    if spec.get("img_size") is not None:
        out["img_size"] = list(as_img_size(spec["img_size"], name=f"{path}img_size"))
    body = fill(schema, spec, path, f"operator type {kind!r}", COMMON_KEYS)
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
