"""Image files as torch Datasets: a folder of FITS files, or a stack in one HDF5 dataset.

Both return ``(C, H, W)`` float tensors, read lazily (one file or one slice per item), and work with
``torch.utils.data.DataLoader`` worker processes. :func:`write_hdf5_dataset` builds an HDF5 stack
from tensors or from any Dataset (e.g. :class:`~dwgf_sci.datasets.GalaxyDataset`), atomically.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from astropy.io import fits
from torch.utils.data import Dataset

from ..errors import ConfigError, FileFormatError, ShapeError
from ..io._common import PathLike, array_for_write, check_read_dtype, plain_tensor
from ..io.atomic import atomic_output, check_output_path
from ..io.fits import HDUSpec, read_fits
from ..io.hdf5 import (
    LIBVER,
    PROVENANCE_ATTR,
    check_compression,
    decode_attrs,
    encode_attrs,
    get_dataset,
    open_hdf5,
)
from ..io.provenance import dumps, resolve_provenance
from ._common import check_index

__all__ = ["FitsFolderDataset", "HDF5Dataset", "write_hdf5_dataset"]

#: File names a folder source picks up (case-insensitive).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


def _fits_files(source: PathLike | Sequence[PathLike], pattern: str | None) -> list[Path]:
    """The files a :class:`FitsFolderDataset` source names (sorted within a folder or glob)."""
    if isinstance(source, str | os.PathLike):
        text = os.path.expanduser(os.fspath(source))
        folder = Path(text)
        if folder.is_dir():
            if pattern is not None:
                found = folder.glob(pattern)
            else:
                found = (p for p in folder.iterdir() if p.name.lower().endswith(FITS_SUFFIXES))
            files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
            if not files:
                what = (
                    f"matching {pattern!r}" if pattern else f"ending in {', '.join(FITS_SUFFIXES)}"
                )
                raise FileFormatError(f"no FITS files {what} in folder {folder}")
            return files
        if glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not files:
                raise FileFormatError(f"no files match {text!r}")
            return files
        if folder.is_file():
            return [folder]
        raise FileFormatError(f"FITS folder or file not found: {folder}")
    if isinstance(source, Sequence) and not isinstance(source, bytes):
        files = [Path(os.path.expanduser(os.fspath(p))) for p in source]
        if not files:
            raise FileFormatError("the list of FITS files is empty")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileFormatError(f"FITS files not found: {', '.join(missing[:10])}")
        return files
    raise ConfigError(
        f"source must be a folder, a glob, a file or a list of files, found {type(source).__name__}"
    )


class FitsFolderDataset(Dataset):
    """FITS files as a Dataset of ``(C, H, W)`` float tensors (one file per item, read on access).

    :param source: a folder (its files ending in ``.fits``, ``.fit``, ``.fts``, optionally ``.gz``,
        sorted by name; hidden files skipped), a glob pattern (``"obs/*_sci.fits"``), one file, or a
        list of files (kept in the given order).
    :param hdu: the HDU to read in every file (index, ``EXTNAME``, or None for the first image).
    :param pattern: glob pattern used inside a folder instead of the default suffixes.
    :param allow_cube: accept cubes ``(C, H, W)`` (if False, 2-D images only).
    :param check_finite: raise on NaN/Inf pixels.
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    :raises FileFormatError: if no file is found. Errors of a file itself (corrupt, missing HDU) are
        raised when that item is read, by :func:`~dwgf_sci.io.read_fits`.
    """

    def __init__(
        self,
        source: PathLike | Sequence[PathLike],
        hdu: HDUSpec = 0,
        *,
        pattern: str | None = None,
        allow_cube: bool = True,
        check_finite: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.paths: list[Path] = _fits_files(source, pattern)
        self.hdu = hdu
        self.allow_cube = allow_cube
        self.check_finite = check_finite
        self.dtype = check_read_dtype(dtype)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.paths)} files, hdu={self.hdu!r})"

    def read(self, index: int) -> tuple[torch.Tensor, fits.Header]:
        """Item ``index`` with its header: ``((C, H, W) tensor, astropy Header)``."""
        path = self.paths[check_index(index, len(self.paths), type(self).__name__)]
        x, header = read_fits(
            path,
            self.hdu,
            allow_cube=self.allow_cube,
            check_finite=self.check_finite,
            dtype=self.dtype,
        )
        if x.shape[0] != 1:
            raise ShapeError(
                f"FITS file {path}: expected one image or cube, found a stack of shape "
                f"{tuple(x.shape)}"
            )
        return x[0], header

    def header(self, index: int) -> fits.Header:
        """The header of item ``index`` (reads the file)."""
        return self.read(index)[1]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Item ``index`` as a ``(C, H, W)`` tensor."""
        return self.read(index)[0]


