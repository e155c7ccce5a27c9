r"""PSF profiles: analytic point-spread functions on odd stamps, normalised to unit sum.

:func:`gaussian_psf`, :func:`moffat_psf`, :func:`airy_psf` (sampled at pixel centres) and
:func:`kolmogorov_psf` (galsim, pixel-integrated); :func:`make_psf` builds one from a profile name
and its parameters (:data:`PSF_PROFILES`). The operator that uses them is
:class:`~dwgf_sci.operators.psf.PSFConvolution`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.special
import torch

from ..errors import ConfigError

__all__ = [
    "MAX_STAMP_SIZE",
    "PROFILE_DEFAULTS",
    "PSF_PROFILES",
    "airy_psf",
    "gaussian_psf",
    "kolmogorov_psf",
    "make_psf",
    "moffat_gamma",
    "moffat_psf",
]

#: PSF profiles and the parameters each one takes (``array``: a user-given PSF)
PSF_PROFILES: dict[str, tuple[str, ...]] = {
    "gaussian": ("fwhm", "size"),
    "moffat": ("fwhm", "beta", "size"),
    "airy": ("lam_over_d", "obscuration", "size"),
    "kolmogorov": ("fwhm", "size", "pixel_scale"),
    "array": ("source", "psf_shape"),
}

#: defaults of the optional profile parameters
PROFILE_DEFAULTS: dict[str, Any] = {"beta": 3.0, "obscuration": 0.0, "pixel_scale": 1.0}

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


# ---------------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------------
def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected a positive number, found {value!r}") from exc
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name}: expected a positive finite number, found {value!r}")
    return v


#: Largest PSF stamp side (pixels) a model helper makes: a 4097 x 4097 float64 stamp is 134 MB.
#: A larger one is almost surely a unit mistake (e.g. a FWHM in arcsec taken as pixels).
MAX_STAMP_SIZE = 4097


def _stamp_size(size: int | None, radius: float, name: str = "size") -> int:
    """Odd stamp size: ``size`` if given (checked), else ``2 ceil(radius) + 1`` (at least 3).

    :raises ConfigError: a size that is not an odd positive integer, or one above
        :data:`MAX_STAMP_SIZE` (checked before any memory is allocated).
    """
    if size is None:
        size = max(3, 2 * math.ceil(radius - 1e-9) + 1)  # 1e-9: 12.000000000000002 -> 12
        what = f"the PSF stamp implied by its width ({size} px)"
    else:
        ok = isinstance(size, int | float | np.integer) and not isinstance(size, bool)
        if not ok or int(size) != size or int(size) < 1 or int(size) % 2 == 0:
            raise ConfigError(f"{name}: expected an odd positive integer, found {size!r}")
        what = f"{name} = {int(size)} px"
    if int(size) > MAX_STAMP_SIZE:
        raise ConfigError(
            f"{what} exceeds the {MAX_STAMP_SIZE} px limit: is the width in pixels? "
            "Pass a smaller width or an explicit size"
        )
    return int(size)


def _radius2(size: int) -> np.ndarray:
    """Squared distance (pixels) of every pixel centre from the stamp's central pixel."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return (yy - c) ** 2 + (xx - c) ** 2


