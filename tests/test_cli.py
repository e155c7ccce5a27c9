"""The dwgf-sci command line: simulate -> reconstruct round trips, demo, and user errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from dwgf_sci.cli import main
from dwgf_sci.io import read_fits, read_hdf5, read_provenance, write_fits
from dwgf_sci.io.measurement import read_measurement
from dwgf_sci.metrics import psnr


def test_console_script_and_help(capsys):
    out = subprocess.run(
        [sys.executable, "-m", "dwgf_sci.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "reconstruct" in out.stdout and "demo" in out.stdout
    for command in ("demo", "simulate", "reconstruct"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--out" in capsys.readouterr().out


def test_simulate_then_reconstruct_from_stored_operator(tmp_path, prior_dir, capsys):
    obs, rec = tmp_path / "obs", tmp_path / "rec"
    assert main(["simulate", "--n", "2", "--size", "32", "--out", str(obs), "--set", "fwhm=3"]) == 0
    m = read_measurement(obs / "obs_00001.fits")
    assert m.operator["type"] == "psf" and m.operator["fwhm"] == 3.0
    assert m.operator["noise"]["sigma"] == pytest.approx(0.01 * float(m.y.abs().max()), rel=0.2)
    assert m.truth.shape == (1, 1, 32, 32)
    code = main(
        [
            "reconstruct",
            str(obs),
            "--prior",
            str(prior_dir),
            "--steps",
            "2",
            "--particles",
            "2",
            "--out",
            str(rec),
            "--quiet",
        ]
    )
    assert code == 0
    out = rec / "obs_00001_posterior.fits"
    mean, _ = read_fits(out)
    samples, _ = read_fits(out, hdu="SAMPLES")
    std, _ = read_fits(out, hdu="STD")
    assert mean.shape == (1, 1, 32, 32) and samples.shape[0] == 2 and std.shape == mean.shape
    record = read_provenance(out)
    assert record["kind"] == "reconstruction" and record["operator"]["fwhm"] == 3.0
    assert record["settings"]["steps"] == 2 and "psnr" in record["metrics"]
    assert record["input_provenance"]["kind"] == "measurement"
    # a rerun refuses to overwrite, with one clear line and status 2
    capsys.readouterr()
    code = main(
        [
            "reconstruct",
            str(obs / "obs_00000.fits"),
            "--prior",
            str(prior_dir),
            "--steps",
            "1",
            "--out",
            str(rec),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and "Traceback" not in err


def test_hdf5_measurements_round_trip(tmp_path, prior_dir):
    obs, rec = tmp_path / "obs", tmp_path / "rec"
    assert (
        main(
            [
                "simulate",
                "--dataset",
                "phantoms",
                "--operator",
                "ct-sparse",
                "--size",
                "32",
                "--format",
                "hdf5",
                "--out",
                str(obs),
            ]
        )
        == 0
    )
    m = read_measurement(obs / "obs_00000.h5")
    assert m.operator["type"] == "ct" and m.operator["img_size"] == [1, 32, 32]
    assert (
        main(
            [
                "reconstruct",
                str(obs / "*.h5"),
                "--prior",
                str(prior_dir),
                "--steps",
                "1",
                "--particles",
                "2",
                "--out",
                str(rec),
                "--quiet",
            ]
        )
        == 0
    )
    mean, attrs = read_hdf5(rec / "obs_00000_posterior.h5", key="mean")
    assert mean.shape == (1, 1, 32, 32) and torch.isfinite(mean).all()


def test_user_fits_with_operator_keeps_header_and_wcs(tmp_path, prior_dir, capsys):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [16.5, 16.5]
    w.wcs.cdelt = [-5e-5, 5e-5]
    header = w.to_header()
    header["BUNIT"] = "adu"
    header["OBJECT"] = "cutout-7"
    data = np.random.default_rng(0).normal(10, 1, (32, 32)).astype(">f4")
    path = tmp_path / "mine.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    # without an operator the file cannot be reconstructed: clear error
    code = main(
        [
            "reconstruct",
            str(path),
            "--prior",
            str(prior_dir),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 2 and "--operator" in capsys.readouterr().err
    code = main(
        [
            "reconstruct",
            str(path),
            "--prior",
            str(prior_dir),
            "--operator",
            "psf",
            "--set",
            "noise.sigma=1.0",
            "--steps",
            "1",
            "--particles",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 0
    out_header = fits.getheader(tmp_path / "r" / "mine_posterior.fits")
    assert out_header["OBJECT"] == "cutout-7" and out_header["BUNIT"] == "adu"
    world = WCS(out_header).pixel_to_world_values(3.0, 4.0)
    np.testing.assert_allclose(world, w.pixel_to_world_values(3.0, 4.0))
    assert path.read_bytes()[:80].startswith(b"SIMPLE")  # input untouched


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "nope/missing.fits", "--out", "x"], "no such file"),
        (["simulate", "--operator", "warp-drive", "--out", "x"], "unknown operator"),
        (["simulate", "--set", "fwhm=-1", "--out", "x"], "fwhm"),
        (["simulate", "--dataset", "stars", "--out", "x"], "unknown dataset"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_nan_measurement_is_rejected_before_work_with_nan_error(tmp_path, prior_dir, capsys):
    """NaN pixels are masked by default (tests/test_survey_files.py); ``--nan error`` refuses."""
    data = np.ones((32, 32), np.float32)
    data[3, 4] = np.nan
    path = tmp_path / "nan.fits"
    write_fits(path, data, check_finite=False)
    code = main(
        [
            "reconstruct",
            str(path),
            "--prior",
            str(prior_dir),
            "--operator",
            "psf",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--nan",
            "error",
        ]
    )
    assert code == 2 and "NaN" in capsys.readouterr().err
    assert not (tmp_path / "r" / "nan_posterior.fits").exists()


def test_demo_runs_with_a_given_prior(tmp_path, prior_dir, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--prior",
                str(prior_dir),
                "--steps",
                "2",
                "--particles",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "PSNR" in text and "dwgf" in text and "richardson-lucy" in text
    # the observation carries its truth; the posterior's recorded PSNR is its mean's against it
    observed = read_measurement(out / "observation.fits")
    assert observed.y.shape == observed.truth.shape == (1, 1, 32, 32)
    mean, _ = read_fits(out / "posterior.fits")
    assert mean.shape == (1, 1, 32, 32) and torch.isfinite(mean).all()
    record = read_provenance(out / "posterior.fits")
    assert record["input"] == "observation.fits"
    assert record["metrics"]["psnr"] == pytest.approx(float(psnr(mean, observed.truth)), abs=1e-3)
    # the panel is a PNG with something drawn on it
    with Image.open(out / "demo.png") as png:
        assert png.format == "PNG" and min(png.size) > 100
        assert float(np.asarray(png.convert("L")).std()) > 1.0  # not a blank canvas


def test_reconstruct_speed_options(tmp_path, prior_dir):
    obs, rec = tmp_path / "obs", tmp_path / "rec"
    assert main(["simulate", "--n", "1", "--size", "32", "--out", str(obs), "--set", "fwhm=3"]) == 0
    common = ["reconstruct", str(obs), "--prior", str(prior_dir), "--steps", "2"]
    common += ["--particles", "2", "--quiet", "--out", str(rec)]
    assert main([*common, "--dtype", "float32", "--channels-last"]) == 0
    mean, _ = read_fits(rec / "obs_00000_posterior.fits")
    assert mean.shape == (1, 1, 32, 32) and torch.isfinite(mean).all()
    assert main([*common, "--dtype", "int8", "--overwrite"]) != 0
