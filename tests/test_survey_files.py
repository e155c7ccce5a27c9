"""Survey files in: layouts recognised, noise maps and bad pixels read, masks and maps written out.

Small FITS/HDF5 files in the layouts users bring (SCI/ERR/DQ with a tile-compressed science HDU,
SCI/WHT, IMAGE/MASK/VARIANCE, an IVAR extension, NaN pixels) are read by
:func:`~dwgf_sci.io.measurement.read_measurement` and reconstructed by
:func:`~dwgf_sci.pipelines.reconstruct.reconstruct_file` with the tiny prior.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits

from dwgf_sci.cli import main
from dwgf_sci.errors import ConfigError, FileFormatError, InvalidDataError, ShapeError
from dwgf_sci.io import read_fits, read_hdf5, read_provenance
from dwgf_sci.io.measurement import read_measurement
from dwgf_sci.io.survey import ReadOptions
from dwgf_sci.operators import build_operator, resolve_spec
from dwgf_sci.pipelines.reconstruct import reconstruct_file
from dwgf_sci.pipelines.simulate import simulate
from dwgf_sci.solvers import DWGF

SIZE = 32
SIGMA = 0.05


@pytest.fixture(scope="module")
def solver(prior_dir):
    from dwgf_sci.priors import load_prior

    return DWGF(load_prior(prior_dir), steps=1, particles=2, seed=0)


def image(seed: int = 0) -> np.ndarray:
    """A smooth blob plus noise of sigma SIGMA, float32 (SIZE, SIZE)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = np.exp(-((yy - 15.5) ** 2 + (xx - 14.0) ** 2) / 30.0)
    return (blob + SIGMA * g.standard_normal((SIZE, SIZE))).astype(np.float32)


def sci_header() -> fits.Header:
    h = fits.Header()
    h["BUNIT"] = "MJy/sr"
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = 16.0, 16.0
    h["CRVAL1"], h["CRVAL2"] = 150.1, 2.2
    h["CDELT1"], h["CDELT2"] = -1e-5, 1e-5
    return h


def write_sci_err_dq(path: Path, bad_value: float = math.nan) -> tuple[np.ndarray, np.ndarray]:
    """JWST-like: empty primary, SCI (RICE_1 tile-compressed), ERR (sigma), DQ (bits).

    DQ: bit 1 at (2, 3) and a streak (10, 5:12); bit 4 alone at (20, 20). The science image
    holds ``bad_value`` at the bit-1 pixels and NaN at (30, 1). Returns ``(err, dq)``."""
    sci = image()
    err = np.full((SIZE, SIZE), SIGMA, np.float32)
    err[:, 16:] = 2 * SIGMA
    dq = np.zeros((SIZE, SIZE), np.int32)
    dq[2, 3] = 1
    dq[10, 5:12] = 1
    dq[20, 20] = 4
    sci[dq == 1] = bad_value
    sci[30, 1] = np.nan
    err[30, 1] = np.nan  # as JWST writes it where the data are missing
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(sci, sci_header(), name="SCI", compression_type="RICE_1"),
            fits.ImageHDU(err, name="ERR"),
            fits.ImageHDU(dq, name="DQ"),
        ]
    )
    hdul.writeto(path)
    return err, dq


def psf_spec() -> dict:
    return resolve_spec("psf", ["fwhm=3"])


def run(path: Path, solver, out: Path, read: ReadOptions | None = None, spec=None):
    lines: list[str] = []
    result = reconstruct_file(
        path, solver, out, spec=spec or psf_spec(), read=read, echo=lines.append
    )
    return result, lines


