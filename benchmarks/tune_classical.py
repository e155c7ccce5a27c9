"""Tune the classical baselines' regularisation on the validation split.

Richardson-Lucy's iteration count (its only regularisation) on ``galaxy-deconv`` and the TV
weight on ``ct-20``, each by mean PSNR over 6 validation problems (data seed 1001; the test split
is never used). Writes ``benchmarks/results/tune_classical.md`` and
``benchmarks/params/classical.json`` (pass it to ``dwgf-sci benchmark --params``). The search
is :func:`dwgf_sci.benchmark.tuning.tune_method` on a fixed grid, the same tuning code as
``imaging_benchmark.py`` (which walks a log grid instead)::

    python benchmarks/tune_classical.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dwgf_sci.benchmark.tasks import get_task
from dwgf_sci.benchmark.tuning import tune_method

HERE = Path(__file__).parent
GRIDS = {
    ("galaxy-deconv", "richardson-lucy", "iterations"): [10, 20, 30, 50, 100, 200, 300, 500, 1000],
    ("ct-20", "tv", "lam"): [0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
}
N_VALIDATION = 6


def main() -> None:
    torch.set_num_threads(1)
    lines = [
        "# Classical baselines tuned on the validation split",
        "",
        f"Made by `python benchmarks/tune_classical.py`: mean PSNR over {N_VALIDATION} "
        "validation problems per value.",
        "",
        "| task | method | parameter | value | PSNR (dB) |",
        "|---|---|---|---|---|",
    ]
    best: dict[str, dict[str, float]] = {}
    for (task, method, key), grid in GRIDS.items():
        items = list(get_task(task).items("validation", N_VALIDATION))
        print(f"{task} {method} {key}:", flush=True)
        found = tune_method(method, key, grid, items, None, log=lambda m: print(m, flush=True))
        top, scores = found.best, found.scores
        best[method] = {key: top}
        for value, score in scores.items():
            mark = " (chosen)" if value == top else ""
            lines.append(f"| {task} | {method} | {key} | {value}{mark} | {score:.2f} |")
    (HERE / "results" / "tune_classical.md").write_text("\n".join(lines) + "\n")
    (HERE / "params").mkdir(exist_ok=True)
    (HERE / "params" / "classical.json").write_text(json.dumps(best, indent=2) + "\n")


if __name__ == "__main__":
    main()
