"""FITS images in and out, with their headers (WCS, units, history) and provenance.

Reading gives a float tensor ``(1, C, H, W)`` in physical units (``BZERO``/``BSCALE`` applied,
``BLANK`` pixels as NaN, any byte order) and the HDU's :class:`astropy.io.fits.Header` as it is in
the file. Writing keeps every card of the header it is given, except the structural ones astropy
must recompute for the new data (list in :data:`STRUCTURAL_KEYWORDS`), and is atomic
(:func:`~dwgf_sci.io.atomic.atomic_output`).

Layout of a file written by :func:`write_fits`:

- primary HDU: the image (``(H, W)`` or ``(C, H, W)``), the caller's header cards, and, when
  provenance is given, ``HIERARCH DWGF ...`` summary cards and one ``HISTORY`` line;
- one ``ImageHDU`` per ``extra`` entry, ``EXTNAME`` = its upper-cased name (``STD``, ``SAMPLES``);
- ``PROVENANCE``: a one-row binary table whose ``JSON`` column holds the exact provenance record.

Every HDU carries ``CHECKSUM``/``DATASUM`` cards, and the primary header a ``DWGFNHDU`` card (the
number of HDUs written), so that a file cut at an HDU boundary, which is still valid FITS, is
detected as truncated.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from ..errors import ConfigError, FileFormatError, InvalidDataError, ShapeError
from ._common import (
    PathLike,
    array_for_write,
    check_read_dtype,
    check_read_size,
    image_tensor,
    input_path,
)
from .atomic import atomic_output, check_output_path
from .fits_open import (
    NHDU_KEYWORD,
    HDUSpec,
    check_fits_structure,
    describe_hdus,
    has_image_data,
    hdu_axes,
    hdu_label,
    is_image_hdu,
    resolve_hdu,
    with_fits,
)
from .provenance import dumps, loads, resolve_provenance

__all__ = [
    "NHDU_KEYWORD",
    "STRUCTURAL_KEYWORDS",
    "HDUSpec",
    "check_fits_structure",
    "fits_provenance_text",
    "image_hdu_data",
    "read_fits",
    "read_fits_provenance",
    "write_fits",
]


#: Header keywords describing the data layout or encoding; :func:`write_fits` drops them from the
#: header it is given and lets astropy write the values that fit the new data. ``NAXISn`` too.
STRUCTURAL_KEYWORDS = frozenset(
    {
        "SIMPLE",
        "XTENSION",
        "BITPIX",
        "NAXIS",
        "EXTEND",
        "PCOUNT",
        "GCOUNT",
        "GROUPS",
        "BSCALE",
        "BZERO",
        "BLANK",
        "CHECKSUM",
        "DATASUM",
        "END",
        "DWGFNHDU",
        "EXTNAME",  # the name and version of the HDU the header came from, not of its data
        "EXTVER",
    }
)
_NAXIS_N = re.compile(r"^NAXIS\d+$")

#: EXTNAMEs the writer reserves for itself.
PROVENANCE_EXTNAME = "PROVENANCE"
_RESERVED_EXTNAMES = frozenset({"PRIMARY", PROVENANCE_EXTNAME})
_SUMMARY_PREFIX = "DWGF "


def is_structural(keyword: str) -> bool:
    """True for header keywords that describe the data layout (dropped when writing new data)."""
    key = keyword.upper()
    return key in STRUCTURAL_KEYWORDS or bool(_NAXIS_N.match(key))


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def image_hdu_data(
    hdul: fits.HDUList, hdu: HDUSpec, p: Path
) -> tuple[np.ndarray, fits.Header, str]:
    """The data and header (copied before the data is touched) of one image HDU of an open file.

    :param hdul: the HDU list, opened by :func:`~dwgf_sci.io.fits_open.with_fits`.
    :param hdu: which HDU (as for :func:`read_fits`).
    :param p: the file's path, for messages.
    :return: ``(data, header, label)``: the array as astropy scales it, the header as in the file
        and the HDU's label for messages (``"1 (SCI)"``).
    :raises FileFormatError: missing HDU, a table, an HDU without data, not enough memory.
    :raises InvalidDataError: non-numeric data.
    """
    idx = resolve_hdu(hdul, hdu, p)
    h = hdul[idx]
    label = hdu_label(hdul, idx)
    if not is_image_hdu(h):
        raise FileFormatError(
            f"HDU {label} of FITS file {p} is a {type(h).__name__}, not an image; "
            f"HDUs with image data: {describe_hdus(hdul, only_images=True)}"
        )
    if not has_image_data(h):
        raise FileFormatError(
            f"HDU {label} of FITS file {p} has no data (NAXIS = {h.header.get('NAXIS', 0)}); "
            f"HDUs with image data: {describe_hdus(hdul, only_images=True)}"
        )
    header = h.header.copy()  # before .data: astropy edits BITPIX/BZERO when it scales
    check_read_size(hdu_axes(h), f"HDU {label} of FITS file {p}")
    try:
        data = h.data
    except MemoryError:
        raise FileFormatError(
            f"HDU {label} of FITS file {p}: not enough memory to load its {hdu_axes(h)} array"
        ) from None
    if data is None:
        raise FileFormatError(f"HDU {label} of FITS file {p} has no data")
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        raise InvalidDataError(
            f"HDU {label} of FITS file {p} holds non-numeric data "
            f"({getattr(data, 'dtype', type(data).__name__)})"
        )
    return np.asarray(data), header, label


def read_fits(
    path: PathLike,
    hdu: HDUSpec = 0,
    *,
    allow_cube: bool = True,
    check_finite: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, fits.Header]:
    """Read one image HDU of a FITS file as a ``(1, C, H, W)`` tensor plus its header.

    Data come out in physical units: ``BZERO``/``BSCALE`` are applied (an int16 image with
    ``BZERO``/``BSCALE`` gives the scaled values), integer pixels equal to ``BLANK`` become NaN, and
    the result is native-endian whatever the file's byte order. Layout: a 2-D image ``(H, W)`` gives
    ``(1, 1, H, W)``, a cube ``(C, H, W)`` gives ``(1, C, H, W)``, a 4-D stack ``(B, C, H, W)``
    (e.g. an ``SAMPLES`` extension) is returned as it is; leading axes of length 1 beyond four are
    dropped. The file is opened read-only and never modified.

    :param path: FITS file (gzip-compressed files and tile-compressed HDUs work too).
    :param hdu: HDU index (negative counts from the end), ``EXTNAME`` (case-insensitive),
        ``(EXTNAME, EXTVER)``, or None for the first HDU holding image data.
    :param allow_cube: accept more than two (non-degenerate) dimensions; if False, a cube raises
        :class:`~dwgf_sci.errors.ShapeError`.
    :param check_finite: raise on NaN/Inf (also ``BLANK``) pixels; pass False to read them and mask
        them.
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    :return: ``(x, header)``: the tensor and the HDU's :class:`~astropy.io.fits.Header` as in the
        file.
    :raises FileFormatError: missing file, corrupt or truncated file, missing HDU (the message lists
        the HDUs there are), an HDU without data or that is not an image (a table).
    :raises InvalidDataError: non-numeric data, or NaN/Inf when ``check_finite``.
    :raises ShapeError: 1-D data, or a cube when ``allow_cube`` is False.
    """
    check_read_dtype(dtype)
    p = input_path(path, "FITS")
    data, header, label = with_fits(p, lambda hdul: image_hdu_data(hdul, hdu, p))
    x = image_tensor(
        data,
        f"FITS file {p} HDU {label}",
        allow_cube=allow_cube,
        check_finite=check_finite,
        dtype=dtype,
    )
    return x, header


def fits_provenance_text(hdul: fits.HDUList, p: Path) -> str | None:
    """The stored provenance JSON of an open file (``PROVENANCE`` table HDU), or None.

    :param hdul: the HDU list, opened by :func:`~dwgf_sci.io.fits_open.with_fits`.
    :param p: the file's path, for messages.
    :raises FileFormatError: a ``PROVENANCE`` HDU without a ``JSON`` column.
    """
    for h in hdul:
        if (h.name or "").upper() == PROVENANCE_EXTNAME:
            if not isinstance(h, fits.BinTableHDU) or "JSON" not in h.columns.names:
                raise FileFormatError(f"FITS file {p}: HDU PROVENANCE has no JSON column")
            check_read_size(hdu_axes(h), f"HDU PROVENANCE of FITS file {p}")
            value = h.data["JSON"][0]
            return value.decode("ascii") if isinstance(value, bytes) else str(value)
    return None


def read_fits_provenance(p: Path) -> dict[str, Any] | None:
    """The provenance record of a FITS file (``PROVENANCE`` table HDU), or None if it has none."""
    text = with_fits(p, lambda hdul: fits_provenance_text(hdul, p))
    return None if text is None else loads(text, f"FITS file {p}")


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def _layout(arr: np.ndarray, name: str, allow_stack: bool, min_ndim: int) -> np.ndarray:
    """FITS layout of an array: drop a leading batch of 1, then a single channel."""
    if arr.size == 0:
        raise ShapeError(f"{name}: cannot write an empty array (shape {arr.shape})")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 4 and not allow_stack:
        raise ShapeError(
            f"{name}: write_fits writes one image (batch of 1), found shape {arr.shape}; "
            "store a stack of samples in an extension, e.g. extra={'SAMPLES': samples}"
        )
    if not min_ndim <= arr.ndim <= 4:
        raise ShapeError(
            f"{name}: expected (H, W), (C, H, W) or (1, C, H, W), found shape {arr.shape}"
        )
    return arr


def _clean_header(
    header: fits.Header | Mapping[str, Any] | None, drop_summary: bool
) -> fits.Header:
    """Copy of ``header`` without structural cards (and old provenance summary cards if asked)."""
    if header is None:
        return fits.Header()
    if isinstance(header, fits.Header):
        source = header.copy()
    elif isinstance(header, Mapping):
        source = fits.Header()
        try:
            for key, value in header.items():
                source[key] = value  # a value or a (value, comment) pair
        except (ValueError, TypeError, KeyError, VerifyError) as err:
            raise ConfigError(f"header: cannot make FITS cards from the dict ({err})") from None
    else:
        raise ConfigError(
            f"header must be an astropy Header, a dict or None, found {type(header).__name__}"
        )
    cards = []
    for card in source.cards:
        key = card.keyword
        if is_structural(key):
            continue
        if drop_summary and key.upper().startswith(_SUMMARY_PREFIX):
            continue
        cards.append(card)
    return fits.Header(cards)


def _extname(name: object, seen: set[str]) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"extra: extension names must be non-empty strings, found {name!r}")
    ext = name.strip().upper()
    if len(ext) > 68 or not all(32 <= ord(c) < 127 for c in ext):
        raise ConfigError(
            f"extra: extension name {name!r} must be printable ASCII, at most 68 characters"
        )
    if ext in _RESERVED_EXTNAMES:
        raise ConfigError(f"extra: extension name {ext!r} is reserved")
    if ext in seen:
        raise ConfigError(f"extra: extension name {ext!r} is given twice")
    seen.add(ext)
    return ext


def _summary_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9_-]", "_", name.upper())


def _summary_cards(record: Mapping[str, Any]) -> list[fits.Card]:
    """Readable one-card summaries of the scalar entries of a record (two levels deep), best effort.

    The exact record is in the ``PROVENANCE`` HDU; entries that do not fit one 80-character card
    (long strings, lists, deeper nesting, NaN) are left to it.
    """
    items: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            items.extend((f"{_summary_key(key)} {_summary_key(k)}", v) for k, v in value.items())
        else:
            items.append((_summary_key(key), value))
    cards = []
    seen: set[str] = set()
    for key, value in items:
        if not key.strip("_ ") or key in seen:
            continue
        if value is None or not isinstance(value, str | int | float | bool):
            continue
        if isinstance(value, float) and not np.isfinite(value):
            continue
        if isinstance(value, str) and not all(32 <= ord(c) < 127 for c in value):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                card = fits.Card(f"HIERARCH {_SUMMARY_PREFIX}{key}", value)
                image = card.image
        except (ValueError, TypeError, VerifyError):
            continue
        if len(image) == 80:
            cards.append(card)
            seen.add(key)
    return cards


def _provenance_hdu(text: str) -> fits.BinTableHDU:
    column = fits.Column(name="JSON", format=f"{max(1, len(text))}A", array=np.array([text]))
    hdu = fits.BinTableHDU.from_columns([column], name=PROVENANCE_EXTNAME)
    hdu.header["PROVFMT"] = ("JSON", "provenance record format (dwgf-sci)")
    return hdu


def write_fits(
    path: PathLike,
    x: torch.Tensor | np.ndarray,
    header: fits.Header | Mapping[str, Any] | None = None,
    extra: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    provenance: Mapping[str, Any] | bool | None = None,
    overwrite: bool = False,
    *,
    check_finite: bool = True,
    checksum: bool = True,
) -> Path:
    """Write an image, its header, extra images and provenance to a FITS file, atomically.

    ``x`` may be ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``; the batch of 1 is dropped and a
    single channel too, so ``(1, 1, H, W)`` is written as a 2-D image and read back as ``(1, 1, H,
    W)``. The dtype is kept (float32 data are written bit for bit; float16 becomes float32, bool
    becomes uint8).

    Every card of ``header`` is written (WCS, ``BUNIT``, ``COMMENT``, ``HISTORY``, ``HIERARCH``,
    long strings...) except the structural ones (:data:`STRUCTURAL_KEYWORDS`, ``NAXISn``), which
    astropy writes for the new data; ``BSCALE``/``BZERO``/``BLANK`` are among them, so the written
    values are exactly ``x``. The caller's header and arrays are not modified.

    All checks run before anything is written; the file is written to a temporary file in the same
    folder and moved into place (:func:`~dwgf_sci.io.atomic.atomic_output`), so a failure leaves no
    partial output and an existing file is either untouched or completely replaced.

    :param path: output file (a ``.gz`` suffix compresses it).
    :param x: the image, in physical units.
    :param header: header to carry over (e.g. from :func:`read_fits`), a dict of cards, or None.
    :param extra: more images as ``ImageHDU`` extensions, ``EXTNAME`` = upper-cased key, e.g.
        ``{"STD": std, "SAMPLES": samples, "MASK": mask}``. Same layout rule as ``x``, except that a
        stack ``(N, C, H, W)`` with ``N > 1`` is kept 4-D; 1-D arrays are allowed.
    :param provenance: a record (usually from :func:`~dwgf_sci.io.make_provenance`), True for a
        default :func:`~dwgf_sci.io.make_provenance` record, or None/False for none. Stored exactly
        in the ``PROVENANCE`` HDU (read it with :func:`~dwgf_sci.io.read_provenance`), summarised in
        ``HIERARCH DWGF ...`` cards (old ones in ``header`` are replaced) and a ``HISTORY`` line.
    :param overwrite: replace an existing file.
    :param check_finite: refuse NaN/Inf values in ``x`` and ``extra`` (pass False to write them).
    :param checksum: add ``CHECKSUM``/``DATASUM`` cards to every HDU.
    :return: the output path.
    :raises OutputExistsError: the file exists and ``overwrite`` is False (the file is untouched).
    :raises ShapeError: ``x`` is not one image, or an array is empty.
    :raises InvalidDataError: non-numeric data, NaN/Inf values, or a record that JSON cannot hold.
    :raises ConfigError: bad ``header``, extension names or ``provenance``.
    :raises FileFormatError: the output folder does not exist, or the header cannot be written.
    """
    target = check_output_path(path, overwrite)
    data = _layout(array_for_write(x, "x", check_finite, bool_as_uint8=True), "x", False, 2)
    seen: set[str] = set()
    extras: list[tuple[str, np.ndarray]] = []
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise ConfigError(
                f"extra must be a dict of name -> array, found {type(extra).__name__}"
            )
        for name, value in extra.items():
            ext = _extname(name, seen)
            arr = array_for_write(value, f"extra[{name!r}]", check_finite, bool_as_uint8=True)
            extras.append((ext, _layout(arr, f"extra[{name!r}]", True, 1)))
    record = resolve_provenance(provenance)

    primary_header = _clean_header(header, drop_summary=record is not None)
    hdus: list[fits.hdu.base._BaseHDU] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            # useblanks=False everywhere: astropy would otherwise reuse (drop) trailing blank cards
            primary = fits.PrimaryHDU(data=data)
            primary.header.extend(primary_header.cards, useblanks=False, end=True)
            if record is not None:
                for card in _summary_cards(record):
                    primary.header.append(card, useblanks=False, end=True)
                history = (
                    f"dwgf-sci {record.get('version', '?')} {record.get('created', '')}: "
                    f"provenance in HDU {PROVENANCE_EXTNAME}"
                )
                history = "".join(c if 32 <= ord(c) < 127 else "?" for c in history)
                primary.header.append(("HISTORY", history), useblanks=False, end=True)
            n_hdus = 1 + len(extras) + (record is not None)
            primary.header.append(
                (NHDU_KEYWORD, n_hdus, "HDUs in this file (truncation check)"),
                useblanks=False,
                end=True,
            )
            if checksum:  # placeholders, updated in place by astropy when it writes
                primary.header.append(("CHECKSUM", "0" * 16), useblanks=False, end=True)
                primary.header.append(("DATASUM", "0"), useblanks=False, end=True)
            hdus.append(primary)
            hdus.extend(fits.ImageHDU(data=arr, name=ext) for ext, arr in extras)
            if record is not None:
                hdus.append(_provenance_hdu(dumps(record)))
        hdul = fits.HDUList(hdus)
        hdul.verify("fix+warn")
    except VerifyError as err:
        raise FileFormatError(f"cannot write the header to {target}: {err}") from None

    blocks = (
        -(-(len(str(h.header)) + 1) // 2880) - (-getattr(h.data, "nbytes", 0) // 2880) for h in hdul
    )
    needed = 2880 * sum(blocks)  # headers and data fill whole 2880-byte FITS blocks
    with atomic_output(target, overwrite, needed=needed) as tmp:
        hdul.writeto(tmp, overwrite=True, output_verify="exception", checksum=checksum)
    return target
