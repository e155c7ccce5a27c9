"""Provenance records: what produced a file, with which versions and settings.

A provenance record is a plain JSON-compatible ``dict`` (str keys; str, int, float, bool, None,
lists and dicts as values). :func:`make_provenance` builds one with the package and library versions
and the UTC creation time, plus any fields the caller adds (operator spec, seed, command line...).
It records nothing about the host (no host name, user or absolute path), so files made on different
machines differ only in what matters.

Both writers store the record as exact JSON text and :func:`~dwgf_sci.io.read_provenance` (in
:mod:`~dwgf_sci.io.formats`, above the format modules) gives back an equal ``dict``:

- FITS: a binary-table HDU ``EXTNAME = 'PROVENANCE'`` with one row and one ASCII column ``JSON``,
  plus readable ``HIERARCH DWGF ...`` summary cards and a ``HISTORY`` line in the primary header;
- HDF5: the root attribute ``_dwgf_provenance`` (a JSON string).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import ConfigError, FileFormatError, InvalidDataError

__all__ = ["make_provenance", "normalize_provenance", "to_jsonable"]

#: Libraries whose versions every record carries (distribution names).
LIBRARIES = ("torch", "deepinv", "numpy", "astropy", "h5py", "galsim", "diffusers")


def to_jsonable(value: Any, where: str = "value") -> Any:
    """Return ``value`` converted to plain JSON types (dict with str keys, list, str, int, float,
    bool, None).

    Tuples become lists, numpy scalars and 0-d arrays become Python numbers, arrays and tensors
    become nested lists, paths become strings, ``torch.dtype``/``torch.device`` become their names.

    :param value: the value to convert.
    :param where: location used in error messages (``"provenance['operator']"``).
    :raises InvalidDataError: for keys that are not strings or values JSON cannot represent.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return int(value) if isinstance(value, int) else float(value)
    if isinstance(value, np.generic):
        if value.dtype.kind in "biuf":
            return value.item()
        raise InvalidDataError(f"{where}: cannot store a numpy {value.dtype} value as JSON")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidDataError(
                    f"{where}: keys must be str to round-trip through JSON, found {key!r}"
                )
            out[key] = to_jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise InvalidDataError(f"{where}: cannot store a {value.dtype} array as JSON")
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    raise InvalidDataError(f"{where}: cannot store a {type(value).__name__} as JSON")


def normalize_provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``record`` in the exact form a writer stores (plain JSON types).

    ``read_provenance(path) == normalize_provenance(record)`` holds for every file written with
    ``provenance=record``. Records from :func:`make_provenance` are already normalised.

    :param record: the provenance mapping (str keys; values as accepted by :func:`to_jsonable`).
    :return: a new dict of plain JSON types (tuples as lists, arrays and tensors as nested lists,
        paths and dtypes as strings); ``record`` is not modified.
    :raises InvalidDataError: if ``record`` is not a mapping or holds values JSON cannot represent.
    """
    if not isinstance(record, Mapping):
        raise InvalidDataError(f"provenance must be a dict, found {type(record).__name__}")
    out = to_jsonable(record, "provenance")
    return out


def dumps(record: Mapping[str, Any]) -> str:
    """Serialise a normalised record to compact, ASCII-only JSON (the stored form)."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=True)


def loads(text: str, source: str) -> dict[str, Any]:
    """Parse a stored record; raise :class:`FileFormatError` naming ``source`` if it is no dict."""
    try:
        record = json.loads(text)
    except ValueError as err:
        raise FileFormatError(f"{source}: provenance is not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise FileFormatError(f"{source}: provenance is not a JSON object")
    return record


def _utc_now() -> str:
    """UTC time now as ISO 8601 with ``Z``; ``SOURCE_DATE_EPOCH`` fixes it (reproducible files)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and epoch.strip().lstrip("-").isdigit():
        when = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
    else:
        when = _dt.datetime.now(tz=_dt.timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _dist_version(name: str) -> str | None:
    """Installed version of distribution ``name`` (without importing it), or None."""
    if name == "torch":
        return str(torch.__version__)  # includes the build (CPU/CUDA), unlike the metadata
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def make_provenance(**fields: Any) -> dict[str, Any]:
    """Build a provenance record for a file about to be written.

    The record holds ``software`` (``"dwgf-sci"``), ``version`` (``dwgf_sci.__version__``),
    ``created`` (UTC, ISO 8601; fixed by the ``SOURCE_DATE_EPOCH`` environment variable when set),
    ``python`` and ``libraries`` (versions of torch, deepinv, numpy, astropy, h5py, galsim,
    diffusers; None when not installed), followed by ``fields`` (converted with
    :func:`to_jsonable`), which may also replace any of the automatic entries (e.g. a fixed
    ``created=...`` in tests).

    Example: ``make_provenance(command="simulate", seed=0, operator={"name": "psf", "fwhm": 3.0})``.

    :param fields: extra entries (operator spec, noise model, seed, command, input files...).
    :return: a JSON-compatible dict, stored exactly by :func:`~dwgf_sci.io.write_fits` and
        :func:`~dwgf_sci.io.write_hdf5`.
    :raises InvalidDataError: if a field cannot be represented in JSON.
    """
    record: dict[str, Any] = {
        "software": "dwgf-sci",
        "version": __version__,
        "created": _utc_now(),
        "python": platform.python_version(),
        "libraries": {name: _dist_version(name) for name in LIBRARIES},
    }
    record.update(normalize_provenance(fields))
    return record


def resolve_provenance(provenance: Mapping[str, Any] | bool | None) -> dict[str, Any] | None:
    """Resolve the ``provenance`` argument of the writers (record, True, False or None)."""
    if provenance is True:
        return make_provenance()
    if provenance is None or provenance is False:
        return None
    if isinstance(provenance, Mapping):
        return normalize_provenance(provenance)
    raise ConfigError(
        f"provenance must be a dict, True, False or None, found {type(provenance).__name__}"
    )
