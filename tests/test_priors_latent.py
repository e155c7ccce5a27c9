"""LatentDiffusionPrior (domain latent diffusion), its folder format, and load_prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dwgf_sci.errors import ConfigError, FileFormatError, OutputExistsError, ShapeError
from dwgf_sci.priors.latent import (
    PRIOR_CONFIG_NAME,
    LatentDiffusionPrior,
    build_latent_prior,
    epsilon_from_output,
)
from dwgf_sci.priors.loading import SHIPPED_PRIORS, WEIGHTS_DIR, available_priors, load_prior
from dwgf_sci.priors.tiny import build_tiny_latent_prior


@pytest.fixture(scope="module")
def prior() -> LatentDiffusionPrior:
    return build_tiny_latent_prior(image_size=32, seed=0)


def _images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _latents(n: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_interface(prior: LatentDiffusionPrior) -> None:
    assert prior.image_size == (32, 32) and prior.image_channels == 1
    assert prior.latent_channels == 4 and prior.downsample == 4
    assert prior.latent_shape((1, 32, 32)) == (4, 8, 8)
    assert prior.dtype == torch.float32 and prior.num_train_timesteps == 1000
    assert not any(p.requires_grad for p in prior.parameters())
    prior.reset_calls()
    z = prior.encode(_images())
    assert z.shape == (2, 4, 8, 8)
    x = prior.decode(z)
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
    eps = prior.predict_noise(z, 500)
    assert eps.shape == z.shape and torch.equal(eps, prior.predict_noise(z, 500))
    assert dict(prior.calls) == {"encoder": 2, "decoder": 2, "unet": 4}
    with pytest.raises(ShapeError):
        prior.encode(torch.zeros(2, 3, 32, 32))
    # a physical range of [0, 1] maps onto the model range [-1, 1]
    assert torch.allclose(prior.to_model(torch.tensor([0.0, 1.0])), torch.tensor([-1.0, 1.0]))


def test_build_is_seeded_and_validated() -> None:
    a, b = build_tiny_latent_prior(seed=7), build_tiny_latent_prior(seed=7)
    c = build_tiny_latent_prior(seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    state = torch.random.get_rng_state()
    build_tiny_latent_prior(seed=9)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    with pytest.raises(ConfigError, match="multiple of"):
        build_latent_prior(image_size=30, vae_channels=(8, 16), unet_channels=(16, 32))
    with pytest.raises(ConfigError, match="norm_num_groups"):
        build_latent_prior(image_size=32, vae_channels=(12, 16), unet_channels=(16, 32))
    with pytest.raises(ConfigError, match="prediction_type"):
        build_latent_prior(image_size=32, prediction_type="score")
    with pytest.raises(ConfigError, match="stretch"):
        build_latent_prior(image_size=32, vae_channels=(8, 8), unet_channels=(8, 8), stretch="log")


def test_save_and_load_round_trip(
    prior: LatentDiffusionPrior, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    prior.solver_hints = {"image_error": True}
    try:
        out = prior.save_pretrained(tmp_path / "ldm")
    finally:
        prior.solver_hints = {}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    weights = [f for f in files if not f.endswith(".json")]
    assert weights == [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert PRIOR_CONFIG_NAME in files and "scheduler/scheduler_config.json" in files
    settings = json.loads((out / PRIOR_CONFIG_NAME).read_text())
    assert settings["class"] == "LatentDiffusionPrior"
    assert settings["image_size"] == [32, 32] and settings["metadata"]["name"] == "tiny"
    with pytest.raises(OutputExistsError):
        prior.save_pretrained(out)

    capfd.readouterr()
    loaded = LatentDiffusionPrior.from_pretrained(out, device="cpu")
    via_registry = load_prior(out, device="cpu")
    # no advice to install an optional package we do not need (diffusers' accelerate warning)
    assert "accelerate" not in capfd.readouterr().err
    assert isinstance(via_registry, LatentDiffusionPrior)
    x, z = _images(), _latents()
    with torch.no_grad():
        for other in (loaded, via_registry):
            assert other.image_size == prior.image_size
            assert other.data_scale == prior.data_scale
            assert other.data_offset == prior.data_offset
            assert other.metadata == prior.metadata
            assert other.solver_hints == {"image_error": True}
            assert torch.equal(other.alphas_cumprod, prior.alphas_cumprod)
            assert torch.equal(other.encode(x), prior.encode(x))
            assert torch.equal(other.decode(z), prior.decode(z))
            assert torch.equal(other.predict_noise(z, 123), prior.predict_noise(z, 123))


def test_pickle_weights_are_refused(prior: LatentDiffusionPrior, tmp_path: Path) -> None:
    out = prior.save_pretrained(tmp_path / "ldm")
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(FileFormatError, match="pickle"):
        LatentDiffusionPrior.from_pretrained(out, device="cpu")


def test_asinh_stretch_round_trip(tmp_path: Path) -> None:
    ldm = build_latent_prior(
        image_size=16,
        vae_channels=(8, 8),
        unet_channels=(8, 8),
        attention=False,
        stretch="asinh",
        stretch_scale=0.1,
        data_scale=3.0,
        data_offset=2.0,
    )
    x = torch.tensor([-50.0, -1.0, -0.01, 0.0, 1e-4, 0.05, 2.0, 1e3], dtype=torch.float64)
    m = ldm.to_model(x)
    assert torch.allclose(m, (torch.asinh(x / 0.1) - 2.0) / 3.0)
    assert torch.allclose(ldm.from_model(m), x, rtol=1e-10, atol=1e-12)
    grid = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)
    assert torch.allclose(ldm.to_model(ldm.from_model(grid)), grid, atol=1e-12)
    # linear for |x| << a: slope 1 / (a * data_scale)
    small = torch.tensor([1e-6], dtype=torch.float64)
    slope = (ldm.to_model(small) - ldm.to_model(-small)) / (2 * small)
    assert torch.allclose(slope, torch.tensor([1.0 / (0.1 * 3.0)], dtype=torch.float64))
    out = ldm.save_pretrained(tmp_path / "stretched")
    again = LatentDiffusionPrior.from_pretrained(out, device="cpu")
    assert again.stretch == "asinh" and again.stretch_scale == 0.1
    assert torch.equal(again.to_model(x), m)


def test_prediction_types() -> None:
    z_t = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    out = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    ab = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    assert torch.equal(epsilon_from_output(out, z_t, ab, "epsilon"), out)
    # v = a eps - s z0 with z_t = a z0 + s eps  =>  eps = a v + s z_t
    eps, z0 = torch.randn_like(z_t), torch.randn_like(z_t)
    zt = a * z0 + s * eps
    assert torch.allclose(epsilon_from_output(a * eps - s * z0, zt, ab, "v_prediction"), eps)
    assert torch.allclose(epsilon_from_output(z0, zt, ab, "sample"), eps)
    with pytest.raises(ConfigError):
        epsilon_from_output(out, z_t, ab, "score")
    ldm = build_latent_prior(
        image_size=16,
        vae_channels=(8, 8),
        unet_channels=(8, 8),
        attention=False,
        prediction_type="v_prediction",
    )
    zl = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        v = ldm.unet(zl, torch.tensor([600, 600])).sample
        abar = ldm.alphas_cumprod[600].float()
        expected = abar.sqrt() * v + (1 - abar).sqrt() * zl
        assert torch.allclose(ldm.predict_noise(zl, 600), expected, atol=1e-6)


def test_fit_latent_scaling() -> None:
    ldm = build_tiny_latent_prior(image_size=16, seed=0)
    x = _images(n=4, size=16)
    scale, shift = ldm.fit_latent_scaling(x)
    assert ldm.vae.config.scaling_factor == pytest.approx(scale) and shift == 0.0
    with torch.no_grad():
        assert float(ldm.encode(x).std()) == pytest.approx(1.0, rel=1e-4)
    scale, shift = ldm.fit_latent_scaling(x, shift=True)
    assert ldm.vae.config.shift_factor == pytest.approx(shift)
    with torch.no_grad():
        z = ldm.encode(x).double()
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(z.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)


def test_load_prior_names_and_errors(tmp_path: Path) -> None:
    names = available_priors()
    assert {"galaxy-64", "ct-64"} <= set(names) and set(SHIPPED_PRIORS) <= set(names)
    with pytest.raises(ConfigError) as info:
        load_prior("no-such-prior")
    assert "galaxy-64" in str(info.value) and "ct-64" in str(info.value)
    if not (WEIGHTS_DIR / "galaxy-64" / PRIOR_CONFIG_NAME).is_file():
        with pytest.raises(FileFormatError) as missing:
            load_prior("galaxy-64")
        assert str(WEIGHTS_DIR / "galaxy-64") in str(missing.value)
        assert "ct-64" in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="holds no prior"):
        load_prior(tmp_path / "empty")
    with pytest.raises(FileFormatError, match="no prior folder"):
        load_prior(tmp_path / "missing")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / PRIOR_CONFIG_NAME).write_text(json.dumps({"class": "MysteryPrior"}))
    with pytest.raises(FileFormatError, match="MysteryPrior"):
        load_prior(tmp_path / "odd")
    with pytest.raises(FileFormatError, match="not a LatentDiffusionPrior|holds a"):
        LatentDiffusionPrior.from_pretrained(tmp_path / "odd")


def test_channels_last_and_compile_keep_results_and_names() -> None:
    prior = build_tiny_latent_prior(32, seed=3)
    names = list(prior.state_dict())
    z = torch.randn(
        (2, *prior.latent_shape((1, 32, 32))), generator=torch.Generator().manual_seed(0)
    )
    t = torch.tensor([10, 500])
    decoded, eps = prior.decode(z), prior.predict_noise(z, t)
    prior.enable_channels_last()
    assert prior.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # the "eager" backend runs TorchDynamo's tracing without a C compiler (seconds, not minutes)
    prior.compile_networks(backend="eager")
    z_grad = z.clone().requires_grad_(True)
    out = prior.decode(z_grad)
    out.square().sum().backward()
    assert torch.allclose(out, decoded, atol=1e-5)
    assert torch.allclose(prior.predict_noise(z, t), eps, atol=1e-5)
    assert z_grad.grad is not None and torch.isfinite(z_grad.grad).all()
    assert z_grad.grad.abs().sum() > 0
    assert list(prior.state_dict()) == names  # save_pretrained writes the same weights