def test_sci_err_dq_with_a_compressed_science_hdu(tmp_path, solver) -> None:
    path = tmp_path / "jw.fits"
    err, dq = write_sci_err_dq(path)
    result, lines = run(path, solver, tmp_path / "out")
    bad = (dq != 0) | np.isnan(err)
    assert lines[0].startswith(f"{path}: layout SCI/ERR/DQ: science HDU 1 (SCI)")
    assert "noise map HDU 2 (ERR) (sigma)" in lines[0] and "HDU 3 (DQ)" in lines[0]
    assert f"{int(bad.sum())} pixel(s) masked" in lines[0]
    assert (
        lines[1] == f"{path}: 9 NaN pixel(s) in the science data masked (--nan error refuses them)"
    )
    with fits.open(result.output) as hdul:
        mask = hdul["MASK"].data
        var = hdul["VARIANCE"].data
        header = hdul[0].header
        assert mask.dtype == np.uint8 and "SAMPLES" in hdul and "STD" in hdul
    np.testing.assert_array_equal(mask.astype(bool), bad)
    np.testing.assert_allclose(var[~bad], (err[~bad].astype(np.float64) ** 2), rtol=1e-6)
    assert np.isinf(var[bad]).all()
    assert header["BUNIT"] == "MJy/sr" and header["CRVAL1"] == 150.1  # the SCI header kept
    assert "EXTNAME" not in header  # but not the name of the HDU it came from
    obs = read_provenance(result.output)["observation"]
    assert obs["layout"] == "SCI/ERR/DQ" and obs["science"] == "1 (SCI)"
    assert obs["noise_map"] == "2 (ERR)" and obs["noise_map_kind"] == "sigma"
    assert obs["dq"] == "3 (DQ)" and obs["dq_bits"] == "non-zero"
    assert obs["nan_pixels"] == 9 and obs["masked_pixels"] == int(bad.sum())
    assert np.isfinite(read_fits(result.output)[0].numpy()).all()


def test_dq_bits_narrow_the_mask(tmp_path) -> None:
    path = tmp_path / "jw.fits"
    err, dq = write_sci_err_dq(path)
    m = read_measurement(path, options=ReadOptions(dq_bits="1"))
    want = (dq & 1 != 0) | np.isnan(err)
    want[30, 1] = True  # NaN science pixel
    np.testing.assert_array_equal(m.mask[0, 0].numpy(), want)
    assert not bool(m.mask[0, 0, 20, 20])  # bit 4 only: kept
    assert m.observation["dq_bits"] == [1]
    assert float(m.y[0, 0, 10, 6]) == 0.0  # masked pixels read 0
    assert math.isinf(float(m.variance[0, 0, 10, 6]))


def test_masked_pixel_values_do_not_change_the_samples(tmp_path, solver) -> None:
    """The same file with NaN or 1e6 at its DQ-flagged pixels gives the same samples."""
    a, b = tmp_path / "a" / "obs.fits", tmp_path / "b" / "obs.fits"
    a.parent.mkdir()
    b.parent.mkdir()
    write_sci_err_dq(a, bad_value=math.nan)
    write_sci_err_dq(b, bad_value=1e6)
    ra, _ = run(a, solver, tmp_path / "out_a")
    rb, _ = run(b, solver, tmp_path / "out_b")
    sa, _ = read_fits(ra.output, "SAMPLES")
    sb, _ = read_fits(rb.output, "SAMPLES")
    assert np.isfinite(sa.numpy()).all() and np.array_equal(sa.numpy(), sb.numpy())


def test_the_companions_of_a_chosen_chip(tmp_path) -> None:
    """Two chips (SCI,1 and SCI,2): ``hdu=("SCI", 2)`` takes ERR,2 and DQ,2."""
    path = tmp_path / "flt.fits"
    hdus = [fits.PrimaryHDU()]
    for ver in (1, 2):
        dq = np.zeros((SIZE, SIZE), np.int16)
        dq[ver, ver] = 16
        for name, data in (
            ("SCI", image(ver)),
            ("ERR", np.full((SIZE, SIZE), ver * SIGMA, np.float32)),
            ("DQ", dq),
        ):
            hdus.append(fits.ImageHDU(data, name=name, ver=ver))
    fits.HDUList(hdus).writeto(path)
    first = read_measurement(path)
    assert first.observation["science"] == "1 (SCI)" and bool(first.mask[0, 0, 1, 1])
    second = read_measurement(path, ("SCI", 2))
    obs = second.observation
    assert obs["layout"] == "SCI/ERR/DQ" and obs["science"] == "4 (SCI, ver 2)"
    assert obs["noise_map"] == "5 (ERR, ver 2)" and obs["dq"] == "6 (DQ, ver 2)"
    assert bool(second.mask[0, 0, 2, 2]) and int(second.mask.sum()) == 1
    assert math.isclose(float(second.variance[0, 0, 0, 0]), (2 * SIGMA) ** 2, rel_tol=1e-6)


