"""Arguments of ``dwgf-sci train-prior`` and their translation into a :class:`TrainConfig`.

Every option defaults to ``None`` on the command line and is passed on only when given, so the
defaults live in one place (:class:`~dwgf_sci.training.config.TrainConfig`) and the help text
shows them from there.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import fields
from typing import Any

from ..errors import ConfigError
from .config import TrainConfig

__all__ = ["add_train_prior_arguments", "command_line", "config_from_args", "run_train_prior"]

_DESCRIPTION = """\
Train a latent-diffusion prior on your images (stage 1: a diffusers AutoencoderKL with L1/L2 +
KL losses; stage 2: a UNet2DModel noise predictor on its latents), or fine-tune the UNet of a
Stable Diffusion folder (--init-from). The output folder loads with
dwgf_sci.priors.load_prior(FOLDER) and holds a model card (README.md), loss_curve.png and
samples.png. Checkpoints are written every --checkpoint-every steps; run the same command with
--resume to continue an interrupted run (same result as an uninterrupted one). Several GPUs or
processes: torchrun --nproc_per_node K -m dwgf_sci.cli train-prior ... (the global batch
is split over the processes).
"""

_EPILOG = """\
examples:
  dwgf-sci train-prior --data my_images.h5 --out my-prior/
  dwgf-sci train-prior --dataset galaxies --n 2000 --size 64 --stretch asinh --out galaxy-64/
  dwgf-sci train-prior --data 'stamps/*.fits' --init-from sd-1.5/ --unet-steps 2000 --out sd-ft/
  torchrun --standalone --nproc_per_node 2 -m dwgf_sci.cli train-prior --dataset phantoms \
      --n-images 2000 --out ct-64/
