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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DwgfError, FileFormatError, OutputExistsError, ShapeError
from ..priors.base import LatentPrior
from ..priors.latent import PRIOR_CONFIG_NAME, LatentDiffusionPrior, build_latent_prior
from .checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from .config import TrainConfig
from .data import TrainingData, data_fingerprint, load_training_data
from .distributed import DistContext, init_distributed
from .ema import EMA
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

StepCallback = Callable[[str, int, float], None]
"""Type of the ``callback`` of :func:`train_prior`, called after each optimisation step.

It receives ``(stage, steps_done, loss)``: the stage name (``"vae"`` or ``"unet"``), the number
of steps done in that stage (1 after the first step) and the step's training loss averaged over
the processes; every process calls it. Raising :class:`TrainingStopped` stops the run like an
interruption.
"""
_STAGE_IDS = {"vae": 1, "unet": 2}
_ENCODE_BATCH = 64


class TrainingStopped(Exception):
    """Raise it from a step callback to stop a run as if it had been interrupted."""


class TrainingDivergedError(DwgfError, FloatingPointError):
    """The training loss became NaN or infinite (usually: the learning rate is too high)."""


@dataclass
class TrainResult:
    """What :func:`train_prior` returns.

    :param Path out: the output folder (a loadable prior).
    :param LatentPrior prior: the trained prior (EMA weights, eval mode) on the training device.
    :param dict metrics: validation metrics (see the model card).
    :param dict history: loss per step, per stage; with ``eval_every``, also
        ``"<stage>_val"``: ``[step, value]`` pairs of the validation metric (VAE PSNR in dB,
        denoiser loss) of the EMA weights.
    :param dict timings: seconds per stage (summed over resumed runs) and in total.
    :param UnitMap unit_map: the fitted physical <-> model map.
    """

    out: Path
    prior: LatentPrior
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    unit_map: UnitMap | None = None