def test_sci_wht_is_a_weight_map(tmp_path, solver) -> None:
    path = tmp_path / "drz.fits"
    wht = np.full((SIZE, SIZE), 1 / SIGMA**2, np.float32)
    wht[:4] = 0.0  # no exposure: no information
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(image(), name="SCI"), fits.ImageHDU(wht, name="WHT")]
    ).writeto(path)
    result, lines = run(path, solver, tmp_path / "out")
    assert "layout SCI/WHT" in lines[0] and "(weight)" in lines[0] and len(lines) == 1
    var, _ = read_fits(result.output, "VARIANCE", check_finite=False)
    assert np.isinf(var[0, 0, :4].numpy()).all()
    np.testing.assert_allclose(var[0, 0, 4:].numpy(), SIGMA**2, rtol=1e-5)
    obs = read_provenance(result.output)["observation"]
    assert obs["noise_map_kind"] == "weight" and obs["masked_pixels"] == 4 * SIZE
    # the scale of the weights
    m = read_measurement(path, options=ReadOptions(weight_scale=4.0))
    np.testing.assert_allclose(m.variance[0, 0, 4:].numpy(), 4 * SIGMA**2, rtol=1e-5)


def hsc_file(path: Path) -> np.ndarray:
    """IMAGE/MASK/VARIANCE with the LSST mask-plane cards; DETECTED (bit 5) over the blob,
    BAD (bit 0) at (1, 1), SAT (bit 1) at (5, 5). Returns the variance."""
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[10:20, 10:20] = 1 << 5
    mask[1, 1] = 1
    mask[5, 5] = 2
    mh = fits.Header()
    for plane, bit in (("BAD", 0), ("SAT", 1), ("DETECTED", 5)):
        mh[f"HIERARCH MP_{plane}"] = bit
    var = np.full((SIZE, SIZE), SIGMA**2, np.float32)
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(image(), sci_header(), name="IMAGE"),
            fits.ImageHDU(mask, mh, name="MASK"),
            fits.ImageHDU(var, name="VARIANCE"),
        ]
    ).writeto(path)
    return var


def test_image_mask_variance(tmp_path, solver) -> None:
    path = tmp_path / "calexp.fits"
    hsc_file(path)
    m = read_measurement(path)
    assert m.observation["layout"] == "IMAGE/MASK/VARIANCE"
    assert m.observation["dq_ignored"] == ["DETECTED"]  # detections are no defect
    assert int(m.mask.sum()) == 2 and bool(m.mask[0, 0, 1, 1]) and bool(m.mask[0, 0, 5, 5])
    assert "mask" not in m.arrays  # the bit plane is not an operator array
    narrowed = read_measurement(path, options=ReadOptions(dq_bits=[2]))
    assert int(narrowed.mask.sum()) == 1 and bool(narrowed.mask[0, 0, 5, 5])
    result, lines = run(path, solver, tmp_path / "out")
    assert "layout IMAGE/MASK/VARIANCE" in lines[0] and "except DETECTED" in lines[0]
    with fits.open(result.output) as hdul:
        assert int(hdul["MASK"].data.sum()) == 2


def test_ivar_extension(tmp_path, solver) -> None:
    path = tmp_path / "coadd.fits"
    ivar = np.full((SIZE, SIZE), 1 / SIGMA**2, np.float32)
    ivar[0, :] = 0.0
    fits.HDUList([fits.PrimaryHDU(image()), fits.ImageHDU(ivar, name="IVAR")]).writeto(path)
    m = read_measurement(path)
    assert m.observation["layout"] == "PRIMARY/IVAR" and m.observation["noise_map_kind"] == "ivar"
    assert int(m.mask.sum()) == SIZE
    hdf = tmp_path / "coadd.h5"
    with h5py.File(hdf, "w") as f:
        f["flux"] = image()
        f["ivar"] = ivar
        f["flags"] = (ivar == 0).astype(np.uint8)
    result, lines = run(
        hdf, solver, tmp_path / "out", ReadOptions(key="flux", noise_map="ivar", dq="flags")
    )
    assert "layout HDF5 datasets: science dataset flux" in lines[0]
    data, _ = read_hdf5(result.output, key="mask")
    assert int(data.sum()) == SIZE
    var, _ = read_hdf5(result.output, key="variance", check_finite=False)
    assert np.isinf(var[0, 0, 0].numpy()).all()


