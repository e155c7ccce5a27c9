"""Flux units (issue 21, item 4): a prior's training intensity range, the data's flux estimate,
the warning for data far outside the range and ``flux_scale="auto"``'s scale equivariance."""

from __future__ import annotations

import json
import warnings

import deepinv as dinv
import numpy as np
import pytest
import torch

from dwgf_sci.errors import ConfigError
from dwgf_sci.operators import PixelNoise
from dwgf_sci.operators.sensing import FourierSampling
from dwgf_sci.priors.intensity import (
    IntensityRange,
    measure_intensity,
    record_intensity,
    training_intensity,
)
from dwgf_sci.solvers import DWGF, PSLD, LatentDPS
from dwgf_sci.solvers.flux_scale import check_flux_scale, flux_estimate
from dwgf_sci.solvers.likelihood import DataTerm

SCALES = (1e-3, 1e3, 1e-6, 1e6)  # together: six decades each way of the data's own units


@pytest.fixture(scope="module")
def scaled_prior():
    """The tiny 32 px prior, with the intensity range of 16 of its own decoded images (``x``
    is the first, the truth of the tests' problems)."""
    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    prior = build_tiny_latent_prior(image_size=32, seed=0)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, *prior.latent_shape((1, 32, 32)), generator=g)
    with torch.no_grad():
        xs = prior.from_model(prior.decode(z))
    prior.metadata["intensity"] = measure_intensity(xs).to_dict()
    return prior, xs[:1]


def blur(sigma: float) -> dinv.physics.BlurFFT:
    physics = dinv.physics.BlurFFT(
        img_size=(1, 32, 32), filter=dinv.physics.blur.gaussian_blur(1.0)
    )
    physics.noise_model = dinv.physics.GaussianNoise(sigma)
    return physics


def test_intensity_range_round_trips_through_a_prior_folder(prior_dir, tmp_path):
    import shutil

    from dwgf_sci.priors import load_prior

    folder = tmp_path / "prior"
    shutil.copytree(prior_dir, folder)
    images = torch.rand(50, 1, 8, 8) * torch.linspace(1, 10, 50).reshape(-1, 1, 1, 1)
    found = record_intensity(folder, images)
    flux = images.flatten(1).sum(1).double()
    assert found.flux_median == pytest.approx(float(flux.quantile(0.5)))
    assert found.total_flux["max"] == pytest.approx(float(flux.max()))
    assert found.pixel["max"] == pytest.approx(float(images.max()))
    assert training_intensity(load_prior(folder)) == found
    assert json.loads((folder / "dwgf_prior.json").read_text())["metadata"]["intensity"]


def test_shipped_priors_record_their_training_range():
    from dwgf_sci.priors import load_prior

    galaxy = training_intensity(load_prior("galaxy-64"))
    ct = training_intensity(load_prior("ct-64"))
    assert galaxy is not None and ct is not None
    assert galaxy.n_images == ct.n_images == 4000
    # galaxies in simulator counts, phantoms in 1/cm: over a decade apart in total flux
    assert galaxy.flux_median > 20 * ct.flux_median
    assert (galaxy.units, ct.units) == ("relative", "absolute")


def test_bad_intensity_records_and_options_are_refused():
    with pytest.raises(ConfigError, match="malformed"):
        IntensityRange.from_dict({"pixel": {}})
    with pytest.raises(ConfigError, match="positive"):
        measure_intensity(torch.zeros(3, 1, 4, 4)).to_dict() and IntensityRange.from_dict(
            measure_intensity(torch.zeros(3, 1, 4, 4)).to_dict()
        )
    for bad in (0, -1.0, float("nan"), "loud"):
        with pytest.raises(ConfigError, match="flux_scale"):
            check_flux_scale(bad)
    assert check_flux_scale("off") is None and check_flux_scale(2) == 2.0


def test_the_flux_estimate_is_linear_and_exact_where_the_data_see_the_flux():
    x = torch.rand(2, 1, 32, 32) * torch.tensor([1.0, 30.0]).reshape(-1, 1, 1, 1)
    flux = x.flatten(1).sum(1).double()
    term = DataTerm("mse")
    # a normalised PSF keeps the total flux: the estimate is the sum of the data
    physics = blur(0.01)
    est, noise = flux_estimate(physics.A(x), physics, term, (1, 32, 32))
    assert noise is None
    torch.testing.assert_close(est, flux, rtol=1e-5, atol=0)
    # Fourier sampling of 25% of the plane with its centre (the zero frequency) measured
    fourier = FourierSampling((1, 32, 32), ratio=0.25, seed=0, centre_fraction=0.1)
    est, _ = flux_estimate(fourier.A(x), fourier, term, (1, 32, 32))
    torch.testing.assert_close(est, flux, rtol=1e-4, atol=0)
    # linear in the data whatever the operator: F(c y) = c F(y)
    y = physics.A(x)
    for c in (1e-6, 1e6):
        torch.testing.assert_close(
            flux_estimate(c * y, physics, term, (1, 32, 32))[0], c * est, rtol=1e-6, atol=0
        )


