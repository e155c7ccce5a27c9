"""Bad input, fuzzed (hypothesis): malformed FITS/HDF5 files and command lines.

Every case must end in one of our own errors (a :class:`~dwgf_sci.errors.DwgfError` from the
readers; exit status 2 and one line per problem from the CLI), or in a correct result; never in
another exception, a hang, or a partial output file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from dwgf_sci.cli import main
from dwgf_sci.errors import DwgfError
from dwgf_sci.io import read_fits, read_hdf5, read_provenance
from dwgf_sci.io.measurement import read_measurement
from dwgf_sci.operators import resolve_spec
from dwgf_sci.operators.specs import PRESETS, SPEC_TYPES
from dwgf_sci.pipelines.simulate import simulate

#: ``DWGF_FUZZ_SCALE=10`` runs ten times more examples (a longer campaign than CI's).
SCALE = max(1, int(os.environ.get("DWGF_FUZZ_SCALE", "1")))
#: The test command replays a fixed example set, so a run is reproducible;
#: ``DWGF_FUZZ_EXPLORE=1`` explores new inputs on every run (a fuzzing campaign by hand).
FIXED = not os.environ.get("DWGF_FUZZ_EXPLORE")
FAST = settings(
    max_examples=30 * SCALE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=FIXED,
)
SLOW = settings(
    max_examples=10 * SCALE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=FIXED,
)
#: Seconds any single case may take before it counts as a hang.
HANG_S = 60


class Hang(BaseException):
    """Raised in a case that runs too long; a BaseException, so that no ``except Exception`` (or
    ``except OSError``, which TimeoutError would be) in the code under test can swallow it."""


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S) -> Iterator[None]:
    """Fail (:class:`Hang`) if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def ours_or_result(action: Callable[[], Any]) -> Any:
    """Run ``action``; a DwgfError is fine, any other exception fails the test."""
    with no_hang():
        try:
            return action()
        except DwgfError as exc:
            assert str(exc).strip(), "an error without a message"
            return exc


class Blobs(dict):
    """File contents that do not flood hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<valid files {sorted(self)}>"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of valid measurement files (FITS with TRUTH and PROVENANCE, and HDF5)."""
    folder = tmp_path_factory.mktemp("valid")
    spec = resolve_spec("psf", ["fwhm=3"])
    simulate("galaxies", spec, folder / "fits", n=1, size=32)
    simulate("galaxies", spec, folder / "h5", n=1, size=32, file_type="hdf5")
    return Blobs(
        fits=(folder / "fits" / "obs_00000.fits").read_bytes(),
        h5=(folder / "h5" / "obs_00000.h5").read_bytes(),
    )


# --------------------------------------------------------------------------------------------------
# strategies: damaged bytes
# --------------------------------------------------------------------------------------------------

HEADER_KEYS = [
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "DWGFNHDU",
    "BZERO",
    "BSCALE",
    "BLANK",
    "XTENSION",
    "EXTNAME",
    "TFORM1",
    "TFIELDS",
    "PCOUNT",
    "GCOUNT",
    "SIMPLE",
]
HUGE = [2**31 - 1, 2**31, 2**40, 2**63 - 1, 10**30, 99999999, 65536]
card_values = st.one_of(
    st.sampled_from(HUGE),
    st.integers(-(2**64), 2**64),
    st.sampled_from(["T", "F", "'IMAGE   '", "'BINTABLE'", "'PROVENANCE'", "NaN", "''", "-64"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=20),
)


def set_card(data: bytes, key: str, occurrence: int, value: Any) -> bytes:
    """Rewrite the value of the ``occurrence``-th ``key`` card (all 80-column cards scanned)."""
    out = bytearray(data)
    starts = [
        i
        for i in range(0, len(out) - 80 + 1, 80)
        if out[i : i + 8].decode("latin-1").rstrip() == key and out[i + 8 : i + 10] == b"= "
    ]
    if not starts:
        return bytes(out)
    i = starts[occurrence % len(starts)]
    card = f"{key:<8}= {value!s:>20}".encode("latin-1", "replace")[:80].ljust(80)
    out[i : i + 80] = card
    return bytes(out)


def damaged(kind: str) -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """Functions turning a valid file's bytes into damaged ones."""
    cut = st.floats(0, 1, exclude_max=True).map(lambda f: lambda b: b[: int(f * len(b))])
    flips = st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=30
    ).map(lambda fl: lambda b: _flip(b, fl))
    noise = st.binary(max_size=8000).map(lambda r: lambda b: r)
    empty = st.just(lambda b: b"")
    options = [cut, flips, noise, empty]
    if kind == "fits":
        cards = st.builds(
            lambda k, n, v: lambda b: set_card(b, k, n, v),
            st.sampled_from(HEADER_KEYS),
            st.integers(0, 5),
            card_values,
        )
        padded = st.binary(max_size=3000).map(lambda r: lambda b: b[:2880] + r)
        options += [cards, cards, padded]
    return st.one_of(options)


