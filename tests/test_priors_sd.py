"""StableDiffusionPrior on the tiny SD-architecture pipeline (built offline, random weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dwgf_sci.errors import ConfigError, FileFormatError, OutputExistsError, ShapeError
from dwgf_sci.priors.latent import PRIOR_CONFIG_NAME
from dwgf_sci.priors.loading import load_prior
from dwgf_sci.priors.stable_diffusion import StableDiffusionPrior
from dwgf_sci.priors.tiny import build_tiny_stable_diffusion, tiny_stable_diffusion_components


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "sd", seed=0)


@pytest.fixture(scope="module")
def prior(sd_folder: Path) -> StableDiffusionPrior:
    return StableDiffusionPrior.from_pretrained(sd_folder, device="cpu")


def _images(n: int = 2, c: int = 1, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, c, size, size), generator=g) * 2 - 1


def _latents(n: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_tiny_folder_layout(sd_folder: Path) -> None:
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (sd_folder / sub).is_dir()
    weights = sorted(p.name for p in sd_folder.rglob("*") if p.suffix in {".bin", ".safetensors"})
    assert weights and all(name.endswith(".safetensors") for name in weights)


def test_tiny_build_is_seeded(tmp_path: Path) -> None:
    a = tiny_stable_diffusion_components(seed=3)
    b = tiny_stable_diffusion_components(seed=3)
    c = tiny_stable_diffusion_components(seed=4)
    pa, pb, pc = (dict(x["unet"].named_parameters()) for x in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_encode_decode_shapes(prior: StableDiffusionPrior) -> None:
    prior.reset_calls()
    x = _images()
    z = prior.encode(x)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    out = prior.decode(z)
    assert out.shape == (2, 1, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert prior.latent_shape((1, 64, 64)) == (4, 8, 8)
    assert prior.downsample == 8 and prior.latent_channels == 4 and prior.image_size is None
    assert prior.calls["encoder"] == 2 and prior.calls["decoder"] == 2
    assert prior.dtype == torch.float32
    assert not any(p.requires_grad for p in prior.parameters())
    with pytest.raises(ShapeError):
        prior.encode(_images(c=3))
    with pytest.raises(ShapeError):
        prior.decode(torch.zeros(2, 3, 8, 8))


def test_decode_is_differentiable(prior: StableDiffusionPrior) -> None:
    z = _latents().requires_grad_(True)
    prior.decode(z).square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_predict_noise_shape_and_determinism(prior: StableDiffusionPrior) -> None:
    z = _latents()
    prior.reset_calls()
    e1 = prior.predict_noise(z, 500)
    e2 = prior.predict_noise(z, torch.tensor([500, 500]))
    assert e1.shape == z.shape and e1.dtype == torch.float32
    assert torch.equal(e1, e2)
    assert prior.calls["unet"] == 4
    assert not torch.allclose(e1, prior.predict_noise(z, 10))
    ab = prior.alphas_cumprod
    assert ab.dtype == torch.float64 and ab.numel() == 1000
    assert torch.all(ab[1:] < ab[:-1])
    # SD's scaled_linear schedule
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(ab, torch.cumprod(1 - betas, 0), rtol=1e-5)


def test_prompt_embedding_computed_once(sd_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import CLIPTextModel

    calls: list[int] = []
    original = CLIPTextModel.forward

    def counted(self: CLIPTextModel, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CLIPTextModel, "forward", counted)
    prior = StableDiffusionPrior.from_pretrained(
        sd_folder, prompt="a spiral galaxy", guidance_scale=3.0, device="cpu"
    )
    assert len(calls) == 1  # prompt and negative prompt in one batched call
    z = _latents()
    for t in (999, 500, 1):
        prior.predict_noise(z, t)
    prior.decode(prior.encode(_images()))
    assert len(calls) == 1
    assert prior.prompt_embeds.shape == (1, 77, 32)
    assert prior.negative_prompt_embeds.shape == (1, 77, 32)
    assert not torch.allclose(prior.prompt_embeds, prior.negative_prompt_embeds)
    prior.set_prompt("an elliptical galaxy", guidance_scale=1.0)
    assert len(calls) == 2 and prior.negative_prompt_embeds is None


def test_guidance_mixing(sd_folder: Path, prior: StableDiffusionPrior) -> None:
    z, t = _latents(), 400
    tt = torch.full((2,), t)
    cond_only = StableDiffusionPrior.from_pretrained(
        sd_folder, prompt="a spiral galaxy", guidance_scale=1.0, device="cpu"
    )
    guided = StableDiffusionPrior.from_pretrained(
        sd_folder, prompt="a spiral galaxy", guidance_scale=3.0, device="cpu"
    )
    with torch.no_grad():
        e_c = guided.unet(z, tt, encoder_hidden_states=guided.prompt_embeds.expand(2, -1, -1))
        e_u = guided.unet(
            z, tt, encoder_hidden_states=guided.negative_prompt_embeds.expand(2, -1, -1)
        )
    e_c, e_u = e_c.sample, e_u.sample
    # guidance_scale = 1: the conditional prediction only
    assert torch.allclose(cond_only.predict_noise(z, t), e_c, atol=1e-6)
    assert not torch.allclose(cond_only.predict_noise(z, t), prior.predict_noise(z, t))
    # guidance_scale = 3: one batched UNet call, eps_u + 3 (eps_c - eps_u)
    batches: list[int] = []
    hook = guided.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        e_g = guided.predict_noise(z, t)
    finally:
        hook.remove()
    assert batches == [4]
    assert torch.allclose(e_g, e_u + 3.0 * (e_c - e_u), atol=1e-5)
    assert not torch.allclose(e_g, e_c, atol=1e-4)
    assert guided.calls["unet"] == 2  # counted per latent, not per network evaluation


def test_vae_scaling_and_shift_factor(sd_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shifted"
    shutil.copytree(sd_folder, folder)
    config_path = folder / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(scaling_factor=0.7, shift_factor=0.3)
    config_path.write_text(json.dumps(config))
    prior = StableDiffusionPrior.from_pretrained(folder, device="cpu")
    assert prior.latent_scale == pytest.approx(0.7) and prior.latent_shift == pytest.approx(0.3)
    x, z = _images(), _latents()
    with torch.no_grad():
        mean = prior.vae.encode(x.repeat(1, 3, 1, 1)).latent_dist.mean
        decoded = prior.vae.decode(z / 0.7 + 0.3).sample.mean(dim=1, keepdim=True)
        assert torch.allclose(prior.encode(x), (mean - 0.3) * 0.7, atol=1e-6)
        assert torch.allclose(prior.decode(z), decoded, atol=1e-6)
    # shift_factor None (SD 1.x/2.x configs) means no shift
    config.update(shift_factor=None, scaling_factor=0.18215)
    config_path.write_text(json.dumps(config))
    plain = StableDiffusionPrior.from_pretrained(folder, device="cpu")
    assert plain.latent_shift == 0.0 and plain.latent_scale == pytest.approx(0.18215)
    with torch.no_grad():
        assert torch.allclose(plain.encode(x), mean * 0.18215, atol=1e-6)


def test_single_channel_rgb_mapping(sd_folder: Path, prior: StableDiffusionPrior) -> None:
    rgb = StableDiffusionPrior.from_pretrained(sd_folder, image_channels=3, device="cpu")
    assert rgb.image_channels == 3 and not rgb.maps_gray_to_rgb and prior.maps_gray_to_rgb
    x, z = _images(), _latents()
    with torch.no_grad():
        assert torch.allclose(prior.encode(x), rgb.encode(x.repeat(1, 3, 1, 1)), atol=1e-6)
        colour = rgb.decode(z)
        assert colour.shape == (2, 3, 64, 64)
        assert torch.allclose(prior.decode(z), colour.mean(dim=1, keepdim=True), atol=1e-6)
    with pytest.raises(ConfigError):
        StableDiffusionPrior.from_pretrained(sd_folder, image_channels=2, device="cpu")


def test_units_and_options(sd_folder: Path, prior: StableDiffusionPrior) -> None:
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(prior.to_model(x), torch.tensor([-1.0, 0.0, 1.0]))
    ranged = StableDiffusionPrior.from_pretrained(sd_folder, data_range=(0.0, 1000.0), device="cpu")
    assert ranged.data_scale == 500.0 and ranged.data_offset == 500.0
    assert torch.allclose(ranged.from_model(ranged.to_model(x * 1000)), x * 1000)
    with pytest.raises(ConfigError):
        StableDiffusionPrior.from_pretrained(
            sd_folder, data_range=(0, 1), data_scale=2.0, device="cpu"
        )
    with pytest.warns(UserWarning, match="float32"):
        half = StableDiffusionPrior.from_pretrained(sd_folder, dtype=torch.float16, device="cpu")
    assert half.dtype == torch.float32
    with pytest.raises(ConfigError):
        StableDiffusionPrior.from_pretrained(sd_folder, dtype="int8", device="cpu")
    double = StableDiffusionPrior.from_pretrained(sd_folder, dtype="float64", device="cpu")
    assert double.dtype == torch.float64 and double.prompt_embeds.dtype == torch.float64
    x32, z32 = _images(), _latents()
    with torch.no_grad():  # inputs are cast to the network dtype, outputs back to the input's
        for fn in (double.encode, prior.encode):
            assert fn(x32).dtype == torch.float32
        assert torch.allclose(double.encode(x32), prior.encode(x32), atol=1e-4)
        assert torch.allclose(double.decode(z32), prior.decode(z32), atol=1e-4)
        e64 = double.predict_noise(z32, 250)
        assert e64.dtype == torch.float32
        assert torch.allclose(e64, prior.predict_noise(z32, 250), atol=1e-4)
    z = _latents()
    with torch.no_grad():
        reference = prior.decode(z)
        prior.enable_vae_slicing()
        assert prior.vae.use_slicing
        sliced = prior.decode(z)
        prior.disable_vae_slicing()
        prior.enable_vae_tiling()
        assert prior.vae.use_tiling
        prior.disable_vae_tiling()
    assert torch.allclose(reference, sliced, atol=1e-5)


def test_v_prediction_returns_epsilon() -> None:
    from diffusers import DDIMScheduler

    parts = tiny_stable_diffusion_components(seed=0)
    parts["scheduler"] = DDIMScheduler.from_config(
        parts["scheduler"].config, prediction_type="v_prediction"
    )
    prior = StableDiffusionPrior(**parts)
    assert prior.prediction_type == "v_prediction"
    z, t = _latents(), 700
    with torch.no_grad():
        v = prior.unet(
            z, torch.full((2,), t), encoder_hidden_states=prior.prompt_embeds.expand(2, -1, -1)
        ).sample
        ab = prior.alphas_cumprod[t].float()
        expected = ab.sqrt() * v + (1 - ab).sqrt() * z
        assert torch.allclose(prior.predict_noise(z, t), expected, atol=1e-6)


def test_save_and_load_round_trip(sd_folder: Path, tmp_path: Path) -> None:
    prior = StableDiffusionPrior.from_pretrained(
        sd_folder, prompt="a galaxy", guidance_scale=2.0, data_range=(0.0, 10.0), device="cpu"
    )
    out = prior.save_pretrained(tmp_path / "saved")
    settings = json.loads((out / PRIOR_CONFIG_NAME).read_text())
    assert settings["class"] == "StableDiffusionPrior"
    assert settings["prompt"] == "a galaxy" and settings["guidance_scale"] == 2.0
    assert settings["data_scale"] == 5.0 and settings["data_offset"] == 5.0
    assert settings["image_channels"] == 1
    assert (out / "model_index.json").is_file()
    weights = [p.name for p in out.rglob("*") if p.suffix in {".bin", ".safetensors", ".pt"}]
    assert len(weights) == 3 and all(name.endswith(".safetensors") for name in weights)
    with pytest.raises(OutputExistsError):
        prior.save_pretrained(out)
    prior.save_pretrained(out, overwrite=True)

    again = StableDiffusionPrior.from_pretrained(out, device="cpu")
    loaded = load_prior(out, device="cpu")
    assert isinstance(loaded, StableDiffusionPrior)
    for other in (again, loaded):
        assert other.prompt == "a galaxy" and other.guidance_scale == 2.0
        assert other.data_scale == 5.0 and other.data_offset == 5.0
    x, z = _images(), _latents()
    with torch.no_grad():
        for other in (again, loaded):
            assert torch.equal(other.encode(x), prior.encode(x))
            assert torch.equal(other.decode(z), prior.decode(z))
            assert torch.equal(other.predict_noise(z, 321), prior.predict_noise(z, 321))
    # arguments override the saved settings
    plain = StableDiffusionPrior.from_pretrained(out, prompt="", guidance_scale=1.0, device="cpu")
    assert plain.prompt == "" and not plain.uses_guidance and plain.data_scale == 5.0


def test_load_prior_reads_a_diffusers_pipeline_folder(sd_folder: Path) -> None:
    assert not (sd_folder / PRIOR_CONFIG_NAME).exists()
    loaded = load_prior(str(sd_folder), device="cpu")
    assert isinstance(loaded, StableDiffusionPrior)
    assert loaded.data_scale == 0.5 and loaded.data_offset == 0.5 and loaded.prompt == ""


def test_hub_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="local folder"):
        StableDiffusionPrior.from_pretrained("nobody-here/no-such-model", device="cpu")
    with pytest.raises(FileFormatError, match="no Stable Diffusion folder"):
        StableDiffusionPrior.from_pretrained(tmp_path / "missing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="missing component"):
        StableDiffusionPrior.from_pretrained(tmp_path / "empty", device="cpu")


def test_dwgf_end_to_end(prior: StableDiffusionPrior) -> None:
    import deepinv
    from deepinv.physics.functional.blur import gaussian_blur

    from dwgf_sci.solvers import DWGF

    physics = deepinv.physics.BlurFFT(
        img_size=(1, 64, 64),
        filter=gaussian_blur(sigma=(2.0, 2.0)),
        noise_model=deepinv.physics.GaussianNoise(0.05),
    )
    x = torch.rand((1, 1, 64, 64), generator=torch.Generator().manual_seed(5))
    y = physics(x)
    post = DWGF(prior, particles=2, steps=3)(y, physics)
    assert post.samples.shape == (2, 1, 64, 64)
    assert torch.isfinite(post.samples).all()
    assert post.calls["unet"] == 6


def test_dwgf_with_psf_convolution_both_presets(prior: StableDiffusionPrior) -> None:
    """The issue's end-to-end check: tiny SD pipeline, 64x64 one-channel image, PSFConvolution."""
    import deepinv

    from dwgf_sci.operators import PSFConvolution, moffat_psf
    from dwgf_sci.solvers import DWGF

    physics = PSFConvolution(moffat_psf(4.0, 3.0, 15), (1, 64, 64))
    physics.set_noise_model(deepinv.physics.GaussianNoise(0.02))
    x = torch.rand((1, 1, 64, 64), generator=torch.Generator().manual_seed(3))
    y = physics(x)
    for solver in (DWGF(prior, particles=2, steps=3), DWGF.reference(prior, particles=2, steps=3)):
        post = solver(y, physics)
        assert post.samples.shape == (2, 1, 64, 64) and torch.isfinite(post.samples).all()
        # one UNet forward per particle and step, and never a backward pass through the UNet
        assert post.calls["unet"] == 6 and "unet_backward" not in post.calls
    assert post.calls["decoder_backward"] == 6 and post.calls["encoder"] == 6  # reference
