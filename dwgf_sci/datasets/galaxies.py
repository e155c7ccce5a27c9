"""Simulated galaxy images (GalSim bulge + disk models) as a torch Dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import galsim
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ._common import check_count, check_index, check_range, item_rng

__all__ = ["GalaxyDataset"]

_TAG = 0x6A1A  # separates the galaxy random streams from other datasets with the same seed


class GalaxyDataset(Dataset):
    r"""Noise-free bulge + disk galaxies drawn with GalSim, in flux counts.

    Item ``i`` is a float32 tensor ``(1, size, size)``: the surface brightness of one galaxy
    integrated over square pixels of ``pixel_scale`` arcsec, in counts (the pixel values sum to the
    galaxy's flux, less the little light that falls outside the stamp). It is a function of ``(seed,
    i)`` only: the same in any order of access, in any DataLoader worker, on any machine with the
    same GalSim version. :meth:`params` returns the parameters drawn for an item.

    Model: a disk (:class:`galsim.Exponential`) plus a bulge (:class:`galsim.DeVaucouleurs`, or a
    :class:`galsim.Sersic` of index ``bulge_n``, truncated at ``bulge_truncation`` half-light
    radii), both sheared to their intrinsic axis ratios at a common position angle, then the whole
    galaxy sheared by a weak-lensing shear, convolved with an intrinsic PSF, and offset from the
    stamp centre (the centre of the stamp lies between the four central pixels when ``size`` is
    even).

    Parameter distributions (all independent, drawn in this order):

    ===================  ===================================================================
    ``flux``             log-uniform in ``flux_range`` (counts; default 1e3 to 1e5)
    ``disk_hlr``         log-uniform in ``hlr_range`` (arcsec; default 0.3 to 1.2, i.e. 1.5
                         to 6 pixels at 0.2 arcsec)
    ``bulge_fraction``   uniform in ``bulge_fraction_range`` (default 0 to 1), share of flux
    ``bulge_hlr``        ``disk_hlr`` times uniform in ``bulge_size_ratio`` (default 0.2-0.6)
    ``disk_q``           disk axis ratio b/a, uniform in ``disk_q_range`` (default 0.2 to 1)
    ``bulge_q``          bulge axis ratio, uniform in ``bulge_q_range`` (default 0.6 to 1)
    ``position_angle``   uniform in [0, 180) degrees, shared by bulge and disk
    ``g1``, ``g2``       lensing shear, each normal with standard deviation ``shear_std``
                         (default 0.02)
    ``offset_x/y``       centroid offset, each uniform in [-``max_offset``, ``max_offset``]
                         pixels (default 1)
    ===================  ===================================================================

    Why an intrinsic PSF: a de Vaucouleurs profile has a cusp, so drawn without any PSF it is not
    band-limited and GalSim needs FFTs of thousands of pixels (gigabytes) per stamp. The default
    ``psf=None`` is a Gaussian of FWHM 1.5 pixels: the images are then what a telescope that
    Nyquist-samples its PSF would see (like the HST images used as ground truth in weak-lensing
    work); the degrading PSF of an observation is applied later by
    :class:`dwgf_sci.operators.PSFConvolution`. Drawing takes about 4-5 ms per 64 x 64 stamp.
    GalSim draws by FFT, whose ringing (about 1e-6 of the peak) is clipped at 0, so every pixel is
    nonnegative.

    :param n: number of galaxies.
    :param size: stamp side in pixels (>= 8).
    :param seed: non-negative integer seed.
    :param pixel_scale: arcsec per pixel.
    :param psf: intrinsic PSF: None for the default Gaussian (FWHM 1.5 pixels), a float for a
        Gaussian of that FWHM in arcsec, or any :class:`galsim.GSObject`.
    :param flux_range: range of the total flux (counts), log-uniform.
    :param hlr_range: range of the disk half-light radius (arcsec), log-uniform. Scale it down for
        stamps much smaller than 64 pixels at 0.2 arcsec.
    :param bulge_fraction_range: range of the bulge's share of the flux.
    :param bulge_size_ratio: range of the bulge/disk half-light-radius ratio.
    :param disk_q_range: range of the disk axis ratio.
    :param bulge_q_range: range of the bulge axis ratio.
    :param shear_std: standard deviation of each lensing shear component (0 for none).
    :param max_offset: largest centroid offset per axis, in pixels.
    :param bulge_n: Sersic index of the bulge (4 is de Vaucouleurs; GalSim allows 0.3 to 6.2).
    :param bulge_truncation: bulge truncation radius in bulge half-light radii (None: none).
    """

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        pixel_scale: float = 0.2,
        psf: galsim.GSObject | float | None = None,
        *,
        flux_range: Sequence[float] = (1e3, 1e5),
        hlr_range: Sequence[float] = (0.3, 1.2),
        bulge_fraction_range: Sequence[float] = (0.0, 1.0),
        bulge_size_ratio: Sequence[float] = (0.2, 0.6),
        disk_q_range: Sequence[float] = (0.2, 1.0),
        bulge_q_range: Sequence[float] = (0.6, 1.0),
        shear_std: float = 0.02,
        max_offset: float = 1.0,
        bulge_n: float = 4.0,
        bulge_truncation: float | None = 10.0,
    ) -> None:
        self.n = check_count(n, "n")
        self.size = check_count(size, "size", minimum=8)
        self.seed = check_count(seed, "seed")
        self.pixel_scale = _positive(pixel_scale, "pixel_scale")
        if psf is None:
            psf = galsim.Gaussian(fwhm=1.5 * self.pixel_scale)
        elif isinstance(psf, int | float) and not isinstance(psf, bool):
            psf = galsim.Gaussian(fwhm=_positive(psf, "psf FWHM"))
        elif not isinstance(psf, galsim.GSObject):
            raise ConfigError(
                f"psf must be None, a FWHM in arcsec or a galsim.GSObject, found {psf!r}"
            )
        self.psf: galsim.GSObject = psf
        self.flux_range = check_range(flux_range, "flux_range", positive=True)
        self.hlr_range = check_range(hlr_range, "hlr_range", positive=True)
        self.bulge_fraction_range = check_range(bulge_fraction_range, "bulge_fraction_range", 0, 1)
        self.bulge_size_ratio = check_range(bulge_size_ratio, "bulge_size_ratio", positive=True)
        self.disk_q_range = check_range(disk_q_range, "disk_q_range", 0, 1, positive=True)
        self.bulge_q_range = check_range(bulge_q_range, "bulge_q_range", 0, 1, positive=True)
        self.shear_std = float(shear_std)
        if not 0 <= self.shear_std <= 0.2:
            raise ConfigError(f"shear_std must be in [0, 0.2], found {shear_std!r}")
        self.max_offset = float(max_offset)
        if not 0 <= self.max_offset <= self.size / 4:
            raise ConfigError(f"max_offset must be in [0, size/4] pixels, found {max_offset!r}")
        self.bulge_n = float(bulge_n)
        if not 0.3 <= self.bulge_n <= 6.2:
            raise ConfigError(f"bulge_n must be in [0.3, 6.2] (GalSim's range), found {bulge_n!r}")
        if bulge_truncation is not None and not float(bulge_truncation) > 1:
            raise ConfigError(f"bulge_truncation must be > 1 or None, found {bulge_truncation!r}")
        self.bulge_truncation = None if bulge_truncation is None else float(bulge_truncation)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.n}, size={self.size}, seed={self.seed}, "
            f"pixel_scale={self.pixel_scale})"
        )

    def params(self, index: int) -> dict[str, float]:
        """The parameters drawn for item ``index`` (see the class docstring for their laws).

        :return: dict with ``flux`` (counts), ``disk_hlr`` and ``bulge_hlr`` (arcsec),
            ``bulge_fraction``, ``bulge_n``, ``disk_q``, ``bulge_q``, ``position_angle`` (degrees),
            ``g1``, ``g2``, ``offset_x``, ``offset_y`` (pixels).
        :raises IndexError: if ``index`` is out of range.
        """
        i = check_index(index, self.n, type(self).__name__)
        rng = item_rng(_TAG, self.seed, i)

        def log_uniform(bounds: tuple[float, float]) -> float:
            return math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))

        flux = log_uniform(self.flux_range)
        disk_hlr = log_uniform(self.hlr_range)
        bulge_fraction = float(rng.uniform(*self.bulge_fraction_range))
        bulge_hlr = disk_hlr * float(rng.uniform(*self.bulge_size_ratio))
        disk_q = float(rng.uniform(*self.disk_q_range))
        bulge_q = float(rng.uniform(*self.bulge_q_range))
        position_angle = float(rng.uniform(0.0, 180.0))
        g1, g2 = (float(g) for g in rng.normal(0.0, self.shear_std, size=2))
        offset_x, offset_y = (float(o) for o in rng.uniform(-self.max_offset, self.max_offset, 2))
        return {
            "flux": flux,
            "disk_hlr": disk_hlr,
            "bulge_hlr": bulge_hlr,
            "bulge_fraction": bulge_fraction,
            "bulge_n": self.bulge_n,
            "disk_q": disk_q,
            "bulge_q": bulge_q,
            "position_angle": position_angle,
            "g1": g1,
            "g2": g2,
            "offset_x": offset_x,
            "offset_y": offset_y,
        }

    def profile(self, params: dict[str, float]) -> galsim.GSObject:
        """The GalSim profile (galaxy convolved with the intrinsic PSF) for a parameter dict."""
        beta = params["position_angle"] * galsim.degrees
        disk = galsim.Exponential(half_light_radius=params["disk_hlr"])
        trunc = (
            0.0 if self.bulge_truncation is None else self.bulge_truncation * params["bulge_hlr"]
        )
        if params["bulge_n"] == 4.0:
            bulge = galsim.DeVaucouleurs(half_light_radius=params["bulge_hlr"], trunc=trunc)
        else:
            bulge = galsim.Sersic(
                n=params["bulge_n"], half_light_radius=params["bulge_hlr"], trunc=trunc
            )
        flux, fraction = params["flux"], params["bulge_fraction"]
        galaxy = galsim.Add(
            [
                disk.shear(q=params["disk_q"], beta=beta).withFlux((1.0 - fraction) * flux),
                bulge.shear(q=params["bulge_q"], beta=beta).withFlux(fraction * flux),
            ]
        )
        if params["g1"] or params["g2"]:
            galaxy = galaxy.shear(g1=params["g1"], g2=params["g2"])
        return galsim.Convolve([galaxy, self.psf])

    def __getitem__(self, index: int) -> torch.Tensor:
        """Draw galaxy ``index`` as a float32 tensor ``(1, size, size)`` in counts."""
        params = self.params(index)
        image = galsim.ImageF(self.size, self.size, scale=self.pixel_scale)
        self.profile(params).drawImage(
            image=image, offset=(params["offset_x"], params["offset_y"]), method="auto"
        )
        # FFT drawing leaves ringing of ~1e-6 of the peak, partly negative: counts are >= 0
        return torch.from_numpy(np.maximum(image.array, 0.0, dtype=np.float32))[None]


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, found {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a positive number, found {value!r}")
    return number
