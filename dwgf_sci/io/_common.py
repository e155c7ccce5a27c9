"""Helpers shared by the FITS and HDF5 readers and writers (private).

They turn paths into checked :class:`pathlib.Path` objects, user arrays into arrays that are safe to
hand to a writer (a native-endian copy the writer may do anything with), and stored arrays into the
``(1, C, H, W)`` float tensors the rest of the toolkit expects.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._checks import check_finite as _check_finite_tensor
from ..errors import ConfigError, FileFormatError, InvalidDataError, ShapeError

PathLike = str | os.PathLike

#: Float dtypes the readers can return.
READ_DTYPES = (torch.float32, torch.float64)

#: Most values a reader loads from one HDU or dataset (2**30, 4 GiB as float32). Headers can declare
#: any size: a tile-compressed or gzipped FITS file, or a chunked HDF5 dataset, of a few bytes may
#: declare terabytes. The environment variable ``DWGF_MAX_READ_VALUES`` changes the limit.
MAX_READ_VALUES = 2**30


def max_read_values() -> int:
    """The limit on the values read from one array: ``DWGF_MAX_READ_VALUES`` or the default."""
    raw = os.environ.get("DWGF_MAX_READ_VALUES", "").strip()
    if not raw:
        return MAX_READ_VALUES
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"DWGF_MAX_READ_VALUES must be an integer, found {raw!r}") from None
    if value < 1:
        raise ConfigError(f"DWGF_MAX_READ_VALUES must be >= 1, found {value}")
    return value


def check_read_size(shape: tuple[int, ...], name: str) -> None:
    """Refuse to load an array whose declared shape holds more than :func:`max_read_values` values.

    :param shape: the shape the file declares (before any data is read).
    :param name: file and HDU or dataset, for the message.
    :raises FileFormatError: if the declared size is over the limit.
    """
    count = 1
    for n in shape:
        count *= max(int(n), 0)
    limit = max_read_values()
    if count > limit:
        raise FileFormatError(
            f"{name} declares an array of shape {tuple(int(n) for n in shape)} ({count} values), "
            f"more than the {limit} a reader loads; if the file is genuine, raise the limit with "
            "the environment variable DWGF_MAX_READ_VALUES"
        )


def input_path(path: PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` after checking that it is an existing file.

    :param path: the file to read.
    :param what: file kind used in messages (``"FITS"``, ``"HDF5"``).
    :raises FileFormatError: if the path does not exist or is a folder.
    """
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{what} path must be a str or os.PathLike, found {type(path).__name__}")
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileFormatError(f"{what} file not found: {p}")
    if p.is_dir():
        raise FileFormatError(f"{what} path is a folder, not a file: {p}")
    return p


def check_read_dtype(dtype: torch.dtype) -> torch.dtype:
    """Check the ``dtype`` option of the readers (float32 or float64)."""
    if dtype not in READ_DTYPES:
        raise ConfigError(f"dtype must be torch.float32 or torch.float64, found {dtype!r}")
    return dtype


