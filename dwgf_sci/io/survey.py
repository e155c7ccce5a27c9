"""Survey files: which HDU holds the image, its noise map and its bad-pixel mask.

Real observations come in a few well-known layouts; :func:`recognise_layout` finds them from the
``EXTNAME`` of the image HDUs (when no option names the HDUs):

- ``SCI`` with ``ERR`` (sigma) or ``WHT`` (a weight), and ``DQ`` (a bit plane): HST, JWST, drizzle;
  companions are taken with the ``EXTVER`` of the science HDU;
- ``IMAGE`` / ``MASK`` / ``VARIANCE``: HSC (LSST pipelines); ``MASK`` is a bit plane whose
  informational planes (``MP_DETECTED``, ``MP_DETECTED_NEGATIVE`` cards) are not counted as bad;
- an ``IVAR`` extension: inverse variance of the first other image;
- otherwise the first HDU holding image data (a tile-compressed ``CompImageHDU`` in HDU 1 is read
  transparently); our own measurement files keep their primary HDU.

:func:`combine_maps` then applies the NaN policy and the data-quality bits and turns the noise map
into a variance (:func:`~dwgf_sci.operators.pixel_noise.variance_from_map`), ``inf`` at masked
pixels. :class:`ReadOptions` holds the user's choices (``--hdu``, ``--noise-map`` ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..errors import ConfigError, InvalidDataError, ShapeError
from ..operators.pixel_noise import MAP_KINDS, variance_from_map
from .fits_open import HDUSpec, has_image_data, hdu_label, resolve_hdu

__all__ = [
    "NAN_POLICIES",
    "Layout",
    "ReadOptions",
    "combine_maps",
    "guess_kind",
    "parse_bits",
    "recognise_layout",
]

#: What to do with NaN pixels in the science data: mask them (default) or refuse the file.
NAN_POLICIES = ("mask", "error")
#: Value of ``noise_map`` / ``dq`` that turns a recognised map or mask off.
NONE = "none"

_KIND_BY_NAME = {
    "ERR": "sigma",
    "ERROR": "sigma",
    "SIGMA": "sigma",
    "RMS": "sigma",
    "NOISE": "sigma",
    "STD": "sigma",
    "VAR": "variance",
    "VARIANCE": "variance",
    "IVAR": "ivar",
    "INVVAR": "ivar",
    "IVM": "ivar",
    "WHT": "weight",
    "WEIGHT": "weight",
}
#: LSST/HSC mask planes that describe the sky, not a defect.
_INFORMATIONAL_PLANES = ("DETECTED", "DETECTED_NEGATIVE")


@dataclass(frozen=True)
class ReadOptions:
    """How to read an observation file (all None: recognise the layout).

    :ivar hdu: science HDU (FITS): index, ``EXTNAME`` or ``(EXTNAME, EXTVER)``.
    :ivar key: science dataset (HDF5; default ``y``, else ``x``).
    :ivar noise_map: HDU (FITS) or dataset (HDF5) of the noise map; ``"none"``: use none.
    :ivar noise_map_kind: its convention, one of ``sigma|variance|ivar|weight`` (default: from
        its name).
    :ivar weight_scale: variance of a pixel of weight 1 (``weight`` maps).
    :ivar dq: HDU or dataset of a data-quality bit plane (or a mask); ``"none"``: use none.
    :ivar dq_bits: bits that flag a bad pixel (default: any non-zero value).
    :ivar nan: ``"mask"`` (NaN science pixels are masked) or ``"error"`` (refused).
    """

    hdu: HDUSpec = None
    key: str | None = None
    noise_map: HDUSpec = None
    noise_map_kind: str | None = None
    weight_scale: float = 1.0
    dq: HDUSpec = None
    dq_bits: tuple[int, ...] | None = None
    nan: str = "mask"

    def __post_init__(self) -> None:
        if self.noise_map_kind is not None and self.noise_map_kind not in MAP_KINDS:
            raise ConfigError(
                f"unknown noise-map kind {self.noise_map_kind!r}; choose one of {MAP_KINDS}"
            )
        if self.nan not in NAN_POLICIES:
            raise ConfigError(f"nan must be one of {NAN_POLICIES}, found {self.nan!r}")
        if not (isinstance(self.weight_scale, int | float) and self.weight_scale > 0):
            raise ConfigError(f"weight_scale must be a positive number, found {self.weight_scale}")
        if self.dq_bits is not None:
            object.__setattr__(self, "dq_bits", parse_bits(self.dq_bits))

    def is_default(self) -> bool:
        """True when nothing differs from the defaults (the layout is recognised)."""
        return self == ReadOptions()

    def record(self) -> dict[str, Any]:
        """The options as a JSON-able dict (for fingerprints and provenance)."""
        out = asdict(self)
        for k in ("hdu", "noise_map", "dq"):
            if isinstance(out[k], tuple):
                out[k] = list(out[k])
        if out["dq_bits"] is not None:
            out["dq_bits"] = list(out["dq_bits"])
        return out


def parse_bits(value: Any) -> tuple[int, ...]:
    """Data-quality bits from ``"1,2,4"``, an int or a sequence of ints (positive flag values,
    each one bit or a sum of bits).

    :raises ConfigError: an empty list, a value that is no positive integer.
    """
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, int):
        items = [items]
    bits = []
    for item in items:
        try:
            bit = int(str(item).strip(), 0)
        except ValueError:
            raise ConfigError(f"--dq-bits: {item!r} is not an integer flag value") from None
        if bit <= 0 or bit >= 2**63:
            raise ConfigError(f"--dq-bits: flag values are positive 63-bit integers, found {bit}")
        bits.append(bit)
    if not bits:
        raise ConfigError("--dq-bits: give at least one flag value, e.g. --dq-bits 1,2,4")
    return tuple(bits)


def guess_kind(name: str) -> str | None:
    """The noise-map convention an ``EXTNAME`` / dataset name implies, or None."""
    upper = str(name).upper().rsplit("/", 1)[-1]
    if upper in _KIND_BY_NAME:
        return _KIND_BY_NAME[upper]
    return "variance" if upper.startswith("VAR") else None


@dataclass
class Layout:
    """Which HDUs of a FITS file hold the science image, its noise map and its mask.

    :ivar name: the layout (``"SCI/ERR/DQ"``, ``"IMAGE/MASK/VARIANCE"``, ``"first image HDU"``).
    :ivar science: index of the science HDU.
    :ivar noise_map: index of the noise map HDU, or None.
    :ivar kind: the noise map's convention.
    :ivar dq: index of the bit plane, or None.
    :ivar ignore_bits: bits of the bit plane that are informational (never bad by default).
    """

    name: str
    science: int
    noise_map: int | None = None
    kind: str | None = None
    dq: int | None = None
    ignore_bits: dict[str, int] = field(default_factory=dict)


def _image_ver(hdul: fits.HDUList, i: int) -> int:
    ver = getattr(hdul[i], "ver", 1)
    return int(ver) if isinstance(ver, int) else 1


def _find(hdul: fits.HDUList, name: str, ver: int | None = None) -> int | None:
    """First HDU with image data named ``name`` (with ``EXTVER`` ``ver`` when one matches)."""
    found = [i for i, h in enumerate(hdul) if str(h.name).upper() == name and has_image_data(h)]
    if ver is not None:
        same = [i for i in found if _image_ver(hdul, i) == ver]
        found = same or found
    return found[0] if found else None


def _informational(header: fits.Header) -> dict[str, int]:
    """Bits of an LSST/HSC mask plane that mark detections (``MP_<NAME> = bit`` cards)."""
    out = {}
    for plane in _INFORMATIONAL_PLANES:
        bit = header.get(f"MP_{plane}")
        if isinstance(bit, int) and not isinstance(bit, bool) and 0 <= bit < 63:
            out[plane] = 1 << bit
    return out


def _companions(hdul: fits.HDUList, science: int) -> Layout | None:
    """The layout around a science HDU named ``SCI`` or ``IMAGE`` (its ``EXTVER``), or an
    ``IVAR`` extension of the file; None if it has no companion."""
    name = str(hdul[science].name).upper()
    ver = _image_ver(hdul, science)
    if name == "SCI":
        err, wht, dq = (_find(hdul, n, ver) for n in ("ERR", "WHT", "DQ"))
        noise, kind = (err, "sigma") if err is not None else (wht, "weight")
        kind = None if noise is None else kind
        parts = ["SCI", *(["ERR"] if err is not None else ["WHT"] if wht is not None else [])]
        parts += ["DQ"] if dq is not None else []
        return Layout("/".join(parts), science, noise, kind, dq)
    if name == "IMAGE":
        mask, var = (_find(hdul, n, ver) for n in ("MASK", "VARIANCE"))
        if mask is not None or var is not None:
            found = (("IMAGE", science), ("MASK", mask), ("VARIANCE", var))
            label = "/".join(n for n, i in found if i is not None)
            ignore = _informational(hdul[mask].header) if mask is not None else {}
            kind = "variance" if var is not None else None
            return Layout(label, science, var, kind, mask, ignore)
    ivar = _find(hdul, "IVAR", ver)
    if ivar is not None and name not in _NOT_SCIENCE:
        return Layout(f"{name or 'PRIMARY'}/IVAR", science, ivar, "ivar")
    return None


#: EXTNAMEs that never hold the science image of a recognised layout.
_NOT_SCIENCE = frozenset({"IVAR", "MASK", "DQ", "ERR", "WHT", "VARIANCE", "CTX", "CON"})


def _auto_layout(hdul: fits.HDUList, p: Path, own: bool, science: int | None) -> Layout:
    """The layout recognised from the ``EXTNAME`` of the image HDUs, around ``science`` when
    the user named it (else around the science HDU the names point at)."""
    if own and science in (None, 0):  # our own file, with the noise map simulate drew from
        err = _find(hdul, "ERR")
        if err is not None:
            return Layout("dwgf-sci measurement/ERR", 0, err, "sigma")
        return Layout("dwgf-sci measurement", 0)
    if science is not None:
        return _companions(hdul, science) or Layout(f"HDU {hdu_label(hdul, science)}", science)
    candidates = [_find(hdul, "SCI"), _find(hdul, "IMAGE")]
    if _find(hdul, "IVAR") is not None:
        candidates += [
            i
            for i, h in enumerate(hdul)
            if has_image_data(h) and str(h.name).upper() not in _NOT_SCIENCE
        ][:1]
    for index in candidates:
        if index is not None and (layout := _companions(hdul, index)) is not None:
            return layout
    return Layout("first image HDU", resolve_hdu(hdul, None, p))


def recognise_layout(
    hdul: fits.HDUList, p: Path, options: ReadOptions, own: bool = False
) -> Layout:
    """The HDUs to read: the recognised layout, with the user's options applied.

    The companions of an explicit science HDU are found the same way (``--hdu SCI,2`` on a file
    with two chips takes ``ERR,2`` and ``DQ,2``); ``noise_map``/``dq`` name their HDUs
    (``"none"``: none).

    :param own: the file is a measurement written by dwgf-sci (its image is the primary HDU).
    :raises FileFormatError: an HDU named that the file lacks (the message lists those it has).
    :raises ConfigError: a noise map whose convention cannot be told from its name, options that
        need a map or a bit plane that is not there.
    """
    science = resolve_hdu(hdul, options.hdu, p) if options.hdu is not None else None
    layout = _auto_layout(hdul, p, own, science)
    if isinstance(options.noise_map, str) and options.noise_map.lower() == NONE:
        layout = replace(layout, noise_map=None, kind=None)
    elif options.noise_map is not None:
        idx = resolve_hdu(hdul, options.noise_map, p)
        layout = replace(layout, noise_map=idx, kind=guess_kind(hdul[idx].name))
    if options.noise_map_kind is not None:
        if layout.noise_map is None:
            raise ConfigError(
                f"--noise-map-kind {options.noise_map_kind}: {p} has no recognised noise map; "
                "name its HDU with --noise-map"
            )
        layout = replace(layout, kind=options.noise_map_kind)
    if layout.noise_map is not None and layout.kind is None:
        raise ConfigError(
            f"{p}: cannot tell the convention of the noise map in HDU "
            f"{hdu_label(hdul, layout.noise_map)}; pass --noise-map-kind {'|'.join(MAP_KINDS)}"
        )
    if isinstance(options.dq, str) and options.dq.lower() == NONE:
        layout = replace(layout, dq=None, ignore_bits={})
    elif options.dq is not None:
        idx = resolve_hdu(hdul, options.dq, p)
        layout = replace(layout, dq=idx, ignore_bits=_informational(hdul[idx].header))
    if options.dq_bits is not None and layout.dq is None:
        raise ConfigError(f"--dq-bits: {p} has no recognised DQ/MASK plane; name it with --dq")
    return layout


def _lead_squeezed(a: np.ndarray) -> np.ndarray:
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def _check_shape(a: np.ndarray, data: np.ndarray, name: str, science: str) -> np.ndarray:
    a = _lead_squeezed(a)
    if a.shape != _lead_squeezed(data).shape:
        raise ShapeError(
            f"{name} has shape {a.shape}, the science image {science} has "
            f"{_lead_squeezed(data).shape}: they must match pixel for pixel"
        )
    return a.reshape(data.shape)


def _bad_from_dq(
    dq: np.ndarray, name: str, bits: tuple[int, ...] | None, ignore: int
) -> np.ndarray:
    """True where a data-quality plane flags a pixel (``bits``, else any non-ignored bit)."""
    if dq.dtype.kind == "f":
        nan = np.isnan(dq)
        vals = np.where(nan, 0, dq)
        if not np.all(vals == np.round(vals)):
            raise InvalidDataError(f"{name} holds non-integer values; a DQ/MASK plane holds bits")
        dq_int = vals.astype(np.int64)
    elif dq.dtype.kind in "biu":
        nan = np.zeros(dq.shape, dtype=bool)
        dq_int = dq.astype(np.int64) if dq.dtype != np.uint64 else dq.view(np.int64)
    else:
        raise InvalidDataError(f"{name} holds non-numeric data ({dq.dtype})")
    select = np.int64(0)
    if bits is not None:
        for b in bits:
            select |= np.int64(b)
    else:
        select = ~np.int64(ignore)
    return nan | ((dq_int & select) != 0)


def combine_maps(
    data: np.ndarray,
    science: str,
    options: ReadOptions,
    noise: tuple[np.ndarray, str, str] | None = None,
    dq: tuple[np.ndarray, str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Apply the NaN policy and the bad-pixel plane, and turn the noise map into a variance.

    :param data: the science array as read.
    :param science: its description for messages (``"FITS file x HDU 1 (SCI)"``).
    :param noise: ``(values, kind, description)`` of the noise map, or None.
    :param dq: ``(plane, description, informational bits)`` of the bad-pixel plane, or None.
    :return: ``(y, variance, mask, counts)``: float64 arrays of the science shape (``y`` is 0 at
        masked pixels, the variance ``inf`` there), the mask (bool) when there is a map or one
        bad pixel, and ``{"nan_pixels", "masked_pixels"}``.
    :raises InvalidDataError: Inf in the science data, NaN with ``nan="error"``, a map with
        negative, zero (sigma/variance) or infinite (ivar/weight) values at good pixels, every
        pixel masked.
    :raises ShapeError: a map whose shape differs from the science image's.
    """
    if data.dtype.kind not in "biuf":
        raise InvalidDataError(f"{science}: expected numeric image data, found dtype {data.dtype}")
    y = np.asarray(data, dtype=np.float64)
    n_inf = int(np.isinf(y).sum())
    if n_inf:
        raise InvalidDataError(
            f"{science} holds {n_inf} Inf pixel(s); Inf is not a measurement: set them to NaN "
            "to mask them"
        )
    nan = np.isnan(y)
    n_nan = int(nan.sum())
    if n_nan and options.nan == "error":
        raise InvalidDataError(
            f"{science} holds {n_nan} NaN pixel(s) (of {y.size}); without --nan error they are "
            "masked"
        )
    bad = nan.copy()
    if dq is not None:
        plane = _check_shape(dq[0], data, dq[1], science)
        bad |= _bad_from_dq(plane, dq[1], options.dq_bits, dq[2])
    variance = None
    if noise is not None:
        values = np.asarray(_check_shape(noise[0], data, noise[2], science), dtype=np.float64)
        map_nan = np.isnan(values) & ~bad
        if map_nan.any() and options.nan == "error":
            raise InvalidDataError(
                f"{noise[2]} holds {int(map_nan.sum())} NaN value(s) at good pixels; without "
                "--nan error they are masked"
            )
        bad |= map_nan
        if noise[1] in ("ivar", "weight") and bool((np.isposinf(values) & ~bad).any()):
            raise InvalidDataError(
                f"{noise[2]} ({noise[1]}) is infinite at {int((np.isposinf(values) & ~bad).sum())}"
                " good pixel(s): zero noise is not a measurement"
            )
        try:
            var = variance_from_map(np.where(bad, 1.0, values), noise[1], bad, options.weight_scale)
        except InvalidDataError as err:
            raise InvalidDataError(f"{noise[2]}: {err}") from None
        variance = var.numpy()
    mask = (
        ~np.isfinite(variance)
        if variance is not None
        else (bad if bad.any() or dq is not None else None)
    )
    if mask is not None and bool(mask.all()):
        raise InvalidDataError(f"{science}: every pixel is masked; there is nothing to fit")
    if mask is not None:
        y = np.where(mask, 0.0, y)
    counts = {"nan_pixels": n_nan, "masked_pixels": int(mask.sum()) if mask is not None else 0}
    return y, variance, mask, counts
