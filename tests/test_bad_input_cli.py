"""Bad input and foreseeable failures of ``dwgf-sci`` (issue 21, item 6): each one is a single
``dwgf-sci: error: ...`` line with exit status 2, never a traceback nor "please report it"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dwgf_sci.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI; return its exit status and the standard error it wrote."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_stable_diffusion_folder_with_only_pickled_weights_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from dwgf_sci.priors.tiny import build_tiny_stable_diffusion

    folder = build_tiny_stable_diffusion(tmp_path / "sd", seed=0)
    for weights in sorted(folder.rglob("*.safetensors")):
        stem = (
            "pytorch_model" if weights.parent.name == "text_encoder" else "diffusion_pytorch_model"
        )
        torch.save(load_file(weights), weights.parent / f"{stem}.bin")
        weights.unlink()
    obs = tmp_path / "obs"
    assert main(["simulate", "--n", "1", "--size", "32", "--out", str(obs)]) == 0
    code, err = _run(
        capsys,
        "reconstruct",
        str(obs),
        "--prior",
        str(folder),
        "--steps",
        "1",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert err.startswith("dwgf-sci: error: ") and err.count("\n") == 1
    for name in ("vae/diffusion_pytorch_model.bin", "unet/", "text_encoder/pytorch_model.bin"):
        assert name in err
    assert "only safetensors" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.fits"))


def test_zero_noise_sigma_names_the_noise_options(
    tmp_path: Path, prior_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from astropy.io import fits

    obs = tmp_path / "obs"
    assert main(["simulate", "--n", "1", "--size", "32", "--out", str(obs)]) == 0
    common = ["--prior", str(prior_dir), "--steps", "1", "--particles", "2", "--quiet"]
    zero = ["--operator", "psf", "--set", "noise.sigma=0"]
    code, err = _run(capsys, "reconstruct", str(obs), *common, *zero, "--out", str(tmp_path / "a"))
    assert code == 2
    assert "a zero noise level cannot weight the data" in err and "--noise-sigma" in err
    assert "--noise-map" not in err and "Traceback" not in err
    # an observation file with a noise map that is not used: the map options are named too
    rng = np.random.default_rng(0)
    sci = fits.ImageHDU(rng.normal(size=(32, 32)).astype(np.float32), name="SCI")
    err_hdu = fits.ImageHDU(np.full((32, 32), 0.1, np.float32), name="ERR")
    survey = tmp_path / "survey"
    survey.mkdir()
    fits.HDUList([fits.PrimaryHDU(), sci, err_hdu]).writeto(survey / "field.fits")
    code, err = _run(
        capsys,
        "reconstruct",
        str(survey),
        *common,
        *zero,
        "--noise-map",
        "none",
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 2
    assert "--noise-sigma" in err and "--noise-map HDU|KEY" in err
    # a positive --noise-sigma is the way out
    code, err = _run(
        capsys,
        "reconstruct",
        str(obs),
        *common,
        *zero,
        "--noise-sigma",
        "0.01",
        "--out",
        str(tmp_path / "c"),
    )
    assert code == 0, err
