"""Do the latent baselines work from their defaults? Default against validation-tuned step size.

For each task of :mod:`dwgf_sci.benchmark.tasks` and each latent baseline (latent DPS, PSLD,
ReSample, RED-diff, PiGDM), with the benchmark's settings (``--steps`` 50, ``--particles`` 4, the
shipped priors; ReSample with 200 pixel / 50 latent iterations, RED-diff one run per image as in
the imaging benchmark):

1. **Tuning** on ``--n-val`` validation problems (data seed 1001): the method's scale-free step
   parameter on a logarithmic grid centred on its default (``--grid`` values spaced by a factor
   ``--factor``, default sqrt(10)), so the default is one of the scored values; the tuned value
   is the best mean validation PSNR (the default wins ties).
2. **Test** on ``--n-test`` test problems (data seed 2002): the default and the tuned value.

One JSON line per finished run is appended to ``--out`` (``runs.jsonl``); a restarted command
skips the runs already there, so it resumes where it stopped. ``--report`` (also run at the end)
writes the Markdown table ``baseline_defaults.md`` next to the folder from the JSON lines.

On a Poisson task PiGDM (which needs Gaussian noise) runs with the Gaussian data term at the
physics' sky-limited noise level (:func:`~dwgf_sci.operators.noise.noise_sigma`), the others with
the Poisson data term, as in the imaging benchmark.

Usage (one process, one thread; resumes)::

    python benchmarks/baseline_defaults.py --threads 1
    python benchmarks/baseline_defaults.py --methods dps psld --tasks galaxy-deconv ct-20
    python benchmarks/baseline_defaults.py --report
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dwgf_sci.benchmark.imaging import machine_info, run_one
from dwgf_sci.benchmark.tasks import TASKS, TaskItem
from dwgf_sci.priors import load_prior
from dwgf_sci.solvers import PSLD, LatentDPS, PiGDM, ReSample
from dwgf_sci.solvers.reddiff import REDDIFF

HERE = Path(__file__).parent / "results"
OUT = HERE / "baseline_defaults" / "runs.jsonl"
REPORT = HERE / "baseline_defaults.md"
METHODS = ("dps", "psld", "resample", "reddiff", "pigdm")
#: method -> its scale-free step parameter
PARAM = {
    "dps": "zeta",
    "psld": "zeta",
    "resample": "zeta",
    "reddiff": "lr",
    "pigdm": "zeta",
}


def default_value(method: str) -> float:
    """The method's default of its step parameter, read from the solver itself."""
    if method == "reddiff":
        return float(REDDIFF["lr"])
    cls = {"dps": LatentDPS, "psld": PSLD, "resample": ReSample, "pigdm": PiGDM}[method]
    for klass in cls.__mro__:  # PSLD takes zeta through **kwargs: its parent's default
        param = inspect.signature(klass.__init__).parameters.get(PARAM[method])
        if param is not None:
            return float(param.default)
    raise KeyError(f"{method} has no {PARAM[method]}")


def fixed_params(method: str, item: TaskItem, steps: int, particles: int) -> dict[str, Any]:
    """Settings shared by every run of ``method`` (those of the imaging benchmark)."""
    params: dict[str, Any] = {"steps": steps, "seed": 0}
    if method != "reddiff":  # RED-diff: one run per image, as in its paper
        params["particles"] = particles
    if method == "resample":
        params.update(pixel_iters=200, latent_iters=50)
    # the scale-free units (the solvers' defaults), recorded with every run
    params.update(
        {"reddiff": {"data_units": "noise"}, "pigdm": {"image_scale": "decoder"}}.get(
            method, {"step_units": "relative"}
        )
    )
    noise = (item.spec.get("noise") or {}).get("type", "none")
    if method == "pigdm" and noise.startswith("poisson"):
        params["data_term"] = "gaussian"  # the sky-limited level read from the physics
    return params


def grid(default: float, n: int, factor: float) -> list[float]:
    """``n`` values ``default * factor**k`` centred on the default (6 significant digits)."""
    half = (n - 1) // 2
    return [float(f"{default * factor**k:.6g}") for k in range(-half, n - half)]