def test_masked_pixels_do_not_enter_the_flux_estimate():
    x = torch.rand(1, 1, 32, 32)
    physics = blur(0.01)
    var = torch.full((1, 1, 32, 32), 1e-4)
    var[..., :4, :] = float("inf")
    term = DataTerm("gaussian").resolve(_with_map(physics, var))
    y = physics.A(x)
    flux, _ = flux_estimate(y, physics, term, (1, 32, 32))
    y_bad = y.clone()
    y_bad[..., :4, :] = 1e9
    assert float(flux_estimate(y_bad, physics, term, (1, 32, 32))[0]) == float(flux)
    assert float(flux) == pytest.approx(float(x.sum()), rel=0.1)


def _with_map(physics, var):
    out = blur(0.01)
    out.noise_model = PixelNoise(var)
    return out


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: DWGF(p, "fast", steps=6, particles=2), id="dwgf-fast"),
        pytest.param(lambda p: DWGF(p, "default", steps=4, particles=2), id="dwgf-default"),
        pytest.param(lambda p: LatentDPS(p, steps=6, particles=2), id="latent-dps"),
    ],
)
def test_reconstructing_c_y_gives_c_times_the_result(make, scaled_prior):
    """Scale equivariance over six decades each way (the issue's acceptance test): the same
    seed gives the same samples to within rounding that the chain amplifies (the default
    preset's Gauss-Newton steps: about 1e-3 relative), far below the Monte Carlo error."""
    prior, x = scaled_prior
    sigma = 0.01 * float(x.abs().max())
    physics = blur(sigma)
    y = physics(x)
    ref = make(prior)(y, physics)
    assert ref.flux["how"] == "auto" and ref.flux["factor"] == pytest.approx(1.0, rel=0.05)
    spread = float(ref.std.mean())
    for c in SCALES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = make(prior)(c * y, blur(c * sigma))
        units = [w for w in caught if "outside what the prior was trained on" in str(w.message)]
        assert len(units) == 1, [str(w.message) for w in caught]
        assert out.flux["factor"] == pytest.approx(c * ref.flux["factor"], rel=1e-5)
        diff = (out.samples / c - ref.samples).abs().max()
        assert float(diff) < 1e-2 * spread + 1e-3 * float(ref.samples.abs().max())
        assert float(out.fit["reduced_chi2"][0]) == pytest.approx(
            float(ref.fit["reduced_chi2"][0]), rel=1e-2
        )


def test_without_the_rescaling_the_units_matter(scaled_prior):
    """The test above can fail: with ``flux_scale=None`` the same data in other units give a
    different reconstruction (the prior sees other images), and the warning says so."""
    prior, x = scaled_prior
    sigma = 0.01 * float(x.abs().max())
    ref = DWGF(prior, "fast", steps=6, particles=2, flux_scale=None)(blur(sigma)(x), blur(sigma))
    c = 1e3
    with pytest.warns(UserWarning, match="not rescaled"):
        out = DWGF(prior, "fast", steps=6, particles=2, flux_scale=None)(
            c * blur(sigma)(x), blur(c * sigma)
        )
    assert out.flux["how"] == "off"
    assert float((out.samples / c - ref.samples).abs().max()) > 0.05 * float(x.abs().max())


def test_a_fixed_factor_and_priors_without_a_range(scaled_prior, tiny_latent_prior):
    prior, x = scaled_prior
    physics = blur(0.01)
    y = physics(x)
    fixed = LatentDPS(prior, steps=3, flux_scale=2.0)(y, physics)
    assert fixed.flux["factor"] == 2.0 and fixed.flux["how"] == "fixed"
    assert fixed.provenance()["flux_scale"]["factor"] == 2.0
    plain = LatentDPS(tiny_latent_prior, steps=3)(y, physics)
    assert plain.flux["factor"] == 1.0 and "records no training" in plain.flux["note"]


