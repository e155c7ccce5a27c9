r"""Training latent-diffusion priors, and fine-tuning Stable Diffusion, on scientific images.

:func:`train_prior` runs two stages on images in the model range (see
:mod:`dwgf_sci.training.units` for the map from physical units, fitted on the training images):

**Stage 1, autoencoder** (skipped when fine-tuning). A diffusers ``AutoencoderKL`` is trained on

.. math::

    \mathcal{L}_\text{VAE} = \operatorname{mean}\,\ell(x - D(\mu + \sigma \odot \xi))
        + \lambda_\text{KL}\,\operatorname{mean}\,\tfrac12(\mu^2 + \sigma^2 - 1 - \log\sigma^2),

with :math:`(\mu, \sigma)` the encoder posterior of :math:`x`, :math:`\xi \sim \mathcal N(0, I)`,
:math:`\ell` the L1, L2 or L1 + L2 error, both means over elements. No perceptual or adversarial
loss: they need networks trained on natural images, which cannot be downloaded here and do not
describe scientific images.

**Latent scaling.** With the EMA weights of the VAE the training images are encoded once, and the
VAE's ``scaling_factor`` is set to one over the standard deviation of the encoder means (as
:meth:`LatentDiffusionPrior.fit_latent_scaling` does), so the diffusion model sees latents of
unit variance.

**Stage 2, denoiser.** A diffusers ``UNet2DModel`` (or, when fine-tuning, the Stable Diffusion
``UNet2DConditionModel`` with the cached empty-prompt embedding) learns the noise of the DDPM
forward process with the prior's schedule (linear betas 1e-4 to 0.02 over 1000 steps for new
priors): :math:`z_t = \sqrt{\bar\alpha_t} z_0 + \sqrt{1-\bar\alpha_t}\epsilon`, :math:`t`
uniform, loss :math:`\|\epsilon_\theta(z_t, t) - \epsilon\|^2` (``v`` or :math:`z_0` targets for
schedulers with that ``prediction_type``). By default :math:`z_0` is the encoder **mean**
(deterministic, and what ``prior.encode`` returns to the solvers); ``latent_sample=True`` uses a
sample of the encoder posterior instead.

**Both stages**: AdamW, linear warmup then cosine (or constant) learning rate, gradient clipping,
EMA weights (the saved weights are the EMA), a checkpoint every ``checkpoint_every`` steps
(:mod:`dwgf_sci.training.checkpoint`) from which ``resume=True`` continues. Every random draw of
step ``s`` of a stage (batch indices, flips, posterior noise, timesteps, diffusion noise) comes
from a generator seeded by ``(seed, stage, s)`` (:func:`step_generator`), and the data order by
epoch permutations seeded by ``(seed, stage, epoch)``; on the CPU a resumed run therefore
reproduces the uninterrupted one bit for bit. Several processes (``torchrun``, see
:mod:`dwgf_sci.training.distributed`) split each global batch.

**Output** (rank 0): the prior's folder (``save_pretrained``: safetensors + JSON), the model card
``README.md``, ``loss_curve.png``, ``samples.png`` (validation images next to DDIM samples of the
prior) and ``training.json`` (settings, data, unit map, losses, timings, metrics).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, FileFormatError, OutputExistsError
from ..priors.base import LatentPrior
from ..priors.folders import PRIOR_CONFIG_NAME
from .checkpoint import remove_checkpoints
from .config import TrainConfig
from .data import TrainingData, data_fingerprint, load_training_data
from .distributed import DistContext, init_distributed
from .loop import (
    BatchSampler,
    Stage,
    StageRunner,
    StepCallback,
    TrainingDivergedError,
    TrainingStopped,
    lr_at,
    step_generator,
)
from .models import (
    build_new_prior,
    denoiser_for,
    load_base_prior,
    load_stable_diffusion,
    sd_multiple,
)
from .objectives import (
    ENCODE_BATCH,
    DenoiserObjective,
    VAEObjective,
    diffusion_target,
    encode_stats,
    flip_images,
    flip_variants,
)
from .result import TrainResult
from .units import UnitMap, fit_unit_map

__all__ = [
    "StepCallback",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingStopped",
    "lr_at",
    "step_generator",
    "train_prior",
]


def _check_out(config: TrainConfig) -> Path:
    """Refuse an output folder that holds a prior or checkpoints (unless told otherwise)."""
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileFormatError(f"--out {out} exists and is not a folder")
    has_prior = (out / PRIOR_CONFIG_NAME).exists() or (out / "model_index.json").exists()
    ckpts = out / "checkpoints"
    has_ckpts = ckpts.is_dir() and any(ckpts.iterdir())
    if has_prior and not config.overwrite:
        raise OutputExistsError(
            f"{out} already holds a trained prior; pass --overwrite to replace it (or choose "
            "another --out)"
        )
    if has_ckpts and not config.resume and not config.overwrite:
        raise OutputExistsError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or "
            "--overwrite to start over"
        )
    return out


def _prepare_out(config: TrainConfig, ctx: DistContext) -> None:
    """Create the output folder; with ``overwrite`` (and no ``resume``) drop old checkpoints."""
    out = Path(config.out).expanduser()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpts = out / "checkpoints"
        if config.overwrite and not config.resume and ckpts.exists():
            shutil.rmtree(ckpts)
    ctx.barrier()


def train_prior(
    config: TrainConfig,
    callback: StepCallback | None = None,
) -> TrainResult:
    """Train a latent-diffusion prior (or fine-tune Stable Diffusion) and save it in ``out``.

    Every input is checked before the first step (settings, output folder, data). See the
    module docstring for the method and :class:`TrainConfig` for the settings.

    :param TrainConfig config: the run.
    :param callback: called after every step with ``(stage, steps_done, loss)``; raising
        :class:`TrainingStopped` from it stops the run like an interruption (the checkpoints
        stay, ``resume=True`` continues).
    :return: the saved folder, the trained prior, metrics, losses and timings.
    :raises ConfigError: invalid settings.
    :raises OutputExistsError: ``out`` holds a prior or checkpoints and neither ``overwrite`` nor
        ``resume`` was given.
    :raises FileFormatError: missing or unreadable data; corrupt checkpoints
        (:class:`~dwgf_sci.training.checkpoint.CheckpointError`).
    :raises ShapeError: images of the wrong dimensions or sizes.
    :raises InvalidDataError: NaN/Inf or constant images.
    """
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    t_start = time.perf_counter()
    ctx = init_distributed(config.device)
    try:
        if config.batch_size % ctx.world_size or config.denoiser_batch_size % ctx.world_size:
            raise ConfigError(
                f"batch sizes ({config.batch_size}, {config.denoiser_batch_size}) must be "
                f"multiples of the number of processes ({ctx.world_size})"
            )
        base = None
        multiple = config.total_downsampling
        if config.init_from:
            multiple = sd_multiple(config)
        elif config.vae_from:
            base = load_base_prior(config)
            multiple = base.downsample * 2 ** (len(config.unet_channels) - 1)
        out = _check_out(config)
        data = load_training_data(
            config.data,
            config.dataset,
            key=config.data_key,
            n=config.n,
            size=config.size,
            data_seed=config.data_seed,
            val=config.val,
            multiple=multiple,
            patch_size=config.patch_size,
            crops_per_image=config.crops_per_image,
        )
        _prepare_out(config, ctx)
        fingerprint = data_fingerprint(torch.cat([data.train, data.val]))
        runner = StageRunner(config, ctx, fingerprint, callback)
        runner.log(f"data: {data.source}")
        if base is not None:
            units = UnitMap(base.data_scale, base.data_offset, base.stretch, base.stretch_scale)
        else:
            units = fit_unit_map(
                data.train, config.stretch, config.stretch_scale, percentiles=config.percentiles
            )
        runner.log(f"unit map: {units.to_dict()}")
        if config.init_from:
            prior = load_stable_diffusion(config, data, units, ctx.device)
        elif base is not None:
            prior = denoiser_for(config, data, base).to(ctx.device)
        else:
            prior = build_new_prior(config, data, units).to(ctx.device)
        result = _train(runner, prior, data, units)
        result.timings["total_s"] = time.perf_counter() - t_start
        if ctx.is_main:
            from .report import finish_run

            finish_run(
                result,
                config,
                data,
                out=runner.out,
                device=runner.ctx.device,
                world_size=runner.ctx.world_size,
                log=runner.log,
            )
        ctx.barrier()
        if ctx.is_main and not config.keep_checkpoints:
            remove_checkpoints(runner.ckpt_dir)
        result.out = out
        return result
    finally:
        ctx.close()


def _train(
    runner: StageRunner, prior: LatentPrior, data: TrainingData, units: UnitMap
) -> TrainResult:
    cfg, ctx = runner.config, runner.ctx
    device = ctx.device
    x_model = units.to_model(data.train.double()).float()
    n_train = x_model.shape[0]
    latent_shape = prior.latent_shape(data.image_shape)

    # -------------------------------------------------------------- stage 1: the autoencoder
    if not (cfg.init_from or cfg.vae_from):
        vae_sampler = BatchSampler(n_train, cfg.batch_size, cfg.seed, "vae")
        kl_weight, recon = float(cfg.kl_weight), cfg.recon_loss

        def vae_loss(model: nn.Module, step: int, gen: torch.Generator) -> Tensor:
            b = cfg.batch_size
            x = x_model[vae_sampler.indices(step)]
            if cfg.augment == "flips":
                x = flip_images(x, torch.randint(0, 4, (b,), generator=gen))
            noise = torch.randn((b, *latent_shape), generator=gen)
            part = ctx.shard(b)
            x, noise = x[part].to(device), noise[part].to(device)
            rec, mean, logvar = model(x, noise)
            err = rec - x
            if recon == "l1":
                rec_loss = err.abs().mean()
            elif recon == "l2":
                rec_loss = err.pow(2).mean()
            else:
                rec_loss = err.abs().mean() + err.pow(2).mean()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
            return rec_loss + kl_weight * kl

        val_phys = data.val.float()
        val_in = units.to_model(val_phys.double()).float()

        def vae_val_psnr(objective: nn.Module) -> float:
            from .evaluate import per_image_psnr

            recs = []
            for i in range(0, val_in.shape[0], ENCODE_BATCH):
                x = val_in[i : i + ENCODE_BATCH].to(device)
                mean = objective.vae.encode(x).latent_dist.mean
                recs.append(objective.vae.decode(mean).sample.float().cpu())
            rec = units.from_model(torch.cat(recs).double()).float()
            return float(np.mean(per_image_psnr(rec, val_phys)))

        vae_stage = Stage(
            "vae",
            VAEObjective(prior.vae),
            cfg.vae_steps,
            cfg.vae_lr,
            vae_loss,
            evaluate=vae_val_psnr,
        )
        runner.run(vae_stage)
        prior.vae.eval().requires_grad_(False)

    # -------------------------------------------------------------- latents and their scaling
    variants = flip_variants(x_model, cfg.augment)
    if not (cfg.init_from or cfg.vae_from):
        raw_mean, _ = encode_stats(prior, variants[0], device)
        std = float(raw_mean.double().std())
        if not (math.isfinite(std) and std > 0):
            raise TrainingDivergedError(f"cannot fit the latent scaling: latent std is {std}")
        prior.vae.register_to_config(scaling_factor=1.0 / std)
        runner.log(f"latent scaling factor: {1.0 / std:.6g}")
    stats = [encode_stats(prior, v, device) for v in variants]
    lat_mean = torch.stack([s[0] for s in stats])  # (V, N, c, h, w)
    lat_std = torch.stack([s[1] for s in stats])

    # -------------------------------------------------------------- stage 2: the denoiser
    ab = prior.alphas_cumprod.double().cpu()
    prediction_type = prior.prediction_type  # type: ignore[attr-defined]
    n_t = prior.num_train_timesteps
    bu = cfg.denoiser_batch_size
    unet_sampler = BatchSampler(n_train, bu, cfg.seed, "unet")

    def unet_loss(model: nn.Module, step: int, gen: torch.Generator) -> Tensor:
        idx = unet_sampler.indices(step)
        which = torch.randint(0, len(variants), (bu,), generator=gen)
        z0 = lat_mean[which, idx]
        if cfg.latent_sample:
            z0 = z0 + lat_std[which, idx] * torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, n_t, (bu,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = ab[t].sqrt().float().view(-1, 1, 1, 1)
        s = (1.0 - ab[t]).sqrt().float().view(-1, 1, 1, 1)
        z_t = a * z0 + s * eps
        target = diffusion_target(prediction_type, z0, eps, a, s)
        part = ctx.shard(bu)
        pred = model(z_t[part].to(device), t[part].to(device))
        return F.mse_loss(pred.float(), target[part].to(device))

    cond = None
    if cfg.init_from:
        cond = prior.prompt_embeds.detach().to(device)  # type: ignore[attr-defined]
    extra = {"latent_scaling_factor": prior.latent_scale}  # type: ignore[attr-defined]
    val_mean, _ = encode_stats(prior, units.to_model(data.val.double()).float(), device)
    val_gen = torch.Generator().manual_seed(int(cfg.seed))
    val_t = (
        torch.linspace(0.05 * n_t, n_t - 1, 10).round().long().repeat_interleave(val_mean.shape[0])
    )
    val_z0 = val_mean.repeat(10, 1, 1, 1)
    val_eps = torch.randn(val_z0.shape, generator=val_gen)

    def unet_val_loss(objective: nn.Module) -> float:
        a = ab[val_t].sqrt().float().view(-1, 1, 1, 1)
        s = (1.0 - ab[val_t]).sqrt().float().view(-1, 1, 1, 1)
        target = diffusion_target(prediction_type, val_z0, val_eps, a, s)
        z_t = a * val_z0 + s * val_eps
        total = 0.0
        for i in range(0, z_t.shape[0], 256):
            pred = objective(z_t[i : i + 256].to(device), val_t[i : i + 256].to(device))
            total += float((pred.float().cpu() - target[i : i + 256]).pow(2).sum())
        return total / target.numel()

    unet_stage = Stage(
        "unet",
        DenoiserObjective(prior.unet, cond),
        cfg.unet_steps,
        cfg.unet_lr,
        unet_loss,
        extra,
        evaluate=unet_val_loss,
    )
    runner.run(unet_stage)
    prior.unet.eval().requires_grad_(False)  # type: ignore[attr-defined]
    prior.eval()
    return TrainResult(
        out=runner.out,
        prior=prior,
        history=dict(runner.history),
        timings=dict(runner.timings),
        unit_map=units,
        metrics={"latent_scaling_factor": prior.latent_scale},  # type: ignore[attr-defined]
    )
