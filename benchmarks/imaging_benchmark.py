"""The imaging benchmark with its tuning: every method on every task, tuned on validation only.

1. **Tuning** (validation split, data seed 1001; never the test objects): for each task, each
   method's main parameter is chosen by :func:`dwgf_sci.benchmark.tuning.tune_method` (a
   logarithmic search, refined to a factor sqrt(10)) by the mean PSNR of its posterior mean on
   ``--n-val`` validation problems. Parameters: latent DPS, PSLD and ReSample ``zeta`` (the
   guidance step), RED-diff ``lr`` (its Adam step), TV ``lam``, Richardson-Lucy
   ``iterations``; the classical methods, cheap to run, on ``--n-val-classical`` problems.
   DWGF runs with its shipped default preset, untuned here; the Wiener filter
   uses its noise-based regularisation, the pseudo-inverse and FBP have no parameter.
2. **Test** (test split, data seed 2002): every method with its chosen parameters on ``--n``
   problems per task, through :func:`dwgf_sci.benchmark.imaging.run_benchmark` (resumable:
   a stopped run goes on where it stopped, tuning included).

All latent methods run with the same number of steps (``--steps``, default 50 = the DWGF
default preset's number of levels) and particles, so the cost columns compare like with like.
Outputs in ``--out``: ``tuning.json``, ``results.json``, ``results.md`` (with machine
information and the exact command) and plots.

Runs in separate processes (one per core, each with its own ``--out``) are combined with
``--merge``: their records, tuning and example images go into one ``--out`` folder and table.

Usage (about 20 minutes per task on one core)::

    python benchmarks/imaging_benchmark.py --tasks galaxy-deconv ct-20 --n 3 --out OUT
    python benchmarks/imaging_benchmark.py --n 3          # every task
    python benchmarks/imaging_benchmark.py --merge OUT1 OUT2 --out OUT
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
    overview_markdown,
    plot_results,
    run_benchmark,
    summary_markdown,
)
from dwgf_sci.benchmark.tasks import TASKS
from dwgf_sci.benchmark.tuning import tune_method
from dwgf_sci.priors import load_prior

RESULTS = Path(__file__).parent / "results" / "imaging" / "all-test"
LATENT = ("dwgf", "dps", "psld", "resample", "reddiff", "pigdm")
CLASSICAL = ("pinv", "wiener", "richardson-lucy", "fbp", "tv")
#: method -> (parameter, first guess, integer, grid factor). The search walks decades from the
#: first guess, so the guess only sets where it starts. The latent baselines' steps are in
#: their scale-free units (issue 21): the first guess is each solver's default. Results made
#: before that (``results/imaging/*/tuning.json``) are in the old, absolute units.
SEARCH: dict[str, tuple[str, float, bool, float]] = {
    "dps": ("zeta", 0.5, False, 10.0),
    "psld": ("zeta", 0.5, False, 10.0),
    "resample": ("zeta", 0.5, False, 10.0),
    "reddiff": ("lr", 0.1, False, 10.0),
    "pigdm": ("guidance_scale", 1.0, False, 10.0),
    "tv": ("lam", 0.1, False, 10.0),
    "richardson-lucy": ("iterations", 100, True, 3.0),
}
#: Start the search of these methods at the value another method chose on the same task.
START_FROM: dict[str, str] = {}


def fixed_params(method: str, common: dict[str, Any]) -> dict[str, Any]:
    """The settings every run of ``method`` shares (equal steps and particles for latent ones)."""
    if not METHODS[method].latent:
        return {"iterations": 200} if method == "tv" else {}
    params = dict(common)
    if method == "reddiff":
        params.pop("particles")  # one run per image, as in the paper
    if method == "resample":  # its optimisation loops are the cost: bounded for a CPU run
        params.update(pixel_iters=200, latent_iters=50)
    return params


def task_params(method: str, task: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with what ``task`` needs: PiGDM on Poisson data runs with the Gaussian data
    term at the physics' sky-limited noise level (it needs Gaussian noise)."""
    noise = (task.spec().get("noise") or {}).get("type", "none")
    if method == "pigdm" and noise.startswith("poisson"):
        return {**params, "data_term": "gaussian"}
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=[*LATENT, *CLASSICAL])
    ap.add_argument("--steps", type=int, default=50, help="steps of every latent method")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--n-val", type=int, default=1, help="validation problems per task")
    ap.add_argument("--n-val-classical", type=int, default=6, help="the same, classical methods")
    ap.add_argument("--n", type=int, default=3, help="test problems per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="combine finished runs into --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args, [Path(d) for d in args.merge], out)
        return
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
        n_val = {True: args.n_val, False: args.n_val_classical}
        chosen = tuning.setdefault(name, {})
        for method in sorted(args.methods, key=lambda m: m in START_FROM):  # DPS before PSLD
            if method not in SEARCH or method in chosen or not applies(method, task):
                continue
            param, first, integer, factor = SEARCH[method]
            first = chosen.get(START_FROM.get(method, ""), {}).get("chosen", first)
            log(f"tune {name} {method} {param} from {first}")
            latent = METHODS[method].latent
            val_items = list(task.items("validation", n_val[latent]))
            found = tune_method(
                method, param, first, val_items, prior_of(task.prior) if latent else None,
                task_params(method, task, fixed_params(method, common)),
                integer=integer, factor=factor, log=log,
            )  # fmt: skip
            chosen[method] = {"param": param, **found.as_dict()}
            tuning_path.write_text(json.dumps(tuning, indent=1))
            log(f"tune {name} {method}: {param} = {found.best}")
        params = {}
        for method in args.methods:
            params[method] = task_params(method, task, fixed_params(method, common))
            if method in chosen:
                params[method][chosen[method]["param"]] = chosen[method]["chosen"]
        run_benchmark([task], args.methods, prior_of, out, n=args.n, params=params, progress=log)
    records = json.loads((out / "results.json").read_text())["records"]
    run = f"{(time.perf_counter() - start) / 60:.0f} min for this invocation"
    write_report(args, records, [t for t in TASKS if t in args.tasks], out, run)
    log("done")


