r"""Sanity check of the Gaussian-mixture benchmark: noise floor and oracle ratio per setting.

For each ``(d, d_y, seed)`` this draws the MCGdiff mixture problem
(:func:`dwgf_sci.benchmark.make_mixture_problem`), computes the sliced Wasserstein noise floor
(exact vs exact posterior samples, ``n`` each) and scores ``runs`` independent runs of ``n`` samples
of the oracle ancestral sampler (exact noisy-posterior score). A correct pipeline gives
``ratio = mean SW(oracle, exact) / floor`` close to 1 and a mode-weight total-variation error close
to that of exact samples (``tv_floor``).

Usage::

    python benchmarks/mixture_oracle_check.py --dims 8 80 --dys 1 2 4 --seeds 0 1 2
    python benchmarks/mixture_oracle_check.py --out benchmarks/results/mixture_oracle_check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dwgf_sci.benchmark import evaluate, make_mixture_problem, noise_floor, oracle_ancestral_sampler


def check(
    d: int, d_y: int, seed: int, n: int, runs: int, steps: int, init: str = "exact"
) -> dict[str, float]:
    """Floor, oracle ratio and mode errors for one problem."""
    start = time.perf_counter()
    problem = make_mixture_problem(d, d_y, seed)
    floor = noise_floor(problem, n, generator=seed + 1, repeats=4 * runs)
    samples = oracle_ancestral_sampler(
        problem, n * runs, steps=steps, generator=seed + 2, init=init
    )
    scores = [
        evaluate(samples[i * n : (i + 1) * n], problem, generator=1000 * seed + i, floor=floor)
        for i in range(runs)
    ]
    sw = sum(s["sw"] for s in scores) / runs
    return {
        "d": d,
        "d_y": d_y,
        "seed": seed,
        "sigma": problem.sigma,
        "modes": int((problem.posterior.weights > 1e-3).sum()),
        "floor": floor,
        "oracle_sw": sw,
        "ratio": sw / floor,
        "mode_tv": sum(s["mode_tv"] for s in scores) / runs,
        "tv_floor": sum(s["mode_tv_floor"] for s in scores) / runs,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Run the check over the requested grid and print one line per problem."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 80])
    parser.add_argument("--dys", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=100, help="samples per run")
    parser.add_argument("--runs", type=int, default=16, help="independent oracle runs")
    parser.add_argument("--steps", type=int, default=200, help="ancestral sampling steps")
    parser.add_argument(
        "--init", choices=["exact", "gaussian"], default="exact", help="oracle start at t = T-1"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    header = f"{'d':>4} {'d_y':>3} {'seed':>4} {'modes':>5} {'sigma':>7} {'floor':>8} "
    header += f"{'ratio':>6} {'mode_tv':>7} {'tv_floor':>8} {'time':>6}"
    print(header)
    for d in args.dims:
        for d_y in args.dys:
            for seed in args.seeds:
                r = check(d, d_y, seed, args.n, args.runs, args.steps, args.init)
                rows.append(r)
                print(
                    f"{d:>4} {d_y:>3} {seed:>4} {r['modes']:>5} {r['sigma']:>7.3f} "
                    f"{r['floor']:>8.4f} {r['ratio']:>6.2f} {r['mode_tv']:>7.3f} "
                    f"{r['tv_floor']:>8.3f} {r['seconds']:>5.1f}s",
                    flush=True,
                )
    ratios = sorted(r["ratio"] for r in rows)
    print(f"median ratio {ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
