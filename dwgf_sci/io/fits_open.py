"""Opening FITS files safely, and finding the HDUs in them.

Every reader of this package opens a FITS file through :func:`with_fits`: it first walks the
headers (:func:`check_fits_structure`) and refuses the values that would make astropy loop or
allocate without bound, then opens the file read-only, detects truncation (astropy's warning, and
the ``DWGFNHDU`` card of our own files), runs the caller's action on the HDU list and turns parse
failures into :class:`~dwgf_sci.errors.FileFormatError`. :func:`resolve_hdu` finds an HDU by
index, ``EXTNAME`` or ``(EXTNAME, EXTVER)``; :func:`describe_hdus` lists them for error messages.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from ..errors import ConfigError, DwgfError, FileFormatError
from ._common import max_read_values

__all__ = [
    "NHDU_KEYWORD",
    "PARSE_ERRORS",
    "HDUSpec",
    "check_fits_structure",
    "describe_hdus",
    "has_image_data",
    "hdu_axes",
    "hdu_label",
    "is_image_hdu",
    "resolve_hdu",
    "with_fits",
]

HDUSpec = int | str | tuple[str, int] | None
T = TypeVar("T")

#: Card holding the number of HDUs a file was written with: a file cut at an HDU boundary is still
#: valid FITS, so this is how the reader detects that extensions are missing.
NHDU_KEYWORD = "DWGFNHDU"

PARSE_ERRORS = (
    OSError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    VerifyError,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
)


def _is_truncation(w: warnings.WarningMessage) -> bool:
    return "truncated" in str(w.message).lower()


_BLOCK = 2880
_VALID_BITPIX = frozenset({8, 16, 32, 64, -32, -64})
#: Most HDUs, and most 2880-byte blocks in one header, the structure check walks through.
_MAX_HDUS = 100_000
_MAX_HEADER_BLOCKS = 10_000


@contextlib.contextmanager
def _decompressed(p: Path) -> Iterator[BinaryIO | None]:
    """The file's bytes as astropy sees them (gzip, bzip2, xz and single-member zip undone);
    None for a zip archive astropy would refuse anyway."""
    with open(p, "rb") as fh:
        magic = fh.read(6)
    with contextlib.ExitStack() as stack:
        if magic.startswith(b"\x1f\x8b\x08"):
            yield stack.enter_context(gzip.open(p, "rb"))
        elif magic.startswith(b"BZ"):
            yield stack.enter_context(bz2.open(p, "rb"))
        elif magic.startswith(b"\xfd7zXZ\x00"):
            yield stack.enter_context(lzma.open(p, "rb"))
        elif magic.startswith(b"PK\x03\x04"):
            archive = stack.enter_context(zipfile.ZipFile(p))
            names = archive.namelist()
            yield stack.enter_context(archive.open(names[0])) if len(names) == 1 else None
        else:
            yield stack.enter_context(open(p, "rb"))


def _read_header_bytes(fh: BinaryIO) -> bytes | None:
    """The blocks of one header, END card included; None at the end of the file or when the
    blocks hold no END card (astropy reports those cases itself)."""
    blocks = []
    for _ in range(_MAX_HEADER_BLOCKS):
        block = fh.read(_BLOCK)
        if len(block) < _BLOCK:
            return None
        blocks.append(block)
        if any(block[i : i + 8] == b"END     " for i in range(0, _BLOCK, 80)):
            return b"".join(blocks)
    return None


def _header_int(header: fits.Header, key: str, default: int | None, where: str) -> int:
    try:
        value = header.get(key, default)
    except PARSE_ERRORS:
        raise FileFormatError(f"{where}: the {key} card cannot be parsed") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FileFormatError(f"{where}: {key} = {value!r} is not an integer")
    return value


def _data_bytes(header: fits.Header, where: str) -> int:
    """Bytes of an HDU's data from its header, after checking the structural values."""
    bitpix = _header_int(header, "BITPIX", None, where)
    if bitpix not in _VALID_BITPIX:
        raise FileFormatError(f"{where}: BITPIX = {bitpix} is not a FITS data type")
    naxis = _header_int(header, "NAXIS", None, where)
    if not 0 <= naxis <= 999:
        raise FileFormatError(f"{where}: NAXIS = {naxis} is outside 0..999")
    axes = [_header_int(header, f"NAXIS{i}", None, where) for i in range(1, naxis + 1)]
    if any(n < 0 for n in axes):
        raise FileFormatError(f"{where}: negative axis length in {axes}")
    znaxis = _header_int(header, "ZNAXIS", 0, where) if "ZNAXIS" in header else 0
    if not 0 <= znaxis <= 999:
        raise FileFormatError(f"{where}: ZNAXIS = {znaxis} is outside 0..999")
    for i in range(1, znaxis + 1):
        if _header_int(header, f"ZNAXIS{i}", 0, where) < 0:
            raise FileFormatError(f"{where}: ZNAXIS{i} is negative")
    pcount = _header_int(header, "PCOUNT", 0, where)
    gcount = _header_int(header, "GCOUNT", 1, where)
    if pcount < 0 or gcount < 0:
        raise FileFormatError(f"{where}: PCOUNT = {pcount}, GCOUNT = {gcount} (negative)")
    if naxis == 0:
        return 0
    try:
        groups = header.get("GROUPS") is True and axes[0] == 0
    except PARSE_ERRORS:
        groups = False
    count = 1
    for n in axes[1:] if groups else axes:
        count *= n
    return abs(bitpix) // 8 * gcount * (pcount + count)


