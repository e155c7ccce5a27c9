"""Simulated observations: a dataset item through an operator and its noise model, to a file."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..datasets import (
    FieldDataset,
    FitsFolderDataset,
    GalaxyDataset,
    HDF5Dataset,
    PhantomDataset,
)
from ..errors import ConfigError
from ..io.formats import file_format
from ..io.measurement import Measurement, write_measurement
from ..operators import build_operator, physics_spec

DATASETS = ("galaxies", "phantoms", "fields")
NOISE_SCALES = ("peak", "absolute")


def make_dataset(name: str, n: int, size: int, seed: int) -> torch.utils.data.Dataset:
    """``galaxies`` / ``phantoms`` / ``fields`` (simulated survey fields), or an HDF5 file /
    FITS folder of images."""
    if name == "galaxies":
        return GalaxyDataset(n, size=size, seed=seed)
    if name == "phantoms":
        return PhantomDataset(n, size=size, seed=seed)
    if name == "fields":
        return FieldDataset(n, size=size, seed=seed)
    path = Path(name)
    if path.is_dir() or "*" in name:
        return FitsFolderDataset(name)
    if path.is_file() and file_format(path) == "hdf5":
        return HDF5Dataset(path)
    raise ConfigError(
        f"unknown dataset {name!r}: use one of {DATASETS}, an HDF5 file or a folder of FITS files"
    )


def item_spec(spec: dict[str, Any], clean: torch.Tensor, noise_scale: str, seed: int) -> dict:
    """The spec used for one item: noise seeded per item, Gaussian levels scaled to the peak.

    With ``noise_scale="peak"`` the spec's Gaussian ``sigma`` is a fraction of the peak of the
    noise-free measurement :math:`\\max|Ax|`; the returned spec holds the absolute value used.
    """
    if noise_scale not in NOISE_SCALES:
        raise ConfigError(f"noise_scale must be one of {NOISE_SCALES}, found {noise_scale!r}")
    spec = copy.deepcopy(spec)
    noise = spec.get("noise") or {"type": "none"}
    if noise.get("type", "none") != "none":
        noise["seed"] = int(seed)
        if noise_scale == "peak" and "sigma" in noise:
            noise["sigma"] = float(noise["sigma"]) * float(clean.abs().max())
    spec["noise"] = noise
    return spec


def simulate(
    dataset: str,
    spec: dict[str, Any],
    out: str | Path,
    n: int = 1,
    seed: int = 0,
    size: int = 64,
    file_type: str = "fits",
    noise_scale: str = "peak",
    overwrite: bool = False,
    start: int = 0,
    arrays: dict[str, Any] | None = None,
    noise_map: bool = False,
) -> list[Path]:
    """Write ``n`` measurement files ``out/obs_<index>.<fits|h5>`` (truth, measurement, operator).

    :param dataset: ``galaxies``, ``phantoms``, an HDF5 file or a FITS folder.
    :param spec: operator spec (from :func:`~dwgf_sci.operators.resolve_spec`).
    :param out: output folder (created).
    :param seed: seed of the dataset and of the noise (item ``i`` uses ``seed * 100003 + i``).
    :param noise_scale: ``peak`` (Gaussian sigma relative to the noise-free peak) or ``absolute``.
    :param arrays: ``psf=`` / ``mask=`` arrays for specs that refer to user arrays.
    :param noise_map: also store the per-pixel noise the measurement was drawn with
        (:func:`noise_variance_map`; FITS: an ``ERR`` sigma map, HDF5: a ``variance``
        dataset), which reconstructions then weigh the data by, as a survey's.
    :return: the files written.
    """
    if file_type not in ("fits", "hdf5"):
        raise ConfigError(f"file type must be 'fits' or 'hdf5', found {file_type!r}")
    data = make_dataset(dataset, n + start, size, seed)
    if len(data) < start + n:
        raise ConfigError(f"the dataset has {len(data)} items, {start + n} were asked for")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".fits" if file_type == "fits" else ".h5"
    paths = [folder / f"obs_{i:05d}{suffix}" for i in range(start, start + n)]
    if not overwrite:
        existing = [p for p in paths if p.exists()]
        if existing:
            from ..errors import OutputExistsError

            raise OutputExistsError(
                f"{len(existing)} output file(s) exist already, e.g. {existing[0]}; "
                "pass --overwrite to replace them"
            )
    arrays = arrays or {}
    written = []
    for i, path in zip(range(start, start + n), paths, strict=True):
        x = data[i][None].float()
        img_size = tuple(x.shape[1:])
        base = build_operator(spec, img_size, **arrays)
        with torch.no_grad():
            clean = base.A(x)
        used = item_spec(physics_spec(base), clean, noise_scale, seed * 100003 + i)
        physics = build_operator(used, img_size, **arrays)
        with torch.no_grad():
            y = physics(x)
        used["img_size"] = list(img_size)
        record = {"dataset": str(dataset), "index": i, "seed": seed, "noise_scale": noise_scale}
        m = Measurement(y=y, operator=used, truth=x, arrays=_arrays_of(arrays))
        if noise_map:
            m.variance = noise_variance_map(used["noise"], clean)[0]
        written.append(write_measurement(path, m, provenance=record, overwrite=overwrite))
    return written


def noise_variance_map(noise: dict[str, Any], clean: torch.Tensor) -> torch.Tensor:
    r"""Per-pixel variance of the noise a spec draws on the noise-free data ``clean``: Gaussian
    :math:`\sigma^2`; photon noise with gain :math:`g` and sky :math:`b`,
    :math:`g\,(\max(Ax, 0) + b) + \sigma^2`, at least one count (:math:`g`) where that is 0.

    :raises ConfigError: without noise (a variance of 0 weighs nothing).
    """
    kind = noise.get("type", "none")
    sigma2 = float(noise.get("sigma", 0.0)) ** 2
    if kind == "gaussian":
        var = torch.full_like(clean, sigma2)
    elif kind in ("poisson", "poisson-gaussian"):
        gain = float(noise["gain"])
        photons = gain * (clean.clamp_min(0) + float(noise.get("sky", 0.0)))
        var = (photons + sigma2).clamp_min(gain)
    else:
        raise ConfigError(f"a noise map needs a noise model; the spec has {kind!r}")
    if not bool((var > 0).all()):
        raise ConfigError("the noise spec gives a zero variance: nothing to weigh the data by")
    return var


def _arrays_of(arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in arrays.items():
        if value is not None and not isinstance(value, str | Path):
            out[name] = torch.as_tensor(value, dtype=torch.float32)
    return out


def parse_sets(values: Sequence[str] | None) -> list[str]:
    """``--set`` values as a list (``None`` gives an empty list)."""
    return list(values or [])
