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


@pytest.fixture
def observation(tmp_path: Path) -> Path:
    """A folder with one simulated 32 px PSF measurement."""
    obs = tmp_path / "obs"
    assert main(["simulate", "--n", "1", "--size", "32", "--out", str(obs)]) == 0
    return obs


def _quick(prior_dir: Path) -> list[str]:
    return ["--prior", str(prior_dir), "--steps", "1", "--particles", "2", "--quiet"]


def test_read_only_output_folder_is_one_line_before_any_work(
    tmp_path: Path,
    prior_dir: Path,
    observation: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno
    import os

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    real_open, real_mkdir = os.open, os.mkdir

    def denied(path) -> bool:  # root ignores the mode: refuse like EACCES would
        parent = Path(path).parent
        return parent == read_only or read_only in parent.parents

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def refusing_mkdir(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    loaded = []
    monkeypatch.setattr("dwgf_sci.priors.load_prior", lambda *a, **k: loaded.append(a))
    try:
        for out in (read_only, read_only / "sub"):
            code, err = _run(
                capsys, "reconstruct", str(observation), *_quick(prior_dir), "--out", str(out)
            )
            assert code == 2
            assert err.startswith("dwgf-sci: error: cannot write to ") and err.count("\n") == 1
            assert "permission denied" in err and "--out" in err and "Traceback" not in err
        code, err = _run(capsys, "simulate", "--n", "1", "--size", "32", "--out", str(read_only))
        assert code == 2 and err.startswith("dwgf-sci: error: cannot write to ")
    finally:
        read_only.chmod(0o755)
    assert not loaded  # refused before the prior was loaded
    assert list(read_only.iterdir()) == []


def test_output_name_too_long_is_refused_before_any_work(
    tmp_path: Path, prior_dir: Path, observation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "long"
    inputs.mkdir()
    (inputs / ("a" * 240 + ".fits")).write_bytes((observation / "obs_00000.fits").read_bytes())
    out = tmp_path / "out"
    code, err = _run(capsys, "reconstruct", str(inputs), *_quick(prior_dir), "--out", str(out))
    assert code == 2 and err.count("\n") == 1
    assert "is too long for the file system" in err and "please report" not in err
    assert not (out / "dwgf-manifest.json").exists()
    # an output folder whose own name is too long
    code, err = _run(
        capsys,
        "reconstruct",
        str(observation),
        *_quick(prior_dir),
        "--out",
        str(tmp_path / ("b" * 300)),
    )
    assert code == 2 and "file name too long" in err and "Traceback" not in err


@pytest.mark.parametrize("said", ["errno", "astropy"])
def test_disk_full_says_how_much_space_the_output_needs(
    said: str,
    tmp_path: Path,
    prior_dir: Path,
    observation: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from astropy.io import fits

    def full(self, *args, **kwargs):
        if said == "astropy":  # astropy checks the space itself and says so without an errno
            raise OSError("Not enough space on disk: requested 42950, available 0")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", full)
    out = tmp_path / "out"
    code, err = _run(capsys, "reconstruct", str(observation), *_quick(prior_dir), "--out", str(out))
    assert code == 2
    line = next(text for text in err.splitlines() if "obs_00000.fits:" in text)
    assert "no space left on the device" in line and "it needs about" in line and "kB" in line
    assert "free there" in line and "please report" not in line
    assert not list(out.glob("*.fits")) and not list(out.glob(".tmp-*"))


@pytest.mark.parametrize("where", ["solver", "setup"])
def test_memory_exhausted_by_particles_names_particles_and_max_batch(
    where: str,
    tmp_path: Path,
    prior_dir: Path,
    observation: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what torch's CPU allocator says for --particles 100000000 on 32 px images (a real run
    # risks the kernel's out-of-memory killer where memory is overcommitted)
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 409600000000 bytes. Error code 12 (Cannot allocate memory)"
    )

    def exhausted(*args, **kwargs):
        raise cpu if where == "solver" else MemoryError()

    target = (
        "dwgf_sci.pipelines.batch.reconstruct_file"
        if where == "solver"
        else "dwgf_sci.priors.load_prior"
    )
    monkeypatch.setattr(target, exhausted)
    argv = ["reconstruct", str(observation), *_quick(prior_dir), "--particles", "100000000"]
    code, err = _run(capsys, *argv, "--out", str(tmp_path / "out"))
    assert code == 2
    line = next(text for text in err.splitlines() if "out of memory" in text)
    assert "--particles" in line and "--max-batch" in line and "please report" not in line
    if where == "solver":
        assert "100000000 particle(s)" in line and "409.6 GB" in line
