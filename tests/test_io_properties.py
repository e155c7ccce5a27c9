"""Property-based round trips of dwgf_sci.io (hypothesis): random arrays, headers and attributes."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from dwgf_sci.io import (
    normalize_provenance,
    read_fits,
    read_hdf5,
    read_provenance,
    write_fits,
    write_hdf5,
)
from dwgf_sci.io.fits import is_structural

SETTINGS = settings(max_examples=15, deadline=None)

PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
DTYPES = st.sampled_from(["<f4", ">f4", "<f8", ">f8", "<i2", ">i2", "<i4", "u1", "<u2"])
SPECIAL = {"COMMENT", "HISTORY", "CONTINUE", "HIERARCH", "END", ""}

keywords = st.from_regex(r"[A-Z][A-Z0-9_-]{0,7}", fullmatch=True).filter(
    lambda k: not is_structural(k) and k not in SPECIAL
)
card_values = st.one_of(
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(PRINTABLE, max_size=120),  # long ones become CONTINUE cards
)
headers = st.lists(
    st.tuples(keywords, card_values, st.text(PRINTABLE, max_size=20)),
    max_size=12,
    unique_by=lambda card: card[0],
)
commentary = st.lists(
    st.tuples(st.sampled_from(["COMMENT", "HISTORY"]), st.text(PRINTABLE, max_size=90)),
    max_size=4,
)


def image_arrays() -> st.SearchStrategy[np.ndarray]:
    return DTYPES.flatmap(
        lambda dt: arrays(
            np.dtype(dt),
            array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
            elements=None,  # any value of the dtype, NaN/Inf/subnormals included
        )
    )


def as_bchw(arr: np.ndarray) -> np.ndarray:
    return arr[np.newaxis] if arr.ndim == 3 else arr[np.newaxis, np.newaxis]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality, NaN payloads and signed zeros included."""
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    view = np.uint32 if a.dtype.itemsize == 4 else np.uint64
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    b = np.ascontiguousarray(b, dtype=b.dtype.newbyteorder("="))
    return bool(np.array_equal(a.view(view), b.view(view)))


def card_list(header: fits.Header) -> list[tuple[str, object, str]]:
    return [
        (c.keyword, c.value, c.comment)
        for c in header.cards
        if not is_structural(c.keyword) and c.keyword
    ]


@SETTINGS
@given(arr=image_arrays(), cards=headers, notes=commentary)
def test_fits_random_arrays_and_headers_round_trip(arr, cards, notes):
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, value, comment in cards:
            header[key] = (value, comment)
        for key, text in notes:
            header.append((key, text), end=True)
        # what FITS can express of these cards (e.g. floats have at most 20 characters)
        reference = fits.Header.fromstring(header.tostring())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.fits"
        write_fits(path, arr, header=header, check_finite=False)
        dtype = torch.float64 if arr.dtype.itemsize == 8 else torch.float32
        x, h = read_fits(path, check_finite=False, dtype=dtype)
    expected = as_bchw(arr).astype(np.float64 if dtype == torch.float64 else np.float32)
    assert x.shape == expected.shape
    assert same_bits(x.numpy(), expected)
    assert card_list(h) == card_list(reference)


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
attr_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_ ]{0,15}", fullmatch=True)


@SETTINGS
@given(
    arr=image_arrays(),
    attrs=st.dictionaries(attr_names, json_values, max_size=6),
    record=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
)
def test_hdf5_random_arrays_attributes_and_provenance_round_trip(arr, attrs, record):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.h5"
        write_hdf5(path, {"x": arr}, attrs=attrs, provenance=record, check_finite=False)
        dtype = torch.float64 if arr.dtype.itemsize == 8 else torch.float32
        x, got = read_hdf5(path, check_finite=False, dtype=dtype)
        assert read_provenance(path) == normalize_provenance(record)
        fits_path = Path(tmp) / "x.fits"
        write_fits(fits_path, arr, provenance=record, check_finite=False)
        assert read_provenance(fits_path) == normalize_provenance(record)
    expected = as_bchw(arr).astype(np.float64 if dtype == torch.float64 else np.float32)
    assert same_bits(x.numpy(), expected)
    assert got == attrs
