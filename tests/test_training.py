"""Training priors: tiny runs end to end, determinism, resume, DDP, SD fine-tuning, CLI, errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dwgf_sci.cli import main
from dwgf_sci.errors import (
    ConfigError,
    FileFormatError,
    InvalidDataError,
    OutputExistsError,
    ShapeError,
)
from dwgf_sci.priors import (
    GaussianMixturePrior,
    LatentDiffusionPrior,
    StableDiffusionPrior,
    load_prior,
)
from dwgf_sci.priors.latent import build_latent_prior
from dwgf_sci.priors.tiny import build_tiny_stable_diffusion
from dwgf_sci.training import (
    CheckpointError,
    TrainConfig,
    TrainingStopped,
    UnitMap,
    fit_unit_map,
    load_checkpoint,
    sample_prior,
    train_prior,
)
from dwgf_sci.training.checkpoint import optimizer_state_from_flat, optimizer_state_to_flat
from dwgf_sci.training.data import load_training_data
from dwgf_sci.training.evaluate import (
    evaluate_prior,
    galaxy_statistics,
    half_light_radius,
    held_out_images,
    ks_statistics,
    phantom_statistics,
    write_metrics,
)
from dwgf_sci.training.sampling import ddim_timesteps
from dwgf_sci.training.trainer import lr_at

TINY = {
    "dataset": "phantoms",
    "n": 24,
    "size": 16,
    "vae_channels": (8, 16),
    "unet_channels": (8, 16),
    "latent_channels": 2,
    "vae_steps": 10,
    "unet_steps": 8,
    "batch_size": 4,
    "vae_lr": 3e-3,
    "unet_lr": 1e-3,
    "checkpoint_every": 4,
    "eval_samples": 0,
    "sample_steps": 2,
    "progress": False,
}


def _config(out: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(out), **changes})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for sub in ("vae", "unet"):
        for key, value in load_file(folder / sub / "diffusion_pytorch_model.safetensors").items():
            out[f"{sub}.{key}"] = value
    return out


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "tiny-prior"
    result = train_prior(_config(out))
    return out, result


# ---------------------------------------------------------------------- end to end
def test_tiny_run_saves_a_loadable_prior(trained):
    out, result = trained
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not (out / "checkpoints").exists()  # removed after success
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".png", ".md"}
    for name in ("README.md", "loss_curve.png", "samples.png", "training.json"):
        assert (out / name).is_file()
    prior = LatentDiffusionPrior.from_pretrained(out, device="cpu")
    assert isinstance(load_prior(str(out), device="cpu"), LatentDiffusionPrior)
    assert prior.image_size == (16, 16) and prior.latent_channels == 2
    # the autoencoder's held-out error is measured and saved with the prior
    assert prior.decoder_sigma > 0
    assert prior.decoder_sigma == pytest.approx(result.metrics["val_decoder_sigma"])
    assert prior.decoder_error_model is not None  # and its per-pixel model
    assert prior.decoder_error_model == result.prior.decoder_error_model
    # the unit map fitted on the data is the prior's; the latent scaling is fitted
    units = result.unit_map
    assert prior.data_scale == pytest.approx(units.data_scale)
    assert prior.data_offset == pytest.approx(units.data_offset)
    assert prior.latent_scale == pytest.approx(result.metrics["latent_scaling_factor"])
    assert prior.latent_scale != 1.0
    # the saved weights are the EMA weights of the run
    for name, value in prior.vae.state_dict().items():
        assert torch.equal(value, result.prior.vae.state_dict()[name])
    card = (out / "README.md").read_text()
    assert "seed 0" in card and "train_prior(TrainConfig(" in card and "PSNR" in card
    record = json.loads((out / "training.json").read_text())
    assert len(record["history"]["vae"]) == 10 and len(record["history"]["unet"]) == 8
    assert record["config"]["seed"] == 0 and prior.metadata["trained"] is True
    # the training images' intensity range, which flux_scale="auto" compares data with
    from dwgf_sci.priors.intensity import measure_intensity, training_intensity
    from dwgf_sci.training.data import regenerate

    data = regenerate(record["data"])
    assert training_intensity(prior) == measure_intensity(data.train, "absolute")  # phantoms


def test_autoencoder_improves_over_initialisation(trained):
    out, result = trained
    prior = load_prior(str(out), device="cpu")
    initial = build_latent_prior(
        (16, 16),
        latent_channels=2,
        vae_channels=(8, 16),
        unet_channels=(8, 16),
        data_scale=prior.data_scale,
        data_offset=prior.data_offset,
        seed=0,
    )
    from dwgf_sci.datasets import PhantomDataset

    x = torch.stack([PhantomDataset(24, size=16)[i] for i in range(20, 24)])

    def error(p) -> float:
        with torch.no_grad():
            return float((p.from_model(p.decode(p.encode(p.to_model(x)))) - x).pow(2).mean())

    assert error(prior) < 0.5 * error(initial)
    assert result.history["vae"][-1] < result.history["vae"][0]


def test_same_seed_same_weights_and_ddp_single_process(trained, tmp_path, monkeypatch):
    out, _ = trained
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29400 + os.getpid() % 500))
    again = tmp_path / "again"
    result = train_prior(_config(again))  # through DistributedDataParallel (gloo, 1 process)
    assert result.metrics["world_size"] == 1
    assert not torch.distributed.is_initialized()
    _assert_same_weights(out, again)


def test_resume_equals_uninterrupted_run(trained, tmp_path):
    out, reference = trained
    run = tmp_path / "resumed"

    def stop_at(stage: str, step: int):
        def callback(name: str, done: int, loss: float) -> None:
            if name == stage and done == step:
                raise TrainingStopped

        return callback

    with pytest.raises(TrainingStopped):  # killed in stage 1, after the step-4 checkpoint
        train_prior(_config(run), callback=stop_at("vae", 6))
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["vae-00000004"]
    with pytest.raises(OutputExistsError, match="--resume"):
        train_prior(_config(run))
    with pytest.raises(TrainingStopped):  # resumed, killed again in stage 2
        train_prior(_config(run, resume=True), callback=stop_at("unet", 6))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["unet-00000004", "vae-00000008", "vae-00000010"]
    with pytest.raises(CheckpointError, match="other settings"):
        train_prior(_config(run, resume=True, kl_weight=1.0))
    result = train_prior(_config(run, resume=True))
    _assert_same_weights(out, run)
    assert result.history == reference.history  # the same loss curve, bit for bit


def test_corrupt_checkpoint_is_refused(tmp_path):
    run = tmp_path / "corrupt"

    def stop(name: str, done: int, loss: float) -> None:
        if name == "vae" and done == 5:
            raise TrainingStopped

    with pytest.raises(TrainingStopped):
        train_prior(_config(run, vae_steps=8), callback=stop)
    ckpt = run / "checkpoints" / "vae-00000004"
    assert load_checkpoint(ckpt).step == 4
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        train_prior(_config(run, vae_steps=8, resume=True))
    good = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ckpt)
    for key, value in (("step", None), ("files", []), ("optimizer", "x"), ("version", True)):
        (ckpt / "state.json").write_text(json.dumps({**good, key: value}))
        with pytest.raises(CheckpointError, match=f"'{key}'"):  # a clear error, not a KeyError
            load_checkpoint(ckpt)


# ---------------------------------------------------------------------- pieces
def test_unit_map_is_invertible_and_matches_the_prior():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((8, 1, 16, 16), generator=gen).pow(6) * 1e4
    for stretch in (None, "asinh"):
        units = fit_unit_map(x, stretch=stretch)
        y = units.to_model(x.double())
        assert torch.allclose(units.from_model(y), x.double(), rtol=1e-10, atol=1e-9)
        q = torch.quantile(y.flatten(), torch.tensor([0.001, 0.999], dtype=torch.float64))
        assert torch.allclose(q, torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=0.05)
        prior = build_latent_prior(
            16, vae_channels=(8, 16), unet_channels=(8, 16), seed=0, **units.to_dict()
        )
        assert torch.allclose(prior.to_model(x), units.to_model(x), rtol=1e-6)
        assert UnitMap.from_dict(json.loads(json.dumps(units.to_dict()))) == units
    stretched = fit_unit_map(x, stretch="asinh")
    assert stretched.stretch_scale == pytest.approx(0.02 * float(x.flatten(1).amax(1).median()))
    with pytest.raises(InvalidDataError):
        fit_unit_map(torch.ones(4, 1, 8, 8))
    with pytest.raises(ConfigError):
        fit_unit_map(x, percentiles=(50, 10))


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_state_to_flat(opt.state_dict())
    restored = optimizer_state_from_flat(tensors, json.loads(json.dumps(meta)))
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fresh.load_state_dict(restored)
    for pid, values in opt.state_dict()["state"].items():
        for name, value in values.items():
            assert torch.equal(fresh.state_dict()["state"][pid][name], value)
    assert fresh.param_groups[0]["betas"] == opt.param_groups[0]["betas"]


def test_learning_rate_schedule():
    assert lr_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, "cosine") == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 10, "cosine") == pytest.approx(0.1, abs=1e-3)
    assert lr_at(99, 100, 1.0, 10, "constant") == 1.0


def test_ddim_sampler_on_an_exact_gaussian_prior():
    # p(z) = N(m, I): every DDIM step rotates u = z_t - sqrt(abar_t) m by the angle step,
    # u' = cos(theta' - theta) u with cos(theta) = sqrt(abar), and the last step returns
    # m + sqrt(abar_last) u: the sampler is checked against this closed form
    m = torch.tensor([2.0, -1.0], dtype=torch.float64)
    prior = GaussianMixturePrior([1.0], [m.tolist()], covariances=1.0, dtype=torch.float64)
    steps = 20
    x = sample_prior(prior, 6, steps=steps, seed=3).double().flatten(1)
    ab = prior.alphas_cumprod.double()
    ts = ddim_timesteps(prior.num_train_timesteps, steps)
    theta = torch.arccos(ab[ts].sqrt())
    z_start = torch.randn((6, 2, 1, 1), generator=torch.Generator().manual_seed(3)).double()
    u = z_start.flatten(1) - ab[ts[0]].sqrt() * m
    u = u * torch.cos(theta[1:] - theta[:-1]).prod() * ab[ts[-1]].sqrt()
    assert torch.allclose(x, m + u, atol=1e-5)
    assert torch.equal(
        sample_prior(prior, 5, steps=4, seed=1), sample_prior(prior, 5, steps=4, seed=1)
    )
    ancestral = sample_prior(prior, 400, steps=50, eta=1.0, seed=4).double().flatten(1)
    assert torch.allclose(ancestral.mean(0), m, atol=0.2)
    assert torch.allclose(ancestral.std(0), torch.ones(2, dtype=torch.float64), rtol=0.15)
    with pytest.raises(ConfigError):
        sample_prior(prior, 2, steps=0)


def test_statistics_of_known_shapes():
    import galsim

    images = []
    for sigma in (2.0, 3.0):
        img = galsim.Gaussian(sigma=sigma, flux=1000.0).drawImage(nx=48, ny=48, scale=1.0)
        images.append(torch.from_numpy(img.array.astype(np.float32))[None])
    stats = galaxy_statistics(torch.stack(images))
    assert stats["total_flux"] == pytest.approx([1000.0, 1000.0], rel=2e-3)
    # drawn with the pixel response: a Gaussian of variance sigma^2 + 1/12
    expected = np.sqrt(np.array([4.0, 9.0]) + 1 / 12) * math.sqrt(2 * math.log(2))
    assert half_light_radius(torch.stack(images)) == pytest.approx(expected, rel=0.02)
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 10**2).astype(np.float32) * 0.2
    disk[14:18, 14:18] = 0.0  # an air pocket: inside the support
    ct = phantom_statistics(disk[None])
    assert ct["support_area"][0] == pytest.approx(math.pi * 100, rel=0.05)
    assert ct["mean_attenuation"][0] == pytest.approx(0.2 * (1 - 16 / (math.pi * 100)), rel=0.05)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((300, 1, 8, 8), generator=gen)
    same = ks_statistics(a[:150], a[150:], "generic")
    shifted = ks_statistics(a[:150] + 0.3, a[150:], "generic")
    assert same["pixel_mean"]["ks"] < 0.2 < shifted["pixel_mean"]["ks"]
    # blank samples have no half-light radius: the worst score, with every field present
    blank = ks_statistics(torch.zeros((5, 1, 16, 16)), a[:5] + 1.0, "galaxies")["half_light_radius"]
    assert blank["ks"] == 1.0 and blank["n_samples"] == 0 and blank["dropped"] == 5
    assert math.isnan(blank["sample_median"]) and blank["n_reference"] == 5


def test_evaluate_prior_writes_metrics(trained, tmp_path):
    out, _ = trained
    prior = load_prior(str(out), device="cpu")
    result = evaluate_prior(prior, "phantoms", n=8, sample_steps=2)
    assert result["vae_psnr_db"]["n"] == 8
    assert set(result["ks"]) == {"mean_attenuation", "support_area"}
    assert set(result["pass"]) == {"vae_psnr", "ks_mean_attenuation", "ks_support_area"}
    json_path, md_path = write_metrics(result, tmp_path)
    assert json.loads(json_path.read_text())["kind"] == "phantoms"
    assert "KS statistic" in md_path.read_text()
    # the benchmark script: same metrics, written next to the prior or into --out
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "prior_metrics.py"
    spec = importlib.util.spec_from_file_location("prior_metrics", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [str(out), "--dataset", "phantoms", "--n", "6", "--steps", "2", "--out", str(tmp_path)]
    assert module.main(argv) in (0, 1)  # 1: targets not met (a 10-step prior)
    assert json.loads((tmp_path / "prior_metrics.json").read_text())["n_reference"] == 6
    assert module.main([*argv, "--data-seed", "0"]) == 2  # the training data are not held out


def test_vae_from_trains_a_new_denoiser_only(trained, tmp_path):
    out, _ = trained
    new = tmp_path / "denoiser-only"
    result = train_prior(_config(new, vae_from=str(out), unet_steps=3, unet_channels=(16, 16)))
    assert "vae" not in result.history and len(result.history["unet"]) == 3
    old_prior, new_prior = load_prior(str(out), device="cpu"), load_prior(str(new), device="cpu")
    a, b = old_prior.vae.state_dict(), new_prior.vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert new_prior.latent_scale == old_prior.latent_scale
    assert new_prior.data_scale == old_prior.data_scale
    assert tuple(new_prior.unet.config.block_out_channels) == (16, 16)


# ---------------------------------------------------------------------- Stable Diffusion
def test_fine_tune_tiny_stable_diffusion(tmp_path):
    sd = build_tiny_stable_diffusion(tmp_path / "sd", seed=0, sample_size=4)
    before = load_file(sd / "unet" / "diffusion_pytorch_model.safetensors")
    out = tmp_path / "sd-ft"
    result = train_prior(
        TrainConfig(
            dataset="galaxies",
            n=10,
            size=32,
            out=str(out),
            init_from=str(sd),
            unet_steps=4,
            batch_size=2,
            eval_samples=0,
            sample_steps=2,
            progress=False,
        )
    )
    assert "vae" not in result.history and len(result.history["unet"]) == 4
    prior = load_prior(str(out), device="cpu")
    assert isinstance(prior, StableDiffusionPrior) and prior.image_channels == 1
    assert prior.data_scale == pytest.approx(result.unit_map.data_scale)
    after = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    vae_before = load_file(sd / "vae" / "diffusion_pytorch_model.safetensors")
    vae_after = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae_before[k], vae_after[k]) for k in vae_before)  # frozen
    assert (out / "README.md").is_file() and (out / "samples.png").is_file()
    with pytest.raises(ConfigError, match="stretch"):
        TrainConfig(dataset="galaxies", out=str(out), init_from=str(sd), stretch="asinh")


# ---------------------------------------------------------------------- CLI and bad input
def test_cli_help_and_tiny_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train-prior", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--dataset", "--resume", "--init-from", "--stretch", "--vae-steps"):
        assert option in text
    out = tmp_path / "cli-prior"
    argv = [
        "train-prior", "--dataset", "phantoms", "--n", "16", "--size", "16", "--out", str(out),
        "--vae-channels", "8,16", "--unet-channels", "8,16", "--latent-channels", "2",
        "--vae-steps", "3", "--unet-steps", "3", "--batch-size", "4", "--eval-samples", "0",
        "--sample-steps", "2", "--stretch", "asinh", "--eval-every", "2", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "trained prior saved" in capsys.readouterr().out
    history = json.loads((out / "training.json").read_text())["history"]
    assert [step for step, _ in history["vae_val"]] == [2, 3]  # every 2 steps and at the end
    assert [step for step, _ in history["unet_val"]] == [2, 3]
    prior = load_prior(str(out), device="cpu")
    assert prior.stretch == "asinh" and prior.metadata["command"].startswith("dwgf-sci train-prior")
    assert "--stretch asinh" in (out / "README.md").read_text()
    assert main(argv) == 2  # a trained prior is there already
    assert "--overwrite" in capsys.readouterr().err


def test_bad_input_fails_before_training(tmp_path, capsys):
    def never(stage: str, step: int, loss: float) -> None:
        raise AssertionError("training started")

    with pytest.raises(FileFormatError, match="not found"):
        train_prior(_config(tmp_path / "a", dataset=None, data=str(tmp_path / "none.h5")), never)
    bad = tmp_path / "nan.h5"
    x = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    x[3, 2, 2] = np.nan
    with h5py.File(bad, "w") as f:
        f["x"] = x
    with pytest.raises(InvalidDataError, match=r"NaN or Inf.*\[3\]"):
        train_prior(_config(tmp_path / "b", dataset=None, data=str(bad)), never)
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as f:
        f["x"] = np.zeros((6, 16), np.float32)
        f["y"] = np.zeros((6, 1, 10, 10), np.float32) + np.arange(10, dtype=np.float32)
    with pytest.raises(ShapeError, match=r"\(N, H, W\)"):
        train_prior(_config(tmp_path / "c", dataset=None, data=str(flat)), never)
    with pytest.raises(ShapeError, match="multiple of 4"):
        train_prior(_config(tmp_path / "d", dataset=None, data=str(flat), data_key="y"), never)
    with pytest.raises(ConfigError):
        TrainConfig(out="x")  # no data source
    with pytest.raises(ConfigError, match="vae_channels"):
        TrainConfig(dataset="galaxies", out="x", vae_channels=(6, 16))
    code = main(
        ["train-prior", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "e")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dwgf-sci: error:") and "missing.h5" in err and "Traceback" not in err


def test_per_image_psnr_ranges_are_per_image_and_a_constant_image_uses_one():
    from dwgf_sci.training.evaluate import per_image_psnr

    ref = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    ref[0, 0, 0, 0] = 2.0  # range 2
    ref[1] = 5.0  # constant: range taken as 1
    ref[2, 0, 1, 1] = 10.0  # range 10
    x = ref + 0.1
    got = per_image_psnr(x, ref)
    want = 10 * np.log10(np.array([2.0, 1.0, 10.0]) ** 2 / 0.01)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert per_image_psnr(ref, ref).tolist() == [math.inf] * 3


def test_a_patch_prior_trains_on_crops_of_fields_and_models_any_size(tmp_path):
    """``--dataset fields --patch-size``: random crops of whole fields (validation crops from
    other fields), a prior of the crops' size that PatchPrior applies to a larger image."""
    from dwgf_sci.priors.intensity import training_intensity
    from dwgf_sci.priors.patches import PatchPrior
    from dwgf_sci.training.data import random_crops

    data = load_training_data(dataset="fields", n=5, size=64, data_seed=2, val=1, patch_size=16,
                              crops_per_image=3)  # fmt: skip
    assert data.train.shape == (12, 1, 16, 16) and data.val.shape == (3, 1, 16, 16)
    assert data.source["image_shape"] == [1, 64, 64] and data.source["n_train_crops"] == 12
    fields = torch.arange(2 * 40 * 40, dtype=torch.float32).reshape(2, 1, 40, 40)
    crops = random_crops(fields, 16, 3, seed=0)
    assert torch.equal(crops, random_crops(fields, 16, 3, seed=0))
    assert all(float(c.min()) >= (0 if i < 3 else 1600) for i, c in enumerate(crops))
    with pytest.raises(ConfigError, match="smaller than --patch-size"):
        load_training_data(dataset="fields", n=3, size=16, patch_size=24)
    out = tmp_path / "patch-prior"
    train_prior(_config(out, dataset="fields", n=5, size=64, val=1, patch_size=16,
                        crops_per_image=3))  # fmt: skip
    prior = load_prior(str(out), device="cpu")
    assert prior.image_size == (16, 16)
    assert training_intensity(prior).image_pixels == 256
    wide = PatchPrior(prior)
    assert wide.latent_shape((1, 48, 32)) == (2, 24, 16)  # downsampling 2
    with torch.no_grad():
        eps = wide.predict_noise(torch.randn(1, 2, 24, 16), 500)
    assert eps.shape == (1, 2, 24, 16) and torch.isfinite(eps).all()
    # its held-out metrics compare samples with crops of held-out fields of the training size
    result = evaluate_prior(prior, "fields", n=4, sample_steps=2)
    assert result["n_reference"] == 4 and set(result["ks"]) == {"pixel_mean", "pixel_std"}
    assert set(result["pass"]) == {"vae_psnr", "ks_pixel_mean", "ks_pixel_std"}
    crops = held_out_images("fields", 3, 64, crop=16)
    assert crops.shape == (3, 1, 16, 16)
    assert torch.equal(crops, held_out_images("fields", 3, 64, crop=16))