def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data)
    if out:
        for where, value in flips:
            out[int(where * len(out))] = value
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# strategies: HDF5 files with the wrong content
# --------------------------------------------------------------------------------------------------

DTYPES = ["<f4", ">f8", "<i2", "u1", "?", "<c8", "S4", "<i8"]
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(SPEC_TYPES),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
spec_keys = st.sampled_from(
    ["type", "img_size", "fwhm", "profile", "n_views", "ratio", "m", "fraction", "noise", "size"]
)
operator_specs = st.one_of(
    json_values,
    st.dictionaries(spec_keys, json_values, max_size=5),
    st.sampled_from(list(PRESETS)).map(lambda name: {**resolve_spec(name), "img_size": None}),
    st.builds(
        lambda name, key, value: {**resolve_spec(name), key: value},
        st.sampled_from(list(PRESETS)),
        spec_keys,
        st.one_of(json_values, st.sampled_from(HUGE), st.just([1, 2**20, 2**20])),
    ),
)


@st.composite
def hdf5_contents(draw: st.DrawFn) -> dict[str, Any]:
    """Datasets (name -> array or a huge declared shape) and an ``operator`` attribute."""
    names = draw(st.lists(st.sampled_from(["y", "x", "truth", "psf", "mask", "other"]), max_size=4))
    data: dict[str, Any] = {}
    for name in names:
        if draw(st.integers(0, 9)) == 0:
            data[name] = ("huge", draw(st.sampled_from([(2**20, 2**20), (1, 2**16, 2**16, 2**8)])))
            continue
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = draw(array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
        data[name] = draw(arrays(dtype, shape))
    operator = draw(st.one_of(st.none(), operator_specs, st.binary(max_size=20)))
    return {"data": data, "operator": operator}


def write_hdf5_contents(path: Path, contents: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        for name, value in contents["data"].items():
            if isinstance(value, tuple) and value[0] == "huge":
                f.create_dataset(name, shape=value[1], dtype="f4", chunks=(1,) * len(value[1]))
            else:
                f.create_dataset(name, data=value)
        operator = contents["operator"]
        if isinstance(operator, bytes):
            f.attrs["operator"] = np.void(operator) if operator else "not json {"
        elif operator is not None:
            f.attrs["operator"] = json.dumps(operator)
            f.attrs["_dwgf_json"] = json.dumps(["operator"])


def write_fits_measurement(path: Path, operator: Any, y: np.ndarray) -> None:
    """A FITS file whose provenance claims ``operator`` made the measurement ``y``."""
    from dwgf_sci.io import write_fits

    record = {"kind": "measurement", "operator": operator}
    write_fits(path, y, provenance=record, check_finite=False)


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------


def check_readers(path: Path) -> None:
    result = ours_or_result(lambda: read_measurement(path))
    if not isinstance(result, DwgfError):
        assert torch.isfinite(result.y).all()
    if path.suffix == ".fits":
        ours_or_result(lambda: read_fits(path))
        ours_or_result(lambda: read_fits(path, hdu="TRUTH"))
        ours_or_result(lambda: read_fits(path, hdu=None))
    else:
        ours_or_result(lambda: read_hdf5(path, key="y", as_image=False))
        ours_or_result(lambda: read_hdf5(path, key="truth"))
    ours_or_result(lambda: read_provenance(path))


@FAST
@given(damage=damaged("fits"))
def test_damaged_fits_files_give_our_errors(valid, damage):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.fits"
        path.write_bytes(damage(valid["fits"]))
        check_readers(path)


@pytest.mark.parametrize(
    "magic",
    [b"PK\x03\x04", b"\x1f\x8b\x08", b"BZh", b"\xfd7zXZ\x00"],
    ids=["zip", "gz", "bz2", "xz"],
)
@pytest.mark.parametrize("tail", ["none", "fits"])
def test_compression_magic_without_archive_is_our_error(valid, magic, tail):
    """A file that starts like a compressed archive but is not one (astropy opens it by magic)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.fits"
        path.write_bytes(magic + (valid["fits"] if tail == "fits" else b""))
        check_readers(path)


@FAST
@given(damage=damaged("h5"))
def test_damaged_hdf5_files_give_our_errors(valid, damage):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.h5"
        path.write_bytes(damage(valid["h5"]))
        check_readers(path)


def test_fits_with_an_unparsable_structural_card(valid, tmp_path):
    """Found by the fuzzer: a NUL byte in the NAXIS2 card of an extension."""
    path = tmp_path / "x.fits"
    path.write_bytes(_flip(valid["fits"], [(0.390625, 0)]))
    check_readers(path)


@pytest.mark.parametrize("where", [0.0625, 0.3, 0.5])
def test_hdf5_with_damaged_object_headers(valid, tmp_path, where):
    """Found by the fuzzer: a damaged root object header broke the attribute readers."""
    path = tmp_path / "x.h5"
    path.write_bytes(_flip(valid["h5"], [(where, 1)]))
    check_readers(path)


@FAST
@given(contents=hdf5_contents())
def test_hdf5_files_with_wrong_contents_give_our_errors(contents):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.h5"
        write_hdf5_contents(path, contents)
        check_readers(path)


@pytest.mark.parametrize(
    "header",
    [
        # huge declared dimensions, almost no data: plain, gzip and tile-compressed
        {"BITPIX": -64, "NAXIS": 2, "NAXIS1": 10**5, "NAXIS2": 10**5},
        {"BITPIX": 8, "NAXIS": 3, "NAXIS1": 2**31 - 1, "NAXIS2": 2**31 - 1, "NAXIS3": 9},
        {"BITPIX": 7, "NAXIS": 2, "NAXIS1": 4, "NAXIS2": 4},  # no such BITPIX
        {"BITPIX": -32, "NAXIS": 1000, "NAXIS1": 4},
        {"BITPIX": -32, "NAXIS": -1},
        {"BITPIX": -32, "NAXIS": 2, "NAXIS1": -4, "NAXIS2": 4},
    ],
)
@pytest.mark.parametrize("gzip", [False, True])
def test_fits_headers_declaring_impossible_data(tmp_path, header, gzip):
    import gzip as gz

    cards = ["SIMPLE  =                    T"]
    cards += [f"{k:<8}= {v:>20}" for k, v in header.items()]
    text = "".join(c.ljust(80) for c in cards) + "END".ljust(80)
    raw = text.ljust(2880).encode("ascii") + b"\0" * 2880
    path = tmp_path / ("x.fits.gz" if gzip else "x.fits")
    path.write_bytes(gz.compress(raw) if gzip else raw)
    for action in (lambda: read_fits(path), lambda: read_measurement(path)):
        assert isinstance(ours_or_result(action), DwgfError)


@pytest.mark.parametrize(
    "key, occurrence, value",
    [
        ("PCOUNT", 0, -2880),  # the next header would lie before this one: astropy loops
        ("GCOUNT", 0, -1),
        ("NAXIS1", 2, -2880),
        ("NAXIS", 0, 2**63 - 1),  # astropy iterates over range(NAXIS)
        ("NAXIS", 1, 2**63 - 1),
        ("BITPIX", 0, 7),
    ],
)
def test_fits_headers_that_made_astropy_loop(valid, tmp_path, key, occurrence, value):
    """Found by the fuzzer: these hung the readers (and grew memory without bound)."""
    for name, data in (("x.fits", valid["fits"]), ("x.fits.gz", None)):
        path = tmp_path / name
        damaged_bytes = set_card(valid["fits"], key, occurrence, value)
        if data is None:
            import gzip as gz

            damaged_bytes = gz.compress(damaged_bytes)
        path.write_bytes(damaged_bytes)
        for action in (lambda p=path: read_fits(p), lambda p=path: read_measurement(p)):
            assert isinstance(ours_or_result(action), DwgfError)


def test_tile_compressed_fits_declaring_a_huge_image(tmp_path):
    from astropy.io import fits

    path = tmp_path / "comp.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((64, 64), np.float32))]).writeto(
        path
    )
    raw = path.read_bytes()
    raw = set_card(raw, "ZNAXIS1", 0, 200000)
    raw = set_card(raw, "ZNAXIS2", 0, 200000)
    path.write_bytes(raw)
    err = ours_or_result(lambda: read_fits(path, hdu=1))
    assert isinstance(err, DwgfError) and "DWGF_MAX_READ_VALUES" in str(err)


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``dwgf-sci argv`` (argparse exits count as status)."""
    capsys.readouterr()
    with no_hang(240):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    err = capsys.readouterr().err
    return code, err


def check_cli_outcome(code: int, err: str, out_dir: Path, usage_ok: bool = False) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        assert lines
        if usage_ok and lines[0].startswith("usage:"):  # argparse: usage, then one error line
            assert lines[-1].startswith("dwgf-sci reconstruct: error:") or lines[-1].startswith(
                "dwgf-sci: error:"
            )
        else:
            for line in lines:
                assert line.startswith("dwgf-sci: ") or line.startswith("[rank"), line
    if out_dir.exists():
        assert not [p for p in out_dir.rglob(".tmp-*")], "a temporary file was left"
        for output in out_dir.rglob("*_posterior.*"):
            assert isinstance(ours_or_result(lambda o=output: read_provenance(o)), dict)
        status = out_dir / "dwgf-manifest.json"
        if status.exists():
            items = json.loads(status.read_text())["items"]
            for entry in items.values():
                exists = (out_dir / entry["output"]).exists()
                assert exists == (entry["status"] == "done"), entry


def cli_args(path: Path, out: Path, prior_dir: Path) -> list[str]:
    return [
        "reconstruct",
        str(path),
        "--prior",
        str(prior_dir),
        "--out",
        str(out),
        "--steps",
        "1",
        "--particles",
        "1",
        "--quiet",
    ]


@SLOW
@given(damage=damaged("fits"))
def test_cli_on_damaged_fits_files(valid, prior_dir, capsys, damage):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "x.fits", Path(tmp) / "out"
        path.write_bytes(damage(valid["fits"]))
        code, err = run_cli(cli_args(path, out, prior_dir), capsys)
        check_cli_outcome(code, err, out)


@SLOW
@given(contents=hdf5_contents())
def test_cli_on_hdf5_files_with_wrong_contents(prior_dir, capsys, contents):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "x.h5", Path(tmp) / "out"
        write_hdf5_contents(path, contents)
        code, err = run_cli(cli_args(path, out, prior_dir), capsys)
        check_cli_outcome(code, err, out)


@SLOW
@given(
    operator=operator_specs,
    y=arrays(
        np.float32,
        st.sampled_from([(32, 32), (16, 16), (1, 32, 32), (5,), (2, 3, 32, 32)]),
        elements=st.floats(-(2.0**100), 2.0**100, width=32) | st.sampled_from([np.nan, np.inf]),
    ),
)
def test_cli_on_fits_files_with_wrong_operator_specs(prior_dir, capsys, operator, y):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "x.fits", Path(tmp) / "out"
        try:
            write_fits_measurement(path, operator, y)
        except DwgfError:
            return  # the writer refuses it (e.g. a 1-D image): nothing to read
        code, err = run_cli(cli_args(path, out, prior_dir), capsys)
        check_cli_outcome(code, err, out)


TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=12)
numbers = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e400", "10**9", "", " ", "x"]),
    st.integers(-3, 3).map(str),
    st.sampled_from([str(2**63), str(-(2**70)), str(10**12)]),
)
set_values = (
    st.builds(
        lambda k, v: f"{k}={v}",
        st.one_of(spec_keys, st.sampled_from(["noise.sigma", "noise.type", "a.b.c"]), TEXT),
        st.one_of(numbers, TEXT, st.sampled_from(["[1, 2]", "{a = 1}", '"x"', "true", "none"])),
    )
    | TEXT
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    args: list[str] = []
    if draw(st.booleans()):
        args += ["--operator", draw(st.sampled_from([*PRESETS, "warp", "", "x.toml", "../x.toml"]))]
    for value in draw(st.lists(set_values, max_size=2)):
        args += ["--set", value]
    for option in ("--steps", "--particles", "--max-batch", "--seed", "--threads", "--noise-sigma"):
        if draw(st.integers(0, 3)) == 0:
            args += [option, draw(numbers)]
    if draw(st.integers(0, 4)) == 0:
        args += ["--preset", draw(st.sampled_from(["default", "reference", "fast", ""]))]
    if draw(st.integers(0, 4)) == 0:
        args += ["--format", draw(st.sampled_from(["fits", "hdf5", "png"]))]
    if draw(st.integers(0, 5)) == 0:
        args += ["--device", draw(st.sampled_from(["cpu", "cuda", "cuda:7", "mps", "meta", "x"]))]
    if draw(st.integers(0, 6)) == 0:
        args += ["--manifest", draw(st.sampled_from(["{dir}/missing.txt", "{dir}/list.bin"]))]
    return args


@SLOW
@given(extra=command_lines())
def test_cli_with_malformed_arguments(valid, prior_dir, capsys, extra):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, out = folder / "obs.fits", folder / "out"
        path.write_bytes(valid["fits"])
        (folder / "list.bin").write_bytes(b"\x00\xff\x01")
        extra = [arg.replace("{dir}", tmp) for arg in extra]
        before = torch.get_num_threads()
        try:
            code, err = run_cli(cli_args(path, out, prior_dir) + extra, capsys)
        finally:
            torch.set_num_threads(before)
        check_cli_outcome(code, err, out, usage_ok=True)