"""


def _default(name: str) -> Any:
    for f in fields(TrainConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)  # pragma: no cover - programming error


def _show(name: str) -> str:
    value = _default(name)
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f" (default: {value})"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, found {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _float_pair(text: str) -> tuple[float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI numbers, found {text!r}") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI, found {text!r}")
    return values  # type: ignore[return-value]


def add_train_prior_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``train-prior`` to a parser.

    The options come in groups (data, output and checkpoints, units, architecture,
    optimisation, run); only ``--out`` is required, and the others default to None (flags to
    False) so that :func:`config_from_args` can tell given options from :class:`TrainConfig`
    defaults (shown in the help). The parser's description, epilog and formatter are replaced
    too.

    :param p: the parser (or ``train-prior`` subparser), modified in place.
    """
    p.description = _DESCRIPTION
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    data = p.add_argument_group("data (one of --data or --dataset)")
    data.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="HDF5 file (dataset --data-key, (N,H,W) or (N,C,H,W)), folder of FITS files, or a "
        "glob of FITS files",
    )
    data.add_argument(
        "--data-key", default=None, help="dataset in the HDF5 file" + _show("data_key")
    )
    data.add_argument(
        "--dataset",
        default=None,
        choices=("galaxies", "phantoms", "fields"),
        help="generate galsim galaxies, survey fields or CT phantoms on the fly (deterministic)",
    )
    data.add_argument(
        "--n",
        "--n-images",
        dest="n",
        type=int,
        default=None,
        help="images to generate; spell it --n-images after torchrun, whose own options "
        "start with --n" + _show("n"),
    )
    data.add_argument(
        "--size", type=int, default=None, help="side of generated images" + _show("size")
    )
    data.add_argument(
        "--data-seed", type=int, default=None, help="seed of generated images" + _show("data_seed")
    )
    data.add_argument(
        "--val",
        type=int,
        default=None,
        help="validation images, the last ones (default: 10%%, at most 200, at least 1)",
    )
    data.add_argument(
        "--patch-size",
        type=int,
        default=None,
        metavar="P",
        help="train a patch prior (for images of any size) on random PxP crops of the images",
    )
    data.add_argument(
        "--crops-per-image",
        type=int,
        default=None,
        help="random crops per image with --patch-size" + _show("crops_per_image"),
    )
    data.add_argument(
        "--augment",
        default=None,
        choices=("none", "flips"),
        help="random horizontal/vertical flips (for mirror-symmetric data)" + _show("augment"),
    )

    out = p.add_argument_group("output and checkpoints")
    out.add_argument("--out", required=True, help="output folder of the trained prior")
    out.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="K",
        help="checkpoint every K steps of each stage" + _show("checkpoint_every"),
    )
    out.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    out.add_argument(
        "--overwrite", action="store_true", help="replace a prior or checkpoints in --out"
    )
    out.add_argument(
        "--keep-checkpoints", action="store_true", help="keep --out/checkpoints after success"
    )

    units = p.add_argument_group("units (physical -> model range, fitted on the training data)")
    units.add_argument(
        "--stretch",
        default=None,
        choices=("none", "asinh"),
        help="asinh stretch before the affine map, for data of high dynamic range (astronomy)",
    )
    units.add_argument(
        "--stretch-scale",
        type=float,
        default=None,
        help="asinh softening in physical units (default: 2%% of the median image maximum)",
    )
    units.add_argument(
        "--percentiles",
        type=_float_pair,
        default=None,
        metavar="LO,HI",
        help="training-pixel percentiles mapped to -1 and 1" + _show("percentiles"),
    )

    arch = p.add_argument_group("architecture (new priors)")
    arch.add_argument(
        "--latent-channels",
        type=int,
        default=None,
        help="VAE latent channels" + _show("latent_channels"),
    )
    arch.add_argument(
        "--vae-channels",
        type=_int_list,
        default=None,
        metavar="C1,C2,...",
        help="VAE level channels; downsampling 2^(levels-1)" + _show("vae_channels"),
    )
    arch.add_argument(
        "--unet-channels",
        type=_int_list,
        default=None,
        metavar="C1,C2,...",
        help="UNet level channels" + _show("unet_channels"),
    )
    arch.add_argument(
        "--layers-per-block",
        type=int,
        default=None,
        help="ResNet blocks per level" + _show("layers_per_block"),
    )
    arch.add_argument(
        "--no-attention", action="store_true", help="no self-attention (VAE mid-block, UNet)"
    )
    arch.add_argument(
        "--norm-groups", type=int, default=None, help="GroupNorm groups" + _show("norm_num_groups")
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument(
        "--vae-steps", type=int, default=None, help="stage 1 steps" + _show("vae_steps")
    )
    opt.add_argument(
        "--unet-steps", type=int, default=None, help="stage 2 steps" + _show("unet_steps")
    )
    opt.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step (all processes)" + _show("batch_size"),
    )
    opt.add_argument(
        "--unet-batch-size",
        type=int,
        default=None,
        help="latents per stage-2 step (default: --batch-size)",
    )
    opt.add_argument("--lr", type=float, default=None, help="learning rate of both stages")
    opt.add_argument(
        "--vae-lr", type=float, default=None, help="stage 1 learning rate" + _show("vae_lr")
    )
    opt.add_argument(
        "--unet-lr", type=float, default=None, help="stage 2 learning rate" + _show("unet_lr")
    )
    opt.add_argument(
        "--lr-schedule",
        default=None,
        choices=("cosine", "constant"),
        help="after warmup" + _show("lr_schedule"),
    )
    opt.add_argument(
        "--warmup-steps", type=int, default=None, help="default: 5%% of a stage, at most 200"
    )
    opt.add_argument("--kl-weight", type=float, default=None, help="KL weight" + _show("kl_weight"))
    opt.add_argument(
        "--recon-loss",
        default=None,
        choices=("l1", "l2", "l1+l2"),
        help="VAE loss" + _show("recon_loss"),
    )
    opt.add_argument(
        "--vae-logvar-init",
        type=float,
        default=None,
        help="initial encoder log-variance" + _show("vae_logvar_init"),
    )
    opt.add_argument("--ema-decay", type=float, default=None, help="EMA decay" + _show("ema_decay"))
    opt.add_argument(
        "--latent-sample",
        action="store_true",
        help="train stage 2 on encoder posterior samples (default: posterior means)",
    )
    opt.add_argument("--seed", type=int, default=None, help="training seed" + _show("seed"))
    opt.add_argument(
        "--init-from",
        default=None,
        metavar="SD_FOLDER",
        help="fine-tune the UNet of this Stable Diffusion folder (frozen VAE, empty prompt)",
    )

    opt.add_argument(
        "--vae-from",
        default=None,
        metavar="PRIOR_FOLDER",
        help="reuse the autoencoder, unit map and latent scaling of a saved prior; train a new "
        "denoiser only",
    )

    run = p.add_argument_group("run")
    run.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    run.add_argument("--threads", type=int, default=None, help="CPU threads of torch")
    run.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="DDIM steps of samples.png" + _show("sample_steps"),
    )
    run.add_argument(
        "--eval-samples",
        type=int,
        default=None,
        help="prior samples for the model card's KS metrics, 0 to skip" + _show("eval_samples"),
    )
    run.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="K",
        help="validation metric of the EMA weights every K steps, plotted with the losses",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")


