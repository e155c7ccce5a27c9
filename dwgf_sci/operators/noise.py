r"""Detector noise: deepinv noise models plus a sky background, described by small dicts.

Units: every parameter is in the **physical units of the measurements** (e.g. counts or ADU for
images, attenuation x length for sinograms); nothing is rescaled.

- ``gaussian``: read noise, :math:`y = z + \epsilon`, :math:`\epsilon \sim \mathcal N(0, \sigma^2)`
  (deepinv :class:`~deepinv.physics.GaussianNoise`). For complex measurements stored as
  (real, imaginary) pairs, :math:`\sigma` applies to each part.
- ``poisson``: photon noise, :math:`y = g\,\mathcal P(z / g)` (deepinv
  :class:`~deepinv.physics.PoissonNoise` with ``normalize=True``). The *gain* :math:`g` is
  deepinv's: measurement units per detected photon (for images in ADU this is :math:`1/` the CCD
  gain in e-/ADU). The variance is :math:`g z`.
- ``poisson-gaussian``: both, :math:`y = g\,\mathcal P(z/g) + \epsilon` (deepinv
  :class:`~deepinv.physics.PoissonGaussianNoise`), variance :math:`g z + \sigma^2`.
- ``sky`` (with the Poisson types): a constant background level :math:`b \ge 0` in the same units,
  added *before* photon noise and subtracted afterwards (sky-subtracted data, the usual
  astronomical convention): :math:`y = N(z + b) - b`. The data stay unbiased,
  :math:`\mathbb E[y] = z`, and the sky adds variance :math:`g b`. This is
  :class:`SkyBackgroundNoise`, the one model deepinv lacks.

Specs (JSON-serialisable) look like ``{"type": "gaussian", "sigma": 0.01, "seed": 0}``;
:func:`canonical_noise_spec` checks one against :data:`NOISE_SCHEMA`, :func:`make_noise` builds a
model from one and :func:`noise_spec` describes a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from deepinv.physics import GaussianNoise, PoissonGaussianNoise, PoissonNoise
from deepinv.physics.noise import NoiseModel, ZeroNoise

from ..errors import ConfigError
from .schema import Field, Schema, boolean, choice, fill, integer, number

__all__ = [
    "NOISE_SCHEMA",
    "NOISE_TYPES",
    "SkyBackgroundNoise",
    "canonical_noise_spec",
    "make_noise",
    "noise_sigma",
    "noise_spec",
]

#: noise types and the keys each one uses (besides ``type``)
NOISE_TYPES: dict[str, tuple[str, ...]] = {
    "none": (),
    "gaussian": ("sigma", "seed"),
    "poisson": ("gain", "sky", "clip_positive", "seed"),
    "poisson-gaussian": ("gain", "sigma", "sky", "clip_positive", "seed"),
}

#: the keys of a noise spec, their checks and defaults (selector: ``type``)
NOISE_SCHEMA = Schema(
    {
        "type": Field(choice(tuple(NOISE_TYPES)), "none"),
        "sigma": Field(number(0.0)),
        "gain": Field(number(0.0, lo_open=True)),
        "sky": Field(number(0.0), 0.0),
        "clip_positive": Field(boolean, True),
        "seed": Field(integer(optional=True), None),
    },
    ("type",),
    {"type": NOISE_TYPES},
)


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
    kind = NOISE_SCHEMA.selector_value(spec, "type", path + ".")
    body = fill(NOISE_SCHEMA, spec, path + ".", f"noise type {kind!r}")
    body["type"] = kind
    return body


_SEED_ATTR = "_dwgf_seed"


class SkyBackgroundNoise(NoiseModel):
    r"""Photon noise on top of a constant sky background, optionally sky-subtracted.

    .. math::

        y = N(z + b) - b \quad (\texttt{subtract=True}), \qquad y = N(z + b) \quad \text{otherwise},

    where :math:`N` is a photon-noise model (deepinv ``PoissonNoise`` or ``PoissonGaussianNoise``)
    and :math:`b` is the sky level in measurement units. With ``subtract=True`` the measurements
    keep the linear model :math:`\mathbb E[y] = A x`, so solvers need no change; the background only
    adds the variance :math:`g b` (the sky-limited noise floor).

    :param photon_noise: the photon-noise model applied to :math:`z + b`.
    :param sky: background level :math:`b \ge 0`.
    :param subtract: subtract :math:`b` again after the noise (default ``True``).
    """

    def __init__(self, photon_noise: NoiseModel, sky: float, subtract: bool = True) -> None:
        if not math.isfinite(float(sky)) or float(sky) < 0:
            raise ConfigError(f"noise.sky: expected a finite level >= 0, found {sky!r}")
        super().__init__(rng=None)
        self.photon_noise = photon_noise
        self.register_buffer("sky", torch.tensor(float(sky), dtype=torch.float64))
        self.subtract = bool(subtract)

    @property
    def rng(self) -> torch.Generator | None:
        """Random generator of the inner photon-noise model, which owns it (None: global RNG).

        Setting it sets the inner model's generator; before the inner model exists (during
        ``NoiseModel.__init__``) the getter gives None and the setter does nothing.
        """
        inner = self.__dict__.get("_modules", {}).get("photon_noise")
        return None if inner is None else inner.rng

    @rng.setter
    def rng(self, value: torch.Generator | None) -> None:
        inner = self.__dict__.get("_modules", {}).get("photon_noise")
        if inner is not None:
            inner.rng = value

    def forward(self, x: torch.Tensor, seed: int | None = None, **kwargs: Any) -> torch.Tensor:
        """Add sky, apply photon noise, subtract the sky (if ``subtract``)."""
        sky = self.sky.to(device=x.device, dtype=x.dtype)
        y = self.photon_noise(x + sky, seed=seed, **kwargs)
        return y - sky if self.subtract else y


def _generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device).manual_seed(int(seed))


def make_noise(
    spec: Mapping[str, Any] | str | None, device: torch.device | str = "cpu"
) -> NoiseModel:
    """Build a noise model from a (canonical) noise spec.

    :param spec: ``None`` or ``{"type": "none"}`` for no noise, else a dict with ``type`` in
        :data:`NOISE_TYPES` and its keys (see the module docstring). ``seed`` (an int) seeds the
        model's own generator, so the same spec gives the same noise; ``None`` uses torch's global
        generator.
    :param device: device of the generator and parameters (that of the measurements).
    :raises ConfigError: for unknown types, unknown keys or bad values.
    """
    if spec is None:
        return ZeroNoise()
    spec = canonical_noise_spec(spec)
    kind = spec["type"]
    if kind == "none":
        return ZeroNoise()
    rng = _generator(spec.get("seed"), device)
    model: NoiseModel
    if kind == "gaussian":
        model = GaussianNoise(sigma=float(spec["sigma"]), rng=rng)
    elif kind == "poisson":
        model = PoissonNoise(
            gain=float(spec["gain"]), normalize=True, clip_positive=spec["clip_positive"], rng=rng
        )
    else:  # poisson-gaussian
        model = PoissonGaussianNoise(
            gain=float(spec["gain"]),
            sigma=float(spec["sigma"]),
            clip_positive=spec["clip_positive"],
            rng=rng,
        )
    setattr(model, _SEED_ATTR, spec.get("seed"))
    if kind != "gaussian" and float(spec.get("sky", 0.0)) > 0:
        sky_model = SkyBackgroundNoise(model, float(spec["sky"]))
        setattr(sky_model, _SEED_ATTR, spec.get("seed"))
        return sky_model.to(device)
    return model.to(device)


def _scalar(t: torch.Tensor | float, what: str) -> float:
    """A parameter as a float; float32 values by their shortest repr (0.05, not 0.0500000007)."""
    if torch.is_tensor(t):
        if t.numel() != 1:
            raise ConfigError(f"cannot describe a batched {what} ({tuple(t.shape)}) in a spec")
        value = t.detach().reshape(()).cpu()
        if value.dtype in (torch.float32, torch.float16, torch.bfloat16):
            return float(str(np.float32(value.float().item())))
        return float(value.item())
    return float(t)


def noise_spec(model: NoiseModel | None) -> dict[str, Any]:
    """Describe a noise model as a JSON-serialisable dict (inverse of :func:`make_noise`).

    :param model: a model built by :func:`make_noise` (or an equivalent deepinv
        ``GaussianNoise``, ``PoissonNoise(normalize=True)``, ``PoissonGaussianNoise``, or a
        sky-subtracted :class:`SkyBackgroundNoise` around a Poisson model); None or ``ZeroNoise``
        for no noise.
    :return: the spec, e.g. ``{"type": "gaussian", "sigma": 0.01, "seed": 0}``, with parameters in
        measurement units; ``seed`` is the one :func:`make_noise` recorded, else None.
    :raises ConfigError: for noise models that have no spec (custom models, batched parameters).
    """
    if model is None or isinstance(model, ZeroNoise):
        return {"type": "none"}
    seed = getattr(model, _SEED_ATTR, None)
    sky = 0.0
    if isinstance(model, SkyBackgroundNoise):
        if not model.subtract:
            raise ConfigError("a sky background without subtraction has no spec")
        sky = _scalar(model.sky, "sky level")
        model = model.photon_noise
    if isinstance(model, GaussianNoise):
        if sky:
            raise ConfigError("a sky background with Gaussian-only noise has no spec")
        return {"type": "gaussian", "sigma": _scalar(model.sigma, "sigma"), "seed": seed}
    if isinstance(model, PoissonGaussianNoise):
        return {
            "type": "poisson-gaussian",
            "gain": _scalar(model.gain, "gain"),
            "sigma": _scalar(model.sigma, "sigma"),
            "sky": sky,
            "clip_positive": bool(model.clip_positive),
            "seed": seed,
        }
    if isinstance(model, PoissonNoise):
        if not bool(model.normalize):
            raise ConfigError("PoissonNoise(normalize=False) has no spec (counts, not units)")
        return {
            "type": "poisson",
            "gain": _scalar(model.gain, "gain"),
            "sky": sky,
            "clip_positive": bool(model.clip_positive),
            "seed": seed,
        }
    raise ConfigError(f"cannot describe noise model {type(model).__name__} in a spec")


def _as_level(v: torch.Tensor | float) -> float | torch.Tensor:
    if torch.is_tensor(v):
        v = v.detach()
        return float(v.reshape(()).item()) if v.numel() == 1 else v
    return float(v)


def noise_sigma(physics: Any) -> float | torch.Tensor | None:
    r"""Standard deviation of the Gaussian (signal-independent) part of a physics' noise.

    Used by solvers to weight the data term when the user gives no noise level.

    - no noise (``ZeroNoise``): ``0.0`` (noiseless; a solver should fall back to its default);
    - ``GaussianNoise``: :math:`\sigma`;
    - ``PoissonGaussianNoise``: :math:`\sigma` (the read noise; the photon noise depends on the
      signal and is not included);
    - ``PoissonNoise``: ``None`` (no signal-independent level);
    - with a sky background :math:`b` (:class:`SkyBackgroundNoise`):
      :math:`\sqrt{\sigma^2 + g b}`, the sky-limited noise at zero source flux (the usual
      approximation for faint sources);
    - any other noise model: ``None``.

    :param physics: a deepinv physics (its ``noise_model`` is read) or a noise model.
    :return: a float, a ``(B,)`` tensor for batched levels, or ``None``.
    """
    model = physics if isinstance(physics, NoiseModel) else getattr(physics, "noise_model", None)
    if model is None or isinstance(model, ZeroNoise):
        return 0.0
    if isinstance(model, SkyBackgroundNoise):
        inner = model.photon_noise
        sky = model.sky.detach()
        if isinstance(inner, PoissonGaussianNoise):
            var = inner.sigma.detach().double() ** 2 + inner.gain.detach().double() * sky
        elif isinstance(inner, PoissonNoise):
            var = inner.gain.detach().double() * sky
        elif isinstance(inner, GaussianNoise):
            var = inner.sigma.detach().double() ** 2
        else:
            return None
        return _as_level(var.sqrt())
    if isinstance(model, GaussianNoise | PoissonGaussianNoise):
        return _as_level(model.sigma)
    return None
