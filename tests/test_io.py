"""Tests of dwgf_sci.io: FITS/HDF5 round trips, metadata, provenance, errors and atomic writes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

import dwgf_sci
from dwgf_sci.errors import (
    ConfigError,
    FileFormatError,
    InvalidDataError,
    OutputExistsError,
    ShapeError,
)
from dwgf_sci.io import (
    atomic_output,
    make_provenance,
    normalize_provenance,
    read_fits,
    read_hdf5,
    read_provenance,
    write_fits,
    write_hdf5,
)
from dwgf_sci.io.fits import is_structural

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def tan_header(shape: tuple[int, int] = (32, 40)) -> fits.Header:
    """A header with a TAN WCS and the kinds of cards a real image carries."""
    h = fits.Header()
    h["OBJECT"] = ("M13", "target")
    h["BUNIT"] = ("count", "pixel unit")
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 250.4226, 36.4602
    h["CRPIX1"], h["CRPIX2"] = shape[1] / 2 + 0.5, shape[0] / 2 + 0.5
    h["CD1_1"], h["CD1_2"] = -2.7e-4, 1.1e-5
    h["CD2_1"], h["CD2_2"] = 1.3e-5, 2.7e-4
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["RADESYS"], h["EQUINOX"] = "ICRS", 2000.0
    h["EXPTIME"] = (300.0, "[s]")
    h["HIERARCH ESO DET CHIP NAME"] = "CCD-44"
    h["LONGSTR"] = "a long string value " * 8  # CONTINUE cards
    h.add_comment("a comment card")
    h.add_history("reduced by hand")
    h.add_history("flat-fielded")
    h.add_blank("")
    return h


def cards(header: fits.Header) -> list[tuple[str, object, str]]:
    """The non-structural cards of a header as (keyword, value, comment), in order."""
    out = []
    for card in header.cards:
        if is_structural(card.keyword) or card.keyword.upper().startswith("DWGF "):
            continue
        value = card.value
        if isinstance(value, float) and np.isnan(value):
            value = "nan"
        out.append((card.keyword, value, card.comment))
    return out


def bits(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Bit pattern of a float32 array (so that NaN payloads and -0.0 compare exactly)."""
    arr = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files left by an atomic write."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 32, 40, generator=g) * 1e3
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-45, 3.4e38])  # subnormal, extremes
    return x


# --------------------------------------------------------------------------------------------------
# FITS round trips
# --------------------------------------------------------------------------------------------------


def test_fits_float32_round_trip_is_bit_exact_and_keeps_every_card(tmp_path, image):
    header = tan_header()
    before = header.tostring()
    path = write_fits(tmp_path / "x.fits", image, header=header)
    assert header.tostring() == before  # the caller's header is not modified
    x, h = read_fits(path)
    assert x.shape == (1, 1, 32, 40) and x.dtype == torch.float32
    assert np.array_equal(bits(x), bits(image))
    assert cards(h) == cards(header)
    assert h["BITPIX"] == -32 and "CHECKSUM" in h


def test_fits_wcs_is_identical_after_round_trip(tmp_path, image):
    header = tan_header()
    write_fits(tmp_path / "x.fits", image, header=header)
    _, h = read_fits(tmp_path / "x.fits")
    pix = np.array([[0.0, 0.0], [10.5, 3.25], [39.0, 31.0]])
    assert np.array_equal(WCS(header).all_pix2world(pix, 0), WCS(h).all_pix2world(pix, 0))
    assert WCS(h).wcs.ctype[0] == "RA---TAN"


def test_fits_int16_with_bzero_bscale_gives_physical_values(tmp_path):
    raw = np.arange(-600, 600, dtype=np.int16).reshape(30, 40)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BZERO"], hdu.header["BSCALE"] = 32768.0, 0.5
    hdu.writeto(tmp_path / "scaled.fits")
    x, h = read_fits(tmp_path / "scaled.fits")
    expected = raw.astype(np.float64) * 0.5 + 32768.0  # exact in float32
    assert np.array_equal(x[0, 0].numpy(), expected.astype(np.float32))
    assert h["BITPIX"] == 16 and h["BZERO"] == 32768.0  # header as in the file
    # writing the physical values drops BZERO/BSCALE: the stored values are exactly x
    write_fits(tmp_path / "out.fits", x, header=h)
    y, h2 = read_fits(tmp_path / "out.fits")
    assert np.array_equal(bits(y), bits(x))
    assert "BZERO" not in h2 and "BSCALE" not in h2 and h2["BITPIX"] == -32


