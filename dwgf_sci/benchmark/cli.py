"""``dwgf-sci benchmark``: every method on the imaging tasks, with a table, JSON and plots."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.atomic import atomic_output
from .imaging import METHODS

#: Methods run when --methods is not given.
DEFAULT_METHODS = (
    "dwgf",
    "dps",
    "psld",
    "resample",
    "reddiff",
    "pinv",
    "wiener",
    "richardson-lucy",
    "fbp",
    "tv",
)
#: --quick: one problem of two tasks, few steps (a smoke test of the whole pipeline).
QUICK = {"tasks": ("galaxy-deconv", "ct-20"), "n": 1, "steps": 10}


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``dwgf-sci benchmark``."""
    from .tasks import TASKS

    p.description = (
        "Run reconstruction methods on the benchmark tasks (same priors, same measurements) and "
        "write OUT/results.json, OUT/results.md and plots. An interrupted run resumes: problems "
        "already in OUT/results.json are skipped. Tasks: "
        + "; ".join(f"{t.name} ({t.description})" for t in TASKS.values())
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help="default: all but the 256 px ones (field-256, ct-256-20: by patches, minutes each)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help=f"from {', '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--n", type=int, default=4, help="problems per task (default: 4)")
    p.add_argument("--split", default="test", choices=("validation", "test"))
    p.add_argument(
        "--steps", type=int, default=None, help="steps of every latent method (default: each one's)"
    )
    p.add_argument(
        "--particles",
        type=int,
        default=4,
        help="posterior samples per problem of the samplers (default: 4)",
    )
    p.add_argument(
        "--params",
        default=None,
        metavar="FILE.json",
        help='per-method settings, e.g. {"dps": {"zeta": 0.3}} (tuned values)',
    )
    p.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="use FOLDER for the prior a task names (e.g. galaxy-64=./my-prior; repeatable)",
    )
    p.add_argument("--quick", action="store_true", help="2 tasks, 1 problem, 10 steps (smoke test)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _method_params(args: argparse.Namespace, methods: list[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    if args.params:
        try:
            loaded = json.loads(Path(args.params).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read --params {args.params}: {err}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ConfigError("--params must hold a JSON object of objects: {method: {key: value}}")
        params = {k: dict(v) for k, v in loaded.items()}
    for m in methods:
        if METHODS[m].latent:
            p = params.setdefault(m, {})
            if args.steps is not None:
                p.setdefault("steps", args.steps)
            if m != "reddiff":  # RED-diff is a point estimate (one particle, as its paper)
                p.setdefault("particles", args.particles)
    return params


def run_benchmark_cli(args: argparse.Namespace) -> int:
    """Run ``dwgf-sci benchmark`` (see :func:`add_benchmark_arguments`)."""
    import torch

    from ..priors import load_prior
    from ..priors.patches import as_patch_prior
    from .imaging import plot_results, run_benchmark, summary_markdown
    from .tasks import get_task

    if args.quick:
        args.n = QUICK["n"]
        args.steps = args.steps or QUICK["steps"]
        args.tasks = args.tasks or list(QUICK["tasks"])
    if args.n < 1 or args.particles < 1:
        raise ConfigError(f"--n and --particles must be >= 1, found {args.n}, {args.particles}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tasks = [get_task(t) for t in (args.tasks or _all_tasks())]
    methods = list(args.methods or DEFAULT_METHODS)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    folders = {}
    for entry in args.prior:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--prior expects NAME=FOLDER, found {entry!r}")
        folders[name] = folder
    cache: dict[str, Any] = {}

    def priors(name: str):
        if name not in cache:
            # a prior trained on crops is applied by patches (unchanged on its own size)
            cache[name] = as_patch_prior(load_prior(folders.get(name, name), device=args.device))
        return cache[name]

    for task in tasks:  # load every prior before any work: a missing one fails now
        if any(METHODS[m].latent for m in methods):
            priors(task.prior)
    params = _method_params(args, methods)
    start = time.perf_counter()
    records = run_benchmark(
        tasks, methods, priors, args.out, split=args.split, n=args.n, params=params
    )
    out = Path(args.out)
    table = summary_markdown(records, [t.name for t in tasks])
    header = (
        f"# dwgf-sci benchmark ({args.split} split)\n\n"
        f"Command: `dwgf-sci {' '.join(sys.argv[1:])}`. Means over the "
        "problems of each task; PSNR/SSIM of the posterior mean on the truth's range; reduced "
        "chi2 of the mean's data fit; coverage of the per-pixel 90% interval (samplers); network "
        "calls per image (forward + backward).\n\n"
    )
    with atomic_output(out / "results.md", overwrite=True) as tmp:
        Path(tmp).write_text(header + table)
    plot_results(records, out / "images.pt", out)
    print(table)
    took = time.perf_counter() - start
    print(f"wrote {out / 'results.md'}, results.json and plots in {took:.0f} s")
    return 0


def _all_tasks() -> list[str]:
    """The default tasks: every task but the wide ones (those run when named)."""
    from .tasks import TASKS, WIDE_TASKS

    return [name for name in TASKS if name not in WIDE_TASKS]
