"""The end of a training run: validation metrics, plots, the saved prior and its model card."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._version import __version__
from ..io.atomic import atomic_output
from ..priors.base import LatentPrior
from ..priors.intensity import intensity_units, measure_intensity
from .config import TrainConfig
from .data import TrainingData, describe_source
from .evaluate import (
    ACCEPTANCE,
    decoder_error,
    ks_statistics,
    reconstruction_psnr,
)
from .result import TrainResult
from .sampling import sample_prior

__all__ = ["finish_run", "loss_curve_png", "sample_grid_png", "validation_denoiser_loss"]

_GRID = 16
_VAL_TIMESTEPS = 10


@torch.no_grad()
def validation_denoiser_loss(prior: LatentPrior, x_model: Tensor, seed: int = 0) -> float:
    r"""Mean noise-prediction error of the prior on validation images (fixed noise, 10 levels).

    The images are encoded (posterior mean), noised at 10 timesteps evenly spread over the
    schedule with noise seeded by ``seed``, and the MSE of the predicted noise is averaged.

    With :math:`T` training timesteps, :math:`t` runs over 10 integers from :math:`0.05\,T` to
    :math:`T-1` and the loss is the mean over :math:`t` of
    :math:`\mathrm{mean}\,\big(\hat\epsilon(\sqrt{\bar\alpha_t}\,z_0 +
    \sqrt{1-\bar\alpha_t}\,\epsilon, t) - \epsilon\big)^2`.

    :param prior: the trained prior.
    :param x_model: validation images ``(N, C, H, W)`` in model units (after the unit map),
        encoded in chunks of 64.
    :param seed: seed of the CPU generator of the noise :math:`\epsilon`.
    :return: the mean squared error (dimensionless: the noise has unit variance).
    """
    z0 = torch.cat(
        [prior.encode(x_model[i : i + 64].to(prior.device)) for i in range(0, len(x_model), 64)]
    ).float()
    gen = torch.Generator().manual_seed(int(seed))
    ab = prior.alphas_cumprod.double().cpu()
    n_t = prior.num_train_timesteps
    errors = []
    for t in np.linspace(n_t * 0.05, n_t - 1, _VAL_TIMESTEPS).round().astype(int).tolist():
        eps = torch.randn(z0.shape, generator=gen).to(z0.device)
        a, s = float(ab[t]) ** 0.5, float(1 - ab[t]) ** 0.5
        pred = prior.predict_noise(a * z0 + s * eps, t).float()
        errors.append(float((pred - eps).pow(2).mean()))
    return float(np.mean(errors))


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if values.size < 2 or window < 2:
        return values
    window = min(window, values.size)
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def loss_curve_png(history: dict[str, list[Any]], path: Path) -> Path:
    """One panel per stage: loss per step (light), its running mean (log scale) and, when
    recorded, the validation metric of the EMA weights (``"<stage>_val"``, right axis).

    The running mean is over ``max(1, n // 50)`` steps; the y axis is logarithmic when every
    loss is positive.

    :param history: training history: per-step losses under ``"vae"`` and ``"unet"`` (stages
        without losses are skipped) and, optionally, ``[step, value]`` pairs under
        ``"vae_val"`` (PSNR, dB) and ``"unet_val"`` (validation loss).
    :param path: the PNG file, written atomically (replaced if it exists).
    :return: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    stages = [k for k in ("vae", "unet") if history.get(k)]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5.5 * max(1, len(stages)), 3.6))
    axes = np.atleast_1d(axes)
    titles = {"vae": "stage 1: autoencoder", "unet": "stage 2: denoiser"}
    val_names = {"vae": "validation PSNR (dB)", "unet": "validation loss"}
    for ax, name in zip(axes, stages, strict=False):
        values = np.asarray(history[name], dtype=np.float64)
        steps = np.arange(1, values.size + 1)
        ax.plot(steps, values, color="0.75", lw=0.6, label="loss per step")
        window = max(1, values.size // 50)
        ax.plot(steps, _smooth(values, window), color="C0", lw=1.4, label=f"mean of {window}")
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(titles.get(name, name))
        ax.legend(fontsize=8, loc="upper center")
        val = np.asarray(history.get(f"{name}_val") or [], dtype=np.float64)
        if val.size:
            twin = ax.twinx()
            twin.plot(val[:, 0], val[:, 1], "o-", color="C3", ms=3, lw=1.2)
            twin.set_ylabel(val_names[name], color="C3")
            twin.tick_params(axis="y", colors="C3")
    fig.subplots_adjust(left=0.08, right=0.92, bottom=0.15, top=0.9, wspace=0.45)
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _mosaic(images: Tensor, columns: int = 4) -> np.ndarray:
    arr = images.detach().cpu().float().numpy()[:, 0]
    n, h, w = arr.shape
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i, img in enumerate(arr):
        r, c = divmod(i, columns)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return canvas


def sample_grid_png(data: Tensor, samples: Tensor, path: Path, title: str = "") -> Path:
    """Validation images and prior samples side by side, in the model range (same scale).

    :param Tensor data: ``(n, 1, H, W)`` validation images in the model range.
    :param Tensor samples: ``(n, 1, H, W)`` prior samples in the model range.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.5))
    for ax, images, name in (
        (axes[0], data, "validation images"),
        (axes[1], samples, "prior samples"),
    ):
        cmap = plt.get_cmap("gray").with_extremes(bad="white")
        ax.imshow(_mosaic(images[:_GRID, :1]), cmap=cmap, vmin=-1.0, vmax=1.0)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.05)
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _weights_size(out: Path) -> dict[str, float]:
    sizes = {}
    for sub in ("vae", "unet", "text_encoder"):
        files = list((out / sub).glob("*.safetensors"))
        if files:
            sizes[sub] = sum(f.stat().st_size for f in files) / 1e6
    return sizes


def _params(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _model_card(
    config: TrainConfig,
    data: TrainingData,
    result: TrainResult,
    sizes: dict[str, float],
    architecture: dict[str, Any],
) -> str:
    m = result.metrics
    name = Path(config.out).expanduser().resolve().name
    kind = "Stable Diffusion fine-tune" if config.init_from else "latent diffusion prior"
    command = config.command or f"dwgf_sci.training.train_prior({config.call_repr()})"
    units = result.unit_map.to_dict() if result.unit_map else {}
    lines = [
        f"# {name}",
        "",
        f"A {kind} for `dwgf_sci`, trained by `dwgf-sci train-prior` "
        f"(dwgf-sci {m.get('dwgf_sci_version', '?')}).",
        "",
        "```python",
        "import dwgf_sci as ds",
        f'prior = ds.priors.load_prior("{name}")  # or the path of this folder',
        "```",
        "",
        "## Data",
        "",
        f"- {describe_source(data.source)}",
        f"- physical units -> model range: data_scale {units.get('data_scale', 0):.6g}, "
        f"data_offset {units.get('data_offset', 0):.6g}, stretch {units.get('stretch')}"
        + (
            f" (asinh softening {units.get('stretch_scale', 1):.6g})"
            if units.get("stretch")
            else ""
        )
        + f"; fitted on the training images (percentiles {list(config.percentiles)} -> -1, 1)",
        f"- augmentation: {config.augment}",
        "",
        "## Training",
        "",
        "```",
        command,
        "```",
        "",
        f"- seed {config.seed}; device {m.get('device')}, {m.get('world_size', 1)} process(es), "
        f"{m.get('threads')} CPU thread(s)",
        f"- stage 1 (autoencoder): {config.vae_steps} steps, batch {config.batch_size}, lr "
        f"{config.vae_lr:g}, {config.recon_loss} + {config.kl_weight:g} KL"
        + (" (frozen Stable Diffusion VAE)" if config.init_from else "")
        + (f" (autoencoder of {config.vae_from}, frozen)" if config.vae_from else ""),
        f"- stage 2 (denoiser): {config.unet_steps} steps, batch {config.denoiser_batch_size}, lr "
        f"{config.unet_lr:g}, latents: encoder "
        f"{'posterior samples' if config.latent_sample else 'posterior means'}, "
        f"scaling factor {m.get('latent_scaling_factor', float('nan')):.6g}",
        f"- {config.lr_schedule} learning rate after warmup, AdamW, gradient clipping "
        f"{config.grad_clip:g}, EMA decay {config.ema_decay:g} (saved weights are the EMA)",
        "- training time: "
        + ", ".join(f"{k.removesuffix('_s')} {v / 60:.1f} min" for k, v in result.timings.items()),
        "",
        "## Architecture",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in architecture.items()]
    lines += ["- weights: " + ", ".join(f"{k} {v:.2f} MB" for k, v in sizes.items())]
    lines += [
        "",
        "## Metrics (validation split)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| VAE reconstruction PSNR, mean over {m.get('val_images')} images (dB, each image's "
        f"range) | {m.get('val_vae_psnr_db', float('nan')):.2f} (median "
        f"{m.get('val_vae_psnr_median_db', float('nan')):.2f}) |",
        f"| denoiser loss (noise MSE, 10 noise levels) | "
        f"{m.get('val_denoiser_loss', float('nan')):.4f} |",
    ]
    for stat, entry in m.get("ks", {}).items():
        lines.append(
            f"| KS statistic, {stat.replace('_', ' ')} ({entry.get('n_samples')} samples vs "
            f"{entry.get('n_reference')} images) | {entry['ks']:.3f} |"
        )
    target = ACCEPTANCE.get(data.kind or "")
    if target:
        lines += [
            "",
            f"Acceptance targets (issue 4, measured on 200 held-out images by "
            f"`benchmarks/prior_metrics.py`): VAE PSNR >= {target['vae_psnr_db']:g} dB, KS <= "
            f"{target['ks']:g}. The validation numbers above are indicative.",
        ]
    lines += [
        "",
        "## Files",
        "",
        "- `samples.png`: validation images (left) and DDIM samples of the prior (right), model "
        "range",
        "- `loss_curve.png`: training losses",
        "- `training.json`: settings, data, unit map, losses per step, timings, metrics",
        "",
        "![samples](samples.png)",
        "",
        "![losses](loss_curve.png)",
    ]
    return "\n".join(lines) + "\n"


def finish_run(
    result: TrainResult,
    config: TrainConfig,
    data: TrainingData,
    *,
    out: Path,
    device: torch.device | str,
    world_size: int,
    log: Callable[[str], None],
) -> None:
    """Compute validation metrics, save the prior, plots, ``training.json`` and ``README.md``.

    On the validation images: the VAE reconstruction PSNR (mean and median, dB), the decoder RMS
    error (model units, stored as the prior's ``decoder_sigma``), its per-pixel model
    (:func:`~dwgf_sci.training.evaluate.decoder_error`, stored as the prior's
    ``decoder_error_model``) and :func:`validation_denoiser_loss`; then ``max(16,
    eval_samples)`` DDIM samples, with the KS statistics of the first ``eval_samples`` against
    the validation images for single-channel data. The prior is saved to the output folder with
    ``samples.png``, ``loss_curve.png``, ``training.json`` and ``README.md`` (the model card).
    ``result.metrics`` and ``result.timings["report_s"]`` are updated in place.

    :param result: the trained prior, unit map, history, metrics and timings.
    :param config: the run's configuration (seed, sample steps, ``eval_samples``, ...).
    :param data: the training data; its validation split is used.
    :param out: the output folder (the prior is saved there).
    :param device: the training device (recorded in the metrics).
    :param world_size: the number of training processes (recorded in the metrics).
    :param log: where progress lines go (the trainer's logger).
    """
    t0 = time.perf_counter()
    prior, units = result.prior, result.unit_map
    assert units is not None
    val = data.val
    psnr = reconstruction_psnr(prior, val)
    finite = psnr[np.isfinite(psnr)]
    val_model = units.to_model(val.double()).float()
    val_sigma, val_error_model = decoder_error(prior, val)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.update(
        {
            "dwgf_sci_version": __version__,
            "val_images": int(val.shape[0]),
            "val_vae_psnr_db": float(np.mean(finite)) if finite.size else float("inf"),
            "val_vae_psnr_median_db": float(np.median(psnr)),
            "val_decoder_sigma": val_sigma,
            "val_denoiser_loss": validation_denoiser_loss(prior, val_model, seed=config.seed),
            "device": str(device),
            "world_size": int(world_size),
            "threads": torch.get_num_threads(),
        }
    )
    n_samples = max(_GRID, int(config.eval_samples))
    samples = sample_prior(
        prior,
        n_samples,
        image_size=data.image_shape[1:],
        steps=config.sample_steps,
        seed=config.seed,
    )
    if config.eval_samples > 0:
        # centred-object statistics only for whole generated stamps, not crops or fields
        kind = data.kind if data.kind in ("galaxies", "phantoms") else "generic"
        if data.source.get("patch_size"):
            kind = "generic"
        if data.image_shape[0] == 1:
            metrics["ks"] = ks_statistics(samples[: config.eval_samples], val, kind)
    log(
        f"validation: VAE PSNR {metrics['val_vae_psnr_db']:.2f} dB, denoiser loss "
        f"{metrics['val_denoiser_loss']:.4f}"
        + "".join(f", KS {k} {v['ks']:.3f}" for k, v in metrics.get("ks", {}).items())
    )
    prior.decoder_sigma = metrics["val_decoder_sigma"]
    if val_sigma > 0:
        prior.decoder_error_model = val_error_model
    result.metrics = metrics
    result.timings["report_s"] = time.perf_counter() - t0

    architecture: dict[str, Any] = {}
    if config.init_from:
        architecture = {
            "initialised from": str(config.init_from),
            "UNet parameters": _params(prior.unet),  # type: ignore[attr-defined]
            "image": f"{data.image_shape}, latents {prior.latent_shape(data.image_shape)}",
        }
        prior.save_pretrained(out, overwrite=True)
    else:
        architecture = {
            "image": "x".join(str(s) for s in data.image_shape),
            "latent": "x".join(str(s) for s in prior.latent_shape(data.image_shape)),
            "VAE channels": list(prior.vae.config.block_out_channels),  # type: ignore[attr-defined]
            "UNet channels": list(config.unet_channels),
            "layers per block (UNet)": config.layers_per_block,
            "attention": config.attention,
            "VAE parameters": _params(prior.vae),  # type: ignore[attr-defined]
            "UNet parameters": _params(prior.unet),  # type: ignore[attr-defined]
        }
        prior.metadata = {  # type: ignore[attr-defined]
            "name": Path(config.out).expanduser().resolve().name,
            "trained": True,
            "data": data.source,
            "seed": config.seed,
            "command": config.command,
            "metrics": {k: v for k, v in metrics.items() if k != "ks"},
            "ks": {k: v["ks"] for k, v in metrics.get("ks", {}).items()},
            "timings_s": result.timings,
            # what flux_scale="auto" and the units warning compare data with
            "intensity": measure_intensity(data.train, intensity_units(data.kind)).to_dict(),
        }
        prior.save_pretrained(out, overwrite=True)
    sample_grid_png(
        val_model[:_GRID],
        units.to_model(samples[:_GRID].double()).float(),
        out / "samples.png",
        title=f"{Path(config.out).name}: DDIM {config.sample_steps} steps, seed {config.seed}",
    )
    loss_curve_png(result.history, out / "loss_curve.png")
    record = {
        "config": config.to_dict(),
        "data": data.source,
        "unit_map": units.to_dict(),
        "architecture": architecture,
        "metrics": metrics,
        "timings_s": result.timings,
        "history": result.history,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
    }
    with atomic_output(out / "training.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=float) + "\n", encoding="utf-8")
    card = _model_card(config, data, result, _weights_size(out), architecture)
    with atomic_output(out / "README.md", overwrite=True) as tmp:
        tmp.write_text(card, encoding="utf-8")