class HDF5Dataset(Dataset):
    """The slices of an HDF5 dataset ``(N, H, W)`` or ``(N, C, H, W)`` as ``(C, H, W)`` tensors.

    The file is checked when the Dataset is made (it must exist and hold ``key`` with a suitable
    shape) and then opened lazily, once per process: each DataLoader worker opens its own handle,
    and the Dataset pickles without one. Use it as a context manager, or call :meth:`close`, to
    release the handle of the current process.

    :param path: HDF5 file (e.g. from :func:`write_hdf5_dataset`).
    :param key: name of the dataset.
    :param check_finite: raise on NaN/Inf values in an item when it is read.
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    :raises FileFormatError: missing or corrupt file, missing key.
    :raises ShapeError: a dataset that is not 3-D or 4-D.
    """

    def __init__(
        self,
        path: PathLike,
        key: str = "x",
        *,
        check_finite: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dtype = check_read_dtype(dtype)
        self.key = key
        self.check_finite = check_finite
        f, self.path = open_hdf5(path)
        with f:
            ds = get_dataset(f, key, self.path)
            if ds.ndim not in (3, 4):
                raise ShapeError(
                    f"dataset {key!r} of HDF5 file {self.path} must be (N, H, W) or (N, C, H, W), "
                    f"found shape {ds.shape}"
                )
            self.shape: tuple[int, ...] = tuple(ds.shape)
            self.attrs: dict[str, Any] = decode_attrs(f.attrs, f"HDF5 file {self.path}")
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, key={self.key!r}, shape={self.shape})"

    def _dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file = None  # a handle inherited through fork is not used (nor closed) here
            f, _ = open_hdf5(self.path)
            self._file, self._pid = f, os.getpid()
        return self._file[self.key]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Slice ``index`` as a ``(C, H, W)`` tensor (``(1, H, W)`` for a 3-D dataset)."""
        i = check_index(index, len(self), type(self).__name__)
        try:
            arr = np.asarray(self._dataset()[i])
        except (OSError, RuntimeError) as err:
            raise FileFormatError(
                f"cannot read item {i} of {self.key!r} in HDF5 file {self.path}: {err}"
            ) from None
        x = plain_tensor(
            arr,
            f"HDF5 file {self.path} dataset {self.key!r} item {i}",
            check_finite=self.check_finite,
            dtype=self.dtype,
        )
        return x[None] if x.ndim == 2 else x

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __enter__(self) -> HDF5Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may be gone already
            pass


def _item_array(item: Any, index: int, check_finite: bool) -> np.ndarray:
    """The image of one item: a tensor, the first element of a tuple, or ``item["x"]``."""
    if isinstance(item, tuple | list) and item:
        item = item[0]
    elif isinstance(item, Mapping):
        if "x" not in item:
            raise ConfigError(f"item {index} is a dict without an 'x' entry")
        item = item["x"]
    arr = array_for_write(item, f"item {index}", check_finite)
    if arr.ndim not in (2, 3):
        raise ShapeError(f"item {index}: expected (H, W) or (C, H, W), found shape {arr.shape}")
    return arr


def write_hdf5_dataset(
    path: PathLike,
    source: Dataset | torch.Tensor | np.ndarray | Iterable[Any],
    key: str = "x",
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    *,
    provenance: Mapping[str, Any] | bool | None = None,
    check_finite: bool = True,
    compression: str | None = None,
) -> Path:
    """Write images as one HDF5 dataset ``(N, H, W)`` or ``(N, C, H, W)``, readable by
    :class:`HDF5Dataset` and :func:`~dwgf_sci.io.read_hdf5`.

    Items are written one by one (a large Dataset never sits in memory whole), each chunk being one
    item. Items of a Dataset may be tensors, tuples (the first element is stored, e.g. ``(x, y)``)
    or dicts (``item["x"]``). The file is written atomically: if an item fails (wrong shape, NaN),
    nothing is left behind.

    :param path: output file.
    :param source: a Dataset, a stacked tensor/array ``(N, ...)``, or an iterable of tensors.
    :param key: dataset name.
    :param attrs: file attributes (as in :func:`~dwgf_sci.io.write_hdf5`).
    :param overwrite: replace an existing file.
    :param provenance: a record, True for a default one, or None (see
        :func:`~dwgf_sci.io.write_hdf5`).
    :param check_finite: refuse NaN/Inf values.
    :param compression: None, ``"gzip"`` or ``"lzf"``.
    :return: the output path.
    :raises OutputExistsError: the file exists and ``overwrite`` is False.
    :raises ShapeError: no items, items of different shapes, or items that are not images.
    :raises InvalidDataError: non-numeric data or NaN/Inf values.
    """
    target = check_output_path(path, overwrite)
    if not isinstance(key, str) or not key.strip("/"):
        raise ConfigError(f"key must be a non-empty string, found {key!r}")
    encoded = encode_attrs(attrs)
    record = resolve_provenance(provenance)
    if record is not None:
        encoded[PROVENANCE_ATTR] = dumps(record)
    check_compression(compression)
    if isinstance(source, torch.Tensor | np.ndarray):
        if source.ndim not in (3, 4):
            raise ShapeError(
                "a stacked source must be (N, H, W) or (N, C, H, W), "
                f"found shape {tuple(source.shape)}"
            )
        items: Iterable[Any] = (source[i] for i in range(source.shape[0]))
        count = int(source.shape[0])
    elif isinstance(source, Dataset) and hasattr(source, "__len__"):
        count = len(source)  # type: ignore[arg-type]
        items = (source[i] for i in range(count))
    else:
        items = list(source)
        count = len(items)
    if count == 0:
        raise ShapeError("no items to write")

    with atomic_output(target, overwrite) as tmp, h5py.File(tmp, "w", libver=LIBVER) as f:
        ds = None
        for i, item in enumerate(items):
            arr = _item_array(item, i, check_finite)
            if ds is None:
                ds = f.create_dataset(
                    key,
                    shape=(count, *arr.shape),
                    dtype=arr.dtype,
                    chunks=(1, *arr.shape),
                    compression=compression,
                )
            elif arr.shape != ds.shape[1:]:
                raise ShapeError(
                    f"item {i} has shape {arr.shape}, item 0 has {ds.shape[1:]}; "
                    "all items must have the same shape"
                )
            ds[i] = arr
        for name, value in encoded.items():
            f.attrs[name] = value
    return target
