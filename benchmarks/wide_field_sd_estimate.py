r"""Cost of a wide-field reconstruction with a Stable-Diffusion-sized patch prior (no GPU: counts).

Issue 22 asks for the SD-size GPU estimate of the wide-field runs, made the way
``benchmarks/results/sd_flops_estimate.md`` makes its estimate: network passes counted on a real
run, times the floating-point operations of one pass of each SD-1.5 network at its native 512 px
(``benchmarks/results/sd_flops_estimate.json``, ``torch.utils.flop_counter`` on the meta device).

The passes are counted here on the shipped field prior (``field-64``: 64 px patches, latent
factor 4) reconstructing a 256 px field with the fast preset: a 64 x 64 latent cut into 16 x 16
patches, that is **4 patches per side**, with the autoencoder on overlapping tiles (overlap a
quarter of a patch). An SD-1.5 patch prior (512 px patches, latent factor 8, 64 x 64 latent
patches) on a **2048 px** image has the same geometry in patch units (a 256 x 256 latent, 4
patches per side, the same shifts and tile starts), so it makes the same number of passes per
particle and step: the counted passes carry over exactly; only the FLOPs per pass change. The
estimate is operation counts, not times; a time needs a sustained throughput, which was not
measured here (no GPU was lent), and the script states the one it assumes.

    python benchmarks/wide_field_sd_estimate.py --threads 2

Writes ``benchmarks/results/wide_fields/sd_estimate.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from wide_fields import field_problem

from dwgf_sci.priors import load_prior
from dwgf_sci.priors.patches import PatchPrior
from dwgf_sci.solvers import DWGF

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--field-prior", default="field-64")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--tflops", type=float, nargs="+", default=[100.0, 300.0],
        help="sustained throughputs (TFLOP/s) to turn the counts into times (assumptions)",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = PatchPrior(load_prior(args.field_prior), seed=0)
    p = field_problem("test", 0, 256, 20.0)
    solver = DWGF(prior, args.preset, particles=args.particles, seed=0)
    start = time.perf_counter()
    post = solver(p["y"], p["physics"])
    seconds = time.perf_counter() - start
    steps, n = len(post.history), post.all_samples.shape[1]
    counted = {k: int(v) for k, v in prior.base.calls.items()}
    per = {k: v / (steps * n) for k, v in counted.items()}
    sd = json.loads((RESULTS / "sd_flops_estimate.json").read_text())["pass_flops"]
    tflop_step = sum(sd[k] * v for k, v in per.items()) / 1e12
    tflop_run = tflop_step * steps * args.particles
    doc = {
        "command": f"python benchmarks/wide_field_sd_estimate.py --threads {args.threads}",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "counted_on": f"{args.field_prior} (PatchPrior), 256 px field, preset {args.preset}",
        "steps": steps,
        "particles": n,
        "passes": counted,
        "passes_per_particle_step": per,
        "sd_pass_tflop": {k: sd[k] / 1e12 for k in per},
        "sd_2048_tflop_per_particle_step": tflop_step,
        "sd_2048_tflop_run": tflop_run,
        "minutes_at": {f"{t:g}": tflop_run / t / 60 for t in args.tflops},
        "cpu_seconds_of_the_count_run": seconds,
    }
    out = RESULTS / "wide_fields"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sd_estimate.json").write_text(json.dumps(doc, indent=1) + "\n")
    rows = "\n".join(
        f"| {k} | {counted[k]} | {per[k]:.2f} | {sd[k] / 1e12:.3f} | {sd[k] * per[k] / 1e12:.2f} |"
        for k in sorted(per)
    )
    times = ", ".join(f"{v:.1f} min at {k} TFLOP/s" for k, v in doc["minutes_at"].items())
    md = f"""# SD-size estimate of a 2048 x 2048 wide-field reconstruction (operation counts)

`{doc["command"]}` ({doc["date"]}). Network passes counted on {doc["counted_on"]}:
{steps} steps (the levels and the final decoder-error step), {n} particles. An SD-1.5 patch
prior (512 px patches, latent factor 8) on a 2048 px image has the same geometry in patch units
(4 patches per side, same shifts, same autoencoder tile starts), so the passes per particle and
step carry over; the FLOPs per pass are SD-1.5's at 512 px
(`benchmarks/results/sd_flops_estimate.json`).

| network | passes | per particle and step | SD-1.5 TFLOP per pass | TFLOP per particle, step |
|---|---:|---:|---:|---:|
{rows}

- **{tflop_step:.0f} TFLOP per particle and step**; the whole run ({steps} steps, {args.particles}
  particles): **{tflop_run:.0f} TFLOP**.
- Time on one GPU: not measured (no GPU lent). At an assumed sustained fp16 throughput:
  {times}.
- The autoencoder dominates: its tiles cost far more than the UNet's patches at SD size (decoder
  2.5 TFLOP per 512 px tile, UNet 0.8).
"""
    (out / "sd_estimate.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