def test_fits_integer_arrays_keep_their_dtype(tmp_path):
    raw = np.arange(-100, 100, dtype=np.int16).reshape(10, 20)
    write_fits(tmp_path / "i16.fits", raw)
    with fits.open(tmp_path / "i16.fits") as f:
        assert f[0].header["BITPIX"] == 16
    x, _ = read_fits(tmp_path / "i16.fits")
    assert np.array_equal(x[0, 0].numpy(), raw.astype(np.float32))
    u16 = np.array([[0, 1, 65535]], dtype=np.uint16)
    write_fits(tmp_path / "u16.fits", u16)
    assert read_fits(tmp_path / "u16.fits")[0].flatten().tolist() == [0.0, 1.0, 65535.0]


def test_fits_big_endian_input_and_files(tmp_path):
    big = (np.arange(12 * 16, dtype=np.float32).reshape(12, 16) / 7).astype(">f4")
    copy = big.copy()
    write_fits(tmp_path / "be.fits", big)
    assert big.dtype == np.dtype(">f4") and np.array_equal(big, copy)  # caller's array untouched
    x, _ = read_fits(tmp_path / "be.fits")  # astropy stores big-endian
    assert x.numpy().dtype.isnative
    assert np.array_equal(x[0, 0].numpy(), big.astype(np.float32))
    little = np.asarray(big, dtype="<f4")
    write_fits(tmp_path / "le.fits", torch.from_numpy(little))
    assert np.array_equal(read_fits(tmp_path / "le.fits")[0].numpy(), x.numpy())


def test_fits_layouts_cubes_and_stacks(tmp_path):
    cube = torch.rand(3, 8, 9)
    write_fits(tmp_path / "cube.fits", cube[None])
    x, h = read_fits(tmp_path / "cube.fits")
    assert x.shape == (1, 3, 8, 9) and h["NAXIS"] == 3 and torch.equal(x[0], cube)
    with pytest.raises(ShapeError, match="cube"):
        read_fits(tmp_path / "cube.fits", allow_cube=False)
    # degenerate leading axes are fine for an image
    fits.PrimaryHDU(np.ones((1, 1, 5, 6), np.float32)).writeto(tmp_path / "deg.fits")
    assert read_fits(tmp_path / "deg.fits", allow_cube=False)[0].shape == (1, 1, 5, 6)
    # a 2-D image in, a 2-D image on disk
    write_fits(tmp_path / "img.fits", torch.rand(1, 1, 4, 5))
    assert read_fits(tmp_path / "img.fits")[1]["NAXIS"] == 2
    # a batch of several images is not one image
    with pytest.raises(ShapeError, match="SAMPLES"):
        write_fits(tmp_path / "batch.fits", torch.rand(2, 1, 4, 5))
    assert not (tmp_path / "batch.fits").exists()
    fits.PrimaryHDU(np.ones(5, np.float32)).writeto(tmp_path / "vec.fits")
    with pytest.raises(ShapeError):
        read_fits(tmp_path / "vec.fits")


def test_fits_extra_extensions(tmp_path, image):
    std = image.abs() * 0.1
    samples = torch.rand(4, 1, 32, 40)
    mask = torch.rand(1, 1, 32, 40) > 0.5
    write_fits(tmp_path / "x.fits", image, extra={"std": std, "SAMPLES": samples, "Mask": mask})
    with fits.open(tmp_path / "x.fits") as f:
        assert [h.name for h in f] == ["PRIMARY", "STD", "SAMPLES", "MASK"]
    assert torch.equal(read_fits(tmp_path / "x.fits", "STD")[0], std)
    assert torch.equal(read_fits(tmp_path / "x.fits", "samples")[0], samples)
    assert torch.equal(read_fits(tmp_path / "x.fits", 3)[0], mask.float())
    for bad in ({"PRIMARY": std}, {"std": std, "STD": std}, {"": std}, {"PROVENANCE": std}):
        with pytest.raises(ConfigError):
            write_fits(tmp_path / "bad.fits", image, extra=bad)
    assert not (tmp_path / "bad.fits").exists()


