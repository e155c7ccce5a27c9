r"""The MCGdiff Gaussian-mixture benchmark: every sampler against the exact posterior.

Protocol (issue 3, part 6)
--------------------------
* Problems: :func:`dwgf_sci.benchmark.make_mixture_problem` (25 unit-covariance components,
  random weights, :math:`A = U \operatorname{diag}(s) V_{:d_y}`, random noise level), settings
  :math:`d \in \{8, 80\} \times d_y \in \{1, 2, 4\}`, test seeds 0..9 per setting.
* Metric: sliced Wasserstein distance (256 directions) between ``n = 2000`` samples of a method and
  2000 fresh exact posterior samples, divided by the exact-vs-exact noise floor of the same problem
  (:func:`~dwgf_sci.benchmark.noise_floor`, 16 pairs); also the total-variation error of the mode
  weights. Per setting: median and mean over the problems. The exact reference samples and the
  projection directions are seeded per problem, so every method is scored against the same ones.
* Methods: ``oracle`` (ancestral sampling with the exact noisy-posterior score, a sanity row),
  ``dwgf-reference`` (:meth:`DWGF.reference`: 4 interacting particles per run), ``dwgf-default``
  (``DWGF(prior)``, its preset's 4 particles per run), ``dwgf-default-pop`` (the same preset
  with all ``n`` samples from one run of ``n`` particles: the SMC scheme reweights and resamples
  within a run, so its accuracy grows with the particles of a run), ``reddiff`` (one particle
  per run),
  ``dps`` and ``pigdm`` (independent particles), all with the exact score of the prior;
  ``pigdm-1000`` is ΠGDM with 1000 steps instead of the paper's 100 (the step count of DPS,
  RED-diff and the reference DWGF), because 100 steps are far from converged on the
  low-noise problems of this benchmark.
  Runs are batched: ``y`` is repeated ``n / particles`` times, and the skeleton groups particles
  per measurement (rows ``b * P .. (b + 1) * P - 1`` belong to measurement ``b``), so each group of
  particles interacts only within itself, exactly as separate runs would.
* Step sizes: each method's main step parameter (DWGF and RED-diff ``lr``, DPS ``zeta``, ΠGDM
  ``guidance_scale``) is tuned per dimension ``d`` on *validation* problems (seeds 1000.., one per
  ``d_y`` by default, never the test seeds) with 500 samples, minimising the median SW ratio; the
  grid is a set of multiples of the method's own default. The chosen values are recorded.
* Steps: each method's own default (DWGF presets, RED-diff 1000, DPS 1000, ΠGDM 100, oracle
  200).

Two implementation choices, neither changes what is computed:

* The exact noise predictor of the unit-covariance prior is evaluated with one matrix product
  (:class:`IsotropicMixturePrior`; the noised components are :math:`\mathcal{N}(a\mu_k, I)` since
  :math:`a^2 + s^2 = 1`), in float64, checked against
  :meth:`GaussianMixturePrior.predict_noise` at start-up. The generic implementation is ~20x
  slower at ``d = 80``, which would make the full benchmark unaffordable on two cores.
* DWGF with the element-mean (``"mse"``) data term divides its loss by the number of particles of
  the call, so a batch of runs shrinks each particle's gradient; Adam is scale invariant except
  for its epsilon, which :class:`BatchedRunsDWGF` divides by the number of measurements so that
  every group of particles behaves exactly as a separate run (RED-diff does the same itself).

Usage::

    python benchmarks/mixture_benchmark.py --quick               # < 3 min, *_quick.{md,json}
    python benchmarks/mixture_benchmark.py --jobs 2              # the full benchmark
    python benchmarks/mixture_benchmark.py --methods dwgf-default  # re-run one method, merged
    python benchmarks/mixture_benchmark.py --methods dps --settings 8x1 80x4 --reuse-tuning

Results are merged into ``OUT/mixture_benchmark.{json,md}`` per (method, setting): re-running a
method replaces its rows and keeps everyone else's (``--fresh`` starts from scratch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dwgf_sci.benchmark.mixture import (
    MixtureProblem,
    evaluate,
    make_mixture_problem,
    noise_floor,
    oracle_ancestral_sampler,
)
from dwgf_sci.priors.gaussian_mixture import GaussianMixturePrior
from dwgf_sci.solvers import DWGF, LatentDPS, LatentSolver, PiGDM, REDDiff
from dwgf_sci.solvers.base import Problem
from dwgf_sci.solvers.dwgf import FlowState, ParticleState

METHODS = (
    "oracle",
    "dwgf-reference",
    "dwgf-default",
    "dwgf-default-pop",
    "reddiff",
    "dps",
    "pigdm",
    "pigdm-1000",
)
#: The step parameter tuned for each method.
PARAM = {
    "dwgf-reference": "lr",
    "dwgf-default": "lr",
    "dwgf-default-pop": "lr",
    "reddiff": "lr",
    "dps": "zeta",
    "pigdm": "guidance_scale",
    "pigdm-1000": "guidance_scale",
}
#: Tuning grids, as multiples of each method's own default value.
FACTORS = {
    "dwgf-reference": (0.03, 0.1, 0.3, 1.0, 3.0),
    "dwgf-default": (0.1, 0.3, 1.0, 3.0),
    "dwgf-default-pop": (0.1, 0.3, 1.0, 3.0),
    "reddiff": (0.1, 0.3, 1.0, 3.0, 10.0),
    "dps": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    "pigdm": (0.25, 0.5, 1.0, 2.0),
    "pigdm-1000": (0.25, 0.5, 1.0, 2.0),
}
ORACLE_STEPS = 200
SMC_STEPS = 200
SETTINGS = ((8, 1), (8, 2), (8, 4), (80, 1), (80, 2), (80, 4))
VALIDATION_SEED = 1000


# ---------------------------------------------------------------------------------------- models
class IsotropicMixturePrior(GaussianMixturePrior):
    r"""The same mixture prior with unit covariances, its exact noise predictor in one GEMM.

    With :math:`\Sigma_k = I` the noised mixture is
    :math:`p_t = \sum_k w_k \mathcal{N}(a\mu_k, I)` (:math:`a^2 + s^2 = 1`), so with
    responsibilities :math:`r_k \propto w_k \exp(a\, z^\top\mu_k - a^2\|\mu_k\|^2/2)`

    .. math::

        \nabla \log p_t(z) = -(z - a \textstyle\sum_k r_k \mu_k), \qquad
        \epsilon^\star(z, t) = s\,(z - a \textstyle\sum_k r_k \mu_k),

    computed in float64 whatever the prior's dtype.
    """

    @classmethod
    def from_prior(cls, prior: GaussianMixturePrior, dtype: torch.dtype) -> IsotropicMixturePrior:
        """Copy a unit-covariance, identity-decoder :class:`GaussianMixturePrior`."""
        unit = prior.cov_eigvecs is None and bool((prior.cov_eigvals == 1).all())
        if not unit or prior.decoder_weight is not None or prior.decoder_bias is not None:
            raise ValueError("IsotropicMixturePrior needs unit covariances and no decoder")
        return cls(
            prior.weights.double(),
            prior.means.double(),
            1.0,
            alphas_cumprod=prior.alphas_cumprod,
            dtype=dtype,
        )

    def _predict_noise(self, z_t: Tensor, t: Tensor) -> Tensor:
        f64 = torch.float64
        flat = z_t.reshape(z_t.shape[0], self.dim).to(f64)
        abar = self.alphas_cumprod.to(f64)[t.to(self.alphas_cumprod.device)].reshape(-1, 1)
        a = abar.sqrt()
        mu = self.means.to(f64)
        logits = self.log_weights.to(f64) + a * (flat @ mu.T) - 0.5 * abar * mu.pow(2).sum(1)
        resp = torch.softmax(logits, dim=1)
        eps = torch.sqrt(1.0 - abar) * (flat - a * (resp @ mu))
        return eps.to(z_t.dtype).reshape(z_t.shape)


def check_fast_prior() -> float:
    """Largest difference between the fast and the generic exact noise predictors (float64)."""
    problem = make_mixture_problem(8, 2, 0)
    fast = IsotropicMixturePrior.from_prior(problem.prior, torch.float64)
    z = 10.0 * torch.randn(
        64, 8, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    worst = 0.0
    for t in (0, 3, 50, 400, 999):
        ref = problem.prior.predict_noise(z, t)
        worst = max(worst, float((fast.predict_noise(z, t) - ref).abs().max()))
    if worst > 1e-8:
        raise RuntimeError(
            f"the fast mixture noise predictor disagrees with the generic one: {worst}"
        )
    return worst


class BatchedRunsDWGF(DWGF):
    """DWGF whose batched measurements behave as separate runs (see the module doc)."""

    def init_state(self, problem: Problem) -> FlowState | ParticleState:
        """DWGF's start, with Adam's epsilon divided by the batch (element-mean data term)."""
        state = super().init_state(problem)
        opt = getattr(state, "optimizer", None)  # the SMC scheme has no optimiser
        if isinstance(opt, torch.optim.Adam) and problem.data_term.kind == "mse":
            for group in opt.param_groups:
                group["eps"] = group["eps"] / problem.batch
        return state


def make_solver(method: str, prior: GaussianMixturePrior, n: int, **kw: Any) -> LatentSolver:
    """The solver of a method (``kw``: step parameter, steps, seed)."""
    if method == "dwgf-reference":
        return BatchedRunsDWGF(prior, preset="reference", **kw)
    # the SMC path of the default preset was validated and measured with 200 levels (the preset
    # itself has 50 since the Gibbs path for learned decoders became the common case)
    if method == "dwgf-default":
        return BatchedRunsDWGF(prior, **{"steps": SMC_STEPS, **kw})
    if method == "dwgf-default-pop":  # all n samples from one population of n particles
        return BatchedRunsDWGF(prior, **{"particles": n, "steps": SMC_STEPS, **kw})
    if method == "reddiff":
        return REDDiff(prior, **kw)
    if method == "dps":
        return LatentDPS(prior, particles=n, **kw)
    if method == "pigdm":
        return PiGDM(prior, particles=n, **kw)
    if method == "pigdm-1000":
        return PiGDM(prior, particles=n, **{"steps": 1000, **kw})
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def method_defaults(method: str) -> tuple[float | None, int, dict[str, Any]]:
    """Default value of the tuned parameter (``None``: not tuned), default number of steps and
    solver settings of a method.

    DWGF's default preset is tuned on its ``lr`` only when it is a flow (``scheme="flow"``); the
    SMC scheme has no learning rate and ships with its own validation-tuned settings.
    """
    if method == "oracle":
        return None, ORACLE_STEPS, {"solver": "oracle-ancestral", "steps": ORACLE_STEPS}
    prior = make_mixture_problem(8, 1, 0).prior
    solver = make_solver(method, prior, 2)
    settings = solver.settings()
    if getattr(solver, "scheme", "flow") not in ("flow",):
        return None, int(solver.steps), settings
    return float(getattr(solver, PARAM[method])), int(solver.steps), settings


def draw(
    method: str,
    problem: MixtureProblem,
    n: int,
    value: float | None,
    steps: int | None,
    seed: int,
    dtype: torch.dtype,
) -> Tensor:
    """``n`` samples ``(n, d)`` of a method on a problem (batched runs, see the module doc)."""
    if method == "oracle":
        return oracle_ancestral_sampler(problem, n, steps=steps or ORACLE_STEPS, generator=seed)
    prior = IsotropicMixturePrior.from_prior(problem.prior, dtype)
    kw: dict[str, Any] = {"seed": seed}
    if steps:
        kw["steps"] = steps
    if value is not None:
        kw[PARAM[method]] = value
    solver = make_solver(method, prior, n, **kw)
    reps = math.ceil(n / solver.particles)
    y = problem.y.to(dtype).repeat(reps, 1)
    post = solver(y, problem.operator)
    return post.all_samples.reshape(-1, problem.d)[:n]


# ---------------------------------------------------------------------------------------- tasks
def _seed(kind: int, d: int, d_y: int, seed: int) -> int:
    """A distinct, reproducible seed per purpose and problem."""
    return kind * 100_000_000 + d * 100_000 + d_y * 10_000 + seed


def floor_task(task: dict[str, Any]) -> dict[str, Any]:
    """Noise floor of one problem for ``n`` samples."""
    torch.set_num_threads(task["threads"])
    start = time.perf_counter()
    problem = make_mixture_problem(task["d"], task["d_y"], task["seed"])
    value = noise_floor(
        problem,
        task["n"],
        task["directions"],
        generator=_seed(1, task["d"], task["d_y"], task["seed"]),
        repeats=task["repeats"],
    )
    return {**task, "floor": value, "wall_s": time.perf_counter() - start}


def sample_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one method on one problem and score it."""
    torch.set_num_threads(task["threads"])
    dtype = getattr(torch, task["dtype"])
    d, d_y, seed = task["d"], task["d_y"], task["seed"]
    exact = make_mixture_problem(d, d_y, seed)
    run = exact if dtype == torch.float64 else make_mixture_problem(d, d_y, seed, dtype=dtype)
    start = time.perf_counter()
    x = draw(task["method"], run, task["n"], task["value"], task["steps"], seed, dtype)
    wall = time.perf_counter() - start
    scores = evaluate(
        x,
        exact,
        task["directions"],
        generator=_seed(2, d, d_y, seed),
        floor=task["floor"],
    )
    return {**task, **scores, "wall_s": wall}