def write_report(
    args: argparse.Namespace, records: list[dict[str, Any]], tasks: list[str], out: Path, run: str
) -> None:
    """``results.md`` (command, machine, settings, table) and the figures, in ``out``."""
    header = [
        "# Imaging benchmark (test split)",
        "",
        f"`python benchmarks/imaging_benchmark.py {' '.join(sys.argv[1:])}` "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}, {run}).",
        "",
        f"Machine: {json.dumps(machine_info())}.",
        "",
        f"Every latent method: {args.steps} steps, {args.particles} particles (RED-diff: 1 run "
        "per image, as in its paper), the shipped priors; parameters tuned on "
        f"{args.n_val} validation problem(s) per task ({args.n_val_classical} for the classical "
        "methods; `tuning.json`). Means over the test problems of each task.",
        "",
        "",
    ]
    overview = ["## Mean PSNR (dB)", "", overview_markdown(records, tasks), "## Per task", "", ""]
    text = "\n".join(header + overview) + summary_markdown(records, tasks)
    (out / "results.md").write_text(text)
    plot_results(records, out / "images.pt", out)


def merge(args: argparse.Namespace, folders: list[Path], out: Path) -> None:
    """Combine the records, tuning and example images of finished runs into ``out``."""
    records: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    images: dict[str, torch.Tensor] = {}
    for folder in folders:
        records += json.loads((folder / "results.json").read_text())["records"]
        if (folder / "tuning.json").exists():
            tuning.update(json.loads((folder / "tuning.json").read_text()))
        if (folder / "images.pt").exists():
            images.update(torch.load(folder / "images.pt", weights_only=True))
    keys = [(r["task"], r["method"], r["split"], r["index"]) for r in records]
    if len(set(keys)) != len(keys):
        raise SystemExit("the runs overlap: a (task, method, problem) appears twice")
    data = {"machine": machine_info(), "records": records, "merged_from": [str(f) for f in folders]}
    (out / "results.json").write_text(json.dumps(data, indent=1))
    (out / "tuning.json").write_text(json.dumps(tuning, indent=1))
    torch.save(images, out / "images.pt")
    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    write_report(args, records, tasks, out, f"merged from {', '.join(f.name for f in folders)}")


if __name__ == "__main__":
    main()
