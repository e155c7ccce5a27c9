"""Tables and figures from the records of the imaging benchmark.

:func:`aggregate` averages the records of :func:`~dwgf_sci.benchmark.imaging.run_benchmark` per
task and method; :func:`overview_markdown` and :func:`summary_markdown` write the committed
tables and :func:`plot_results` the figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..metrics import coverage_reference

__all__ = ["aggregate", "overview_markdown", "plot_results", "summary_markdown"]


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def aggregate(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Means over problems per (task, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        calls: dict[str, float] = {}
        for r in rs:
            for k, v in r["calls"].items():
                calls[k] = calls.get(k, 0) + v / len(rs)
        out[key] = {
            "n": len(rs),
            "psnr": _mean(r["psnr"] for r in rs),
            "ssim": _mean(r["ssim"] for r in rs),
            "chi2": _mean(r["chi2"] for r in rs),
            "coverage90": _mean(r["coverage90"] for r in rs),
            "wall_s": _mean(r["wall_s"] for r in rs),
            "peak_mib": _mean(r["peak_mib"] for r in rs),
            "unet": calls.get("unet", 0) + calls.get("unet_backward", 0),
            "vae": sum(v for k, v in calls.items() if k.startswith(("encoder", "decoder"))),
        }
    return out


def overview_markdown(records: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """Markdown matrix of mean PSNR (dB): one row per method, one column per task.

    The best value of each column is in bold; ``-`` marks a method that does not apply to the
    task (or was not run).

    :param records: records of :func:`run_benchmark` (or :func:`run_one`).
    :param tasks: task names, in column order; tasks without records are skipped.
    :return: the Markdown text.
    """
    agg = aggregate(records)
    tasks = [t for t in tasks if any(k[0] == t for k in agg)]
    order = {m: i for i, m in enumerate(_LATENT_FIRST)}
    methods = sorted({m for _, m in agg}, key=lambda m: (order.get(m, len(order)), m))
    best = {
        t: max((v["psnr"] for (tt, _), v in agg.items() if tt == t and v["psnr"] is not None),
               default=None)
        for t in tasks
    }  # fmt: skip
    lines = [
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for m in methods:
        cells = []
        for t in tasks:
            v = agg.get((t, m), {}).get("psnr")
            cell = _fmt(v, ".2f")
            cells.append(f"**{cell}**" if v is not None and v == best[t] else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Row order of :func:`overview_markdown`: these first, then the rest alphabetically.
_LATENT_FIRST = ("dwgf", "dwgf-fast", "dwgf-reference", "dps", "psld", "resample", "reddiff")


def summary_markdown(records: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """Markdown summary: one table per task, methods sorted by decreasing mean PSNR.

    Each row gives the number of problems and the means over them of PSNR (dB), SSIM, reduced
    chi-square, 90% coverage, UNet calls (forward plus backward), VAE calls (encoder plus
    decoder), wall time (s) and peak memory (MiB); a missing value prints as ``-``. Under a
    table with samplers, the coverage that exact posterior samples would reach with the same
    number of samples (:func:`~dwgf_sci.metrics.coverage_reference`).

    :param records: records of :func:`run_benchmark` (or :func:`run_one`).
    :param tasks: task names, in the order of the tables; tasks without records are skipped.
    :return: the Markdown text.
    """
    agg = aggregate(records)
    lines = []
    for task in tasks:
        rows = sorted(
            ((m, v) for (t, m), v in agg.items() if t == task),
            key=lambda mv: -(mv[1]["psnr"] or -math.inf),
        )
        if not rows:
            continue
        lines += [
            f"### {task}",
            "",
            "| method | n | PSNR (dB) | SSIM | reduced chi2 | 90% coverage | UNet calls "
            "| VAE calls | wall (s) | peak mem (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m, v in rows:
            lines.append(
                f"| {m} | {v['n']} | {_fmt(v['psnr'], '.2f')} | {_fmt(v['ssim'], '.3f')} "
                f"| {_fmt(v['chi2'], '.2f')} | {_fmt(v['coverage90'], '.2f')} "
                f"| {v['unet']:.0f} | {v['vae']:.0f} | {_fmt(v['wall_s'], '.2f')} "
                f"| {_fmt(v['peak_mib'], '.0f')} |"
            )
        sizes = sorted(
            {r["n_samples"] for r in records if r["task"] == task and r["coverage90"] is not None}
        )
        if sizes:
            refs = ", ".join(f"{coverage_reference(n):.2f} with {n} samples" for n in sizes)
            lines += [
                "",
                f"90% coverage that exact samples of a Gaussian posterior would reach: {refs} "
                "(`dwgf_sci.metrics.coverage_reference`; the interval between the samples' "
                "empirical quantiles is narrower than the posterior's).",
            ]
        lines.append("")
    return "\n".join(lines)


def plot_results(records: Sequence[dict[str, Any]], images_path: str | Path, out: str | Path):
    """Write the benchmark figures.

    ``quality_vs_time.png`` has one panel per task with each method's mean PSNR (dB) against its
    mean wall time per image (s, log scale). ``examples_<task>.png`` shows, for the first problem
    of each task saved in ``images_path``, the truth and every method's posterior mean (first
    channel).

    :param records: records of :func:`run_benchmark`.
    :param images_path: ``images.pt`` written by :func:`run_benchmark`; if it does not exist only
        the first figure is made.
    :param out: existing folder the PNG files are written to.
    :return: the paths of the files written (a list of :class:`~pathlib.Path`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_panel

    folder = Path(out)
    agg = aggregate(records)
    tasks = sorted({t for t, _ in agg})
    cols = min(4, len(tasks)) or 1
    rows = math.ceil(len(tasks) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    palette = plt.get_cmap("tab20").colors
    colour = {m: palette[i % len(palette)] for i, m in enumerate(sorted({m for _, m in agg}))}
    for ax, task in zip(axes.flat, tasks, strict=False):
        for (t, m), v in sorted(agg.items()):
            if t == task and v["psnr"] is not None and v["wall_s"] is not None:
                ax.scatter(v["wall_s"], v["psnr"], label=m, color=colour[m])  # same in every panel
                ax.annotate(m, (v["wall_s"], v["psnr"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("wall time per image (s)")
        ax.set_ylabel("PSNR (dB)")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    paths = [folder / "quality_vs_time.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    images = torch.load(images_path, weights_only=True) if Path(images_path).exists() else {}
    for task in tasks:
        keys = [k for k in images if k.startswith(f"{task}/0/") and not k.endswith("/y")]
        if not keys:
            continue
        truth_key = f"{task}/0/truth"
        order = [truth_key] + sorted(k for k in keys if k != truth_key)
        panels = {k.split("/")[-1]: images[k][0, 0] for k in order}
        path = folder / f"examples_{task}.png"
        image_panel(panels, path, title=task)
        paths.append(path)
    return paths
