r"""Operator specs: JSON-serialisable descriptions, presets, TOML files and ``--set`` overrides.

This module gathers the spec API; the parts live in :mod:`~dwgf_sci.operators.schema` (value
checks), :mod:`~dwgf_sci.operators.canonical` (operator schemas, :func:`canonical_spec`),
:mod:`~dwgf_sci.operators.noise` (noise schema, :func:`canonical_noise_spec`),
:mod:`~dwgf_sci.operators.presets` (:data:`PRESETS`, :func:`resolve_spec`) and
:mod:`~dwgf_sci.operators.build` (:func:`build_operator`, :func:`physics_spec`). Nothing in
:mod:`dwgf_sci.operators` imports this module.

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

from .build import build_operator, physics_spec
from .canonical import SPEC_TYPES, canonical_spec
from .noise import canonical_noise_spec
from .presets import PRESETS, resolve_spec

__all__ = [
    "PRESETS",
    "SPEC_TYPES",
    "build_operator",
    "canonical_noise_spec",
    "canonical_spec",
    "physics_spec",
    "resolve_spec",
]
