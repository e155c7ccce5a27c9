r"""The optimisation loop of one training stage, shared by the autoencoder and the denoiser.

A :class:`Stage` names a module, its number of steps, its peak learning rate and its loss;
:class:`StageRunner` trains it: AdamW with the learning rate of :func:`lr_at`, gradient clipping,
EMA weights, a checkpoint every ``checkpoint_every`` steps (resumed with ``resume=True``), the
validation metric every ``eval_every`` steps, and the step callback. Every random draw of step
``s`` comes from :func:`step_generator` seeded by ``(seed, stage, s)``, and the data order from
:class:`BatchSampler`'s epoch permutations, so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DwgfError
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistContext
from .ema import EMA

__all__ = [
    "BatchSampler",
    "Stage",
    "StageRunner",
    "StepCallback",
    "TrainingDivergedError",
    "TrainingStopped",
    "lr_at",
    "step_generator",
]

StepCallback = Callable[[str, int, float], None]
"""Type of the ``callback`` of :func:`train_prior`, called after each optimisation step.

It receives ``(stage, steps_done, loss)``: the stage name (``"vae"`` or ``"unet"``), the number
of steps done in that stage (1 after the first step) and the step's training loss averaged over
the processes; every process calls it. Raising :class:`TrainingStopped` stops the run like an
interruption.
"""
_STAGE_IDS = {"vae": 1, "unet": 2}


class TrainingStopped(Exception):
    """Raise it from a step callback to stop a run as if it had been interrupted."""


class TrainingDivergedError(DwgfError, FloatingPointError):
    """The training loss became NaN or infinite (usually: the learning rate is too high)."""


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


class BatchSampler:
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


@dataclass
class Stage:
    name: str
    module: nn.Module
    steps: int
    lr: float
    loss: Callable[[nn.Module, int, torch.Generator], Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[nn.Module], float] | None = None


class StageRunner:
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

    def run(self, stage: Stage) -> dict[str, Any]:
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
