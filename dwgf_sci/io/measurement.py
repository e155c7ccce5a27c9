"""Self-describing measurement files: the data, the operator that made them, and the truth.

``dwgf-sci simulate`` writes them and ``dwgf-sci reconstruct`` reads them, so a file alone is
enough to rebuild its forward model. Layout:

FITS
    primary HDU: the measurement ``y`` (the input's header is kept); ``TRUTH``: the true image
    when simulated; ``PSF`` / ``MASK``: arrays the operator spec refers to (``profile = "array"``
    or ``pattern = "array"``); the ``PROVENANCE`` record holds ``{"kind": "measurement",
    "operator": <spec>, ...}``.
HDF5
    datasets ``y``, ``truth``, ``psf``, ``mask``; the ``operator`` spec and the provenance are
    attributes.

A plain user FITS/HDF5 file (no stored operator) reads fine too: ``operator`` is then ``None``
and the caller supplies a spec. Survey files (:mod:`~dwgf_sci.io.survey`) give, from the same
opening, the variance map of their noise map and their bad-pixel mask: NaN science pixels and
the pixels a DQ/MASK plane flags are masked (``inf`` variance, ``y`` set to 0 there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.io import fits

from ..errors import ConfigError, FileFormatError, ShapeError
from ._common import image_tensor, input_path, plain_tensor
from .fits import fits_provenance_text, image_hdu_data, write_fits
from .fits_open import HDUSpec, with_fits
from .formats import FITS_SUFFIXES, HDF5_SUFFIXES, file_format
from .hdf5 import hdf5_provenance_text, open_hdf5, read_array, read_attrs, write_hdf5
from .provenance import loads
from .survey import Layout, ReadOptions, combine_maps, guess_kind, recognise_layout

__all__ = [
    "ARRAY_NAMES",
    "FITS_SUFFIXES",
    "HDF5_SUFFIXES",
    "Measurement",
    "ReadOptions",
    "file_format",
    "read_measurement",
    "write_measurement",
]

ARRAY_NAMES = ("psf", "mask")


@dataclass
class Measurement:
    """A measurement and what is known about how it was made.

    :ivar y: measurement ``(1, ...)`` in the operator's units.
    :ivar operator: operator spec (see :mod:`dwgf_sci.operators.specs`), or ``None``.
    :ivar header: FITS header of the measurement (FITS input), else ``None``.
    :ivar truth: true image ``(1, C, H, W)`` when known (simulations).
    :ivar arrays: ``psf`` / ``mask`` arrays the spec refers to.
    :ivar provenance: the file's provenance record, if any.
    :ivar path: where it was read from.
    :ivar variance: per-pixel noise variance ``(1, ...)`` of the file's noise map (``inf`` at
        masked pixels), or None.
    :ivar mask: bad pixels ``(1, ...)`` (bool, True = masked; ``y`` is 0 there), or None.
    :ivar observation: how the file was read (layout, HDUs or datasets, map kind, NaN count, DQ
        bits), or None for a dwgf-sci measurement read as it is.
    """

    y: torch.Tensor
    operator: dict[str, Any] | None = None
    header: fits.Header | None = None
    truth: torch.Tensor | None = None
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    path: Path | None = None
    variance: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    observation: dict[str, Any] | None = None


def write_measurement(
    path: str | Path,
    measurement: Measurement,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a :class:`Measurement` (FITS or HDF5 by suffix), atomically.

    :param provenance: extra provenance fields (the operator spec is added).
    """
    record = {"kind": "measurement", "operator": measurement.operator, **(provenance or {})}
    arrays = {k: v for k, v in measurement.arrays.items() if v is not None}
    if file_format(path) == "fits":
        extra = {k.upper(): v for k, v in arrays.items()}
        if measurement.truth is not None:
            extra["TRUTH"] = measurement.truth
        if measurement.variance is not None:  # the noise map, as a sigma map (ERR)
            extra["ERR"] = measurement.variance.sqrt()
        return write_fits(
            path,
            measurement.y,
            header=measurement.header,
            extra=extra or None,
            provenance=record,
            overwrite=overwrite,
        )
    data = {"y": measurement.y, **arrays}
    if measurement.truth is not None:
        data["truth"] = measurement.truth
    if measurement.variance is not None:
        data["variance"] = measurement.variance
    return write_hdf5(
        path,
        data,
        attrs={"operator": measurement.operator},
        provenance=record,
        overwrite=overwrite,
    )


