"""HDF5 files in and out: named datasets plus attributes, with provenance.

Files written here hold one dataset per entry of ``data`` (dtype and shape kept as given) and the
attributes as root (file) attributes:

- strings, booleans, numbers and numeric arrays are stored as native HDF5 attributes and read back
  as ``str``, Python ``bool``/``int``/``float`` and numpy arrays;
- dicts, lists, tuples and None (e.g. an operator spec) are stored as JSON strings and decoded on
  read (tuples come back as lists, arrays inside them as nested lists); the root attribute
  ``_dwgf_json`` lists which attributes are JSON;
- the provenance record is the root attribute ``_dwgf_provenance`` (JSON text).

Attribute names starting with ``_dwgf_`` are reserved and hidden from :func:`read_hdf5`. Files use
the HDF5 1.8 object format (readable by any HDF5 >= 1.8), whose dense attribute storage lifts the
64 kB limit on a single attribute. Writes are atomic (:func:`~dwgf_sci.io.atomic.atomic_output`).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..errors import ConfigError, FileFormatError, InvalidDataError
from ._common import (
    PathLike,
    array_for_write,
    check_read_dtype,
    check_read_size,
    image_tensor,
    input_path,
    plain_tensor,
)
from .atomic import atomic_output, check_output_path
from .provenance import dumps, loads, resolve_provenance, to_jsonable

__all__ = ["read_hdf5", "write_hdf5"]

RESERVED_PREFIX = "_dwgf_"
JSON_KEYS_ATTR = "_dwgf_json"
PROVENANCE_ATTR = "_dwgf_provenance"
#: Object-format bounds: HDF5 1.8 format (dense attributes) up to 1.10.
LIBVER = ("v108", "v110")
_COMPRESSIONS = (None, "gzip", "lzf")


# --------------------------------------------------------------------------------------------------
# attributes
# --------------------------------------------------------------------------------------------------


def encode_attrs(attrs: Mapping[str, Any] | None, where: str = "attrs") -> dict[str, Any]:
    """Return the HDF5 attributes that store ``attrs`` (checked before any file is touched).

    :raises ConfigError: for non-str or reserved names.
    :raises InvalidDataError: for values that can be neither an HDF5 attribute nor JSON.
    """
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ConfigError(f"{where} must be a dict, found {type(attrs).__name__}")
    out: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: attribute names must be non-empty strings, found {key!r}")
        if key.startswith(RESERVED_PREFIX):
            raise ConfigError(
                f"{where}: attribute names starting with {RESERVED_PREFIX!r} are reserved"
            )
        label = f"{where}[{key!r}]"
        if isinstance(value, str) and _plain_string(value):
            out[key] = value
        elif isinstance(value, bool | np.bool_):
            out[key] = np.bool_(value)
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            out[key] = np.int64(value)
        elif isinstance(value, float):
            out[key] = np.float64(value)
        elif isinstance(value, np.generic) and value.dtype.kind in "iuf":
            out[key] = value
        elif isinstance(value, np.ndarray | torch.Tensor):
            out[key] = array_for_write(value, label, check_finite=False)
        else:
            # strings with NUL or lone surrogates land here too: JSON escapes them
            out[key] = json.dumps(to_jsonable(value, label), ensure_ascii=True)
            json_keys.append(key)
    if json_keys:
        out[JSON_KEYS_ATTR] = json.dumps(json_keys)
    return out


def _plain_string(text: str) -> bool:
    """True if ``text`` can be an HDF5 (UTF-8, NUL-terminated) string attribute as it is."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_value(value: Any) -> Any:
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [_decode_value(v) for v in value.tolist()]
    return value


def decode_attrs(h5attrs: h5py.AttributeManager, source: str) -> dict[str, Any]:
    """Read back attributes written by :func:`encode_attrs` (also plain attributes of other files).

    :raises FileFormatError: if a JSON-encoded attribute does not parse.
    """
    try:
        json_keys = set(json.loads(_decode_value(h5attrs[JSON_KEYS_ATTR])))
    except KeyError:
        json_keys = set()
    except (ValueError, TypeError) as err:
        raise FileFormatError(f"{source}: attribute {JSON_KEYS_ATTR} is corrupt ({err})") from None
    out: dict[str, Any] = {}
    for key in h5attrs:
        if key.startswith(RESERVED_PREFIX):
            continue
        try:
            value = _decode_value(h5attrs[key])
        except (OSError, TypeError, ValueError) as err:  # a type h5py cannot read: skip it
            warnings.warn(f"{source}: attribute {key!r} skipped ({err})", stacklevel=3)
            continue
        if key in json_keys:
            try:
                value = json.loads(value)
            except (ValueError, TypeError) as err:
                raise FileFormatError(
                    f"{source}: attribute {key!r} is not valid JSON ({err})"
                ) from None
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def open_hdf5(path: PathLike) -> tuple[h5py.File, Path]:
    """Open an existing HDF5 file read-only, with this package's errors.

    :raises FileFormatError: missing file, not HDF5, truncated or corrupt.
    """
    p = input_path(path, "HDF5")
    try:
        is_hdf5 = bool(h5py.is_hdf5(p))
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise FileFormatError(f"{p} is not an HDF5 file (no HDF5 signature)")
    try:
        return h5py.File(p, "r"), p
    except OSError as err:
        raise FileFormatError(f"cannot read HDF5 file {p}: truncated or corrupt ({err})") from None


