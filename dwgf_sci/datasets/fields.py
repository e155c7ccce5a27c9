"""Simulated survey fields (many galaxies, stars, blends and empty sky) as a torch Dataset."""

from __future__ import annotations

import math

import galsim
import numpy as np
import torch
from torch.utils.data import Dataset

from ._common import check_count, check_index, item_rng

__all__ = ["FieldDataset"]

_TAG = 0xF1E1D  # separates the field random streams from other datasets with the same seed
#: Kinds of objects, with their share of the objects drawn.
KINDS = {"bulge+disk": 0.45, "sersic": 0.2, "clumpy": 0.15, "star": 0.2}


class FieldDataset(Dataset):
    r"""Noise-free survey fields drawn with GalSim, in flux counts.

    Item ``i`` is a float32 tensor ``(1, size, size)``: a field holding a Poisson number of
    objects (``density`` per 64 x 64 pixels on average) at uniform positions, so that some
    overlap (blends), some are cut by the border, and parts of the field are empty sky. It is a
    function of ``(seed, i)`` only. The objects, drawn independently:

    ==============  ==============================================================================
    ``bulge+disk``  exponential disk plus de Vaucouleurs bulge (bulge share uniform in [0, 1],
                    bulge/disk size ratio 0.2-0.6), common position angle, axis ratios 0.2-1
    ``sersic``      a single Sersic profile, index uniform in [0.5, 4], axis ratio 0.3-1
    ``clumpy``      a star-forming galaxy: an exponential disk plus
                    :class:`galsim.RandomKnots` (10-40 knots holding 30-70% of the flux)
    ``star``        a point source
    ==============  ==============================================================================

    Galaxy half-light radii are log-uniform in ``hlr_range`` (arcsec), fluxes log-uniform in
    ``flux_range`` (counts) for every kind. Everything is convolved with the intrinsic Gaussian PSF
    of FWHM 1.5 pixels, as :class:`~dwgf_sci.datasets.GalaxyDataset` (band-limited drawing; the
    degrading PSF of an observation comes later from the operator). Patch priors train on random
    crops of such fields (DESIGN.md section 10).

    :param n: number of fields.
    :param size: field side in pixels (>= 16).
    :param seed: non-negative integer seed.
    :param density: mean number of objects per 64 x 64 pixels.
    :param pixel_scale: arcsec per pixel.
    :param flux_range: range of the objects' fluxes (counts), log-uniform.
    :param hlr_range: range of the galaxies' half-light radii (arcsec), log-uniform.
    """

    def __init__(
        self,
        n: int,
        size: int = 256,
        seed: int = 0,
        density: float = 2.0,
        pixel_scale: float = 0.2,
        flux_range: tuple[float, float] = (3e2, 1e5),
        hlr_range: tuple[float, float] = (0.2, 1.2),
    ) -> None:
        self.n = check_count(n, "n")
        self.size = check_count(size, "size", minimum=16)
        self.seed = check_count(seed, "seed")
        self.density = float(density)
        self.pixel_scale = float(pixel_scale)
        self.flux_range = tuple(float(v) for v in flux_range)
        self.hlr_range = tuple(float(v) for v in hlr_range)
        self.psf = galsim.Gaussian(fwhm=1.5 * self.pixel_scale)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FieldDataset(n={self.n}, size={self.size}, seed={self.seed})"

    def objects(self, index: int) -> list[dict[str, float | str]]:
        """The objects drawn for field ``index``: kind, position (pixels), flux, shape."""
        rng = item_rng(_TAG, self.seed, check_index(index, self.n, "index"))
        area = (self.size / 64.0) ** 2
        count = int(rng.poisson(self.density * area))
        kinds, shares = list(KINDS), np.array(list(KINDS.values()))
        out = []
        for _ in range(count):
            kind = kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]
            lo, hi = self.flux_range
            obj: dict[str, float | str] = {
                "kind": kind,
                "x": float(rng.uniform(-4, self.size + 4)),
                "y": float(rng.uniform(-4, self.size + 4)),
                "flux": float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                "hlr": float(math.exp(rng.uniform(*np.log(self.hlr_range)))),
                "q": float(rng.uniform(0.2, 1.0)),
                "angle": float(rng.uniform(0.0, 180.0)),
                "bulge_fraction": float(rng.uniform(0.0, 1.0)),
                "bulge_ratio": float(rng.uniform(0.2, 0.6)),
                "sersic_n": float(rng.uniform(0.5, 4.0)),
                "knots": float(rng.integers(10, 41)),
                "knot_fraction": float(rng.uniform(0.3, 0.7)),
                "knot_seed": float(rng.integers(1, 2**31 - 1)),
            }
            out.append(obj)
        return out

    def profile(self, obj: dict[str, float | str]) -> galsim.GSObject:
        """The GalSim profile of one object (before the intrinsic PSF)."""
        kind, hlr, flux = obj["kind"], float(obj["hlr"]), float(obj["flux"])
        shear = galsim.Shear(q=float(obj["q"]), beta=float(obj["angle"]) * galsim.degrees)
        if kind == "star":
            return galsim.DeltaFunction(flux=flux)
        if kind == "sersic":
            return galsim.Sersic(float(obj["sersic_n"]), half_light_radius=hlr, trunc=5 * hlr)\
                .shear(shear).withFlux(flux)  # fmt: skip
        if kind == "clumpy":
            share = float(obj["knot_fraction"])
            knots = galsim.RandomKnots(
                int(obj["knots"]),
                half_light_radius=hlr,
                flux=share,
                rng=galsim.BaseDeviate(int(obj["knot_seed"])),
            )
            disk = galsim.Exponential(half_light_radius=hlr, flux=1 - share)
            return galsim.Add([disk, knots]).shear(shear).withFlux(flux)
        bf = float(obj["bulge_fraction"])
        disk = galsim.Exponential(half_light_radius=hlr, flux=1 - bf).shear(shear)
        bulge = galsim.DeVaucouleurs(
            half_light_radius=hlr * float(obj["bulge_ratio"]), flux=bf, trunc=8 * hlr
        ).shear(galsim.Shear(q=min(1.0, 0.4 + float(obj["q"])), beta=shear.beta))
        return galsim.Add([disk, bulge]).withFlux(flux)

    def __getitem__(self, index: int) -> torch.Tensor:
        field = galsim.ImageF(self.size, self.size, scale=self.pixel_scale)
        for obj in self.objects(index):
            profile = galsim.Convolve([self.profile(obj), self.psf])
            stamp_size = int(2 * math.ceil(8 * float(obj["hlr"]) / self.pixel_scale) + 16)
            ix, iy = int(math.floor(float(obj["x"]))), int(math.floor(float(obj["y"])))
            offset = (float(obj["x"]) - ix - 0.5, float(obj["y"]) - iy - 0.5)
            stamp = profile.drawImage(
                nx=stamp_size, ny=stamp_size, scale=self.pixel_scale, offset=offset
            )
            stamp.setCenter(ix + 1, iy + 1)  # GalSim images start at pixel 1
            bounds = stamp.bounds & field.bounds
            if bounds.isDefined():
                field[bounds] += stamp[bounds]
        data = np.clip(field.array, 0.0, None)  # FFT ringing (about 1e-6 of a peak) at 0
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