def _observation(
    layout: str,
    labels: dict[str, str | None],
    kind: str | None,
    options: ReadOptions,
    counts: dict[str, int],
    ignored: list[str] | None = None,
) -> dict[str, Any]:
    """The provenance entry saying how an observation file was read."""
    record: dict[str, Any] = {"layout": layout, **labels, "noise_map_kind": kind}
    if labels.get("dq") is not None:
        record["dq_bits"] = list(options.dq_bits) if options.dq_bits is not None else "non-zero"
        if ignored and options.dq_bits is None:
            record["dq_ignored"] = ignored
    if kind == "weight":
        record["weight_scale"] = options.weight_scale
    return {**record, "nan": options.nan, **counts}


def _read_fits_measurement(path: Path, options: ReadOptions) -> Measurement:
    """A FITS measurement, read in one pass over the open file."""
    p = input_path(path, "FITS")

    def action(hdul: fits.HDUList) -> tuple[Any, ...]:
        text = fits_provenance_text(hdul, p)
        record = (loads(text, f"FITS file {p}") if text is not None else None) or {}
        own = record.get("kind") == "measurement"
        layout = recognise_layout(hdul, p, options, own)
        y = image_hdu_data(hdul, layout.science, p)
        noise = image_hdu_data(hdul, layout.noise_map, p) if layout.noise_map is not None else None
        dq = image_hdu_data(hdul, layout.dq, p) if layout.dq is not None else None
        try:
            names = {str(h.name).upper(): i for i, h in reversed(list(enumerate(hdul))) if i}
        except Exception as exc:
            raise FileFormatError(f"{p}: cannot read the FITS file: {exc}") from exc
        used = {layout.science, layout.noise_map, layout.dq}
        truth = image_hdu_data(hdul, "TRUTH", p) if "TRUTH" in names else None
        arrays = {
            n: image_hdu_data(hdul, n.upper(), p)
            for n in ARRAY_NAMES
            if n.upper() in names and names[n.upper()] not in used
        }
        return layout, own, record, y, noise, dq, truth, arrays

    found: tuple[Layout, bool, dict[str, Any], Any, Any, Any, Any, dict[str, Any]]
    found = with_fits(p, action)
    layout, own, record, (data, header, label), noise, dq, truth, arrays = found
    where = f"FITS file {p} HDU {label}"
    y_np, var_np, mask_np, counts = combine_maps(
        data,
        where,
        options,
        (noise[0], layout.kind, f"noise map HDU {noise[2]} of {p}") if noise else None,
        (dq[0], f"DQ/MASK HDU {dq[2]} of {p}", sum(layout.ignore_bits.values())) if dq else None,
    )

    def tensor(arr: np.ndarray, what: str) -> torch.Tensor:
        return image_tensor(arr, what, allow_cube=True, check_finite=False)

    y = tensor(y_np, where)
    variance = tensor(var_np, where) if var_np is not None else None
    mask = tensor(mask_np.astype(np.float32), where).bool() if mask_np is not None else None
    truth_x = None
    if truth is not None:
        truth_x = image_tensor(truth[0], f"FITS file {p} HDU {truth[2]}", allow_cube=True)
    array_x = {n: image_tensor(a[0], f"FITS file {p} HDU {a[2]}") for n, a in arrays.items()}
    operator = record.get("operator") if own else None
    observation = None
    if not (own and options.is_default() and mask is None and variance is None):
        labels = {
            "science": label,
            "noise_map": noise[2] if noise else None,
            "dq": dq[2] if dq else None,
        }
        observation = _observation(
            layout.name, labels, layout.kind, options, counts, sorted(layout.ignore_bits)
        )
    return Measurement(
        y, operator, header, truth_x, array_x, record or None, path, variance, mask, observation
    )


def _hdf5_image(arr: np.ndarray, plain: bool) -> np.ndarray:
    """An HDF5 measurement array with its batch axis: ``(H, W)`` images get ``(1, 1, H, W)``."""
    if arr.ndim == 2 and plain:
        return arr[None, None]
    if arr.ndim == 1 or arr.shape[0] != 1:
        return arr[None]
    return arr


