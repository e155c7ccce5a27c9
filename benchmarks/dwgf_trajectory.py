r"""PSNR of DWGF's decoded particles along the levels, for several settings (a diagnostic).

For each validation problem and setting, DWGF runs its levels and, every few levels, the
particles are decoded and the PSNR of their mean against the truth is recorded (one extra
decoder forward per particle, outside the solver's own work). The final PSNR is the one the
benchmark reports (after the decoder-error step). This shows *when* a setting fits the data:
the CG start from the prior's draw (``cg_start="centre"``) keeps improving up to the last level
on galaxy deconvolution, the start from the current particle reaches its plateau early.

Usage (the committed ``results/dwgf_trajectory.md`` came from)::

    python benchmarks/dwgf_trajectory.py --task galaxy-deconv --indices 2 3 \
        --configs '{"cg_start": "centre"}' '{"cg_start": "current"}' \
        '{"cg_start": "switch", "cg_switch": 3.0}'
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from dwgf_sci.benchmark.imaging import machine_info
from dwgf_sci.benchmark.tasks import TASKS
from dwgf_sci.io.atomic import atomic_output
from dwgf_sci.metrics import psnr
from dwgf_sci.priors import load_prior
from dwgf_sci.solvers import DWGF

OUT = Path(__file__).parent / "results" / "dwgf_trajectory.md"


def trajectory(item: Any, prior: Any, settings: dict[str, Any], every: int) -> dict[str, Any]:
    """Run DWGF on one problem; PSNR of the decoded particle mean every ``every`` levels."""
    solver = DWGF(prior, **settings)
    shape = solver.prepare(item.y, item.physics).latent_shape
    points: list[tuple[int, float, float]] = []

    def record(i: int, t: int, info: dict[str, float], state: Any) -> None:
        if (i + 1) % every == 0 or i == solver.steps - 1:
            x = solver.render_no_grad(state.z.reshape(-1, *shape))
            value = float(psnr(x.mean(0, keepdim=True), item.x).mean())
            points.append((i + 1, float(info["rho"]), value))

    post = solver(item.y, item.physics, callback=record)
    final = float(psnr(post.as_tensor(), item.x).mean())
    return {"points": points, "final": final}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="galaxy-deconv", choices=TASKS)
    parser.add_argument("--indices", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--configs", nargs="+", default=['{"cg_start": "centre"}'])
    parser.add_argument("--every", type=int, default=5, help="levels between two records")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    prior = load_prior(task.prior)
    wanted = set(args.indices)
    items = [it for it in task.items("validation", max(wanted) + 1) if it.index in wanted]
    rows = []
    for item in items:
        for text in args.configs:
            settings = json.loads(text)
            result = trajectory(item, prior, settings, args.every)
            rows.append((item.index, text, result))
            print(f"#{item.index} {text}: final {result['final']:.2f} dB", flush=True)
    levels = [f"{lvl} (rho {rho:.2g})" for lvl, rho, _ in rows[0][2]["points"]]
    lines = [
        f"# PSNR of DWGF's decoded particle mean along the levels ({args.task}, validation)",
        "",
        "`python benchmarks/dwgf_trajectory.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        + "`",
        "",
        f"Machine: {json.dumps(machine_info())}. Columns: level (noise level rho); the last "
        "column is the benchmark's PSNR of the posterior mean, after the decoder-error step.",
        "",
        "| problem | settings | " + " | ".join(levels) + " | final |",
        "|---|---|" + "---:|" * (len(levels) + 1),
    ]
    for index, text, result in rows:
        cells = " | ".join(f"{value:.2f}" for *_, value in result["points"])
        lines.append(f"| {index} | `{text}` | {cells} | {result['final']:.2f} |")
    with atomic_output(args.out, overwrite=True) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
