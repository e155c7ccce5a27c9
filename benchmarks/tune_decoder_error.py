r"""Choose DWGF's model of the decoder's error on VALIDATION problems of the imaging benchmark.

DWGF ends with an image-space step that models the autoencoder's error :math:`e = x - D(z)`
(``decoder_error``, :class:`dwgf_sci.solvers.dwgf.refine.DecoderErrorStep`). This script runs the
default preset once per validation problem (data seed 1001, never the test problems), keeps
its final particles and redoes only that last step with each candidate error model:

- ``off``: no image-space step (the decoded particles);
- ``white``: one :math:`\sigma_D` (the prior's ``decoder_sigma``) at every pixel;
- ``table-VxG``: the per-pixel :class:`~dwgf_sci.priors.DecoderErrorModel` with ``V`` value bins
  and ``G`` gradient bins, fitted here on the prior's 200 held-out images (the last 200 of
  4200 images of data seed 0, as ``benchmarks/decoder_sigma.py``); ``table-32x8`` is the
  shipped one (``decoder_error="auto"``); ``-cg20`` doubles the step's CG iterations.

Scores: PSNR and reduced chi2 of the posterior mean (the average of the particles' conditional
means), 90% coverage of the samples. One line per (task, index) in ``--out``/``runs.jsonl``
(resumable); ``summary.md`` is rebuilt from all lines. Usage (one process per task)::

    python benchmarks/tune_decoder_error.py --tasks galaxy-deconv --n 4
    python benchmarks/tune_decoder_error.py --tasks ct-20 --n 4
    python benchmarks/tune_decoder_error.py --tasks galaxy-deconv-poisson galaxy-cs-fourier \
        galaxy-inpaint --n 2
    python benchmarks/tune_decoder_error.py --tasks ct-60 ct-limited-90 galaxy-cs-random --n 2

(run on 2026-12-02 with the default preset's ``refine_cg_steps=10`` of that day). The shipped
32 x 8 table beat ``white`` on every task, by +0.5 (random sensing) to +5.5 dB (galaxy
deconvolution); the finer 64 x 8 table did about as well, the value-only and gradient-only
tables worse on most tasks. Twenty CG iterations added +1.0 to +1.2 dB on the two
compressed-sensing tasks and at most 0.2 dB elsewhere, so the default preset now uses 20.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from dwgf_sci.benchmark.imaging import machine_info, make_method, reduced_chi2
from dwgf_sci.benchmark.tasks import TASKS
from dwgf_sci.io.atomic import atomic_output
from dwgf_sci.metrics import coverage, psnr
from dwgf_sci.priors import load_prior
from dwgf_sci.training.data import _generate
from dwgf_sci.training.evaluate import decoder_error_model

OUT = Path(__file__).parent / "results" / "tune_decoder_error"
#: Candidate tables: name -> (value bins, gradient bins).
TABLES = {"16x8": (16, 8), "32x4": (32, 4), "32x1": (32, 1), "1x8": (1, 8), "64x8": (64, 8)}


def candidates(prior: Any, dataset: str) -> dict[str, dict[str, Any]]:
    """Each candidate as ``decoder_error``, error model and CG iterations."""
    held_out = _generate(dataset, 4200, 64, 0)[-200:]
    shipped = prior.decoder_error_model
    out: dict[str, dict[str, Any]] = {
        "off": {"decoder_error": 0.0, "model": None},
        "white": {"decoder_error": "white", "model": None},
        "table-32x8": {"decoder_error": "auto", "model": shipped},
        "table-32x8-cg20": {"decoder_error": "auto", "model": shipped, "cg": 20},
    }
    for name, (v, g) in TABLES.items():
        fitted = decoder_error_model(prior, held_out, value_bins=v, gradient_bins=g)
        out[f"table-{name}"] = {"decoder_error": "auto", "model": fitted}
    return out


def score(solver: Any, captured: dict[str, Any], item: Any, cand: dict[str, Any]) -> dict:
    """Redo the image-space step with one candidate and score it."""
    x, state, problem = captured["args"]
    prior = solver.prior
    saved = (solver.config, prior.decoder_error_model)
    prior.decoder_error_model = cand["model"]
    # setting options rebuilds the solver's decoder-error step from the new configuration
    solver.config = solver.config.with_options(
        decoder_error=cand["decoder_error"], refine_cg_steps=cand.get("cg", solver.refine_cg_steps)
    )
    try:
        samples, means = solver.errors(x, state, problem)
    finally:
        solver.config, prior.decoder_error_model = saved
    mean = (samples if means is None else means).mean(0, keepdim=True)
    return {
        "psnr": float(psnr(mean, item.x).mean()),
        "chi2": reduced_chi2(mean, item),
        "coverage90": coverage(samples, item.x, 0.9),
    }


def summary(records: list[dict[str, Any]]) -> str:
    """Mean PSNR, chi2 and coverage per task and candidate, with the paired gap to ``white``."""
    rows: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    white: dict[tuple[str, int], float] = {}
    for r in records:
        for name, s in r["scores"].items():
            rows[(r["task"], name)].append({**s, "index": r["index"]})
        white[(r["task"], r["index"])] = r["scores"]["white"]["psnr"]
    lines = [
        "| task | error model | n | PSNR (dB) | vs white (paired, dB) | chi2 | coverage 90% |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (task, name), ss in sorted(rows.items()):
        gap = statistics.mean(s["psnr"] - white[(task, s["index"])] for s in ss)
        lines.append(
            f"| {task} | {name} | {len(ss)} | {statistics.mean(s['psnr'] for s in ss):.2f} "
            f"| {gap:+.2f} | {statistics.mean(s['chi2'] for s in ss):.2f} "
            f"| {statistics.mean(s['coverage90'] for s in ss):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["galaxy-deconv", "ct-20"], choices=TASKS)
    parser.add_argument("--n", type=int, default=4, help="validation problems per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs.jsonl"
    load = [json.loads(ln) for ln in runs.read_text().splitlines()] if runs.exists() else []
    done = {(r["task"], r["index"]) for r in load}
    for name in args.tasks:
        task = TASKS[name]
        prior = load_prior(task.prior)
        cands = candidates(prior, task.dataset)
        poisson = task.spec().get("noise", {}).get("type", "").startswith("poisson")
        for item in task.items("validation", args.n):
            if (name, item.index) in done:
                continue
            solver = make_method("dwgf", prior, **({"data_term": "poisson"} if poisson else {}))
            captured: dict[str, Any] = {}
            step = solver.errors  # the final decoder-error step

            def keep(x: Any, state: Any, problem: Any, _f: Any = step, _c: Any = captured) -> Any:
                _c["args"] = (x, state, problem)
                return _f(x, state, problem)

            solver.errors = keep  # the run itself is the default preset's, unchanged
            solver(item.y, item.physics)
            scores = {c: score(solver, captured, item, spec) for c, spec in cands.items()}
            rec = {"task": name, "index": item.index, "scores": scores}
            with runs.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(name, item.index, {c: round(s["psnr"], 2) for c, s in scores.items()}, flush=True)
    records = [json.loads(ln) for ln in runs.read_text().splitlines()]
    info = machine_info()
    text = (
        "# DWGF decoder-error models on validation problems\n\n"
        "Commands: the docstring of `benchmarks/tune_decoder_error.py`; one line per problem "
        f"in `runs.jsonl`. Last run on {info['platform']}, torch {info['torch']}. The chain "
        "is the default preset's, run once per problem; only the final image-space step "
        "changes between rows.\n\n" + summary(records)
    )
    with atomic_output(args.out / "summary.md", overwrite=True) as tmp:
        Path(tmp).write_text(text)


if __name__ == "__main__":
    main()
