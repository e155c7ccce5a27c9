r"""Acceptance metrics of a trained prior (issue 4): VAE reconstruction PSNR and KS statistics.

For a prior folder (or a shipped prior name) the script generates ``--n`` held-out images with
the held-out seed (:data:`dwgf_sci.training.evaluate.HELD_OUT_SEED`, never used for training),
and measures

* the VAE reconstruction PSNR, ``from_model(decode(encode(to_model(x))))`` against ``x``, per
  image on that image's data range, averaged (target: >= 35 dB galaxies, >= 30 dB CT);
* two-sample Kolmogorov-Smirnov statistics between ``--samples`` DDIM samples of the prior and
  the held-out images, for total flux and half-light radius (galaxies) or mean attenuation and
  support area (CT phantoms) (target: <= 0.15 each).

It writes ``prior_metrics.json`` and ``prior_metrics.md`` into ``--out`` (default: the prior's
folder) and prints the table. See :mod:`dwgf_sci.training.evaluate` for the definitions.

Usage::

    python benchmarks/prior_metrics.py galaxy-64/ --dataset galaxies
    python benchmarks/prior_metrics.py ct-64 --dataset phantoms --out benchmarks/results/ct-64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dwgf_sci.errors import DwgfError
from dwgf_sci.priors import load_prior
from dwgf_sci.priors.loading import prior_folder
from dwgf_sci.training.evaluate import (
    HELD_OUT_SEED,
    evaluate_prior,
    metrics_markdown,
    write_metrics,
)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prior", help="prior folder or shipped prior name")
    p.add_argument("--dataset", required=True, choices=("galaxies", "phantoms", "fields"))
    p.add_argument("--n", type=int, default=200, help="held-out images (default: 200)")
    p.add_argument("--samples", type=int, default=None, help="prior samples (default: --n)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps (default: 100)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    p.add_argument(
        "--data-seed",
        type=int,
        default=HELD_OUT_SEED,
        help=f"seed of the held-out images (default: {HELD_OUT_SEED})",
    )
    p.add_argument("--out", default=None, help="output folder (default: the prior's folder)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        path = Path(args.prior).expanduser()
        folder = path if path.is_dir() else prior_folder(args.prior)
        prior = load_prior(str(folder), device=args.device)
        meta = getattr(prior, "metadata", {}) or {}
        used = (meta.get("data") or {}).get("data_seed")
        if used is not None and int(used) == int(args.data_seed):
            raise DwgfError(
                f"the prior was trained on data seed {used}: choose another --data-seed"
            )
        t0 = time.perf_counter()
        result = evaluate_prior(
            prior,
            args.dataset,
            n=args.n,
            n_samples=args.samples,
            sample_steps=args.steps,
            seed=args.seed,
            eta=args.eta,
            data_seed=args.data_seed,
        )
        result["prior"] = str(folder)
        result["prior_metadata"] = {k: meta.get(k) for k in ("name", "seed", "command", "data")}
        out = Path(args.out) if args.out else folder
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = write_metrics(result, out)
    except DwgfError as exc:
        print(f"prior_metrics: error: {exc}", file=sys.stderr)
        return 2
    print(metrics_markdown(result, title=f"Prior metrics: {folder.name}"))
    print(f"wrote {json_path} and {md_path} ({time.perf_counter() - t0:.1f} s)")
    return 0 if result.get("all_pass", True) else 1


if __name__ == "__main__":
    sys.exit(main())
