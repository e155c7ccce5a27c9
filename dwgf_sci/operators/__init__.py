"""Forward operators: deepinv ``LinearPhysics`` with closed-form adjoints, in physical units.

- :mod:`~dwgf_sci.operators.psf`: :class:`PSFConvolution` (astronomy), with the PSF profiles of
  :mod:`~dwgf_sci.operators.psf_profiles`;
- :mod:`~dwgf_sci.operators.tomography`: :class:`SparseViewCT` (sparse-view / limited-angle CT);
- :mod:`~dwgf_sci.operators.sensing`: :class:`RandomSensing`, :class:`FourierSampling`,
  :class:`HadamardSensing` (compressed sensing);
- :mod:`~dwgf_sci.operators.masks`: :class:`BadPixelMask` (bad pixels, cosmic rays);
- :mod:`~dwgf_sci.operators.noise`: detector noise, its spec schema and :func:`noise_sigma`;
- :mod:`~dwgf_sci.operators.specs`: specs, presets, :func:`build_operator`, :func:`resolve_spec`
  (gathered from :mod:`~dwgf_sci.operators.schema`, :mod:`~dwgf_sci.operators.canonical`,
  :mod:`~dwgf_sci.operators.presets` and :mod:`~dwgf_sci.operators.build`);
- :mod:`~dwgf_sci.operators.matrix`: :class:`MatrixOperator` (a dense user matrix).

Images are ``(B, C, H, W)``; every operator checks its input size, exposes ``measurement_shape``
and ``spec()``, and composes with ``*`` (``mask * psf`` blurs first).
"""

from __future__ import annotations

from ._base import ComposedOperator, cgls
from .masks import BadPixelMask, random_bad_pixel_mask
from .matrix import MatrixOperator
from .noise import SkyBackgroundNoise, make_noise, noise_sigma, noise_spec
from .pixel_noise import MAP_KINDS, PixelNoise, variance_from_map
from .psf import (
    PSFConvolution,
    airy_psf,
    gaussian_psf,
    kolmogorov_psf,
    load_psf,
    make_psf,
    moffat_psf,
    normalise_psf,
)
from .sensing import FourierSampling, HadamardSensing, RandomSensing
from .specs import (
    PRESETS,
    SPEC_TYPES,
    build_operator,
    canonical_spec,
    physics_spec,
    resolve_spec,
)
from .tomography import SparseViewCT

__all__ = [
    "PRESETS",
    "SPEC_TYPES",
    "BadPixelMask",
    "ComposedOperator",
    "FourierSampling",
    "HadamardSensing",
    "MatrixOperator",
    "PSFConvolution",
    "RandomSensing",
    "SkyBackgroundNoise",
    "PixelNoise",
    "MAP_KINDS",
    "variance_from_map",
    "SparseViewCT",
    "airy_psf",
    "build_operator",
    "canonical_spec",
    "cgls",
    "gaussian_psf",
    "kolmogorov_psf",
    "load_psf",
    "make_noise",
    "make_psf",
    "moffat_psf",
    "noise_sigma",
    "noise_spec",
    "normalise_psf",
    "physics_spec",
    "random_bad_pixel_mask",
    "resolve_spec",
]