def test_poisson_data_rescale_through_the_gain():
    """Poisson data ``y = g Poisson(Ax / g)``: in units ``s`` times larger the gain is ``g / s``
    and the likelihood (in photons) is the same, so the rescaling is exact."""
    physics = blur(0.01)
    physics.noise_model = dinv.physics.PoissonNoise(gain=0.5)
    term = DataTerm("poisson").resolve(physics)
    x = torch.rand(1, 1, 32, 32) * 40
    y = physics(x)
    ax = physics.A(x * 0.9)
    for s in (1e-3, 1e3):
        scaled = term.scaled(s)
        assert scaled.gain == pytest.approx(0.5 / s)
        torch.testing.assert_close(scaled(ax / s, y / s), term(ax, y), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(scaled.reduced_chi2(ax / s, y / s), term.reduced_chi2(ax, y))


def test_gaussian_and_map_data_terms_scale_with_the_data():
    physics = blur(0.2)
    term = DataTerm("gaussian").resolve(physics)
    var = torch.rand(1, 1, 32, 32) + 0.1
    var[..., 0, 0] = float("inf")
    mapped = DataTerm("gaussian").resolve(_with_map(physics, var))
    y, ax = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
    for t in (term, mapped):
        for s in (1e-3, 1e3):
            torch.testing.assert_close(t.scaled(s)(ax / s, y / s), t(ax, y), rtol=1e-5, atol=0)


def test_in_range_data_raise_no_warning(scaled_prior):
    prior, x = scaled_prior
    physics = blur(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PSLD(prior, steps=2)(physics(x), physics)


def test_the_cli_reconstructs_a_file_in_any_units(tmp_path, prior_dir, capsys):
    """A survey-like file (SCI/ERR) and the same file in units 1000 times smaller, given the
    same name so that they get the same seed: the outputs differ by the factor alone, the second
    run warns on one line, and both record the flux scale in their provenance."""
    import shutil

    from astropy.io import fits

    from dwgf_sci.cli import main
    from dwgf_sci.io import read_provenance

    prior = tmp_path / "prior"
    shutil.copytree(prior_dir, prior)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    truth = 50.0 * np.exp(-((yy - 15.5) ** 2 + (xx - 16.0) ** 2) / 20.0)
    record_intensity(prior, torch.tensor(truth, dtype=torch.float32)[None, None].repeat(4, 1, 1, 1))
    err = np.sqrt(0.25 + 0.05 * truth)
    sci = truth + err * rng.standard_normal(truth.shape)
    for folder, c in (("own", 1.0), ("small", 1e-3)):
        (tmp_path / folder).mkdir()
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU((c * sci).astype(np.float32), name="SCI"),
                fits.ImageHDU((c * err).astype(np.float32), name="ERR"),
            ]
        ).writeto(tmp_path / folder / "cutout.fits")
    argv = ["--prior", str(prior), "--operator", "psf", "--set", "fwhm=2", "--preset", "fast"]
    argv += ["--steps", "3", "--particles", "2", "--quiet", "--threads", "1"]
    means, flux = {}, {}
    for folder in ("own", "small"):
        code = main(["reconstruct", str(tmp_path / folder / "cutout.fits"), *argv, "--out",
                     str(tmp_path / f"out-{folder}")])  # fmt: skip
        err_text = capsys.readouterr().err
        assert code == 0, err_text
        warned = [line for line in err_text.splitlines() if "outside what the prior" in line]
        assert len(warned) == (1 if folder == "small" else 0), err_text
        assert not warned or warned[0].startswith("dwgf-sci: warning: the data imply")
        out = tmp_path / f"out-{folder}" / "cutout_posterior.fits"
        means[folder] = fits.getdata(out).astype(np.float64)
        flux[folder] = read_provenance(out)["flux_scale"]
    assert flux["small"]["factor"] == pytest.approx(1e-3 * flux["own"]["factor"], rel=1e-5)
    scale = np.abs(means["own"]).max()
    assert np.abs(means["small"] / 1e-3 - means["own"]).max() < 1e-2 * scale
    code = main(["reconstruct", str(tmp_path / "own" / "cutout.fits"), *argv, "--out",
                 str(tmp_path / "bad"), "--flux-scale", "-2"])  # fmt: skip
    err_text = capsys.readouterr().err
    assert code == 2 and "flux_scale must be" in err_text and "Traceback" not in err_text


def test_a_larger_image_is_compared_per_area():
    """A patch prior's image holds as much light per pixel as its training crops: the flux range
    it is compared with grows with its area."""
    images = torch.rand(20, 1, 8, 8) + 1.0
    found = measure_intensity(images)
    assert found.image_pixels == 64
    big = found.per_area(4 * 64)
    assert big.flux_median == pytest.approx(4 * found.flux_median)
    assert big.flux_range[1] == pytest.approx(4 * found.flux_range[1])
    assert found.per_area(64) is found
    legacy = {k: v for k, v in found.to_dict().items() if k != "image_pixels"}
    assert IntensityRange.from_dict(legacy).per_area(256).flux_median == found.flux_median
