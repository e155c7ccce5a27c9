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
and the caller supplies a spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.io import fits

from ..errors import FileFormatError, ShapeError
from ._common import image_tensor, input_path, plain_tensor
from .fits import fits_provenance_text, image_hdu_data, write_fits
from .fits_open import with_fits
from .formats import FITS_SUFFIXES, HDF5_SUFFIXES, file_format
from .hdf5 import hdf5_provenance_text, open_hdf5, read_array, read_attrs, write_hdf5
from .provenance import loads

__all__ = [
    "ARRAY_NAMES",
    "FITS_SUFFIXES",
    "HDF5_SUFFIXES",
    "Measurement",
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
    """

    y: torch.Tensor
    operator: dict[str, Any] | None = None
    header: fits.Header | None = None
    truth: torch.Tensor | None = None
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    path: Path | None = None


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
    return write_hdf5(
        path,
        data,
        attrs={"operator": measurement.operator},
        provenance=record,
        overwrite=overwrite,
    )


def _read_fits_measurement(path: Path, hdu: int | str) -> Measurement:
    """A FITS measurement, read in one pass over the open file."""
    p = input_path(path, "FITS")

    def action(hdul: fits.HDUList) -> tuple[Any, ...]:
        y = image_hdu_data(hdul, hdu, p)
        try:
            names = {str(h.name).upper() for h in hdul[1:]}
        except Exception as exc:
            raise FileFormatError(f"{p}: cannot read the FITS file: {exc}") from exc
        text = fits_provenance_text(hdul, p)
        truth = image_hdu_data(hdul, "TRUTH", p) if "TRUTH" in names else None
        arrays = {n: image_hdu_data(hdul, n.upper(), p) for n in ARRAY_NAMES if n.upper() in names}
        return y, text, truth, arrays

    (data, header, label), text, truth, arrays = with_fits(p, action)

    def tensor(found: tuple[np.ndarray, fits.Header, str]) -> torch.Tensor:
        return image_tensor(found[0], f"FITS file {p} HDU {found[2]}", allow_cube=True)

    y = image_tensor(data, f"FITS file {p} HDU {label}", allow_cube=True)
    record = (loads(text, f"FITS file {p}") if text is not None else None) or {}
    truth_x = tensor(truth) if truth is not None else None
    array_x = {n: tensor(found) for n, found in arrays.items()}
    operator = record.get("operator") if record.get("kind") == "measurement" else None
    return Measurement(y, operator, header, truth_x, array_x, record or None, path)


def _read_hdf5_measurement(path: Path, key: str) -> Measurement:
    """An HDF5 measurement, read in one pass over the open file."""
    f, p = open_hdf5(path)
    with f:
        try:
            keys = set(f.keys())
        except Exception as exc:
            raise FileFormatError(f"{p}: cannot read the HDF5 file: {exc}") from exc
        if key == "y" and "y" not in keys and "x" in keys:
            key = "x"
        y_arr = read_array(f, key, p)
        attrs = read_attrs(f, p)
        truth_arr = read_array(f, "truth", p) if "truth" in keys else None
        arrays_np = {n: read_array(f, n, p) for n in ARRAY_NAMES if n in keys}
        text = hdf5_provenance_text(f, p)
    y = plain_tensor(y_arr, f"HDF5 file {p} dataset {key!r}")
    if y.ndim == 0 or y.numel() == 0:
        raise ShapeError(
            f"HDF5 file {p} dataset {key!r}: expected a measurement array, found shape "
            f"{tuple(y.shape)}"
        )
    if y.ndim == 2 and "operator" not in attrs:  # a plain (H, W) image
        y = y[None, None]
    elif y.ndim == 1 or y.shape[0] != 1:
        y = y[None]
    truth = None
    if truth_arr is not None:
        truth = image_tensor(truth_arr, f"HDF5 file {p} dataset 'truth'", allow_cube=True)
    arrays = {n: plain_tensor(a, f"HDF5 file {p} dataset {n!r}") for n, a in arrays_np.items()}
    record = (loads(text, f"HDF5 file {p}") if text is not None else None) or {}
    operator = attrs.get("operator") or (
        record.get("operator") if record.get("kind") == "measurement" else None
    )
    return Measurement(y, operator, None, truth, arrays, record or None, path)


def read_measurement(path: str | Path, hdu: int | str = 0, key: str = "y") -> Measurement:
    """Read a measurement file written by :func:`write_measurement`, or a plain user file.

    The file is opened once: the measurement, the truth, the ``psf``/``mask`` arrays and the
    provenance record are read in one pass.

    :param hdu: FITS HDU holding the measurement (plain files).
    :param key: HDF5 dataset holding the measurement (plain files; falls back to ``x`` when
        ``y`` is missing).
    :raises FileFormatError: missing/corrupt file, missing HDU or dataset.
    :raises InvalidDataError: NaN/Inf in the measurement.
    """
    p = Path(path)
    kind = file_format(p)
    if kind == "fits":
        return _read_fits_measurement(p, hdu)
    return _read_hdf5_measurement(p, key)