def test_astropy_real_sky_image(tmp_path):
    from astropy.utils.data import get_pkg_data_filename

    try:
        src = Path(get_pkg_data_filename("data/m13.fits", "astropy.io.fits.hdu.compressed.tests"))
    except (OSError, ImportError, ModuleNotFoundError):
        pytest.skip("astropy's test data (m13.fits) is not shipped with this installation")
    if not src.is_file():
        pytest.skip("astropy's test data (m13.fits) is not shipped with this installation")
    path = tmp_path / "m13.fits"
    shutil.copyfile(src, path)
    before, mtime = digest(path), path.stat().st_mtime_ns
    x, h = read_fits(path)
    assert digest(path) == before and path.stat().st_mtime_ns == mtime  # never modified
    with fits.open(src) as f:
        reference = f[0].data.astype(np.float32)
    assert x.shape == (1, 1, 300, 300) and np.array_equal(x[0, 0].numpy(), reference)
    ra, dec = WCS(h).all_pix2world([[149.5, 149.5]], 0)[0]
    assert ra == pytest.approx(250.4226) and dec == pytest.approx(36.4602)
    write_fits(tmp_path / "copy.fits", x, header=h)
    y, h2 = read_fits(tmp_path / "copy.fits")
    assert np.array_equal(bits(y), bits(x)) and cards(h2) == cards(h)
    assert any("SkyView" in str(c) for c in h2["COMMENT"])


def test_compressed_and_gzipped_files(tmp_path, image):
    comp = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.arange(64.0).reshape(8, 8))])
    comp.writeto(tmp_path / "comp.fits")
    x, _ = read_fits(tmp_path / "comp.fits", hdu=None)  # first HDU with image data
    assert torch.allclose(x[0, 0].double(), torch.arange(64.0, dtype=torch.float64).reshape(8, 8))
    write_fits(tmp_path / "x.fits.gz", image)
    assert (tmp_path / "x.fits.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert torch.equal(read_fits(tmp_path / "x.fits.gz")[0], image)


def test_read_fits_float64_option(tmp_path):
    data = np.array([[1.0 + 2**-40, 2.0]])
    fits.PrimaryHDU(data).writeto(tmp_path / "f64.fits")
    assert read_fits(tmp_path / "f64.fits", dtype=torch.float64)[0][0, 0, 0, 0].item() == data[0, 0]
    with pytest.raises(ConfigError):
        read_fits(tmp_path / "f64.fits", dtype=torch.int32)


# --------------------------------------------------------------------------------------------------
# FITS errors
# --------------------------------------------------------------------------------------------------


def test_fits_nan_inf_is_reported_with_counts(tmp_path):
    data = np.ones((6, 6), np.float32)
    data[0, :2] = np.nan
    data[1, 0] = np.inf
    fits.PrimaryHDU(data).writeto(tmp_path / "nan.fits")
    with pytest.raises(InvalidDataError, match=r"2 NaN and 1 Inf") as err:
        read_fits(tmp_path / "nan.fits")
    assert "nan.fits" in str(err.value)
    x, _ = read_fits(tmp_path / "nan.fits", check_finite=False)
    assert int(torch.isnan(x).sum()) == 2 and int(torch.isinf(x).sum()) == 1
    # BLANK pixels of integer images are NaN too
    blank = fits.PrimaryHDU(np.array([[1, -999]], dtype=np.int16))
    blank.header["BLANK"] = -999
    blank.writeto(tmp_path / "blank.fits")
    with pytest.raises(InvalidDataError, match="1 NaN"):
        read_fits(tmp_path / "blank.fits")
    # writing NaN is refused before any file exists, unless asked for
    with pytest.raises(InvalidDataError, match="NaN"):
        write_fits(tmp_path / "out.fits", torch.from_numpy(data))
    with pytest.raises(InvalidDataError, match="extra"):
        write_fits(tmp_path / "out.fits", torch.zeros(2, 2), extra={"STD": torch.from_numpy(data)})
    assert not (tmp_path / "out.fits").exists() and not leftovers(tmp_path)
    write_fits(tmp_path / "out.fits", torch.from_numpy(data), check_finite=False)
    assert torch.isnan(read_fits(tmp_path / "out.fits", check_finite=False)[0]).sum() == 2


def test_fits_missing_file_and_missing_hdu(tmp_path, image):
    with pytest.raises(FileFormatError, match="not found.*nope.fits"):
        read_fits(tmp_path / "nope.fits")
    with pytest.raises(FileFormatError, match="folder"):
        read_fits(tmp_path)
    write_fits(tmp_path / "x.fits", image, extra={"STD": image})
    with pytest.raises(FileFormatError, match=r"no HDU 5.*PRIMARY.*STD") as err:
        read_fits(tmp_path / "x.fits", hdu=5)
    assert "x.fits" in str(err.value)
    with pytest.raises(FileFormatError, match=r"no HDU named 'NOPE'.*STD"):
        read_fits(tmp_path / "x.fits", hdu="NOPE")
    with pytest.raises(ConfigError):
        read_fits(tmp_path / "x.fits", hdu=1.5)  # type: ignore[arg-type]
    assert torch.equal(read_fits(tmp_path / "x.fits", hdu=-1)[0], image)


def test_fits_hdu_without_data_or_not_an_image(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="A", format="E", array=[1.0])])
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 3)), name="SCI"), table])
    hdul.writeto(tmp_path / "mef.fits")
    with pytest.raises(FileFormatError, match=r"no data.*SCI"):
        read_fits(tmp_path / "mef.fits")
    with pytest.raises(FileFormatError, match="BinTableHDU, not an image"):
        read_fits(tmp_path / "mef.fits", hdu=2)
    assert read_fits(tmp_path / "mef.fits", hdu=None)[0].shape == (1, 1, 3, 3)
    versions = [fits.ImageHDU(np.full((2, 2), v), name="SCI", ver=v) for v in (1, 2)]
    fits.HDUList([fits.PrimaryHDU(), *versions]).writeto(tmp_path / "ver.fits")
    assert float(read_fits(tmp_path / "ver.fits", hdu=("SCI", 2))[0].mean()) == 2.0
    with pytest.raises(FileFormatError, match="SCI"):
        read_fits(tmp_path / "ver.fits", hdu=("SCI", 3))
    fits.PrimaryHDU().writeto(tmp_path / "empty.fits")
    with pytest.raises(FileFormatError, match="no HDU with image data"):
        read_fits(tmp_path / "empty.fits", hdu=None)