def test_nan_pixels_masked_or_refused(tmp_path, solver) -> None:
    path = tmp_path / "plain.fits"
    data = image()
    data[3, 4] = data[7, 7] = np.nan
    fits.PrimaryHDU(data).writeto(path)
    result, lines = run(path, solver, tmp_path / "out")
    assert lines == [
        f"{path}: layout first image HDU: science HDU 0 (PRIMARY); no noise map; 2 pixel(s) masked",
        f"{path}: 2 NaN pixel(s) in the science data masked (--nan error refuses them)",
    ]
    obs = read_provenance(result.output)["observation"]
    assert obs["nan_pixels"] == 2 and obs["nan"] == "mask" and obs["noise_map"] is None
    var, _ = read_fits(result.output, "VARIANCE", check_finite=False)
    assert math.isclose(float(var[0, 0, 0, 0]), 0.01**2, rel_tol=1e-5)  # the spec's sigma
    with pytest.raises(InvalidDataError, match="2 NaN pixel"):
        read_measurement(path, options=ReadOptions(nan="error"))
    data[3, 4] = np.inf
    inf_path = tmp_path / "inf.fits"
    fits.PrimaryHDU(data).writeto(inf_path)
    with pytest.raises(InvalidDataError, match="1 Inf pixel"):
        read_measurement(inf_path)
    # masked pixels and no noise level at all
    quiet = resolve_spec("psf", ["fwhm=3", "noise=none"])
    with pytest.raises(ConfigError, match="neither a noise map nor a Gaussian noise level"):
        run(path, solver, tmp_path / "out2", spec=quiet)


def test_an_explicit_noise_sigma_weighs_a_mask_but_not_a_map(tmp_path, prior_dir) -> None:
    from dwgf_sci.priors import load_prior

    solver = DWGF(load_prior(prior_dir), steps=1, particles=2, seed=0, noise_sigma=0.2)
    path = tmp_path / "plain.fits"
    data = image()
    data[3, 4] = np.nan
    fits.PrimaryHDU(data).writeto(path)
    result, _ = run(path, solver, tmp_path / "out")
    var, _ = read_fits(result.output, "VARIANCE", check_finite=False)
    assert math.isclose(float(var[0, 0, 0, 0]), 0.04, rel_tol=1e-5)
    assert solver.data_term.sigma == 0.2  # the solver is left as it was
    jw = tmp_path / "jw.fits"
    write_sci_err_dq(jw)
    with pytest.raises(ConfigError, match="--noise-map none"):
        run(jw, solver, tmp_path / "out2")
    result, _ = run(jw, solver, tmp_path / "out3", ReadOptions(noise_map="none"))
    var, _ = read_fits(result.output, "VARIANCE", check_finite=False)
    assert math.isclose(float(var[0, 0, 0, 0]), 0.04, rel_tol=1e-5)


def test_bad_options_are_refused_before_any_work(tmp_path) -> None:
    path = tmp_path / "jw.fits"
    write_sci_err_dq(path)
    with pytest.raises(FileFormatError, match="no HDU named 'NOPE'"):
        read_measurement(path, options=ReadOptions(noise_map="NOPE"))
    with pytest.raises(ConfigError, match="noise-map kind"):
        ReadOptions(noise_map_kind="rms")
    with pytest.raises(ConfigError, match="dq-bits"):
        ReadOptions(dq_bits="1,x")
    with pytest.raises(ConfigError, match="noise-map-kind"):  # a map of unknown convention
        read_measurement(path, options=ReadOptions(noise_map="DQ", dq="none"))
    odd = tmp_path / "odd.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(image()),
            fits.ImageHDU(np.ones((SIZE, SIZE - 1), np.float32), name="ERR"),
            fits.ImageHDU(-np.ones((SIZE, SIZE), np.float32), name="VAR"),
        ]
    ).writeto(odd)
    with pytest.raises(ShapeError, match="must match pixel for pixel"):
        read_measurement(odd, options=ReadOptions(noise_map="ERR"))
    with pytest.raises(InvalidDataError, match="negative"):
        read_measurement(odd, options=ReadOptions(noise_map="VAR"))


def test_simulated_files_read_as_before(tmp_path, solver) -> None:
    (path,) = simulate("galaxies", psf_spec(), tmp_path / "obs", size=SIZE)
    m = read_measurement(path)
    assert m.observation is None and m.mask is None and m.variance is None
    result, lines = run(path, solver, tmp_path / "out", spec=None)
    assert lines == []
    with fits.open(result.output) as hdul:
        assert "MASK" not in hdul and "VARIANCE" not in hdul
    assert "observation" not in read_provenance(result.output)