# argparse dest -> TrainConfig field, where they differ
_RENAMES = {"norm_groups": "norm_num_groups"}
_FLAGS = ("resume", "overwrite", "keep_checkpoints", "latent_sample")
_SKIP = {"command", "debug", "quiet", "no_attention", "lr", "func"}


def command_line(args: argparse.Namespace) -> str:
    """The ``dwgf-sci train-prior`` command equivalent to ``args`` (given options only).

    Options left at None or False are omitted; flags appear bare and tuples comma-separated.

    :param args: parsed ``train-prior`` arguments.
    :return: the shell-quoted command line (recorded in the prior's provenance).
    """
    parts = ["dwgf-sci", "train-prior"]
    for key, value in vars(args).items():
        if key in ("command", "debug", "quiet") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, tuple):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed ``train-prior`` arguments.

    Options left at None keep the :class:`TrainConfig` defaults; ``--lr`` sets both stages'
    learning rates unless they are given, ``--no-attention`` sets ``attention=False``,
    ``--stretch none`` means no stretch and ``--quiet`` turns progress bars off.

    :param args: parsed ``train-prior`` arguments (see :func:`add_train_prior_arguments`).
    :return: the configuration, with ``command`` set to :func:`command_line` of ``args``.
    :raises ConfigError: for invalid combinations (checked by :class:`TrainConfig`).
    """
    names = {f.name for f in fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _SKIP:
            continue
        name = _RENAMES.get(key, key)
        if name not in names:
            continue
        if key in _FLAGS:
            if value:
                kwargs[name] = True
        elif value is not None:
            kwargs[name] = value
    if getattr(args, "lr", None) is not None:
        kwargs.setdefault("vae_lr", args.lr)
        kwargs.setdefault("unet_lr", args.lr)
    if getattr(args, "no_attention", False):
        kwargs["attention"] = False
    if kwargs.get("stretch") == "none":
        kwargs["stretch"] = None
    kwargs["progress"] = not getattr(args, "quiet", False)
    kwargs["command"] = command_line(args)
    try:
        return TrainConfig(**kwargs)
    except TypeError as err:  # pragma: no cover - argparse types prevent it
        raise ConfigError(str(err)) from None


def run_train_prior(args: argparse.Namespace) -> int:
    """Run ``train-prior`` for parsed arguments; print a summary; return the exit status.

    :param args: parsed ``train-prior`` arguments.
    :return: 0 (errors are raised); only rank 0 prints the summary.
    """
    from .trainer import train_prior

    config = config_from_args(args)
    result = train_prior(config)
    metrics = result.metrics
    summary = f"VAE PSNR {metrics.get('val_vae_psnr_db', float('nan')):.2f} dB (validation)"
    for name, entry in metrics.get("ks", {}).items():
        summary += f", KS {name} {entry['ks']:.3f}"
    total = result.timings.get("total_s", 0.0)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"trained prior saved to {result.out} in {total / 60:.1f} min: {summary}")
    return 0