@pytest.mark.parametrize("keep", [0.5, 0.97, "header", "hdu"])
def test_fits_truncated_file(tmp_path, image, keep):
    write_fits(tmp_path / "x.fits", image, extra={"STD": image})
    data = (tmp_path / "x.fits").read_bytes()
    if keep == "hdu":  # cut exactly after the primary HDU: still valid FITS
        with fits.open(tmp_path / "x.fits") as f:
            cut = f[1]._header_offset
    else:
        cut = 2000 if keep == "header" else int(len(data) * keep)
    (tmp_path / "cut.fits").write_bytes(data[:cut])
    with pytest.raises(FileFormatError, match="cut.fits"):
        read_fits(tmp_path / "cut.fits")


def test_fits_corrupt_file(tmp_path):
    (tmp_path / "junk.fits").write_bytes(os.urandom(5000))
    with pytest.raises(FileFormatError, match="junk.fits"):
        read_fits(tmp_path / "junk.fits")
    (tmp_path / "text.fits").write_text("SIMPLE but not really FITS\n" * 200)
    with pytest.raises(FileFormatError):
        read_fits(tmp_path / "text.fits")


def test_existing_output_is_refused_and_left_unchanged(tmp_path, image):
    path = write_fits(tmp_path / "x.fits", image)
    before = digest(path)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_fits(path, image + 1)
    with pytest.raises(OutputExistsError):
        write_hdf5(path, {"x": image})
    assert digest(path) == before and not leftovers(tmp_path)
    write_fits(path, image + 1, overwrite=True)
    assert torch.equal(read_fits(path)[0], image + 1)
    with pytest.raises(FileFormatError, match="folder does not exist"):
        write_fits(tmp_path / "no" / "x.fits", image)


def test_failed_write_leaves_no_partial_file(tmp_path, image, monkeypatch):
    path = write_fits(tmp_path / "old.fits", image)
    before = digest(path)

    def broken_writeto(self, fileobj, *args, **kwargs):
        Path(fileobj).write_bytes(b"SIMPLE  = partial")
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken_writeto)
    with pytest.raises(OSError, match="disk full"):
        write_fits(tmp_path / "new.fits", image)
    with pytest.raises(OSError, match="disk full"):
        write_fits(path, image + 2, overwrite=True)
    assert not (tmp_path / "new.fits").exists()
    assert digest(path) == before and not leftovers(tmp_path)