def _finish(profile: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    profile = np.asarray(profile, dtype=np.float64)
    return torch.from_numpy(profile / profile.sum()).to(dtype)


def gaussian_psf(
    fwhm: float, size: int | None = None, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""Circular Gaussian PSF, :math:`p(r) \propto \exp(-r^2 / 2\sigma^2)`.

    :math:`\sigma = \mathrm{FWHM} / (2\sqrt{2 \ln 2})`, sampled at pixel centres, normalised to unit
    sum.

    :param fwhm: full width at half maximum, in pixels.
    :param size: odd stamp size; default :math:`2\lceil 2\,\mathrm{FWHM}\rceil + 1` (the profile has
        fallen to :math:`< 2\cdot 10^{-5}` of its peak at the stamp edge).
    :param dtype: floating dtype of the result.
    :return: ``(size, size)`` tensor summing to one.
    """
    fwhm = _positive("fwhm", fwhm)
    size = _stamp_size(size, 2.0 * fwhm)
    sigma = fwhm * _FWHM_TO_SIGMA
    return _finish(np.exp(-_radius2(size) / (2.0 * sigma**2)), dtype)


def moffat_gamma(fwhm: float, beta: float) -> float:
    r"""Moffat core width :math:`\gamma = \mathrm{FWHM} / (2\sqrt{2^{1/\beta} - 1})`."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_psf(
    fwhm: float,
    beta: float = 3.0,
    size: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Moffat PSF, :math:`p(r) \propto (1 + r^2/\gamma^2)^{-\beta}`.

    The core width is :math:`\gamma = \mathrm{FWHM} / (2\sqrt{2^{1/\beta}-1})`; the profile equals
    ``astropy.convolution.Moffat2DKernel(gamma, alpha=beta)`` (sampled at pixel centres) up to the
    normalisation to unit sum on the stamp.

    :param fwhm: full width at half maximum, in pixels.
    :param beta: power index :math:`\beta > 1` (atmospheric seeing: 2.5-4.765).
    :param size: odd stamp size; default: the radius enclosing 99.5% of the flux,
        :math:`R = \gamma\sqrt{0.005^{1/(1-\beta)} - 1}` (at most :math:`10\,\mathrm{FWHM}`).
    :param dtype: floating dtype of the result.
    """
    fwhm = _positive("fwhm", fwhm)
    beta = _positive("beta", beta)
    if beta <= 1.0:
        raise ConfigError(f"beta: expected beta > 1 (finite flux), found {beta}")
    gamma = moffat_gamma(fwhm, beta)
    radius = min(gamma * math.sqrt(0.005 ** (1.0 / (1.0 - beta)) - 1.0), 10.0 * fwhm)
    size = _stamp_size(size, radius)
    return _finish((1.0 + _radius2(size) / gamma**2) ** (-beta), dtype)


def airy_psf(
    lam_over_d: float,
    size: int | None = None,
    obscuration: float = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Airy pattern of a circular (optionally centrally obscured) aperture.

    With :math:`v = \pi r / (\lambda/D)` (:math:`r` and :math:`\lambda/D` in pixels) and linear
    obscuration :math:`\varepsilon`,

    .. math::

        p(r) \propto \left[\frac{2 J_1(v)}{v} - \varepsilon^2 \frac{2 J_1(\varepsilon v)}
        {\varepsilon v}\right]^2,

    sampled at pixel centres and normalised to unit sum. The first dark ring of the unobscured
    pattern is at :math:`1.22\,\lambda/D`.

    :param lam_over_d: :math:`\lambda/D` in pixels.
    :param size: odd stamp size; default :math:`2\lceil 8\,\lambda/D\rceil + 1`.
    :param obscuration: central obscuration, as a fraction of the aperture diameter, in [0, 1).
    :param dtype: floating dtype of the result.
    """
    lam_over_d = _positive("lam_over_d", lam_over_d)
    eps = float(obscuration)
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"obscuration: expected a fraction in [0, 1), found {obscuration!r}")
    size = _stamp_size(size, 8.0 * lam_over_d)
    v = math.pi * np.sqrt(_radius2(size)) / lam_over_d

    def jinc(u: np.ndarray) -> np.ndarray:
        out = np.ones_like(u)
        nz = u > 0
        out[nz] = 2.0 * scipy.special.j1(u[nz]) / u[nz]
        return out

    amplitude = jinc(v) - eps**2 * jinc(eps * v) if eps > 0 else jinc(v)
    return _finish(amplitude**2, dtype)


def kolmogorov_psf(
    fwhm: float,
    size: int | None = None,
    pixel_scale: float = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Long-exposure atmospheric (Kolmogorov turbulence) PSF drawn with galsim.

    :math:`\hat p(k) \propto \exp(-(k\,\lambda/r_0)^{5/3} \cdot 3.44/2)` in Fourier space
    (``galsim.Kolmogorov``), drawn with the pixel response (``drawImage`` default), normalised to
    unit sum on the stamp.

    :param fwhm: full width at half maximum, in the angular unit of ``pixel_scale`` (arcsec by
        convention; with the default ``pixel_scale=1`` it is in pixels).
    :param size: odd stamp size; default :math:`2\lceil 3\,\mathrm{FWHM}/\mathrm{scale}\rceil + 1`.
    :param pixel_scale: angular size of a pixel (e.g. arcsec/pixel).
    :param dtype: floating dtype of the result.
    """
    import galsim

    fwhm = _positive("fwhm", fwhm)
    pixel_scale = _positive("pixel_scale", pixel_scale)
    size = _stamp_size(size, 3.0 * fwhm / pixel_scale)
    image = galsim.Kolmogorov(fwhm=fwhm).drawImage(nx=size, ny=size, scale=pixel_scale)
    return _finish(image.array, dtype)


def make_psf(profile: str, dtype: torch.dtype = torch.float32, **params: Any) -> torch.Tensor:
    """Build a PSF from a profile name and its parameters (see :data:`PSF_PROFILES`).

    Dispatches to :func:`gaussian_psf`, :func:`moffat_psf`, :func:`airy_psf` or
    :func:`kolmogorov_psf`; parameters given as None are dropped, so the builder's defaults apply.

    :param profile: ``"gaussian"``, ``"moffat"``, ``"airy"`` or ``"kolmogorov"``.
    :param dtype: floating dtype of the result.
    :param params: the profile's parameters, in pixels unless stated by the builder: ``fwhm``
        (``lam_over_d`` for ``airy``, required), then ``beta``, ``obscuration``, ``pixel_scale``
        and the odd stamp ``size`` as the profile takes them.
    :return: the PSF stamp, ``(size, size)``, normalised to unit sum.
    :raises ConfigError: for an unknown profile, a missing parameter or an unknown one.
    """
    builders = {
        "gaussian": gaussian_psf,
        "moffat": moffat_psf,
        "airy": airy_psf,
        "kolmogorov": kolmogorov_psf,
    }
    if profile not in builders:
        raise ConfigError(f"psf profile: expected one of {sorted(builders)}, found {profile!r}")
    allowed = PSF_PROFILES[profile]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"psf profile {profile!r} takes {list(allowed)}, found {unknown}")
    params = {k: v for k, v in params.items() if v is not None}
    first = "lam_over_d" if profile == "airy" else "fwhm"
    if first not in params:
        raise ConfigError(f"psf profile {profile!r} needs {first!r}")
    return builders[profile](dtype=dtype, **params)
