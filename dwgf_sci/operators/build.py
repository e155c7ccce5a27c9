"""Operators from specs (:func:`build_operator`) and specs from operators (:func:`physics_spec`).

See :mod:`dwgf_sci.operators.specs` for the spec format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.forward import ComposedLinearPhysics

from ..errors import ConfigError, OperatorMismatchError
from ._base import ComposedOperator, as_img_size
from .canonical import canonical_spec
from .masks import BadPixelMask
from .noise import make_noise, noise_spec
from .psf import PSF_PROFILES, PSFConvolution, normalise_psf
from .sensing import FourierSampling, HadamardSensing, RandomSensing
from .tomography import SparseViewCT

__all__ = ["build_operator", "physics_spec"]

_FAN_KEYS = ("source_radius", "detector_radius", "detector_spacing", "n_detectors")


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
