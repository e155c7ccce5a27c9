"""The ``reconstruct`` options that say how to read an observation file (``--hdu``,
``--noise-map``, ``--dq``, ``--nan``...), and their translation into
:class:`~dwgf_sci.io.survey.ReadOptions`."""

from __future__ import annotations

import argparse

from ..io.survey import ReadOptions

__all__ = ["add_read_options", "hdu_option", "read_options"]


def add_read_options(p: argparse.ArgumentParser) -> None:
    """Options of ``reconstruct`` saying how to read a survey file (default: recognise it)."""
    g = p.add_argument_group(
        "observation files",
        "Without these options the FITS layout is recognised (SCI/ERR/DQ, SCI/WHT, "
        "IMAGE/MASK/VARIANCE, an IVAR extension, else the first image HDU) and printed. NaN "
        "science pixels are masked; the output then holds MASK and VARIANCE.",
    )
    g.add_argument(
        "--hdu", default=None, metavar="NAME|INDEX", help="FITS HDU of the image (NAME,VER too)"
    )
    g.add_argument("--key", default=None, help="HDF5 dataset of the image (default: y, else x)")
    g.add_argument(
        "--noise-map",
        default=None,
        metavar="HDU|KEY",
        help="HDU (FITS) or dataset (HDF5) of the per-pixel noise map; 'none': use none",
    )
    g.add_argument(
        "--noise-map-kind",
        default=None,
        choices=("sigma", "variance", "ivar", "weight"),
        help="convention of the noise map (default: from its name: ERR sigma, VARIANCE, IVAR, WHT)",
    )
    g.add_argument(
        "--weight-scale",
        type=float,
        default=1.0,
        help="variance of a pixel of weight 1 for a weight map (default: 1)",
    )
    g.add_argument(
        "--dq", default=None, metavar="HDU|KEY", help="data-quality bit plane or mask; 'none'"
    )
    g.add_argument(
        "--dq-bits",
        default=None,
        metavar="B1,B2,...",
        help="flag values of bad pixels, e.g. 1,2,4 (default: any non-zero value)",
    )
    g.add_argument(
        "--nan",
        default="mask",
        choices=("mask", "error"),
        help="NaN science pixels: mask them (default) or refuse the file",
    )


def hdu_option(value: str | None) -> int | str | tuple[str, int] | None:
    """An HDU given on the command line: an index if it is an integer, ``NAME,VER`` as an
    ``(EXTNAME, EXTVER)`` pair, else a name."""
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    name, _, ver = text.rpartition(",")
    return (name.strip(), int(ver)) if name and ver.strip().isdigit() else text


def read_options(args: argparse.Namespace) -> ReadOptions:
    """The :class:`~dwgf_sci.io.survey.ReadOptions` of parsed ``reconstruct`` arguments."""

    return ReadOptions(
        hdu=hdu_option(args.hdu),
        key=args.key,
        noise_map=hdu_option(args.noise_map),
        noise_map_kind=args.noise_map_kind,
        weight_scale=args.weight_scale,
        dq=hdu_option(args.dq),
        dq_bits=args.dq_bits,
        nan=args.nan,
    )
