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
:func:`kolmogorov_psf` (galsim, pixel-integrated), in :mod:`~dwgf_sci.operators.psf_profiles`.
:func:`load_psf` reads a PSF from a FITS file (through :func:`dwgf_sci.io.read_fits`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import NoiseModel, ZeroNoise

from .._checks import as_tensor
from ..errors import ConfigError, InvalidDataError, OperatorMismatchError, ShapeError
from ..io import read_fits
from ._base import ImgSize, OperatorMixin, as_img_size, cgls, check_dtype
from .psf_profiles import (
    MAX_STAMP_SIZE,
    PROFILE_DEFAULTS,
    PSF_PROFILES,
    airy_psf,
    gaussian_psf,
    kolmogorov_psf,
    make_psf,
    moffat_gamma,
    moffat_psf,
)

__all__ = [
    "MAX_STAMP_SIZE",
    "PADDINGS",
    "PROFILE_DEFAULTS",
    "PSF_PROFILES",
    "PSFConvolution",
    "airy_psf",
    "gaussian_psf",
    "kolmogorov_psf",
    "load_psf",
    "make_psf",
    "moffat_gamma",
    "moffat_psf",
    "normalise_psf",
]

PADDINGS = ("same", "circular", "valid")


def load_psf(path: str | os.PathLike[str], hdu: int | str = 0) -> np.ndarray:
    """Read a PSF image from a FITS file as a native-endian float array.

    The file is read by :func:`dwgf_sci.io.read_fits` (and its structure checks); the array keeps
    the file's dimensions (``(h, w)`` for a 2-D image) and is float32 when the stored values fit
    (``BITPIX`` 8, 16, 32 unscaled, -32), else float64. NaN/Inf values are kept here and refused
    by :func:`normalise_psf`.

    :param path: FITS file.
    :param hdu: HDU index or name holding the PSF.
    :raises FileFormatError: if the file or HDU is missing or holds no image.
    """
    x, header = read_fits(path, hdu=hdu, check_finite=False, dtype=torch.float64)
    bitpix = header.get("BITPIX")
    scaled = header.get("BSCALE", 1) != 1 or header.get("BZERO", 0) != 0
    single = bitpix in (8, 16, -32) or (bitpix == 32 and not scaled)
    naxis = int(header.get("NAXIS", x.ndim) or x.ndim)
    data = x.numpy()
    if naxis < 4:
        data = data.reshape(data.shape[4 - max(naxis, 2) :])
    return data.astype(np.float32 if single else np.float64)


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