def check_fits_structure(p: Path) -> None:
    """Walk the HDU headers of a FITS file and refuse the values that make astropy loop forever
    or allocate without bound: a negative axis length, ``PCOUNT`` or ``GCOUNT`` (the next header
    would lie before this one), an absurd ``NAXIS``/``ZNAXIS`` (astropy iterates over it), a
    ``BITPIX`` that is no FITS type, or an HDU with more data than a reader loads.

    Only headers are read (data are skipped); anything else odd (no ``SIMPLE`` card, truncation,
    junk after the last HDU) is left to astropy, whose errors the readers turn into
    :class:`~dwgf_sci.errors.FileFormatError`.

    :param p: path of the FITS file (gzip, bzip2, xz and single-member zip files are read through
        their decompression). The declared data size of each HDU is compared with
        ``8 * max_read_values()`` bytes (``DWGF_MAX_READ_VALUES`` values as float64).
    :return: None; a file that passes the checks (or that astropy must judge) returns silently.
    :raises FileFormatError: naming the HDU and the value, or for more than 100 000 HDUs.
    """
    limit = 8 * max_read_values()  # bytes: the largest array a reader loads, as float64
    try:
        with _decompressed(p) as fh:
            if fh is None:
                return
            for index in range(_MAX_HDUS):
                raw = _read_header_bytes(fh)
                if raw is None:
                    return
                first = raw[:8]
                if (index == 0 and first != b"SIMPLE  ") or (index > 0 and first != b"XTENSION"):
                    return
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        header = fits.Header.fromstring(raw.decode("latin-1"))
                    except PARSE_ERRORS:
                        return
                where = f"FITS file {p}, HDU {index}"
                size = _data_bytes(header, where)
                if size > limit:
                    raise FileFormatError(
                        f"{where} declares {size} bytes of data, more than a reader loads; if "
                        "the file is genuine, raise the limit with DWGF_MAX_READ_VALUES"
                    )
                fh.seek(-(-size // _BLOCK) * _BLOCK, io.SEEK_CUR)
            raise FileFormatError(f"FITS file {p} has more than {_MAX_HDUS} HDUs")
    except DwgfError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile):
        return  # unreadable or damaged compression: astropy says so when it opens the file


def with_fits(p: Path, action: Callable[[fits.HDUList], T]) -> T:
    """Open ``p`` read-only and run ``action`` on its HDU list; parse failures become errors.

    Every header is read first (``len(hdul)``), so a truncated file is detected whichever HDU is
    asked for; a file cut at an HDU boundary is detected by the ``DWGFNHDU`` card of our own files.
    Warnings other than astropy's truncation warning are re-emitted after the file is closed.
    """
    kept: list[warnings.WarningMessage] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_fits_structure(p)
            with fits.open(p, mode="readonly", memmap=False) as hdul:
                n_found = len(hdul)
                _raise_if_truncated(p, caught)
                n_written = hdul[0].header.get(NHDU_KEYWORD)
                if isinstance(n_written, int) and n_found < n_written:
                    raise FileFormatError(
                        f"FITS file {p} is truncated: it was written with {n_written} HDUs, "
                        f"{n_found} are left"
                    )
                result = action(hdul)
                _raise_if_truncated(p, caught)
        except DwgfError:
            raise
        except PARSE_ERRORS as err:
            _raise_if_truncated(p, caught)
            raise FileFormatError(
                f"cannot read FITS file {p}: corrupt or not FITS ({err})"
            ) from err
        kept = [w for w in caught if not _is_truncation(w)]
    for w in kept:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _raise_if_truncated(p: Path, caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if _is_truncation(w):
            raise FileFormatError(f"FITS file {p} is truncated or corrupt: {w.message}")


def hdu_axes(h: fits.hdu.base._BaseHDU) -> tuple[int, ...]:
    """Data shape in numpy order, from the header only (never loads data)."""
    header = h.header
    naxis = int(header.get("NAXIS", 0) or 0)
    return tuple(int(header.get(f"NAXIS{i}", 0) or 0) for i in range(naxis, 0, -1))


def is_image_hdu(h: fits.hdu.base._BaseHDU) -> bool:
    return isinstance(h, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) and not isinstance(
        h, fits.GroupsHDU
    )


def has_image_data(h: fits.hdu.base._BaseHDU) -> bool:
    axes = hdu_axes(h)
    return is_image_hdu(h) and len(axes) > 0 and all(n > 0 for n in axes)


def hdu_label(hdul: fits.HDUList, i: int) -> str:
    h = hdul[i]
    name = h.name or ("PRIMARY" if i == 0 else "")
    ver = h.ver if getattr(h, "ver", 1) not in (None, 1) else None
    return f"{i} ({name}{f', ver {ver}' if ver else ''})" if name else str(i)


def describe_hdus(hdul: fits.HDUList, only_images: bool = False) -> str:
    """One-line listing of the HDUs of a file, for error messages."""
    parts = []
    for i, h in enumerate(hdul):
        if only_images and not has_image_data(h):
            continue
        if has_image_data(h):
            what = f"image {hdu_axes(h)} BITPIX {h.header.get('BITPIX')}"
        elif is_image_hdu(h):
            what = "no data"
        else:
            what = type(h).__name__
        parts.append(f"[{hdu_label(hdul, i)}: {what}]")
    return ", ".join(parts) if parts else "none"


def resolve_hdu(hdul: fits.HDUList, hdu: HDUSpec, p: Path) -> int:
    """Index of the HDU asked for by index, EXTNAME, (EXTNAME, EXTVER) or None (first image)."""
    n = len(hdul)
    if hdu is None:
        for i, h in enumerate(hdul):
            if has_image_data(h):
                return i
        raise FileFormatError(
            f"FITS file {p} has no HDU with image data; HDUs: {describe_hdus(hdul)}"
        )
    if isinstance(hdu, bool) or not isinstance(hdu, int | str | tuple):
        raise ConfigError(
            f"hdu must be an index, an EXTNAME, an (EXTNAME, EXTVER) pair or None, found {hdu!r}"
        )
    if isinstance(hdu, int):
        idx = hdu + n if hdu < 0 else hdu
        if not 0 <= idx < n:
            raise FileFormatError(
                f"FITS file {p} has no HDU {hdu}; it has {n} HDU(s): {describe_hdus(hdul)}"
            )
        return idx
    try:
        return hdul.index_of(hdu)
    except (KeyError, IndexError, ValueError, TypeError):
        raise FileFormatError(
            f"FITS file {p} has no HDU named {hdu!r}; HDUs: {describe_hdus(hdul)}"
        ) from None
