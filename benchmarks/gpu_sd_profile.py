"""DWGF against PSLD and latent DPS on a Stable-Diffusion-sized prior: time per step, peak memory.

Issue 5 asks, where a session is lent a GPU, for the time per DWGF step and the peak GPU memory
with an SD-sized architecture at 512 x 512, 4 particles, float16, against PSLD at the same size.
No weights can be downloaded, so the networks are built from Stable Diffusion 1.5's published
configurations with random weights (the cost of a pass does not depend on the weights):

* VAE: ``AutoencoderKL``, 4 levels, channels (128, 256, 512, 512), 2 layers per block, 4 latent
  channels (downsampling 8: 512 x 512 images, 4 x 64 x 64 latents), 83.7 M parameters;
* UNet: ``UNet2DConditionModel``, channels (320, 640, 1280, 1280), 2 layers per block,
  cross-attention dimension 768, 8 attention heads, 859.5 M parameters;
* text encoder: a 12-layer, 768-wide CLIP text model (run once, for the empty prompt).

The measurement is a 512 x 512 smooth test object (sum of Gaussian blobs, peak 1) blurred by a
Moffat PSF (FWHM 4 px, ``same`` padding) with Gaussian noise of 1% of the peak. Each method runs
once with 2 steps (warm-up, cuDNN autotuning, compilation) and then ``--steps`` steps; the
reported time is that second run's wall time (CUDA synchronised) divided by the step count, and
the peak memory is ``torch.cuda.max_memory_allocated`` during that run.

Without a GPU, ``--flops`` gives an estimate instead: it counts the floating-point operations of
one pass of each SD-1.5 network at ``--size`` (``torch.utils.flop_counter`` on the ``meta``
device: nothing is computed or allocated), runs every method on the tiny architecture at 64 px on
the CPU to count its network passes per particle and step (these counts do not depend on the
weights or the size), and multiplies the two. Wall time on a GPU is roughly proportional to these
operation counts for networks this large; the estimate is labelled as such.

Usage::

    python benchmarks/gpu_sd_profile.py                        # GPU: SD-sized, 512 px, fp16
    python benchmarks/gpu_sd_profile.py --channels-last --compile
    python benchmarks/gpu_sd_profile.py --arch tiny --size 64 --device cpu --dtype float32 \\
        --steps 3 --no-write                                   # CPU smoke test (seconds)
    python benchmarks/gpu_sd_profile.py --flops                # no GPU: operation counts

Writes ``benchmarks/results/gpu_sd_profile.{md,json}`` (``--flops``:
``benchmarks/results/sd_flops_estimate.{md,json}``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dwgf_sci.operators import build_operator
from dwgf_sci.priors.latent import resolve_dtype
from dwgf_sci.priors.stable_diffusion import StableDiffusionPrior
from dwgf_sci.priors.tiny import tiny_clip_tokenizer, tiny_stable_diffusion_components
from dwgf_sci.solvers import DWGF, PSLD, LatentDPS

RESULTS = Path(__file__).parent / "results"


MAKERS = {
    "dwgf": lambda prior, n, steps: DWGF(prior, particles=n, steps=steps, seed=0),
    # random weights never fit the data, so the fast preset's end-of-run retry of its last
    # levels (image_retry) would always run: it is off here, to time the per-level cost
    "dwgf-fast": lambda prior, n, steps: DWGF(
        prior, preset="fast", particles=n, steps=steps, seed=0, image_retry=0.0
    ),
    "psld": lambda prior, n, steps: PSLD(prior, particles=n, steps=steps, seed=0),
    "dps": lambda prior, n, steps: LatentDPS(prior, particles=n, steps=steps, seed=0),
}


def sd15_components(seed: int = 0) -> dict[str, Any]:
    """Stable Diffusion 1.5's VAE, UNet and text-encoder architectures, random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    return {
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def test_object(size: int, device: torch.device) -> torch.Tensor:
    """A smooth ``(1, 1, size, size)`` image with peak 1: a few elliptical Gaussian blobs."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    img = torch.zeros((size, size), dtype=torch.float64)
    for _ in range(6):
        cy, cx = (0.2 + 0.6 * torch.rand(2, generator=gen, dtype=torch.float64)) * size
        sy, sx = (0.02 + 0.08 * torch.rand(2, generator=gen, dtype=torch.float64)) * size
        img += torch.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    return (img / img.max()).float()[None, None].to(device)


def psf_problem(size: int, device: torch.device) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """The test object, a Moffat PSF operator (FWHM 4 px, 1% Gaussian noise) and its data."""
    x = test_object(size, device)
    spec = {"type": "psf", "profile": "moffat", "fwhm": 4.0, "beta": 3.0, "padding": "same"}
    spec["noise"] = {"type": "gaussian", "sigma": 0.01}
    physics = build_operator(spec, (1, size, size), device=device)
    return x, physics, physics(x)


def cost_ratios(cost: dict[str, float]) -> dict[str, float]:
    """DWGF's (default and fast) cost over PSLD's and latent DPS's, for the methods present."""
    return {
        f"{m}_over_{b}": cost[m] / cost[b]
        for m in ("dwgf", "dwgf-fast")
        for b in ("psld", "dps")
        if m in cost and b in cost
    }


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pass_flops(size: int) -> dict[str, float]:
    """FLOPs of one pass of each SD-1.5 network for one ``size`` x ``size`` image (meta device).

    Keys follow ``LatentPrior.calls``: ``unet``/``decoder``/``encoder`` are forward passes,
    ``*_backward`` the extra cost of a backward pass to the network's input (the weights are
    frozen, as in the solvers, so no weight gradient is counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        parts = sd15_components()
    vae, unet = parts["vae"].requires_grad_(False), parts["unet"].requires_grad_(False)
    h = size // 8
    z = torch.zeros((1, 4, h, h), device="meta")
    x = torch.zeros((1, 3, size, size), device="meta")
    cond = torch.zeros((1, 77, 768), device="meta")
    t = torch.tensor([500], device="meta")
    nets = {
        "unet": lambda v: unet(v, t, encoder_hidden_states=cond).sample,
        "decoder": lambda v: vae.decode(v).sample,
        "encoder": lambda v: vae.encode(v).latent_dist.mean,
    }
    out: dict[str, float] = {}
    for name, fn in nets.items():
        inp = x if name == "encoder" else z
        with FlopCounterMode(display=False) as fwd:
            fn(inp)
        leaf = inp.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as both:
            fn(leaf).sum().backward()
        out[name] = float(fwd.get_total_flops())
        out[f"{name}_backward"] = float(both.get_total_flops() - fwd.get_total_flops())
    return out


def flops_estimate(args: argparse.Namespace) -> None:
    """The ``--flops`` mode: SD-1.5 operation counts per particle and step of each method."""
    flops = pass_flops(args.size)
    parts = tiny_stable_diffusion_components(sample_size=8)
    prior = StableDiffusionPrior(**parts, image_channels=1, data_range=(0.0, 1.0))
    _, physics, y = psf_problem(64, torch.device("cpu"))
    rows = []
    for method in args.methods:
        prior.reset_calls()
        post = MAKERS[method](prior, args.particles, args.steps)(y, physics)
        calls = {k: v / (args.particles * args.steps) for k, v in dict(post.calls).items()}
        tflop = sum(flops[k] * v for k, v in calls.items()) / 1e12
        rows.append({"method": method, "calls_per_particle_step": calls, "tflop": tflop})
        print(json.dumps(rows[-1]), flush=True)
    ratios = cost_ratios({r["method"]: r["tflop"] for r in rows})
    print(json.dumps(ratios))
    if args.no_write:
        return
    command = (
        f"python benchmarks/gpu_sd_profile.py --flops --size {args.size} "
        f"--particles {args.particles} --steps {args.steps}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sd_flops_estimate.json").write_text(
        json.dumps({"command": command, "pass_flops": flops, "rows": rows, "ratios": ratios})
    )
    lines = [
        "# Estimated cost on a Stable-Diffusion-sized prior (no GPU lent: operation counts)",
        "",
        f"`{command}` ({time.strftime('%Y-%m-%d', time.gmtime())}). FLOPs of one pass of the "
        f"SD-1.5 networks for one {args.size} x {args.size} image, counted by "
        "`torch.utils.flop_counter` on the meta device:",
        "",
        "| network | forward (TFLOP) | backward (TFLOP) |",
        "|---|---:|---:|",
    ]
    for name in ("unet", "decoder", "encoder"):
        lines.append(
            f"| {name} | {flops[name] / 1e12:.3f} | {flops[name + '_backward'] / 1e12:.3f} |"
        )
    lines += [
        "",
        f"Network passes per particle and step counted on the tiny architecture ({args.steps} "
        "steps, 64 px, PSF deconvolution), times the FLOPs above:",
        "",
        "| method | passes per particle and step | TFLOP per particle and step |",
        "|---|---|---:|",
    ]
    for r in rows:
        calls = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["calls_per_particle_step"].items()))
        lines.append(f"| {r['method']} | {calls} | {r['tflop']:.2f} |")
    lines += ["", "Estimated cost ratios at equal step counts (operation counts, not times):"]
    lines += [f"- {k.replace('_', ' ')}: **{v:.2f}**" for k, v in ratios.items()]
    (RESULTS / "sd_flops_estimate.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("sd15", "tiny"), default="sd15")
    ap.add_argument("--size", type=int, default=512, help="image side (pixels)")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="steps of the timed run")
    ap.add_argument("--dtype", default="float16", help="network dtype (float16 needs CUDA)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks")
    ap.add_argument("--methods", nargs="+", default=["dwgf", "dwgf-fast", "psld", "dps"])
    ap.add_argument("--flops", action="store_true", help="no GPU: estimate from operation counts")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    unknown = sorted(set(args.methods) - set(MAKERS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {sorted(MAKERS)}")
    if args.flops:
        flops_estimate(args)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU, or pass --device cpu --arch tiny")
    dtype = resolve_dtype(args.dtype, device, half_on_cuda=True)
    parts = (
        sd15_components()
        if args.arch == "sd15"
        else tiny_stable_diffusion_components(sample_size=args.size // 8)
    )
    prior = StableDiffusionPrior(**parts, image_channels=1, data_range=(0.0, 1.0))
    prior = prior.to(device=device, dtype=dtype)
    prior.text_encoder.to("cpu")  # used once, at construction, for the empty prompt
    if args.channels_last:
        prior.enable_channels_last()
    if args.compile:
        prior.compile_networks()
    x, physics, y = psf_problem(args.size, device)
    makers = {m: partial(MAKERS[m], prior, args.particles) for m in args.methods}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for method in args.methods:
        makers[method](2)(y, physics)  # warm-up
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        prior.reset_calls()
        start = time.perf_counter()
        post = makers[method](args.steps)(y, physics)
        sync()
        wall = time.perf_counter() - start
        err = float((post.mean.float() - x).pow(2).mean())
        row = {
            "method": method,
            "wall_s": wall,
            "per_step_ms": 1e3 * wall / args.steps,
            "peak_mem_gib": (
                torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            ),
            "calls_per_particle_step": {
                k: v / (args.particles * args.steps) for k, v in dict(post.calls).items()
            },
            "psnr_db": -10 * math.log10(max(err, 1e-30)),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    ratios = cost_ratios({r["method"]: r["wall_s"] for r in rows})
    print(json.dumps(ratios))
    if args.no_write:
        return
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    info = {
        "command": "python benchmarks/gpu_sd_profile.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if v not in (None, False) and k != "methods"
        ),
        "device": gpu,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "unet_parameters": count_parameters(prior.unet),
        "vae_parameters": count_parameters(prior.vae),
        "dtype": str(dtype),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_sd_profile.json").write_text(
        json.dumps({"info": info, "rows": rows, "ratios": ratios}, indent=1)
    )
    lines = [
        "# DWGF on a Stable-Diffusion-sized prior: time per step and peak memory",
        "",
        f"`{info['command']}` ({info['date']}; {gpu}; torch {torch.__version__}). "
        f"{args.arch} architecture (random weights; UNet {info['unet_parameters'] / 1e6:.1f} M, "
        f"VAE {info['vae_parameters'] / 1e6:.1f} M parameters), {args.size} x {args.size} "
        f"images, {args.particles} particles, {dtype}, {args.steps} timed steps after a "
        "2-step warm-up.",
        "",
        "| method | ms / step | peak memory (GiB) | network passes per particle and step |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        calls = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["calls_per_particle_step"].items()))
        mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        lines.append(f"| {r['method']} | {r['per_step_ms']:.1f} | {mem} | {calls} |")
    lines += ["", "Wall-time ratios at equal step counts: "]
    lines += [f"- {k.replace('_', ' ')}: **{v:.2f}**" for k, v in ratios.items()]
    lines += [
        "",
        "PSNR values in the JSON are meaningless (random weights); only costs are measured.",
    ]
    (RESULTS / "gpu_sd_profile.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