def test_atomic_output_cleans_up_on_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_output(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"whole")
    assert (tmp_path / "a.bin").read_bytes() == b"whole" and not leftovers(tmp_path)
    # a file that appears while writing is not clobbered without overwrite
    with pytest.raises(OutputExistsError), atomic_output(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"mine")
        (tmp_path / "b.bin").write_bytes(b"theirs")
    assert (tmp_path / "b.bin").read_bytes() == b"theirs" and not leftovers(tmp_path)


def test_written_file_has_normal_permissions(tmp_path, image):
    path = write_fits(tmp_path / "x.fits", image)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------


def sample_record() -> dict:
    return make_provenance(
        command="simulate",
        seed=7,
        operator={"name": "psf", "fwhm": 3.25, "kernel": np.ones((2, 2)), "pad": (1, 2)},
        noise={"kind": "gaussian", "sigma": 0.01, "clip": None},
        note="µ-Jy ünïcode " + "long text " * 800,  # far beyond one card
        flags=[True, False],
    )


def test_make_provenance_fields():
    rec = sample_record()
    assert rec["software"] == "dwgf-sci" and rec["version"] == dwgf_sci.__version__
    assert rec["libraries"]["torch"] == torch.__version__
    assert rec["libraries"]["deepinv"] == importlib.metadata.version("deepinv")
    assert rec["created"].endswith("Z")
    assert rec["operator"]["kernel"] == [[1.0, 1.0], [1.0, 1.0]]
    assert rec["operator"]["pad"] == [1, 2]
    assert json.loads(json.dumps(rec)) == rec  # plain JSON types only
    assert normalize_provenance(rec) == rec
    host_keys = {"host", "hostname", "user", "cwd", "path"}
    assert not host_keys & set(rec)
    with pytest.raises(InvalidDataError):
        make_provenance(bad={1: "int key"})
    with pytest.raises(InvalidDataError):
        make_provenance(bad=object())


def test_make_provenance_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert make_provenance()["created"] == "1970-01-01T00:00:00Z"


def test_provenance_round_trip_fits(tmp_path, image):
    rec = sample_record()
    path = write_fits(tmp_path / "x.fits", image, header=tan_header(), provenance=rec)
    assert read_provenance(path) == rec
    x, h = read_fits(path)
    assert torch.equal(x, image)
    assert h["DWGF SEED"] == 7 and h["DWGF OPERATOR NAME"] == "psf"
    assert h["DWGF VERSION"] == dwgf_sci.__version__
    assert any("PROVENANCE" in str(line) for line in h["HISTORY"])
    # rewriting with this header and a new record replaces the summary cards
    rec2 = make_provenance(seed=8)
    write_fits(tmp_path / "y.fits", x, header=h, provenance=rec2)
    h2 = read_fits(tmp_path / "y.fits")[1]
    assert h2["DWGF SEED"] == 8 and list(h2.keys()).count("DWGF SEED") == 1
    assert "DWGF OPERATOR NAME" not in h2
    assert read_provenance(tmp_path / "y.fits") == rec2
    assert cards(h2)[: len(cards(tan_header()))] == cards(tan_header())


