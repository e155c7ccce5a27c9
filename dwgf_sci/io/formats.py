"""Which format a file is in, and the readers that dispatch on it.

This module sits above the format modules (:mod:`~dwgf_sci.io.fits`, :mod:`~dwgf_sci.io.hdf5`):
they never import it, so a format module never reaches back into another one.

- :func:`file_format` names the format from the file name (what a writer will produce);
- :func:`sniff_format` names it from the file's first bytes (what a reader finds);
- :func:`read_provenance` reads the provenance record of either format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py

from ..errors import FileFormatError
from ._common import PathLike, input_path
from .fits import read_fits_provenance
from .hdf5 import read_hdf5_provenance

__all__ = ["FITS_SUFFIXES", "HDF5_SUFFIXES", "file_format", "read_provenance", "sniff_format"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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


def _is_hdf5(p: PathLike) -> bool:
    """True when ``p`` is HDF5 (also with a user block, where the signature is not at offset 0)."""
    try:
        return bool(h5py.is_hdf5(p))
    except OSError:
        return False


def sniff_format(path: PathLike) -> tuple[str | None, Path]:
    """The format of an existing file from its first bytes, not its name.

    :param path: the file.
    :return: ``(kind, path)``: ``"fits"`` (also gzip-compressed), ``"hdf5"`` or None for neither,
        and the checked path.
    :raises FileFormatError: if the file is missing.
    """
    p = input_path(path, "input")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head == _HDF5_SIGNATURE or _is_hdf5(p):
        return "hdf5", p
    if head.startswith(b"SIMPLE") or head.startswith(b"\x1f\x8b"):
        return "fits", p
    return None, p


def read_provenance(path: PathLike) -> dict[str, Any] | None:
    """Read the provenance record of a FITS or HDF5 file written by this package.

    The format is recognised from the file's first bytes, not its name.

    :param path: FITS (also gzip-compressed) or HDF5 file.
    :return: the record, equal to what was written, or None if the file has none.
    :raises FileFormatError: if the file is missing, neither FITS nor HDF5, corrupt, or its record
        is not valid JSON.
    """
    kind, p = sniff_format(path)
    if kind == "hdf5":
        return read_hdf5_provenance(p)
    if kind == "fits":
        return read_fits_provenance(p)
    raise FileFormatError(f"{p} is neither a FITS nor an HDF5 file")