def describe_datasets(f: h5py.File, limit: int = 30) -> str:
    """One-line listing of the datasets of a file, for error messages."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and len(found) <= limit:
            found.append(f"{name} {obj.shape} {obj.dtype}")

    try:
        f.visititems(visit)
    except (OSError, RuntimeError, KeyError):  # damaged tree: list what could be read
        pass
    if len(found) > limit:
        found[limit:] = ["..."]
    return ", ".join(found) if found else "none"


def get_dataset(f: h5py.File, key: str, p: Path) -> h5py.Dataset:
    """The dataset ``key`` of an open file.

    :raises FileFormatError: missing key (the message lists the datasets there are), or a group.
    :raises InvalidDataError: non-numeric dataset (strings, compound types).
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"key must be a non-empty string, found {key!r}")
    try:
        obj = f.get(key)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise FileFormatError(f"cannot read {key!r} in HDF5 file {p}: corrupt ({err})") from None
    if obj is None:
        raise FileFormatError(
            f"HDF5 file {p} has no dataset {key!r}; datasets: {describe_datasets(f)}"
        )
    if not isinstance(obj, h5py.Dataset):
        raise FileFormatError(
            f"{key!r} in HDF5 file {p} is a group, not a dataset; datasets: {describe_datasets(f)}"
        )
    if obj.dtype.kind not in "biuf":
        raise InvalidDataError(
            f"dataset {key!r} in HDF5 file {p} holds non-numeric data (dtype {obj.dtype})"
        )
    return obj


def read_array(f: h5py.File, key: str, p: Path) -> np.ndarray:
    """The array of dataset ``key`` of an open file, loaded whole (size checked first).

    :param f: the file, opened by :func:`open_hdf5`.
    :param key: dataset name.
    :param p: the file's path, for messages.
    :raises FileFormatError: missing key, a group, a truncated dataset, not enough memory.
    :raises InvalidDataError: non-numeric data.
    """
    ds = get_dataset(f, key, p)
    check_read_size(tuple(ds.shape or ()), f"dataset {key!r} of HDF5 file {p}")
    try:
        return np.asarray(ds[()])
    except (OSError, RuntimeError, ValueError) as err:
        raise FileFormatError(
            f"cannot read dataset {key!r} of HDF5 file {p}: truncated or corrupt ({err})"
        ) from None
    except MemoryError:
        raise FileFormatError(
            f"dataset {key!r} of HDF5 file {p}: not enough memory to load its "
            f"{tuple(ds.shape)} array"
        ) from None


def read_attrs(f: h5py.File, p: Path) -> dict[str, Any]:
    """The decoded root attributes of an open file (reserved ``_dwgf_`` ones hidden).

    :raises FileFormatError: damaged object headers.
    """
    try:
        return decode_attrs(f.attrs, f"HDF5 file {p}")
    except (OSError, RuntimeError, KeyError) as err:  # damaged object headers
        raise FileFormatError(
            f"cannot read the attributes of HDF5 file {p}: corrupt ({err})"
        ) from None


def hdf5_provenance_text(f: h5py.File, p: Path) -> str | None:
    """The stored provenance JSON of an open file (root attribute ``_dwgf_provenance``), or None.

    :raises FileFormatError: the attribute cannot be read.
    """
    try:
        if PROVENANCE_ATTR not in f.attrs:
            return None
        return _decode_value(f.attrs[PROVENANCE_ATTR])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise FileFormatError(
            f"cannot read the provenance of HDF5 file {p}: corrupt ({err})"
        ) from None