@pytest.fixture
def fits_opens(monkeypatch):
    """Count the openings of each file by astropy: ``{resolved path: n}``."""
    counts: dict[Path, int] = {}
    real = fits.open

    def counted(name, *args, **kwargs):
        if isinstance(name, str | os.PathLike):
            key = Path(name).resolve()
            counts[key] = counts.get(key, 0) + 1
        return real(name, *args, **kwargs)

    monkeypatch.setattr(fits, "open", counted)
    return counts


def test_the_cli_reads_a_survey_file_once(tmp_path, prior_dir, capsys, fits_opens) -> None:
    path = tmp_path / "jw.fits"
    write_sci_err_dq(path)
    fits_opens.clear()
    argv = ["reconstruct", str(path), "--prior", str(prior_dir), "--operator", "psf"]
    argv += ["--set", "fwhm=3", "--steps", "1", "--particles", "2", "--quiet"]
    code = main([*argv, "--out", str(tmp_path / "out"), "--dq-bits", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert fits_opens[path.resolve()] == 1
    assert "layout SCI/ERR/DQ" in out and "bad pixels from HDU 3 (DQ) (1)" in out
    assert "9 NaN pixel(s) in the science data masked" in out
    with fits.open(tmp_path / "out" / "jw_posterior.fits") as hdul:
        assert not hdul["MASK"].data[20, 20] and hdul["MASK"].data[10, 6]
    code = main([*argv, "--out", str(tmp_path / "out2"), "--hdu", "SCI", "--noise-map", "NOPE"])
    err = capsys.readouterr().err
    assert code == 2 and "no HDU named 'NOPE'" in err and "Traceback" not in err


def test_hdu_options_on_the_command_line() -> None:
    from dwgf_sci.pipelines.read_cli import hdu_option as _hdu_option

    assert _hdu_option("1") == 1 and _hdu_option("-1") == -1 and _hdu_option(None) is None
    assert _hdu_option("SCI") == "SCI" and _hdu_option("SCI,2") == ("SCI", 2)
    assert _hdu_option("none") == "none"


def test_a_survey_file_with_the_psf_from_its_own_fits_file(tmp_path, solver) -> None:
    path = tmp_path / "jw.fits"
    write_sci_err_dq(path)
    psf_path = tmp_path / "psf.fits"
    yy, xx = np.mgrid[:7, :7]
    psf = np.exp(-((yy - 3.0) ** 2 + (xx - 3.0) ** 2) / 3.0).astype(np.float32)
    fits.PrimaryHDU(psf / psf.sum()).writeto(psf_path)
    spec = resolve_spec("psf", ["profile=array", f"source={psf_path}"])
    result, lines = run(path, solver, tmp_path / "out", spec=spec)
    assert "layout SCI/ERR/DQ" in lines[0]
    assert read_provenance(result.output)["operator"]["profile"] == "array"


@pytest.mark.parametrize("file_type", ["fits", "hdf5"])
def test_simulated_files_with_their_noise_map(tmp_path, solver, file_type) -> None:
    # sky + source photon noise and read noise: the map is the variance each pixel was drawn with
    from dwgf_sci.pipelines.simulate import noise_variance_map

    spec = resolve_spec(
        "psf", ["fwhm=3", "noise.type=poisson-gaussian", "noise.gain=0.05", "noise.sky=2.0",
                "noise.sigma=0.01"],
    )  # fmt: skip
    (path,) = simulate(
        "galaxies", spec, tmp_path / "obs", size=32, file_type=file_type, noise_map=True,
        noise_scale="absolute",
    )  # fmt: skip
    m = read_measurement(path)
    assert m.variance is not None and m.observation is not None
    clean = build_operator(m.operator, (1, 32, 32)).A(m.truth)
    expected = noise_variance_map(m.operator["noise"], clean)[0]
    torch.testing.assert_close(m.variance, expected[None], rtol=1e-5, atol=1e-7)
    result, _ = run(path, solver, tmp_path / "out", spec=m.operator)
    assert result.metrics["reduced_chi2_limit"] > 1
    assert read_provenance(result.output)["observation"]["noise_map"] is not None
