"""Observations with a noise map or masked pixels: their noise model, notes and outputs.

:func:`pixel_noise_for` turns what :func:`~dwgf_sci.io.measurement.read_measurement` found (a
variance map, a bad-pixel mask) into the physics' noise model,
:class:`~dwgf_sci.operators.pixel_noise.PixelNoise`, which every latent solver reads;
:func:`announce` prints the layout chosen and the NaN pixels masked; :func:`write_posterior`
writes the posterior with the ``MASK`` and ``VARIANCE`` used.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from astropy.io import fits

from ..errors import ConfigError, InvalidDataError
from ..io import make_provenance, write_fits, write_hdf5
from ..io.formats import file_format
from ..io.measurement import Measurement
from ..operators.noise import noise_sigma
from ..operators.pixel_noise import PixelNoise
from ..solvers.base import LatentSolver
from ..solvers.likelihood import DataTerm
from ..solvers.posterior import Posterior, first_samples

__all__ = [
    "announce",
    "check_noise_level",
    "map_weighted",
    "pixel_noise_for",
    "write_posterior",
]


def pixel_noise_for(measurement: Measurement, physics: Any, solver: LatentSolver) -> Any:
    """Set ``physics.noise_model`` to the measurement's per-pixel noise, if it has any.

    With a noise map, its variance is used (``inf`` at masked pixels); with a mask only, the
    Gaussian level of the solver (``noise_sigma``) or of the physics, squared, everywhere else.

    :return: the variance map ``(C, H, W)`` set, or None (a file without map or mask: the physics
        is left as it is).
    :raises ConfigError: masked pixels without any Gaussian noise level, a noise map and an
        explicit ``noise_sigma`` (which one to believe?), or a Poisson data term.
    """
    if measurement.variance is None and measurement.mask is None:
        return None
    source = measurement.path or "the measurement"
    term = solver.data_term
    if term.kind == "poisson":
        raise ConfigError(
            f"{source} has a noise map or masked pixels, which the Poisson data term does not "
            "take; use the Gaussian data term"
        )
    if measurement.variance is not None:
        if term.sigma is not None:
            raise ConfigError(
                f"{source} has a noise map, which --noise-sigma {term.sigma} would replace; drop "
                "--noise-sigma, or pass --noise-map none to weigh every pixel alike"
            )
        variance = measurement.variance[0].clone()
    else:
        mask = measurement.mask[0]
        sigma = term.sigma if term.sigma is not None else noise_sigma(physics)
        if sigma is None or torch.is_tensor(sigma) or not sigma > 0:
            raise ConfigError(
                f"{source}: {int(mask.sum())} pixel(s) are masked and there is neither a noise "
                "map nor a Gaussian noise level to weigh the others with; name the map with "
                "--noise-map HDU, or set a level with --set noise.sigma=VALUE or --noise-sigma"
            )
        variance = torch.full(mask.shape, float(sigma) ** 2)
        variance[mask] = math.inf
    physics.noise_model = PixelNoise(variance.to(solver.prior.device))
    return variance


def check_noise_level(measurement: Measurement, physics: Any, solver: LatentSolver) -> None:
    """Refuse a Gaussian data term without its level when the operator's noise level is zero
    (``--set noise.sigma=0``, or no noise at all): a zero noise level cannot weight the data.

    Call it after :func:`pixel_noise_for` returned None (no noise map, no mask), before solving.

    :raises ConfigError: naming ``--noise-sigma`` (and the noise-map options for an observation
        file, which may hold a map).
    """
    term = solver.data_term
    if term.kind != "gaussian" or term.sigma is not None:
        return
    level = noise_sigma(physics)
    if level is None or torch.is_tensor(level) or level != 0:
        return
    fix = "pass the measurement's noise level with --noise-sigma SIGMA (in measurement units)"
    fix += " or set a positive --set noise.sigma=SIGMA"
    if measurement.observation is not None:
        fix += (
            ", or weigh the pixels by the file's noise map (--noise-map HDU|KEY, --noise-map-kind)"
        )
    raise ConfigError(
        f"the operator's noise level is zero (noise.sigma=0 or no noise), and a zero "
        f"noise level cannot weight the data; {fix}"
    )


@contextlib.contextmanager
def map_weighted(solver: LatentSolver, active: bool) -> Iterator[None]:
    """While active, the solver reads its noise from the physics' map (an explicit
    ``noise_sigma`` already went into the map made from a mask); restored afterwards."""
    saved = solver.data_term
    if active and saved.sigma is not None:
        solver.data_term = DataTerm(saved.kind, None)
    try:
        yield
    finally:
        solver.data_term = saved


def announce(measurement: Measurement, echo: Callable[[str], None] | None) -> None:
    """One line on how an observation was read, and one on the NaN pixels masked, if any."""
    info = measurement.observation
    if info is None or echo is None:
        return
    source = measurement.path or "the measurement"
    where = "dataset" if info["layout"] == "HDF5 datasets" else "HDU"
    parts = [f"{source}: layout {info['layout']}: science {where} {info['science']}"]
    if info.get("noise_map") is not None:
        parts.append(f"noise map {where} {info['noise_map']} ({info['noise_map_kind']})")
    if info.get("dq") is not None:
        bits = info.get("dq_bits")
        text = ",".join(map(str, bits)) if isinstance(bits, list) else "any non-zero bit"
        ignored = info.get("dq_ignored")
        text += f" except {'/'.join(ignored)}" if ignored else ""
        parts.append(f"bad pixels from {where} {info['dq']} ({text})")
    if info.get("noise_map") is None:
        parts.append("no noise map")
    parts.append(f"{info['masked_pixels']} pixel(s) masked")
    echo("; ".join(parts))
    if info["nan_pixels"]:
        echo(
            f"{source}: {info['nan_pixels']} NaN pixel(s) in the science data masked "
            "(--nan error refuses them)"
        )


def _finite(name: str, x: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise InvalidDataError(f"the posterior {name} holds NaN/Inf values; nothing was written")
    return x


def write_posterior(
    post: Posterior,
    target: Path,
    variance: torch.Tensor,
    header: fits.Header | None,
    overwrite: bool,
    samples: int | None,
    record: dict[str, Any],
) -> Path:
    """Write the posterior of one measurement with the mask and the variance map used.

    FITS: mean (primary HDU), ``STD``, ``SAMPLES``, ``MASK`` (uint8, 1 = masked) and ``VARIANCE``
    (``inf`` at masked pixels); HDF5: the datasets ``mean``, ``std``, ``samples``, ``mask``,
    ``variance``. The provenance is the posterior's record merged with ``record``.
    """
    variance = variance.detach().cpu().float()
    mask = (~torch.isfinite(variance)).to(torch.uint8)
    mean = _finite("mean", post.as_tensor()[0:1])
    data = {"std": _finite("std", post.std[0:1])}
    if samples != 0:
        data["samples"] = _finite("samples", first_samples(post.all_samples[0], samples))
    data.update({"mask": mask, "variance": variance})
    provenance = make_provenance(**post.provenance(), **record)
    if file_format(target) == "fits":
        extra = {k.upper(): v for k, v in data.items()}
        return write_fits(
            target,
            mean,
            header=header,
            extra=extra,
            provenance=provenance,
            overwrite=overwrite,
            check_finite=False,
        )
    return write_hdf5(
        target,
        {"mean": mean, **data},
        provenance=provenance,
        overwrite=overwrite,
        check_finite=False,
    )
