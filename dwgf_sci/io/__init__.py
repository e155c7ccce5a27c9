"""Reading and writing scientific images with their metadata and provenance.

Data come back as float tensors ``(1, C, H, W)`` in physical units plus their metadata (an astropy
FITS header, or HDF5 attributes). Writers keep the metadata they are given, add a provenance record,
and are atomic: they refuse to replace an existing file unless ``overwrite=True``, and a failure
leaves no partial file.
"""

from __future__ import annotations

from .atomic import atomic_output, check_output_path
from .fits import read_fits, write_fits
from .formats import read_provenance
from .hdf5 import read_hdf5, write_hdf5
from .provenance import make_provenance, normalize_provenance

__all__ = [
    "atomic_output",
    "check_output_path",
    "make_provenance",
    "normalize_provenance",
    "read_fits",
    "read_hdf5",
    "read_provenance",
    "write_fits",
    "write_hdf5",
]