def _read_hdf5_measurement(path: Path, options: ReadOptions) -> Measurement:
    """An HDF5 measurement, read in one pass over the open file."""
    for name, value in (("noise_map", options.noise_map), ("dq", options.dq)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}: an HDF5 file names its datasets, found {value!r}")
    if options.hdu is not None:
        raise ConfigError(f"{path}: --hdu is for FITS files; name an HDF5 dataset with --key")
    if options.noise_map is None and options.noise_map_kind is not None:
        raise ConfigError(f"--noise-map-kind: name the noise-map dataset of {path} (--noise-map)")
    if options.dq is None and options.dq_bits is not None:
        raise ConfigError(f"--dq-bits: name the DQ/mask dataset of {path} (--dq)")
    f, p = open_hdf5(path)
    with f:
        try:
            keys = set(f.keys())
        except Exception as exc:
            raise FileFormatError(f"{p}: cannot read the HDF5 file: {exc}") from exc
        key = options.key or ("x" if "y" not in keys and "x" in keys else "y")
        y_arr = read_array(f, key, p)
        noise_key = options.noise_map if options.noise_map not in (None, "none") else None
        if options.noise_map is None and "variance" in keys and key == "y":
            noise_key = "variance"  # a variance dataset beside y (as simulate writes it)
        dq_key = options.dq if options.dq not in (None, "none") else None
        noise_arr = read_array(f, noise_key, p) if noise_key is not None else None
        dq_arr = read_array(f, dq_key, p) if dq_key is not None else None
        attrs = read_attrs(f, p)
        truth_arr = read_array(f, "truth", p) if "truth" in keys else None
        used = {key, noise_key, dq_key}
        arrays_np = {n: read_array(f, n, p) for n in ARRAY_NAMES if n in keys and n not in used}
        text = hdf5_provenance_text(f, p)
    where = f"HDF5 file {p} dataset {key!r}"
    if y_arr.ndim == 0 or y_arr.size == 0:
        raise ShapeError(f"{where}: expected a measurement array, found shape {y_arr.shape}")
    kind = None
    if noise_arr is not None:
        kind = options.noise_map_kind or guess_kind(noise_key)
        if kind is None:
            raise ConfigError(
                f"{p}: cannot tell the convention of the noise map {noise_key!r}; pass "
                "--noise-map-kind sigma|variance|ivar|weight"
            )
    y_np, var_np, mask_np, counts = combine_maps(
        y_arr,
        where,
        options,
        (noise_arr, kind, f"HDF5 file {p} dataset {noise_key!r}") if kind else None,
        (dq_arr, f"HDF5 file {p} dataset {dq_key!r}", 0) if dq_arr is not None else None,
    )
    plain = "operator" not in attrs
    y = plain_tensor(_hdf5_image(y_np, plain), where, check_finite=False)
    variance = mask = None
    if var_np is not None:
        variance = plain_tensor(_hdf5_image(var_np, plain), where, check_finite=False)
    if mask_np is not None:
        mask = torch.from_numpy(np.ascontiguousarray(_hdf5_image(mask_np, plain)))
    truth = None
    if truth_arr is not None:
        truth = image_tensor(truth_arr, f"HDF5 file {p} dataset 'truth'", allow_cube=True)
    arrays = {n: plain_tensor(a, f"HDF5 file {p} dataset {n!r}") for n, a in arrays_np.items()}
    record = (loads(text, f"HDF5 file {p}") if text is not None else None) or {}
    operator = attrs.get("operator") or (
        record.get("operator") if record.get("kind") == "measurement" else None
    )
    observation = None
    if operator is None or not options.is_default() or mask is not None:
        labels = {"science": key, "noise_map": noise_key if kind else None, "dq": dq_key}
        observation = _observation("HDF5 datasets", labels, kind, options, counts)
    return Measurement(
        y, operator, None, truth, arrays, record or None, path, variance, mask, observation
    )


def read_measurement(
    path: str | Path,
    hdu: HDUSpec = None,
    key: str | None = None,
    options: ReadOptions | None = None,
) -> Measurement:
    """Read a measurement file written by :func:`write_measurement`, or a user's observation.

    The file is opened once: the measurement, its noise map and bad-pixel plane, the truth, the
    ``psf``/``mask`` arrays and the provenance record are read in one pass. With no option, a
    FITS file's layout is recognised (:func:`~dwgf_sci.io.survey.recognise_layout`: SCI/ERR/DQ,
    SCI/WHT, IMAGE/MASK/VARIANCE, an IVAR extension, else the first image HDU); what was chosen
    is in ``observation``. NaN science pixels are masked (``options.nan="error"`` refuses them).

    :param hdu: FITS HDU holding the measurement (overrides ``options.hdu``).
    :param key: HDF5 dataset holding the measurement (overrides ``options.key``; default ``y``,
        ``x`` when ``y`` is missing).
    :param options: noise map, DQ plane and NaN policy (:class:`~dwgf_sci.io.survey.ReadOptions`).
    :raises FileFormatError: missing/corrupt file, missing HDU or dataset.
    :raises InvalidDataError: Inf in the measurement, NaN with ``nan="error"``, a bad noise map.
    :raises ShapeError: a noise map or DQ plane of another shape than the measurement.
    :raises ConfigError: options that do not fit the file.
    """
    options = options or ReadOptions()
    if hdu is not None:
        options = replace(options, hdu=hdu)
    if key is not None:
        options = replace(options, key=key)
    p = Path(path)
    if file_format(p) == "fits":
        return _read_fits_measurement(p, options)
    return _read_hdf5_measurement(p, options)