# ---------------------------------------------------------------------- randomness, schedule
def step_generator(seed: int, stage: str, step: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of the random draws of ``step`` in ``stage`` (same on every process).

    ``stream`` separates independent uses (0: the step's draws, 1: the epoch permutations, where
    ``step`` is the epoch). The 64-bit seed is drawn by :class:`numpy.random.SeedSequence` from
    ``(seed, stage id, stream, step)``, with stage ids 1 (``"vae"``), 2 (``"unet"``) and 9 for
    any other name.

    :param seed: the run's seed.
    :param stage: the stage name.
    :param step: the 0-based step (the epoch for ``stream=1``).
    :param stream: the use of the generator.
    :return: a freshly seeded CPU :class:`torch.Generator`.
    """
    entropy = [int(seed), _STAGE_IDS.get(stage, 9), int(stream), int(step)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _BatchSampler:
    """Global batch indices of a step: consecutive slices of seeded per-epoch permutations."""

    def __init__(self, n: int, batch_size: int, seed: int, stage: str) -> None:
        self.n, self.batch_size, self.seed, self.stage = n, batch_size, seed, stage
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            gen = step_generator(self.seed, self.stage, epoch, stream=1)
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        pos = step * self.batch_size + torch.arange(self.batch_size)
        epochs, within = pos // self.n, pos % self.n
        return torch.stack(
            [
                self._perm(int(e))[int(i)]
                for e, i in zip(epochs.tolist(), within.tolist(), strict=True)
            ]
        )


def lr_at(step: int, steps: int, peak: float, warmup: int, schedule: str) -> float:
    r"""Learning rate of ``step`` (0-based): linear warmup, then cosine decay to 10 % or constant.

    With :math:`W` = ``warmup``, :math:`S` = ``steps`` and :math:`\eta` = ``peak``: for
    :math:`s < W`, :math:`\eta\,(s + 1)/W`; after it, :math:`\eta` for the constant schedule
    (or when :math:`S \le W`), else

    .. math::

        \eta \left(0.1 + 0.45\,\big(1 + \cos(\pi \min(1, p))\big)\right),
        \qquad p = \frac{s - W}{\max(1, S - W)}.

    :param step: the 0-based step :math:`s`.
    :param steps: the number of steps of the stage :math:`S`.
    :param peak: the peak learning rate :math:`\eta`.
    :param warmup: the number of warmup steps :math:`W` (0: none).
    :param schedule: ``"cosine"`` or ``"constant"`` (any value but ``"constant"`` decays).
    :return: the learning rate of the step.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or steps <= warmup:
        return peak
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------------- objectives
class _VAEObjective(nn.Module):
    """Forward of the VAE loss (a module, so that DistributedDataParallel can wrap it)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * noise
        return self.vae.decode(z).sample, dist.mean, dist.logvar


class _DenoiserObjective(nn.Module):
    """Forward of the denoiser; ``cond`` is the cached prompt embedding of Stable Diffusion."""

    def __init__(self, unet: nn.Module, cond: Tensor | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.cond = cond

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        if self.cond is None:
            return self.unet(z_t, t, return_dict=False)[0]
        cond = self.cond.expand(z_t.shape[0], -1, -1)
        return self.unet(z_t, t, encoder_hidden_states=cond, return_dict=False)[0]


def _flip(x: Tensor, codes: Tensor) -> Tensor:
    """Flip each image: code bit 0 horizontal, bit 1 vertical."""
    out = x.clone()
    for i, code in enumerate(codes.tolist()):
        dims = [d for bit, d in ((1, -1), (2, -2)) if code & bit]
        if dims:
            out[i] = torch.flip(x[i], dims)
    return out


def _diffusion_target(
    prediction_type: str, z0: Tensor, eps: Tensor, a: Tensor, s: Tensor
) -> Tensor:
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * z0
    return z0


# ---------------------------------------------------------------------- stage runner
@dataclass
class _Stage:
    name: str
    module: nn.Module
    steps: int
    lr: float
    loss: Callable[[nn.Module, int, torch.Generator], Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[nn.Module], float] | None = None


class _Runner:
    """Shared machinery of a run: config, process context, output folder, logging."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: DistContext,
        fingerprint: str,
        callback: StepCallback | None,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.out = Path(config.out).expanduser()
        self.ckpt_dir = self.out / "checkpoints"
        self.fingerprint = fingerprint
        self.callback = callback
        self.history: dict[str, list[Any]] = {}
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        if self.config.progress and self.ctx.is_main:
            print(f"[train-prior] {message}", file=sys.stderr, flush=True)

    def _run_record(self) -> dict[str, Any]:
        return {"config": self.config.result_settings(), "data_fingerprint": self.fingerprint}

    def _check_same_run(self, path: Path, state: dict[str, Any]) -> None:
        saved = state.get("run", {})
        mine = self._run_record()
        if saved.get("data_fingerprint") != mine["data_fingerprint"]:
            raise CheckpointError(
                f"checkpoint {path} was made with other training data; resume with the same "
                "data, or start over with --overwrite"
            )
        old, new = saved.get("config", {}), mine["config"]
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
            raise CheckpointError(
                f"checkpoint {path} was made with other settings ({changes}); resume with the "
                "same settings, or start over with --overwrite"
            )

    def latest(self, stage: str) -> Path | None:
        found = list_checkpoints(self.ckpt_dir, stage)
        return found[-1][1] if found else None

    def run(self, stage: _Stage) -> dict[str, Any]:
        """Train ``stage.module`` in place; leave it with its EMA weights, frozen, in eval mode.

        :return: the stage's extras (from the checkpoint when the stage had finished already).
        """
        cfg, ctx, module = self.config, self.ctx, stage.module
        module.to(ctx.device).train().requires_grad_(True)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=stage.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay
        )
        ema = EMA(module, cfg.ema_decay)
        history: list[float] = []
        val_history: list[list[float]] = []
        start, elapsed = 0, 0.0
        latest = self.latest(stage.name) if cfg.resume else None
        if latest is not None:
            ckpt = load_checkpoint(latest, device=ctx.device)
            self._check_same_run(latest, ckpt.state)
            try:
                module.load_state_dict(ckpt.model)
                optimizer.load_state_dict(ckpt.optimizer)
                ema.load_state_dict(ckpt.ema, int(ckpt.state["ema_updates"]))
            except (RuntimeError, KeyError, ValueError, ConfigError) as err:
                raise CheckpointError(
                    f"checkpoint {latest} does not fit this model ({err}); start over with "
                    "--overwrite"
                ) from None
            start = ckpt.step
            history = [float(v) for v in ckpt.state.get("history", [])][:start]
            val_history = [list(v) for v in ckpt.state.get("val_history", [])]
            elapsed = float(ckpt.state.get("elapsed_s", 0.0))
            stage.extra = {**ckpt.state.get("extra", {}), **stage.extra}
            self.log(f"{stage.name}: resumed from {latest.name} (step {start}/{stage.steps})")
        wrapped: nn.Module = module
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            wrapped = DistributedDataParallel(module, device_ids=ids)
        warmup = cfg.warmup_for(stage.steps)
        bar = None
        if cfg.progress and ctx.is_main and start < stage.steps:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=stage.steps, initial=start, desc=stage.name, dynamic_ncols=True, mininterval=1
            )
        t0 = time.perf_counter()

        def save(step: int) -> None:
            if not ctx.is_main:
                return
            save_checkpoint(
                self.ckpt_dir,
                stage.name,
                step,
                module.state_dict(),
                ema.state_dict(),
                optimizer.state_dict(),
                {
                    "steps": stage.steps,
                    "ema_updates": ema.updates,
                    "history": history,
                    "val_history": val_history,
                    "elapsed_s": elapsed + time.perf_counter() - t0,
                    "extra": stage.extra,
                    "run": self._run_record(),
                },
            )

        try:
            for step in range(start, stage.steps):
                lr = lr_at(step, stage.steps, stage.lr, warmup, cfg.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                gen = step_generator(cfg.seed, stage.name, step)
                loss = stage.loss(wrapped, step, gen)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"{stage.name}: the loss is {float(loss)} at step {step}; lower the "
                        "learning rate (the checkpoints before it are kept)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                ema.update(module)
                value = ctx.mean(float(loss.detach()))
                history.append(value)
                done = step + 1
                every = cfg.eval_every
                if stage.evaluate and every and (done % every == 0 or done == stage.steps):
                    if ctx.is_main:
                        val_history.append([done, _evaluate_ema(module, ema, stage.evaluate)])
                        if bar is None:
                            self.log(
                                f"{stage.name} step {done}: validation {val_history[-1][1]:.4g}"
                            )
                if done % cfg.checkpoint_every == 0 or done == stage.steps:
                    save(done)
                if bar is not None:
                    bar.update(1)
                    if done % 10 == 0 or done == stage.steps:
                        bar.set_postfix(loss=f"{np.mean(history[-50:]):.4g}", lr=f"{lr:.2g}")
                if self.callback is not None:
                    self.callback(stage.name, done, value)
        finally:
            if bar is not None:
                bar.close()
        elapsed += time.perf_counter() - t0
        ema.copy_to(module)
        module.eval().requires_grad_(False)
        self.history[stage.name] = history
        if val_history:
            self.history[f"{stage.name}_val"] = val_history
        self.timings[f"{stage.name}_s"] = elapsed
        ctx.barrier()
        return stage.extra


@torch.no_grad()
def _evaluate_ema(module: nn.Module, ema: EMA, evaluate: Callable[[nn.Module], float]) -> float:
    """``evaluate`` on the EMA weights; the module's own weights are restored bit for bit."""
    backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
    ema.copy_to(module)
    try:
        return float(evaluate(module))
    finally:
        module.load_state_dict(backup)


# ---------------------------------------------------------------------- data in latent space
@torch.no_grad()
def _encode_stats(
    prior: LatentPrior, x_model: Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Encoder posterior means and standard deviations, scaled like ``prior.encode`` (CPU)."""
    vae = prior.vae  # type: ignore[attr-defined]
    scale, shift = prior.latent_scale, prior.latent_shift  # type: ignore[attr-defined]
    means, stds = [], []
    for start in range(0, x_model.shape[0], _ENCODE_BATCH):
        h = x_model[start : start + _ENCODE_BATCH].to(device=device, dtype=vae.dtype)
        if getattr(prior, "maps_gray_to_rgb", False):
            h = h.expand(-1, 3, -1, -1)
        dist = vae.encode(h).latent_dist
        means.append(((dist.mean - shift) * scale).float().cpu())
        stds.append((dist.std * scale).float().cpu())
    return torch.cat(means), torch.cat(stds)


def _flip_variants(x: Tensor, augment: str) -> list[Tensor]:
    """The images under each flip code used by the augmentation (just ``[x]`` without it)."""
    if augment != "flips":
        return [x]
    return [x, torch.flip(x, [-1]), torch.flip(x, [-2]), torch.flip(x, [-2, -1])]


# ---------------------------------------------------------------------- output folder
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


# ---------------------------------------------------------------------- the two kinds of run
def _build_new_prior(config: TrainConfig, data: TrainingData, units: UnitMap) -> LatentPrior:
    c, h, w = data.image_shape
    prior = build_latent_prior(
        image_size=(h, w),
        image_channels=c,
        latent_channels=config.latent_channels,
        vae_channels=config.vae_channels,
        unet_channels=config.unet_channels,
        layers_per_block=config.layers_per_block,
        attention=config.attention,
        norm_num_groups=config.norm_num_groups,
        data_scale=units.data_scale,
        data_offset=units.data_offset,
        stretch=units.stretch,
        stretch_scale=units.stretch_scale,
        seed=config.seed,
    )
    conv = getattr(prior.vae, "quant_conv", None)
    if config.vae_logvar_init is not None and conv is not None and conv.bias is not None:
        with torch.no_grad():
            conv.bias[config.latent_channels :] = float(config.vae_logvar_init)
    return prior


def _load_stable_diffusion(
    config: TrainConfig, data: TrainingData, units: UnitMap, device: torch.device
) -> LatentPrior:
    from ..priors.stable_diffusion import StableDiffusionPrior

    c = data.image_shape[0]
    if c not in (1, 3):
        raise ConfigError(f"Stable Diffusion fine-tuning needs 1- or 3-channel images, found {c}")
    prior = StableDiffusionPrior.from_pretrained(
        config.init_from,
        device=device,
        dtype="float32",
        data_scale=units.data_scale,
        data_offset=units.data_offset,
        image_channels=c,
        prompt="",
        guidance_scale=1.0,
    )
    return prior


def _load_base_prior(config: TrainConfig) -> LatentDiffusionPrior:
    """The saved prior whose autoencoder ``vae_from`` reuses."""
    path = Path(str(config.vae_from)).expanduser()
    if not path.is_dir():
        raise FileFormatError(f"--vae-from {path}: no saved prior there")
    return LatentDiffusionPrior.from_pretrained(path, device="cpu")


def _denoiser_for(
    config: TrainConfig, data: TrainingData, base: LatentDiffusionPrior
) -> LatentDiffusionPrior:
    """A prior with the frozen autoencoder of ``base`` and a new, seeded denoiser."""
    if base.image_size is not None and data.image_shape != (base.image_channels, *base.image_size):
        raise ShapeError(
            f"the training images are {data.image_shape}, the autoencoder of --vae-from models "
            f"{(base.image_channels, *base.image_size)}"
        )
    fresh = build_latent_prior(
        image_size=data.image_shape[1:],
        image_channels=base.image_channels,
        latent_channels=base.latent_channels,
        vae_channels=tuple(base.vae.config.block_out_channels),
        unet_channels=config.unet_channels,
        layers_per_block=config.layers_per_block,
        attention=config.attention,
        norm_num_groups=config.norm_num_groups,
        data_scale=base.data_scale,
        data_offset=base.data_offset,
        stretch=base.stretch,
        stretch_scale=base.stretch_scale,
        seed=config.seed,
    )
    return LatentDiffusionPrior(
        base.vae,
        fresh.unet,
        fresh.scheduler,
        image_size=data.image_shape[1:],
        image_channels=base.image_channels,
        data_scale=base.data_scale,
        data_offset=base.data_offset,
        stretch=base.stretch,
        stretch_scale=base.stretch_scale,
    )


def _sd_multiple(config: TrainConfig) -> int:
    """Image sides a Stable Diffusion folder accepts: 8 times its UNet downsampling."""
    import json

    path = Path(str(config.init_from)).expanduser()
    if not path.is_dir():
        raise FileFormatError(f"--init-from {path}: no Stable Diffusion folder there")
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FileFormatError(
            f"--init-from {path} is not a Stable Diffusion folder (unet/ and vae/ configs): {err}"
        ) from None
    vae_f = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    return vae_f * 2 ** (len(unet.get("block_out_channels", [0])) - 1)


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
            multiple = _sd_multiple(config)
        elif config.vae_from:
            base = _load_base_prior(config)
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
        )
        _prepare_out(config, ctx)
        fingerprint = data_fingerprint(torch.cat([data.train, data.val]))
        runner = _Runner(config, ctx, fingerprint, callback)
        runner.log(f"data: {data.source}")
        if base is not None:
            units = UnitMap(base.data_scale, base.data_offset, base.stretch, base.stretch_scale)
        else:
            units = fit_unit_map(
                data.train, config.stretch, config.stretch_scale, percentiles=config.percentiles
            )
        runner.log(f"unit map: {units.to_dict()}")
        if config.init_from:
            prior = _load_stable_diffusion(config, data, units, ctx.device)
        elif base is not None:
            prior = _denoiser_for(config, data, base).to(ctx.device)
        else:
            prior = _build_new_prior(config, data, units).to(ctx.device)
        result = _train(runner, prior, data, units)
        result.timings["total_s"] = time.perf_counter() - t_start
        if ctx.is_main:
            from .report import finish_run

            finish_run(result, config, data, runner)
        ctx.barrier()
        if ctx.is_main and not config.keep_checkpoints:
            remove_checkpoints(runner.ckpt_dir)
        result.out = out
        return result
    finally:
        ctx.close()


def _train(runner: _Runner, prior: LatentPrior, data: TrainingData, units: UnitMap) -> TrainResult:
    cfg, ctx = runner.config, runner.ctx
    device = ctx.device
    x_model = units.to_model(data.train.double()).float()
    n_train = x_model.shape[0]
    latent_shape = prior.latent_shape(data.image_shape)

    # -------------------------------------------------------------- stage 1: the autoencoder
    if not (cfg.init_from or cfg.vae_from):
        vae_sampler = _BatchSampler(n_train, cfg.batch_size, cfg.seed, "vae")
        kl_weight, recon = float(cfg.kl_weight), cfg.recon_loss

        def vae_loss(model: nn.Module, step: int, gen: torch.Generator) -> Tensor:
            b = cfg.batch_size
            x = x_model[vae_sampler.indices(step)]
            if cfg.augment == "flips":
                x = _flip(x, torch.randint(0, 4, (b,), generator=gen))
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
            for i in range(0, val_in.shape[0], _ENCODE_BATCH):
                x = val_in[i : i + _ENCODE_BATCH].to(device)
                mean = objective.vae.encode(x).latent_dist.mean
                recs.append(objective.vae.decode(mean).sample.float().cpu())
            rec = units.from_model(torch.cat(recs).double()).float()
            return float(np.mean(per_image_psnr(rec, val_phys)))

        vae_stage = _Stage(
            "vae",
            _VAEObjective(prior.vae),
            cfg.vae_steps,
            cfg.vae_lr,
            vae_loss,
            evaluate=vae_val_psnr,
        )
        runner.run(vae_stage)
        prior.vae.eval().requires_grad_(False)

    # -------------------------------------------------------------- latents and their scaling
    variants = _flip_variants(x_model, cfg.augment)
    if not (cfg.init_from or cfg.vae_from):
        raw_mean, _ = _encode_stats(prior, variants[0], device)
        std = float(raw_mean.double().std())
        if not (math.isfinite(std) and std > 0):
            raise TrainingDivergedError(f"cannot fit the latent scaling: latent std is {std}")
        prior.vae.register_to_config(scaling_factor=1.0 / std)
        runner.log(f"latent scaling factor: {1.0 / std:.6g}")
    stats = [_encode_stats(prior, v, device) for v in variants]
    lat_mean = torch.stack([s[0] for s in stats])  # (V, N, c, h, w)
    lat_std = torch.stack([s[1] for s in stats])

    # -------------------------------------------------------------- stage 2: the denoiser
    ab = prior.alphas_cumprod.double().cpu()
    prediction_type = prior.prediction_type  # type: ignore[attr-defined]
    n_t = prior.num_train_timesteps
    bu = cfg.denoiser_batch_size
    unet_sampler = _BatchSampler(n_train, bu, cfg.seed, "unet")

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
        target = _diffusion_target(prediction_type, z0, eps, a, s)
        part = ctx.shard(bu)
        pred = model(z_t[part].to(device), t[part].to(device))
        return F.mse_loss(pred.float(), target[part].to(device))

    cond = None
    if cfg.init_from:
        cond = prior.prompt_embeds.detach().to(device)  # type: ignore[attr-defined]
    extra = {"latent_scaling_factor": prior.latent_scale}  # type: ignore[attr-defined]
    val_mean, _ = _encode_stats(prior, units.to_model(data.val.double()).float(), device)
    val_gen = torch.Generator().manual_seed(int(cfg.seed))
    val_t = (
        torch.linspace(0.05 * n_t, n_t - 1, 10).round().long().repeat_interleave(val_mean.shape[0])
    )
    val_z0 = val_mean.repeat(10, 1, 1, 1)
    val_eps = torch.randn(val_z0.shape, generator=val_gen)

    def unet_val_loss(objective: nn.Module) -> float:
        a = ab[val_t].sqrt().float().view(-1, 1, 1, 1)
        s = (1.0 - ab[val_t]).sqrt().float().view(-1, 1, 1, 1)
        target = _diffusion_target(prediction_type, val_z0, val_eps, a, s)
        z_t = a * val_z0 + s * val_eps
        total = 0.0
        for i in range(0, z_t.shape[0], 256):
            pred = objective(z_t[i : i + 256].to(device), val_t[i : i + 256].to(device))
            total += float((pred.float().cpu() - target[i : i + 256]).pow(2).sum())
        return total / target.numel()

    unet_stage = _Stage(
        "unet",
        _DenoiserObjective(prior.unet, cond),
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