def run_all(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    tasks: list[dict[str, Any]],
    jobs: int,
    label: str,
    t0: float,
) -> list[dict[str, Any]]:
    """Run tasks (in ``jobs`` processes), printing one line per finished task."""
    out: list[dict[str, Any]] = []

    def report(res: dict[str, Any]) -> None:
        out.append(res)
        what = res.get("method", "floor")
        extra = f" ratio {res['ratio']:.2f} tv {res['mode_tv']:.2f}" if "ratio" in res else ""
        value = f" {PARAM.get(what, '')}={res['value']:.4g}" if res.get("value") else ""
        print(
            f"[{time.perf_counter() - t0:7.0f}s] {label} {len(out)}/{len(tasks)} {what}"
            f" d={res['d']} d_y={res['d_y']} seed={res['seed']}{value}{extra}"
            f" ({res['wall_s']:.1f}s)",
            flush=True,
        )

    if jobs <= 1:
        for task in tasks:
            report(fn(task))
        return out
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for res in pool.map(fn, tasks):
            report(res)
    return out


# ---------------------------------------------------------------------------------------- output
def machine_info() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import deepinv

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "torch": torch.__version__,
        "deepinv": deepinv.__version__,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and mean of the SW ratio and the mode-TV error over problems."""
    ratios = [r["ratio"] for r in rows]
    tvs = [r["mode_tv"] for r in rows]
    return {
        "median_ratio": statistics.median(ratios),
        "mean_ratio": statistics.fmean(ratios),
        "median_mode_tv": statistics.median(tvs),
        "mean_mode_tv": statistics.fmean(tvs),
        "mean_mode_tv_floor": statistics.fmean(r["mode_tv_floor"] for r in rows),
        "median_floor": statistics.median(r["floor"] for r in rows),
        "mean_wall_s": statistics.fmean(r["wall_s"] for r in rows),
        "problems": [
            {
                k: r[k]
                for k in ("seed", "sw", "floor", "ratio", "mode_tv", "mode_tv_floor", "wall_s")
            }
            for r in rows
        ],
    }


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def render_markdown(data: dict[str, Any]) -> str:
    """The Markdown report of a (merged) results dictionary."""
    settings = sorted(
        {tuple(map(int, k[1:].split("x"))) for m in data["results"].values() for k in m}
    )
    keys = [f"d{d}x{dy}" for d, dy in settings]
    methods = [m for m in METHODS if m in data["results"]]
    lines = [
        "# Gaussian-mixture benchmark (MCGdiff): samplers against the exact posterior",
        "",
        "Generated by `benchmarks/mixture_benchmark.py` (module docstring: protocol). Commands:",
        "",
    ]
    for m in methods:
        run = data["runs"][m]
        lines.append(f"- `{m}`: `{run['command']}` ({run['date']}, {run['wall_s'] / 60:.0f} min)")
    cfg = data["runs"][methods[0]]["config"] if methods else {}
    lines += [
        "",
        f"Per problem: SW distance ({cfg.get('directions')} directions) between "
        f"{cfg.get('samples')} samples and {cfg.get('samples')} exact posterior samples, "
        "divided by the exact-vs-exact noise floor (mean of "
        f"{cfg.get('floor_repeats')} pairs); mode TV = total variation between the fraction of "
        "samples nearest each prior mean and the posterior "
        "weights. Cells: **median** [mean] over the test problems (seeds "
        f"{cfg.get('test_seeds')}); 1.0 is a perfect sampler. Bold: lowest median per column.",
        "",
        "## SW / noise floor",
        "",
        "| method | " + " | ".join(f"d={d}, d_y={dy}" for d, dy in settings) + " |",
        "|---" * (len(settings) + 1) + "|",
    ]

    def best(key: str) -> float:
        """Lowest median ratio of a setting among the methods (the oracle excluded)."""
        vals = [
            data["results"][m][key]["median_ratio"]
            for m in methods
            if m != "oracle" and key in data["results"][m]
        ]
        return min(vals) if vals else math.nan

    for m in methods:
        cells = []
        for k in keys:
            r = data["results"][m].get(k)
            if r is None:
                cells.append("-")
                continue
            med = _fmt(r["median_ratio"])
            if m != "oracle" and r["median_ratio"] == best(k):
                med = f"**{med}**"
            cells.append(f"{med} [{_fmt(r['mean_ratio'])}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    floor_cells = []
    for k in keys:
        vals = [data["results"][m][k]["median_floor"] for m in methods if k in data["results"][m]]
        floor_cells.append(_fmt(vals[0]) if vals else "-")
    lines.append("| *(median floor, SW units)* | " + " | ".join(floor_cells) + " |")
    lines += [
        "",
        "## Mode-weight TV error",
        "",
        "| method | " + " | ".join(f"d={d}, d_y={dy}" for d, dy in settings) + " |",
        "|---" * (len(settings) + 1) + "|",
    ]
    for m in methods:
        cells = []
        for k in keys:
            r = data["results"][m].get(k)
            cells.append(
                "-" if r is None else f"{r['median_mode_tv']:.3f} [{r['mean_mode_tv']:.3f}]"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    tv_cells = []
    for k in keys:
        vals = [
            data["results"][m][k]["mean_mode_tv_floor"] for m in methods if k in data["results"][m]
        ]
        tv_cells.append(f"{vals[0]:.3f}" if vals else "-")
    lines.append("| *(exact samples, mean)* | " + " | ".join(tv_cells) + " |")
    lines += [
        "",
        "## Step parameters (tuned on validation problems)",
        "",
        "| method | parameter | default | d | value: median SW ratio (validation) | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        for d, tune in sorted(data["tuning"].get(m, {}).items(), key=lambda kv: int(kv[0])):
            grid = ", ".join(f"{float(v):.3g}: {_fmt(s)}" for v, s in tune["scores"].items())
            values = [float(v) for v in tune["scores"]]
            edge = " (grid edge)" if values and tune["chosen"] in (min(values), max(values)) else ""
            lines.append(
                f"| {m} | {tune['param']} | {tune['default']:.3g} | {d} | {grid or '(not tuned)'} "
                f"| **{tune['chosen']:.3g}**{edge} |"
            )
    lines += [
        "",
        "## Runs",
        "",
        "| method | steps | samples | mean wall time per problem (s) | threads x jobs | dtype |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        run = data["runs"][m]
        walls = [r["mean_wall_s"] for r in data["results"][m].values()]
        c = run["config"]
        lines.append(
            f"| {m} | {run['steps']} | {c['samples']} | {statistics.fmean(walls):.1f} | "
            f"{c['threads']} x {c['jobs']} | {c['dtype']} |"
        )
    lines += ["", "## Solver settings", ""]
    skip = {"seed", "max_batch", "noise_sigma"}
    for m in methods:
        st = data["runs"][m].get("solver_settings", {})
        text = ", ".join(f"{k}={v}" for k, v in st.items() if k not in skip)
        lines.append(f"- `{m}`: {text}")
    lines += ["", "## Machine", ""]
    for m in methods[:1]:
        for k, v in data["runs"][m]["machine"].items():
            lines.append(f"- {k}: {v}")
    if data.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main
def parse_settings(values: Iterable[str]) -> list[tuple[int, int]]:
    """``8x1 80x4`` -> ``[(8, 1), (80, 4)]``."""
    out = []
    for v in values:
        d, _, dy = v.lower().partition("x")
        out.append((int(d), int(dy)))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``mixture_benchmark{,_quick}.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 problem, 200 samples, 1/10 steps, small grids"
    )
    parser.add_argument("--settings", nargs="+", default=None, help="e.g. 8x1 80x4 (default all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=None, help="steps of every method")
    parser.add_argument("--steps-scale", type=float, default=None, help="x each method's steps")
    parser.add_argument("--problems", type=int, default=None, help="test seeds 0..N-1 (10)")
    parser.add_argument("--val-problems", type=int, default=1, help="validation seeds per d_y")
    parser.add_argument("--samples", type=int, default=None, help="samples per problem (2000)")
    parser.add_argument("--tune-samples", type=int, default=None, help="samples in tuning (500)")
    parser.add_argument("--directions", type=int, default=256)
    parser.add_argument("--floor-repeats", type=int, default=None, help="floor pairs (16)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--no-tune", action="store_true", help="use each method's default step")
    parser.add_argument("--reuse-tuning", action="store_true", help="chosen values of the JSON")
    parser.add_argument("--fresh", action="store_true", help="do not merge with existing results")
    parser.add_argument("--out", default="benchmarks/results/")
    args = parser.parse_args(argv)

    quick = args.quick
    n = args.samples or (200 if quick else 2000)
    n_tune = args.tune_samples or (200 if quick else 500)
    problems = args.problems or (1 if quick else 10)
    repeats = args.floor_repeats or (4 if quick else 16)
    steps_scale = args.steps_scale or (0.1 if quick else 1.0)
    settings = parse_settings(args.settings) if args.settings else list(SETTINGS)
    dims = sorted({d for d, _ in settings})
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    command = "python benchmarks/mixture_benchmark.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    machine = machine_info()
    fast_err = check_fast_prior()
    print(f"fast mixture noise predictor checked (max difference {fast_err:.1e})", flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "mixture_benchmark_quick" if quick else "mixture_benchmark"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    data: dict[str, Any] = {"results": {}, "tuning": {}, "runs": {}, "notes": []}
    if json_path.exists() and not args.fresh:
        data = json.loads(json_path.read_text())

    defaults = {m: method_defaults(m) for m in args.methods}

    def steps_of(method: str) -> int | None:
        if args.steps:
            return args.steps
        if steps_scale != 1.0:
            return max(10, round(defaults[method][1] * steps_scale))
        return None

    common = {"directions": args.directions, "threads": args.threads, "dtype": args.dtype}
    test_problems = [(d, dy, s) for d, dy in settings for s in range(problems)]
    val_problems = {
        d: [
            (d, dy, VALIDATION_SEED + k)
            for dd, dy in settings
            if dd == d
            for k in range(args.val_problems)
        ]
        for d in dims
    }
    factors = dict(FACTORS)
    if quick:  # the three grid values nearest the default, on one validation problem per d
        factors = {
            m: tuple(sorted(sorted(f, key=lambda v: abs(math.log(v)))[:3]))
            for m, f in FACTORS.items()
        }
        val_problems = {d: v[:1] for d, v in val_problems.items()}
    tuned = [
        m for m in args.methods if m in PARAM and defaults[m][0] is not None and not args.no_tune
    ]
    if args.reuse_tuning:
        tuned = [m for m in tuned if any(str(d) not in data["tuning"].get(m, {}) for d in dims)]

    # floors, once per problem and sample size
    floor_jobs = [
        {**common, "d": d, "d_y": dy, "seed": s, "n": n, "repeats": repeats}
        for d, dy, s in test_problems
    ]
    if tuned:
        floor_jobs += [
            {**common, "d": dd, "d_y": dy, "seed": s, "n": n_tune, "repeats": repeats}
            for d in dims
            for dd, dy, s in val_problems[d]
        ]
    floors = {
        (r["d"], r["d_y"], r["seed"], r["n"]): r["floor"]
        for r in run_all(floor_task, floor_jobs, args.jobs, "floor", t0)
    }

    # tuning on validation problems
    tuning_rows: dict[str, list[dict[str, Any]]] = {}
    tasks = []
    for m in tuned:
        for d in dims:
            for f in factors[m]:
                for _, dy, s in val_problems[d]:
                    tasks.append(
                        {
                            **common,
                            "method": m,
                            "d": d,
                            "d_y": dy,
                            "seed": s,
                            "n": n_tune,
                            "value": defaults[m][0] * f,
                            "steps": steps_of(m),
                            "floor": floors[(d, dy, s, n_tune)],
                        }
                    )
    for r in run_all(sample_task, tasks, args.jobs, "tune", t0):
        tuning_rows.setdefault(r["method"], []).append(r)
    chosen: dict[tuple[str, int], float | None] = {}
    for m in args.methods:
        if m not in PARAM or defaults[m][0] is None:
            chosen.update({(m, d): None for d in dims})
            data["tuning"].pop(m, None)
            continue
        data["tuning"].setdefault(m, {})
        for d in dims:
            if m in tuned:
                scores: dict[str, float] = {}
                tvs: dict[str, float] = {}
                for f in factors[m]:
                    v = defaults[m][0] * f
                    rows = [r for r in tuning_rows[m] if r["d"] == d and r["value"] == v]
                    scores[repr(v)] = statistics.median(r["ratio"] for r in rows)
                    tvs[repr(v)] = statistics.fmean(r["mode_tv"] for r in rows)
                best = min(scores, key=lambda k: (scores[k], tvs[k]))
                chosen[(m, d)] = float(best)
                data["tuning"][m][str(d)] = {
                    "param": PARAM[m],
                    "default": defaults[m][0],
                    "scores": scores,
                    "mode_tv": tvs,
                    "chosen": float(best),
                    "validation": [list(p) for p in val_problems[d]],
                    "samples": n_tune,
                }
            elif args.reuse_tuning and str(d) in data["tuning"].get(m, {}):
                chosen[(m, d)] = float(data["tuning"][m][str(d)]["chosen"])
            else:
                chosen[(m, d)] = defaults[m][0]
                data["tuning"][m][str(d)] = {
                    "param": PARAM[m],
                    "default": defaults[m][0],
                    "scores": {},
                    "chosen": defaults[m][0],
                }
    if tasks:  # checkpoint: a later run can resume from here with --reuse-tuning
        json_path.write_text(json.dumps(data, indent=1) + "\n")
    # test problems
    tasks = [
        {
            **common,
            "method": m,
            "d": d,
            "d_y": dy,
            "seed": s,
            "n": n,
            "value": chosen[(m, d)],
            "steps": steps_of(m),
            "floor": floors[(d, dy, s, n)],
        }
        for m in args.methods
        for d, dy, s in test_problems
    ]
    rows = run_all(sample_task, tasks, args.jobs, "test", t0)
    wall = time.perf_counter() - t0
    for m in args.methods:
        res = data["results"].setdefault(m, {})
        for d, dy in settings:
            mine = [r for r in rows if r["method"] == m and r["d"] == d and r["d_y"] == dy]
            res[f"d{d}x{dy}"] = {**summarise(mine), "value": chosen[(m, d)]}
        data["runs"][m] = {
            "command": command,
            "date": machine["date"],
            "wall_s": wall,
            "steps": steps_of(m) or defaults[m][1],
            "machine": machine,
            "solver_settings": defaults[m][2],
            "config": {
                "samples": n,
                "tune_samples": n_tune,
                "directions": args.directions,
                "floor_repeats": repeats,
                "test_seeds": f"0..{problems - 1}",
                "validation_seeds_per_d_y": args.val_problems,
                "dtype": args.dtype,
                "threads": args.threads,
                "jobs": args.jobs,
            },
        }
    data["notes"] = NOTES
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(render_markdown(data))
    print(f"wrote {json_path} and {md_path} in {wall / 60:.1f} min", flush=True)
    return data


NOTES = [
    "Exact prior scores for every method; the unit-covariance mixture's noise predictor is "
    "evaluated in one GEMM in float64 (IsotropicMixturePrior, checked against the generic "
    "implementation at start-up); everything else runs in the listed dtype.",
    "Batched runs: y is repeated n / particles times; particles interact only within their "
    "measurement (DWGF groups particles per measurement); Adam's epsilon is divided by the "
    "number of measurements for the element-mean data term, so batches equal separate runs.",
    "Step parameters are tuned per d on validation seeds (1000..), never on the test seeds, "
    "with 500 samples; '(grid edge)' marks a choice at the end of its grid (the optimum may lie "
    "beyond it). DWGF's SMC default preset has no learning rate and is run as shipped.",
    "pigdm runs the paper's 100 steps; pigdm-1000 the same sampler with 1000 steps (the step "
    "count of DPS, RED-diff and the reference DWGF): on the low-noise problems of this benchmark "
    "(sigma down to ~1e-2 of the largest singular value) 100 steps are far from converged.",
    "The noise floor of one pair of exact sample sets fluctuates by a factor of about 4 on "
    "multimodal posteriors (multinomial mode counts): per-problem ratios are noisy, read medians.",
]


if __name__ == "__main__":
    main()
