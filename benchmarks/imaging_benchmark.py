"""The imaging benchmark with its tuning: every method on every task, tuned on validation only.

1. **Tuning** (validation split, data seed 1001; never the test objects): for each task, each
   method's main parameter is chosen from a grid by the mean PSNR of the posterior mean on
   ``--n-val`` validation problems. Parameters: latent DPS and PSLD ``zeta`` (the DPS step
   :math:`\\omega`), ReSample ``zeta``, RED-diff ``lr``, TV ``lam`` (relative to the peak of
   the pseudo-inverse), Richardson-Lucy ``iterations``, Wiener ``reg`` (relative to its
   noise-based default). DWGF runs with its shipped default preset, untuned here (its settings
   were chosen on the Gaussian-mixture validation problems).
2. **Test** (test split, data seed 2002): every method with its chosen parameters on ``--n``
   problems per task, through :func:`dwgf_sci.benchmark.imaging.run_benchmark` (resumable).

All latent methods run with the same number of steps (``--steps``) and particles, so the cost
columns compare like with like. Outputs in ``--out``: ``tuning.json``, ``results.json``,
``results.md`` (with machine information and the exact command) and plots.

Usage::

    python benchmarks/imaging_benchmark.py --steps 100 --n-val 1 --n 3      # about 1-2 h, 2 cores
    python benchmarks/imaging_benchmark.py --tasks galaxy-deconv ct-20 --n 2  # a subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dwgf_sci.benchmark.imaging import (
    METHODS,
    applies,
    machine_info,
    plot_results,
    run_benchmark,
    run_one,
    summary_markdown,
)
from dwgf_sci.benchmark.tasks import TASKS, Task, TaskItem
from dwgf_sci.priors import load_prior

RESULTS = Path(__file__).parent / "results" / "imaging"
LATENT = ("dwgf", "dps", "psld", "resample", "reddiff")
CLASSICAL = ("pinv", "wiener", "richardson-lucy", "fbp", "tv")
#: Grids: (parameter, values); for ``tv`` and ``wiener`` the values are relative (see doc).
GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    "dps": ("zeta", (0.03, 0.1, 0.3, 1.0)),
    "psld": ("zeta", (0.03, 0.1, 0.3, 1.0)),
    "resample": ("zeta", (0.1, 0.5, 2.0)),
    "reddiff": ("lr", (0.03, 0.1, 0.3)),
    "tv": ("lam", (1e-3, 1e-2, 1e-1)),
    "richardson-lucy": ("iterations", (30, 100, 300, 1000)),  # 300 won in tune_classical.py
    "wiener": ("reg_factor", (0.3, 1.0, 3.0)),
}


def method_params(
    method: str, value: float | None, item: TaskItem, common: dict[str, Any]
) -> dict[str, Any]:
    """The solver settings for a grid value on one problem (relative values made absolute)."""
    params = dict(common) if METHODS[method].latent else {}
    if method == "reddiff":
        params.pop("particles", None)
    if method == "resample":  # the optimisation loops are the cost: bounded for a CPU run
        params.update(pixel_iters=200, latent_iters=50)
    if method == "tv":
        params["iterations"] = 200
    if value is None:
        return params
    name = GRIDS[method][0]
    if method == "tv":
        with torch.no_grad():
            scale = float(item.physics.A_dagger(item.y).abs().max())
        params["lam"] = value * scale
    elif method == "wiener":
        from dwgf_sci.solvers import Wiener

        base = Wiener().regularisation(item.y, item.physics)
        params["reg"] = value * base
    else:
        params[name] = int(value) if name == "iterations" else value
    return params


def tune(
    task: Task, methods: list[str], prior, n_val: int, common: dict[str, Any], log
) -> dict[str, Any]:
    """Grid search per method on the validation problems; returns ``{method: {...}}``."""
    items = list(task.items("validation", n_val))
    out: dict[str, Any] = {}
    for method in methods:
        if method not in GRIDS or not applies(method, task):
            continue
        name, grid = GRIDS[method]
        scores = {}
        for value in grid:
            psnrs = []
            for item in items:
                params = method_params(method, value, item, common)
                rec = run_one(item, method, prior if METHODS[method].latent else None, params)
                psnrs.append(rec["psnr"])
            scores[value] = sum(psnrs) / len(psnrs)
            log(f"tune {task.name} {method} {name}={value}: {scores[value]:.2f} dB")
        best = max(scores, key=scores.get)
        out[method] = {"param": name, "grid": list(grid), "scores": scores, "chosen": best}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=[*LATENT, *CLASSICAL])
    ap.add_argument("--steps", type=int, default=100, help="steps of every latent method")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--n-val", type=int, default=1, help="validation problems per task")
    ap.add_argument("--n", type=int, default=3, help="test problems per task")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f}s] {msg}", flush=True)

    priors: dict[str, Any] = {}

    def prior_of(name: str):
        if name not in priors:
            priors[name] = load_prior(name)
        return priors[name]

    common = {"steps": args.steps, "particles": args.particles, "seed": 0}
    tuning_path = out / "tuning.json"
    tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else {}
    for name in args.tasks:
        task = TASKS[name]
        todo = [m for m in args.methods if m not in tuning.get(name, {})]
        if todo:
            found = tune(task, todo, prior_of(task.prior), args.n_val, common, log)
            tuning.setdefault(name, {}).update(found)
            tuning_path.write_text(json.dumps(tuning, indent=1))
        item = next(task.items("validation", 1))  # relative values are made absolute per item
        params = {}
        for method in args.methods:
            if not applies(method, task):
                continue
            chosen = tuning.get(name, {}).get(method, {}).get("chosen")
            params[method] = method_params(method, chosen, item, common)
        if "tv" in params and "tv" in tuning.get(name, {}):
            params.pop("tv")  # lam is relative to each problem's scale: recomputed per item below
        run_benchmark(
            [task], [m for m in args.methods if m != "tv" or m in params], prior_of, out,
            n=args.n, params=params, progress=log,
        )  # fmt: skip
        if "tv" in args.methods and "tv" in tuning.get(name, {}):
            _run_tv(task, tuning[name]["tv"]["chosen"], args.n, out, log)
    data = json.loads((out / "results.json").read_text())
    records = data["records"]
    table = summary_markdown(records, args.tasks)
    header = [
        "# Imaging benchmark (test split)",
        "",
        f"`python benchmarks/imaging_benchmark.py {' '.join(sys.argv[1:])}` "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}, {(time.perf_counter() - start) / 60:.0f} "
        "min for this invocation).",
        "",
        f"Machine: {json.dumps(machine_info())}.",
        "",
        f"Every latent method: {args.steps} steps, {args.particles} particles (RED-diff: 1), the "
        "shipped priors; parameters tuned on the validation split (`tuning.json`). Means over "
        "the test problems of each task.",
        "",
    ]
    (out / "results.md").write_text("\n".join(header) + table)
    plot_results(records, out / "images.pt", out)
    log("done")


def _run_tv(task: Task, factor: float, n: int, out: Path, log) -> None:
    """TV with ``lam`` relative to each test problem's pseudo-inverse peak."""
    for item in task.items("test", n):
        params = method_params("tv", factor, item, {})
        run_benchmark(
            [_Single(task, item)], ["tv"], lambda name: None, out, n=1, params={"tv": params},
            progress=log,
        )  # fmt: skip


class _Single:
    """A task view that yields one given item (for per-item parameters)."""

    def __init__(self, task: Task, item: TaskItem) -> None:
        self.task, self.item = task, item
        self.name, self.prior = task.name, task.prior

    def spec(self) -> dict[str, Any]:
        return self.task.spec()

    def items(self, split: str, n: int, start: int = 0):
        yield self.item


if __name__ == "__main__":
    main()