def array_for_write(
    data: torch.Tensor | np.ndarray,
    name: str,
    check_finite: bool = True,
    bool_as_uint8: bool = False,
) -> np.ndarray:
    """Return a C-contiguous, native-endian numpy copy of ``data`` that a writer may own.

    The dtype is kept (float32 stays float32, int16 stays int16) except half-precision floats, which
    become float32, and booleans, which become uint8 when ``bool_as_uint8`` (FITS has no boolean
    image). The caller's object is never modified.

    :param data: tensor or numpy array (any byte order, any device).
    :param name: name used in error messages.
    :param check_finite: raise if a float array holds NaN or Inf.
    :param bool_as_uint8: store booleans as 0/1 bytes.
    :raises InvalidDataError: for non-numeric (complex, string, object) data or non-finite values.
    """
    if isinstance(data, torch.Tensor):
        t = data.detach()
        if t.is_complex():
            raise InvalidDataError(f"{name}: expected real data, found dtype {t.dtype}")
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        arr = t.cpu().numpy()
    elif isinstance(data, np.ndarray):
        arr = data
    else:
        raise InvalidDataError(
            f"{name}: expected a torch.Tensor or numpy array, found {type(data).__name__}"
        )
    if arr.dtype.kind not in "biuf":
        raise InvalidDataError(f"{name}: expected real numeric data, found dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        target = np.dtype(np.float32)
    elif arr.dtype.kind == "b" and bool_as_uint8:
        target = np.dtype(np.uint8)
    else:
        target = arr.dtype.newbyteorder("=")
    out = np.array(arr, dtype=target, copy=True, order="C")
    if check_finite and out.dtype.kind == "f":
        bad = ~np.isfinite(out)
        if bad.any():
            n_nan = int(np.isnan(out).sum())
            n_inf = int(bad.sum()) - n_nan
            raise InvalidDataError(
                f"{name} contains {n_nan} NaN and {n_inf} Inf values (of {out.size}); replace them "
                "or pass check_finite=False to write them as they are"
            )
    return out


def image_tensor(
    arr: np.ndarray,
    name: str,
    allow_cube: bool = True,
    check_finite: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn a stored array into a ``(B, C, H, W)`` tensor of ``dtype`` (native byte order, a copy).

    Layout rules: ``(H, W)`` -> ``(1, 1, H, W)``; ``(C, H, W)`` -> ``(1, C, H, W)``;
    ``(B, C, H, W)`` is kept. Leading axes of length 1 beyond four dimensions (e.g. degenerate
    Stokes/frequency axes of radio images) are dropped. With ``allow_cube=False`` only a single
    image is accepted: leading axes of length 1 are dropped and anything left beyond two dimensions
    is an error.

    :param arr: numeric array of any byte order.
    :param name: name used in error messages (file and HDU or dataset).
    :param allow_cube: accept cubes ``(C, H, W)`` and stacks ``(B, C, H, W)``.
    :param check_finite: raise :class:`InvalidDataError` on NaN/Inf, with their counts.
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    :raises InvalidDataError: for non-numeric data, or NaN/Inf when ``check_finite``.
    :raises ShapeError: for fewer than two dimensions, or a cube when ``allow_cube`` is False.
    """
    if arr.dtype.kind not in "biuf":
        raise InvalidDataError(f"{name}: expected numeric image data, found dtype {arr.dtype}")
    shape = tuple(arr.shape)
    if arr.ndim < 2:
        raise ShapeError(f"{name}: expected a 2-D image (or a cube), found shape {shape}")
    max_ndim = 4 if allow_cube else 2
    while arr.ndim > max_ndim and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim > max_ndim:
        if allow_cube:
            raise ShapeError(
                f"{name}: expected at most 4 dimensions (B, C, H, W), found shape {shape}"
            )
        raise ShapeError(
            f"{name}: expected a 2-D image, found a cube of shape {shape}; "
            "pass allow_cube=True to read it as channels"
        )
    while arr.ndim < 4:
        arr = arr[np.newaxis]
    return plain_tensor(arr, name, check_finite=check_finite, dtype=dtype)


def plain_tensor(
    arr: np.ndarray,
    name: str,
    check_finite: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn a stored numeric array into a tensor of ``dtype`` with the same shape (a native copy).

    :raises InvalidDataError: for non-numeric data, or NaN/Inf when ``check_finite``.
    """
    if arr.dtype.kind not in "biuf":
        raise InvalidDataError(f"{name}: expected numeric data, found dtype {arr.dtype}")
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    tensor = torch.from_numpy(np.array(arr, dtype=np_dtype, copy=True, order="C"))
    if check_finite:
        try:
            _check_finite_tensor(tensor, name)
        except InvalidDataError as err:
            raise InvalidDataError(f"{err}; pass check_finite=False to read them anyway") from None
    return tensor
