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

import h5py
import torch
from astropy.io import fits

from ..errors import FileFormatError, ShapeError
from .fits import check_fits_structure, read_fits, write_fits
from .hdf5 import read_hdf5, write_hdf5
from .provenance import read_provenance

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
ARRAY_NAMES = ("psf", "mask")


def file_format(path: str | Path) -> str:
    """``"fits"`` or ``"hdf5"`` from the file name.

    :raises FileFormatError: for any other suffix.
    """
    name = str(path).lower()
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    raise FileFormatError(
        f"{path}: unknown file type; expected FITS {FITS_SUFFIXES} or HDF5 {HDF5_SUFFIXES}"
    )


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


def _fits_extensions(path: Path) -> set[str]:
    check_fits_structure(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            return {str(h.name).upper() for h in hdul[1:]}
    except Exception as exc:
        raise FileFormatError(f"{path}: cannot read the FITS file: {exc}") from exc


def _hdf5_keys(path: Path) -> set[str]:
    try:
        with h5py.File(path, "r") as f:
            return set(f.keys())
    except Exception as exc:
        raise FileFormatError(f"{path}: cannot read the HDF5 file: {exc}") from exc


def read_measurement(path: str | Path, hdu: int | str = 0, key: str = "y") -> Measurement:
    """Read a measurement file written by :func:`write_measurement`, or a plain user file.

    :param hdu: FITS HDU holding the measurement (plain files).
    :param key: HDF5 dataset holding the measurement (plain files; falls back to ``x`` when
        ``y`` is missing).
    :raises FileFormatError: missing/corrupt file, missing HDU or dataset.
    :raises InvalidDataError: NaN/Inf in the measurement.
    """
    p = Path(path)
    kind = file_format(p)
    if kind == "fits":
        y, header = read_fits(p, hdu=hdu)
        names = _fits_extensions(p)
        record = read_provenance(p) or {}
        truth = read_fits(p, hdu="TRUTH")[0] if "TRUTH" in names else None
        arrays = {n: read_fits(p, hdu=n.upper())[0] for n in ARRAY_NAMES if n.upper() in names}
        operator = record.get("operator") if record.get("kind") == "measurement" else None
        return Measurement(y, operator, header, truth, arrays, record or None, p)
    keys = _hdf5_keys(p)
    if key == "y" and "y" not in keys and "x" in keys:
        key = "x"
    y, attrs = read_hdf5(p, key=key, as_image=False)
    if y.ndim == 0 or y.numel() == 0:
        raise ShapeError(
            f"HDF5 file {p} dataset {key!r}: expected a measurement array, found shape "
            f"{tuple(y.shape)}"
        )
    if y.ndim == 2 and "operator" not in attrs:  # a plain (H, W) image
        y = y[None, None]
    elif y.ndim == 1 or y.shape[0] != 1:
        y = y[None]
    truth = read_hdf5(p, key="truth")[0] if "truth" in keys else None
    arrays = {n: read_hdf5(p, key=n, as_image=False)[0] for n in ARRAY_NAMES if n in keys}
    record = read_provenance(p) or {}
    operator = attrs.get("operator") or (
        record.get("operator") if record.get("kind") == "measurement" else None
    )
    return Measurement(y, operator, None, truth, arrays, record or None, p)