def read_hdf5(
    path: PathLike,
    key: str = "x",
    *,
    allow_cube: bool = True,
    check_finite: bool = True,
    dtype: torch.dtype = torch.float32,
    as_image: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read one dataset of an HDF5 file as a tensor, plus the file's attributes.

    With ``as_image`` (default) the layout rule of :func:`~dwgf_sci.io.read_fits` applies: ``(H,
    W)`` gives ``(1, 1, H, W)``, ``(C, H, W)`` gives ``(1, C, H, W)``, ``(B, C, H, W)`` is kept.
    With ``as_image=False`` the stored shape is kept (for measurements that are not images, e.g.
    compressed-sensing vectors ``(1, m)``). The file is opened read-only.

    :param path: HDF5 file.
    :param key: dataset name (``"group/name"`` for nested ones).
    :param allow_cube: with ``as_image``, accept more than two non-degenerate dimensions.
    :param check_finite: raise on NaN/Inf (pass False to read them and mask them).
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    :param as_image: apply the image layout rule.
    :return: ``(x, attrs)``: the tensor and the root attributes, decoded (see the module docstring).
    :raises FileFormatError: missing, corrupt or truncated file; missing key (the message lists the
        datasets); a group instead of a dataset.
    :raises InvalidDataError: non-numeric data, or NaN/Inf when ``check_finite``.
    :raises ShapeError: with ``as_image``, fewer than two dimensions or a cube when not allowed.
    """
    check_read_dtype(dtype)
    f, p = open_hdf5(path)
    with f:
        arr = read_array(f, key, p)
        attrs = read_attrs(f, p)
    name = f"HDF5 file {p} dataset {key!r}"
    if as_image:
        x = image_tensor(arr, name, allow_cube=allow_cube, check_finite=check_finite, dtype=dtype)
    else:
        x = plain_tensor(arr, name, check_finite=check_finite, dtype=dtype)
    return x, attrs


def read_hdf5_provenance(p: Path) -> dict[str, Any] | None:
    """The provenance record of an HDF5 file (root attribute ``_dwgf_provenance``), or None."""
    f, p = open_hdf5(p)
    with f:
        text = hdf5_provenance_text(f, p)
    return None if text is None else loads(text, f"HDF5 file {p}")


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def check_compression(compression: str | None) -> str | None:
    """Check the ``compression`` option (None, ``"gzip"`` or ``"lzf"``)."""
    if compression not in _COMPRESSIONS:
        raise ConfigError(f"compression must be None, 'gzip' or 'lzf', found {compression!r}")
    return compression


def write_hdf5(
    path: PathLike,
    data: Mapping[str, torch.Tensor | np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    *,
    provenance: Mapping[str, Any] | bool | None = None,
    check_finite: bool = True,
    compression: str | None = None,
) -> Path:
    """Write named arrays and attributes to an HDF5 file, atomically.

    Each array is stored with its shape and dtype (float32 tensors stay float32, bit for bit). All
    checks run before anything is written; the file is written next to ``path`` and moved into
    place, so a failure leaves no partial output and an existing file is untouched unless replaced
    whole.

    :param path: output file.
    :param data: dataset name -> tensor/array, e.g. ``{"x": x, "y": y}``; ``"a/b"`` makes a group.
    :param attrs: file attributes; nested dicts/lists (e.g. an operator spec) are stored as JSON and
        decoded back by :func:`read_hdf5`.
    :param overwrite: replace an existing file.
    :param provenance: a record (usually from :func:`~dwgf_sci.io.make_provenance`), True for a
        default record, or None/False; read it with :func:`~dwgf_sci.io.read_provenance`.
    :param check_finite: refuse NaN/Inf values in the arrays (pass False to write them).
    :param compression: None, ``"gzip"`` or ``"lzf"`` for the datasets.
    :return: the output path.
    :raises OutputExistsError: the file exists and ``overwrite`` is False (the file is untouched).
    :raises InvalidDataError: non-numeric data, NaN/Inf values, or attributes that cannot be stored.
    :raises ConfigError: empty ``data``, bad names, bad options.
    :raises FileFormatError: the output folder does not exist.
    """
    target = check_output_path(path, overwrite)
    if not isinstance(data, Mapping) or not data:
        raise ConfigError("data must be a non-empty dict of name -> tensor/array")
    arrays: dict[str, np.ndarray] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not name.strip("/"):
            raise ConfigError(f"data: dataset names must be non-empty strings, found {name!r}")
        arrays[name] = array_for_write(value, f"data[{name!r}]", check_finite)
    encoded = encode_attrs(attrs)
    record = resolve_provenance(provenance)
    if record is not None:
        encoded[PROVENANCE_ATTR] = dumps(record)
    check_compression(compression)

    # built in memory, then written as plain bytes: a full disk is then an ordinary OSError,
    # not an HDF5 file left half-closed (whose later flush crashes the interpreter)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", libver=LIBVER) as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr, compression=compression if arr.ndim else None)
        for key, value in encoded.items():
            f.attrs[key] = value
    content = buffer.getbuffer()
    with atomic_output(target, overwrite, needed=content.nbytes) as tmp, open(tmp, "wb") as fh:
        fh.write(content)
    return target