def load(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of finished runs."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def key(r: dict[str, Any]) -> tuple[str, str, str, float, int]:
    return (r["task"], r["method"], r["split"], float(r["value"]), int(r["index"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--n-val", type=int, default=1, help="validation problems per task")
    ap.add_argument("--n-test", type=int, default=2, help="test problems per task")
    ap.add_argument("--grid", type=int, default=3, help="values of the tuning grid")
    ap.add_argument("--factor", type=float, default=math.sqrt(10.0), help="grid spacing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true", help="only write the table")
    args = ap.parse_args()
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    if args.report:
        write_report(out, args)
        return
    torch.set_num_threads(args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in load(out)}
    scores = {key(r): r["psnr"] if r["psnr"] is not None else -math.inf for r in load(out)}
    start = time.perf_counter()
    priors: dict[str, Any] = {}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    def run(item: TaskItem, method: str, value: float) -> float:
        k = (item.task, method, item.split, value, item.index)
        if k in done:
            return scores[k]
        task = TASKS[item.task]
        if task.prior not in priors:
            priors[task.prior] = load_prior(task.prior)
        params = {**fixed_params(method, item, args.steps, args.particles), PARAM[method]: value}
        try:
            rec = run_one(item, method, priors[task.prior], params)
            rec.pop("_mean")
        except (RuntimeError, ValueError) as err:  # a diverged run scores -inf
            rec = {"psnr": -math.inf, "error": str(err)[:300], "params": params}
        psnr = rec["psnr"] if math.isfinite(rec["psnr"]) else -math.inf
        line = {
            "task": item.task,
            "method": method,
            "split": item.split,
            "index": item.index,
            "param": PARAM[method],
            "value": value,
            "default": value == default_value(method),
            "psnr": psnr if math.isfinite(psnr) else None,
            **{k: rec.get(k) for k in ("ssim", "chi2", "coverage90", "wall_s", "error")},
            "params": rec.get("params", params),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        done.add(k)
        scores[k] = psnr
        log(f"{item.task} {method} {item.split}#{item.index} {PARAM[method]}={value:g}: "
            f"{psnr:.2f} dB, {rec.get('wall_s') or 0:.0f} s")  # fmt: skip
        return psnr

    for method in args.methods:  # method-major: DPS and PSLD finish first
        default = default_value(method)
        values = grid(default, args.grid, args.factor)
        for name in args.tasks:
            task = TASKS[name]
            val = list(task.items("validation", args.n_val))
            mean = {v: sum(run(it, method, v) for it in val) / len(val) for v in values}
            best = max(values, key=lambda v: (mean[v], v == default))
            log(f"{name} {method}: tuned {PARAM[method]}={best:g} (default {default:g})")
            for it in task.items("test", args.n_test):
                run(it, method, default)
                run(it, method, best)
            write_report(out, args)
    log("done")


#: The imaging benchmark's runs with steps tuned in the old, absolute units (same test problems).
OLD_RUNS = [
    HERE / "imaging" / f"all-methods-{n}-test" / "results.json" for n in ("galaxy", "galaxy2", "ct")
]


def old_tuned(indices: set[int]) -> dict[tuple[str, str], float]:
    """Mean test PSNR per (task, method) of the old-unit tuned runs on the given problems."""
    found: dict[tuple[str, str], list[float]] = {}
    for path in OLD_RUNS:
        if path.exists():
            for r in json.loads(path.read_text())["records"]:
                if r["split"] == "test" and r["index"] in indices:
                    found.setdefault((r["task"], r["method"]), []).append(r["psnr"])
    return {k: sum(v) / len(v) for k, v in found.items() if len(v) == len(indices)}


def summarise(
    records: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[list[str], list[str]]:
    """Table rows (task x method) and the names of the pairs not measured."""
    rows, missing = [], []
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["task"], r["method"]), []).append(r)

    def mean(rs: list[dict[str, Any]]) -> float:
        vals = [r["psnr"] if r["psnr"] is not None else -math.inf for r in rs]
        return sum(vals) / len(vals) if vals else math.nan

    old = old_tuned(set(range(args.n_test)))
    for method in METHODS:
        default = default_value(method)
        for task in TASKS:
            rs = by.get((task, method), [])
            val = [r for r in rs if r["split"] == "validation"]
            values = sorted({r["value"] for r in val})
            vmean = {v: mean([r for r in val if r["value"] == v]) for v in values}
            test = [r for r in rs if r["split"] == "test"]
            if not values or default not in vmean:
                missing.append(f"{task} × {method}")
                continue
            best = max(values, key=lambda v: (vmean[v], v == default))
            d_rs = [r for r in test if r["value"] == default]
            t_rs = [r for r in test if r["value"] == best]
            n_test = len({r["index"] for r in d_rs} & {r["index"] for r in t_rs})
            if n_test < args.n_test:
                missing.append(f"{task} × {method} (test runs unfinished)")
                continue
            d, t = mean(d_rs), mean(t_rs)
            ok = "yes" if d >= t - 1.0 else "**no**"
            curve = ", ".join(f"{v:g}: {vmean[v]:.1f}" for v in values)
            before = f"{old[(task, method)]:.2f}" if (task, method) in old else "-"
            rows.append(
                f"| {task} | {method} | {PARAM[method]} | {default:g} | {best:g} | {d:.2f} | "
                f"{t:.2f} | {d - t:+.2f} | {ok} | {curve} | {before} |"
            )
    return rows, missing


def write_report(out: Path, args: argparse.Namespace) -> None:
    """The Markdown table of default against tuned test PSNR (see the module doc)."""
    records = load(out)
    rows, missing = summarise(records, args)
    machine = machine_info()
    exploration = out.parent / "exploration.md"
    lines = [
        "# Latent baselines: default step against validation-tuned step",
        "",
        f"Command (reproduces, and resumes a stopped run): `python benchmarks/"
        f"baseline_defaults.py --threads 1` (here run in pieces with `--methods dps`, "
        f"`--methods psld`, `--methods reddiff resample`, `--methods pigdm`, one process at a "
        f"time). Table written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/baseline_defaults.py {' '.join(sys.argv[1:])}` from "
        f"`baseline_defaults/{out.name}` ({len(records)} runs).",
        "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} torch thread(s), torch {machine['torch']}, "
        f"deepinv {machine['deepinv']}, dwgf_sci {machine['dwgf_sci']}; no GPU.",
        "",
        f"Settings: {args.steps} steps, {args.particles} particles (RED-diff: one run per "
        "image), shipped priors galaxy-64 / ct-64, seed 0; ReSample 200 pixel / 50 latent "
        f"iterations. Tuning: {args.grid} values spaced by a factor {args.factor:.3g} centred on "
        f"the default, on {args.n_val} validation problem(s) per task (data seed 1001); test: "
        f"{args.n_test} test problems per task (data seed 2002), mean PSNR (dB) of the "
        "posterior mean. Step parameters are the scale-free ones, the solvers' defaults "
        '(`step_units="relative"`; RED-diff `data_units="noise"`; PiGDM `image_scale="decoder"`, '
        '`jacobian="gaussian"`, and on the Poisson task the Gaussian data term at the '
        "sky-limited noise level; see the solvers' docstrings). Within 1 dB: default test PSNR "
        ">= tuned test PSNR - 1 dB.",
        "",
        "| task | method | parameter | default | tuned | default test PSNR | tuned test PSNR "
        "| default - tuned | within 1 dB | validation PSNR per value | old units, tuned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Last column, for context: the test PSNR on the same test problems of the imaging "
        "benchmark's runs (`results/imaging/all-methods-{galaxy,galaxy2,ct}-test`), whose steps "
        "were tuned in the old, absolute units (PiGDM was not in it); those runs are older and "
        "used 3 test problems, of which the first two are averaged here.",
        "",
        f"Pairs measured: {len(rows)} of {len(METHODS) * len(TASKS)}; default within 1 dB of "
        f"tuned: {sum('| yes |' in r for r in rows)} of {len(rows)}.",
    ]
    if missing:
        lines += ["", "Not measured (yet): " + "; ".join(missing) + "."]
    for extra in (out.parent / "notes.md", exploration):  # hand-written, dated notes
        if extra.exists():
            lines += ["", extra.read_text().strip()]
    REPORT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