def test_provenance_round_trip_hdf5_and_absent(tmp_path, image):
    rec = sample_record()
    path = write_hdf5(tmp_path / "x.h5", {"x": image}, attrs={"a": 1}, provenance=rec)
    assert read_provenance(path) == rec
    assert read_hdf5(path)[1] == {"a": 1}  # provenance is not an ordinary attribute
    write_fits(tmp_path / "plain.fits", image)
    write_hdf5(tmp_path / "plain.h5", {"x": image})
    assert read_provenance(tmp_path / "plain.fits") is None
    assert read_provenance(tmp_path / "plain.h5") is None
    write_fits(tmp_path / "default.fits", image, provenance=True)
    assert read_provenance(tmp_path / "default.fits")["version"] == dwgf_sci.__version__
    (tmp_path / "other.txt").write_text("hello")
    with pytest.raises(FileFormatError, match="neither a FITS nor an HDF5"):
        read_provenance(tmp_path / "other.txt")
    with pytest.raises(ConfigError):
        write_fits(tmp_path / "bad.fits", image, provenance="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------------------------------


def test_hdf5_round_trip_with_attributes(tmp_path, image):
    attrs = {
        "operator": {"name": "ct", "views": 30, "angles": [0.0, 6.0], "nested": {"a": None}},
        "seed": 3,
        "sigma": 0.05,
        "flag": True,
        "label": "résumé",
        "weights": np.arange(5, dtype=np.float64),
        "tensor": torch.tensor([1, 2, 3], dtype=torch.int32),
        "shape": (2, 3),
        "nothing": None,
        "nul": "a\x00b",
    }
    y = torch.randint(-5, 5, (1, 7), dtype=torch.int16)
    path = write_hdf5(tmp_path / "x.h5", {"x": image, "meas/y": y}, attrs=attrs)
    x, got = read_hdf5(path)
    assert np.array_equal(bits(x), bits(image))
    assert got["operator"] == attrs["operator"]
    assert got["seed"] == 3 and isinstance(got["seed"], int)
    assert got["sigma"] == 0.05 and got["flag"] is True and got["label"] == "résumé"
    assert np.array_equal(got["weights"], attrs["weights"])
    assert np.array_equal(got["tensor"], [1, 2, 3]) and got["tensor"].dtype == np.int32
    assert got["shape"] == [2, 3] and got["nothing"] is None and got["nul"] == "a\x00b"
    y2, _ = read_hdf5(path, "meas/y", as_image=False)
    assert y2.shape == (1, 7) and torch.equal(y2, y.float())
    assert read_hdf5(path, "meas/y")[0].shape == (1, 1, 1, 7)
    with h5py.File(path) as f:
        assert f["x"].dtype == np.float32 and f["meas/y"].dtype == np.int16


def test_hdf5_large_attribute(tmp_path, image):
    spec = {"psf": np.random.default_rng(0).random((64, 64)).tolist()}  # ~80 kB of JSON
    write_hdf5(tmp_path / "x.h5", {"x": image}, attrs={"operator": spec})
    assert read_hdf5(tmp_path / "x.h5")[1]["operator"] == spec


def test_hdf5_errors(tmp_path, image):
    path = write_hdf5(tmp_path / "x.h5", {"x": image, "grp/y": image})
    with pytest.raises(FileFormatError, match=r"no dataset 'z'.*grp/y.*x") as err:
        read_hdf5(path, "z")
    assert "x.h5" in str(err.value)
    with pytest.raises(FileFormatError, match="group"):
        read_hdf5(path, "grp")
    with pytest.raises(FileFormatError, match="not found"):
        read_hdf5(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(os.urandom(3000))
    with pytest.raises(FileFormatError, match="not an HDF5 file"):
        read_hdf5(tmp_path / "junk.h5")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="cut.h5"):
        read_hdf5(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "str.h5", "w") as f:
        f["x"] = np.array([b"abc", b"def"])
    with pytest.raises(InvalidDataError, match="non-numeric"):
        read_hdf5(tmp_path / "str.h5")
    nan = image.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidDataError, match="1 NaN"):
        write_hdf5(tmp_path / "nan.h5", {"x": nan})
    with pytest.raises(ConfigError, match="reserved"):
        write_hdf5(tmp_path / "nan.h5", {"x": image}, attrs={"_dwgf_json": "x"})
    with pytest.raises(InvalidDataError):
        write_hdf5(tmp_path / "nan.h5", {"x": image}, attrs={"bad": object()})
    with pytest.raises(ConfigError):
        write_hdf5(tmp_path / "nan.h5", {})
    assert not (tmp_path / "nan.h5").exists() and not leftovers(tmp_path)
    write_hdf5(tmp_path / "nan.h5", {"x": nan}, check_finite=False)
    with pytest.raises(InvalidDataError, match="1 NaN"):
        read_hdf5(tmp_path / "nan.h5")
    assert torch.isnan(read_hdf5(tmp_path / "nan.h5", check_finite=False)[0]).sum() == 1
    cube = torch.rand(1, 3, 4, 4)
    write_hdf5(tmp_path / "cube.h5", {"x": cube})
    with pytest.raises(ShapeError):
        read_hdf5(tmp_path / "cube.h5", allow_cube=False)


def test_hdf5_existing_output_and_failure(tmp_path, image, monkeypatch):
    path = write_hdf5(tmp_path / "x.h5", {"x": image})
    before = digest(path)
    with pytest.raises(OutputExistsError):
        write_hdf5(path, {"x": image + 1})
    assert digest(path) == before

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_hdf5(path, {"x": image + 1}, overwrite=True)
    assert digest(path) == before and not leftovers(tmp_path)
    monkeypatch.undo()
    write_hdf5(path, {"x": image + 1}, overwrite=True, compression="gzip")
    assert torch.equal(read_hdf5(path)[0], image + 1)
