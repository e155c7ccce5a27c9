r"""Astronomical PSF blur: :class:`PSFConvolution` and PSF profiles.

The forward model is the convolution of the sky image :math:`x` with the point-spread function
:math:`p` (normalised to unit sum, so flux is conserved):

.. math::

    (A x)[i, j] = \sum_{k, l} p[k, l]\; x[i + s_0 - k,\; j + s_1 - l],
    \qquad s = \left(\lfloor (h-1)/2 \rfloor, \lfloor (w-1)/2 \rfloor\right),

for a PSF stamp of size :math:`h \times w` whose origin (the pixel that maps a point source onto
itself) is :math:`s`, as in :func:`scipy.signal.fftconvolve`. Odd stamps are centred on their middle
pixel. The boundary is handled by ``padding``:

- ``"same"``: the image is zero outside its support (no wrap-around) and the output has the image's
  size; equal to ``scipy.signal.fftconvolve(x, p, mode="same")``;
- ``"circular"``: periodic boundary (the image is a torus), output of the image's size;
- ``"valid"``: only the pixels the PSF fully overlaps, output size :math:`(H-h+1) \times (W-w+1)`.

All three are computed with real FFTs (:func:`torch.fft.rfft2`) on a grid large enough to avoid any
wrap-around (``same``: :math:`(H+h-1) \times (W+w-1)` rounded up to a fast FFT size). The adjoint
is the correlation with :math:`p`: the conjugate transfer function on the same grid, followed by the
adjoint of the crop (zero padding) and of the zero extension (crop), so it is exact to rounding.

PSF profiles (all return a normalised 2-D float tensor on an odd stamp, sampled at pixel centres
unless stated otherwise): :func:`gaussian_psf`, :func:`moffat_psf`, :func:`airy_psf`,
:func:`kolmogorov_psf` (galsim, pixel-integrated). :func:`load_psf` reads a PSF from a FITS file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import scipy.fft
import scipy.special
import torch
import torch.nn.functional as F
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import NoiseModel, ZeroNoise

from .._checks import as_tensor
from ..errors import ConfigError, FileFormatError, InvalidDataError, OperatorMismatchError
from ._base import ImgSize, OperatorMixin, as_img_size, cgls, check_dtype

__all__ = [
    "PADDINGS",
    "PSF_PROFILES",
    "PSFConvolution",
    "airy_psf",
    "gaussian_psf",
    "kolmogorov_psf",
    "load_psf",
    "make_psf",
    "moffat_psf",
    "normalise_psf",
]

PADDINGS = ("same", "circular", "valid")

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


def load_psf(path: str | os.PathLike[str], hdu: int | str = 0) -> np.ndarray:
    """Read a PSF image from a FITS file as a native-endian float array.

    :param path: FITS file.
    :param hdu: HDU index or name holding the PSF.
    :raises FileFormatError: if the file or HDU is missing or holds no image.
    """
    from astropy.io import fits

    try:
        with fits.open(os.fspath(path), memmap=False) as hdul:
            data = hdul[hdu].data
    except FileNotFoundError as exc:
        raise FileFormatError(f"PSF file not found: {os.fspath(path)}") from exc
    except (OSError, KeyError, IndexError) as exc:
        raise FileFormatError(
            f"cannot read HDU {hdu!r} of PSF file {os.fspath(path)}: {exc}"
        ) from exc
    if data is None or not hasattr(data, "dtype") or data.dtype.kind not in "iuf":
        raise FileFormatError(f"HDU {hdu!r} of {os.fspath(path)} holds no image")
    # FITS data are big-endian: convert before torch.from_numpy
    return np.asarray(data).astype(np.float32 if data.dtype.itemsize <= 4 else np.float64)


def normalise_psf(
    psf: torch.Tensor | np.ndarray, name: str = "psf", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Validate PSF(s) and normalise each to unit sum.

    :param psf: ``(h, w)``, ``(1, 1, h, w)``, ``(B, 1, h, w)`` (one PSF per batch item) or
        ``(B, C, h, w)`` (one per item and channel).
    :param name: name used in error messages.
    :param dtype: floating dtype of the result (``None``: keep a floating dtype, else float32).
    :return: a 4-D tensor ``(B, C', h, w)``.
    :raises InvalidDataError: for NaN/Inf values, or a PSF whose sum is not positive.
    :raises ShapeError: for other numbers of dimensions.
    """
    from ..errors import ShapeError

    t = as_tensor(psf, name=name, dtype=dtype)
    if t.ndim == 2:
        t = t[None, None]
    if t.ndim != 4:
        raise ShapeError(
            f"{name}: expected a 2-D (h, w) or 4-D (B, C, h, w) PSF, found shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ShapeError(f"{name}: empty PSF of shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        raise InvalidDataError(
            f"{name}: the PSF contains {n_nan} NaN and {int(bad.sum()) - n_nan} Inf values"
        )
    sums = t.sum(dim=(-2, -1), keepdim=True)
    if bool((sums <= 0).any()):
        found = sums.flatten().tolist()
        raise InvalidDataError(
            f"{name}: each PSF must have a positive sum to be normalised, found sum(s) "
            f"{[round(s, 6) for s in found[:8]]}"
        )
    return t / sums


# ---------------------------------------------------------------------------------------------
# operator
# ---------------------------------------------------------------------------------------------
class PSFConvolution(OperatorMixin, LinearPhysics):
    r"""Convolution with a point-spread function (FFT based, exact adjoint).

    .. math::

        A x = p * x \quad (\text{boundary: } \texttt{padding}), \qquad
        A^\top y = \tilde p \star y \;(\text{correlation with } p),

    see the module docstring for the index convention and the three boundary modes. Images are
    ``(B, C, H, W)``; one PSF applies to every item and channel, ``(B, 1, h, w)`` PSFs apply one
    per batch item (inputs must then have batch size ``B``) and ``(B, C, h, w)`` one per item and
    channel. The PSF is validated (finite, positive sum) and normalised to unit sum, so the
    operator conserves flux; the image keeps its physical units.

    :param psf: PSF as a tensor or numpy array (2-D or 4-D), or the path of a FITS file (primary
        HDU; big-endian data are converted).
    :param img_size: image size ``(C, H, W)`` (or ``(H, W)`` / ``N``).
    :param padding: ``"same"`` (zero boundary, scipy ``fftconvolve(mode="same")``), ``"circular"``
        or ``"valid"``.
    :param device: device of the buffers.
    :param dtype: floating dtype of the buffers (computations use the input's dtype).
    :param noise_model: deepinv noise model (default: none).
    :param profile: the profile parameters the PSF was made from (set by :meth:`from_profile`;
        recorded in the spec instead of the array).

    ``A_dagger(y, reg=0.0)``: for ``circular`` the closed form in Fourier,
    :math:`\hat x = \bar P \hat y / |P|^2` on the frequencies where
    :math:`|P|^2 > \mathrm{rcond}\cdot\max|P|^2` (zero elsewhere: the pseudo-inverse), or the
    Tikhonov/Wiener filter :math:`\bar P \hat y / (|P|^2 + \mathrm{reg})` for ``reg > 0``; for
    ``same`` and ``valid``, damped CGLS.
    """

    spec_type: ClassVar[str] = "psf"

    def __init__(
        self,
        psf: torch.Tensor | np.ndarray | str | os.PathLike[str],
        img_size: int | Sequence[int],
        padding: str = "same",
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
        profile: dict[str, Any] | None = None,
    ) -> None:
        size = as_img_size(img_size)
        check_dtype(dtype)
        if padding not in PADDINGS:
            raise ConfigError(f"padding: expected one of {list(PADDINGS)}, found {padding!r}")
        source = None
        if isinstance(psf, str | os.PathLike):
            source = os.fspath(psf)
            psf = load_psf(source)
        kernel = normalise_psf(psf, dtype=dtype)
        C, H, W = size
        h, w = kernel.shape[-2:]
        if kernel.shape[1] not in (1, C):
            raise OperatorMismatchError(
                f"psf: expected 1 or {C} channel(s) for img_size {size}, "
                f"found PSF shape {tuple(kernel.shape)}"
            )
        if padding in ("circular", "valid") and (h > H or w > W):
            raise ConfigError(
                f"padding={padding!r} needs a PSF no larger than the image: "
                f"PSF {h}x{w}, image {H}x{W}"
            )
        LinearPhysics.__init__(
            self, img_size=size, noise_model=noise_model or ZeroNoise(), device=device
        )
        self.img_size: ImgSize = size
        self.padding = padding
        self.register_buffer("psf", kernel.to(device=device))
        origin = ((h - 1) // 2, (w - 1) // 2)
        if padding == "same":
            self._fft_shape = (
                scipy.fft.next_fast_len(H + h - 1, real=True),
                scipy.fft.next_fast_len(W + w - 1, real=True),
            )
            self._offset = origin
            self._out_hw = (H, W)
        elif padding == "valid":
            self._fft_shape = (H, W)
            self._offset = (h - 1, w - 1)
            self._out_hw = (H - h + 1, W - w + 1)
        else:
            self._fft_shape = (H, W)
            self._offset = (0, 0)
            self._out_hw = (H, W)
        self._origin = origin
        if profile is None:
            profile = {"profile": "array", "source": source, "psf_shape": list(kernel.shape)}
        self._profile = dict(profile)
        self._otf_cache: tuple[torch.Tensor, int, torch.dtype, torch.device, torch.Tensor] | None
        self._otf_cache = None

    @classmethod
    def from_profile(
        cls,
        img_size: int | Sequence[int],
        profile: str = "moffat",
        padding: str = "same",
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
        **params: Any,
    ) -> PSFConvolution:
        """Build the operator from a PSF profile (gaussian, moffat, airy or kolmogorov).

        The profile parameters (e.g. ``fwhm=4, beta=3``) are recorded in the spec, so no array is
        needed to rebuild the operator.
        """
        psf = make_psf(profile, dtype=torch.float64, **params)
        record: dict[str, Any] = {"profile": profile}
        record.update({k: params.get(k, PROFILE_DEFAULTS.get(k)) for k in PSF_PROFILES[profile]})
        record["size"] = int(psf.shape[-1])
        return cls(
            psf,
            img_size,
            padding,
            device=device,
            dtype=dtype,
            noise_model=noise_model,
            profile=record,
        )

    # -- geometry -----------------------------------------------------------------------------
    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """Shape of one measurement, ``(C, H, W)`` for ``same`` and ``circular`` padding and
        ``(C, H - h + 1, W - w + 1)`` for ``valid`` (PSF of size ``h x w``)."""
        return (self.img_size[0], *self._out_hw)

    def _spec_params(self) -> dict[str, Any]:
        return {**self._profile, "padding": self.padding}

    def _otf(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Transfer function (rfft2 of the zero-extended PSF) on the FFT grid, cached."""
        psf = self.psf
        cache = self._otf_cache
        if (
            cache is not None
            and not psf.requires_grad
            and cache[0] is psf
            and cache[1] == psf._version
            and cache[2] == dtype
            and cache[3] == device
        ):
            return cache[4]
        L0, L1 = self._fft_shape
        h, w = psf.shape[-2:]
        kernel = F.pad(psf.to(device=device, dtype=dtype), (0, L1 - w, 0, L0 - h))
        if self.padding == "circular":
            kernel = torch.roll(kernel, shifts=(-self._origin[0], -self._origin[1]), dims=(-2, -1))
        otf = torch.fft.rfft2(kernel)
        if not psf.requires_grad:
            self._otf_cache = (psf, psf._version, dtype, device, otf)
        return otf

    def _check_batch(self, t: torch.Tensor) -> None:
        n = self.psf.shape[0]
        if n > 1 and t.shape[0] != n:
            raise OperatorMismatchError(
                f"PSFConvolution: this operator holds {n} per-item PSFs, so inputs must have "
                f"batch size {n}, found {t.shape[0]}"
            )

    # -- operator -----------------------------------------------------------------------------
    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r"""Blur: :math:`A x = p * x` with the chosen boundary, shape ``(B, C) + out_hw``."""
        self._check_image(x)
        self._check_batch(x)
        otf = self._otf(x.dtype, x.device)
        full = torch.fft.irfft2(torch.fft.rfft2(x, s=self._fft_shape) * otf, s=self._fft_shape)
        o0, o1 = self._offset
        h_out, w_out = self._out_hw
        return full[..., o0 : o0 + h_out, o1 : o1 + w_out]

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r"""Adjoint: zero-pad into the FFT grid, correlate with :math:`p`, crop to the image."""
        self._check_measurement(y)
        self._check_batch(y)
        otf = self._otf(y.dtype, y.device)
        L0, L1 = self._fft_shape
        o0, o1 = self._offset
        h_out, w_out = self._out_hw
        padded = F.pad(y, (o1, L1 - o1 - w_out, o0, L0 - o0 - h_out))
        full = torch.fft.irfft2(torch.fft.rfft2(padded) * otf.conj(), s=self._fft_shape)
        return full[..., : self.img_size[1], : self.img_size[2]]

    def A_dagger(  # noqa: N802
        self,
        y: torch.Tensor,
        reg: float = 0.0,
        max_iter: int = 100,
        tol: float = 1e-6,
        rcond: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        r"""Pseudo-inverse (``reg=0``) or Tikhonov/Wiener inverse (``reg>0``).

        Closed form in Fourier for ``circular`` padding; damped CGLS (``max_iter``, ``tol``) for
        ``same`` and ``valid``.

        :param y: blurred image(s).
        :param reg: Tikhonov weight :math:`\lambda` (image units squared relative to measurements).
        :param max_iter: CGLS iterations at most (``same`` / ``valid``).
        :param tol: CGLS relative tolerance.
        :param rcond: for ``circular`` and ``reg=0``: frequencies with
            :math:`|P|^2 \le \mathrm{rcond}\max|P|^2` are dropped; default ``1000 * eps(dtype)``.
        """
        self._check_measurement(y)
        self._check_batch(y)
        if reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        if self.padding != "circular":
            return cgls(self.A, self.A_adjoint, y, damp=float(reg), max_iter=max_iter, tol=tol)
        otf = self._otf(y.dtype, y.device)
        power = otf.real**2 + otf.imag**2
        if reg > 0:
            inverse = otf.conj() / (power + reg)
        else:
            if rcond is None:
                rcond = 1000.0 * torch.finfo(y.dtype).eps
            keep = power > rcond * power.amax(dim=(-2, -1), keepdim=True)
            inverse = torch.where(keep, otf.conj() / torch.where(keep, power, 1.0), 0.0)
        return torch.fft.irfft2(torch.fft.rfft2(y) * inverse, s=self._fft_shape)
