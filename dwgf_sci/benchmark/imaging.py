"""The imaging benchmark: every method on every task of :mod:`dwgf_sci.benchmark.tasks`.

:func:`run_benchmark` reconstructs the problems of a split with each method, on the same priors
and measurements, and records per problem: PSNR and SSIM of the posterior mean (on the truth's
data range), the reduced chi-square of the data fit of the mean (noise variance from the physics:
Gaussian :math:`\\sigma^2`, Poisson :math:`g(Ax + b)`), the coverage of the per-pixel 90%
credible interval (samplers with at least two samples), network calls (UNet, VAE encoder and
decoder, forward and backward), wall time and peak memory. Records are appended to a JSON file
as they are made, so an interrupted run resumes where it stopped. :func:`summary_markdown` and
:func:`plot_results` turn the records into the committed table and figures.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the largest increase of
the process's resident memory during the reconstruction, sampled every 5 ms (an estimate: memory
freed and reused inside the run is not counted twice).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from deepinv.models import Reconstructor
from torch import Tensor

from ..errors import ConfigError
from ..io.atomic import atomic_output
from ..metrics import coverage, coverage_reference, psnr, ssim
from ..priors.base import LatentPrior
from ..solvers import (
    DWGF,
    FBP,
    PSLD,
    LatentDPS,
    PseudoInverse,
    REDDiff,
    ReSample,
    RichardsonLucy,
    TVReconstruction,
    Wiener,
)
from ..solvers.likelihood import DataTerm
from .tasks import Task, TaskItem

__all__ = [
    "METHODS",
    "Method",
    "make_method",
    "plot_results",
    "run_benchmark",
    "run_one",
    "overview_markdown",
    "summary_markdown",
]


@dataclass(frozen=True)
class Method:
    """A benchmark method: how to build it and which operators it applies to.

    :param name: method name.
    :param build: ``build(prior, **params)`` returns a deepinv ``Reconstructor`` whose output is a
        :class:`~dwgf_sci.solvers.Posterior`.
    :param latent: uses the latent prior (else a classical method).
    :param operators: operator types it applies to (``None``: all).
    """

    name: str
    build: Callable[..., Reconstructor]
    latent: bool = True
    operators: tuple[str, ...] | None = None


def _gaussian_or_poisson(task_spec: dict[str, Any]) -> str:
    noise = (task_spec.get("noise") or {}).get("type", "none")
    return "poisson" if noise.startswith("poisson") else "gaussian"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("dwgf", lambda prior, **kw: DWGF(prior, **kw)),
        Method("dwgf-fast", lambda prior, **kw: DWGF(prior, preset="fast", **kw)),
        Method("dwgf-reference", lambda prior, **kw: DWGF(prior, preset="reference", **kw)),
        Method("dps", lambda prior, **kw: LatentDPS(prior, **kw)),
        Method("psld", lambda prior, **kw: PSLD(prior, **kw)),
        Method("resample", lambda prior, **kw: ReSample(prior, **kw)),
        Method("reddiff", lambda prior, **kw: REDDiff(prior, **kw)),
        Method("pinv", lambda prior, **kw: PseudoInverse(**kw), latent=False),
        Method("wiener", lambda prior, **kw: Wiener(**kw), False, ("psf",)),
        Method("richardson-lucy", lambda prior, **kw: RichardsonLucy(**kw), False, ("psf",)),
        Method("fbp", lambda prior, **kw: FBP(**kw), False, ("ct",)),
        Method("tv", lambda prior, **kw: TVReconstruction(**kw), latent=False),
    )
}


def make_method(name: str, prior: LatentPrior | None, **params: Any) -> Reconstructor:
    """Build the benchmark method ``name`` from :data:`METHODS`.

    :param name: method name, a key of :data:`METHODS` (e.g. ``"dwgf"``, ``"wiener"``).
    :param prior: the latent prior of a latent method; classical methods ignore it (pass None).
    :param params: keyword settings forwarded to the method's constructor.
    :return: the deepinv ``Reconstructor``; calling it on ``(y, physics)`` gives a
        :class:`~dwgf_sci.solvers.Posterior`.
    :raises ConfigError: for an unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name].build(prior, **params)


def applies(name: str, task: Task) -> bool:
    """Whether method ``name`` can run on ``task``'s operator."""
    ops = METHODS[name].operators
    return ops is None or task.spec()["type"] in ops


# ------------------------------------------------------------------------------ measurement
class PeakMemory:
    """Peak memory of a block in MiB (see the module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _watch(self, start: int) -> None:
        peak = start
        while not self._stop.wait(0.005):
            peak = max(peak, self._rss())
        self.peak_mib = max(peak, self._rss()) / 2**20 - start / 2**20

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._thread = threading.Thread(target=self._watch, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def reduced_chi2(x: Tensor, item: TaskItem) -> float:
    """Reduced chi-square of the data fit of ``x`` (noise variance from the item's physics)."""
    term = DataTerm(_gaussian_or_poisson(item.spec)).resolve(item.physics)
    with torch.no_grad():
        ax = item.physics.A(x.to(item.y.dtype))
    return float(term.reduced_chi2(ax, item.y).mean())


def run_one(
    item: TaskItem, method: str, prior: LatentPrior | None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Reconstruct one problem with one method and score the posterior mean.

    For latent methods other than ``dwgf-reference`` on a Poisson task, ``data_term="poisson"`` is
    added to ``params`` unless set. The prior's network-call counters are reset before the run;
    wall time and peak memory cover the reconstruction only.

    :param item: the problem (truth, measurement and physics), from :meth:`Task.items`.
    :param method: method name, a key of :data:`METHODS`.
    :param prior: the latent prior, or None for a classical method.
    :param params: keyword settings of the method (copied, not modified).
    :return: the record stored by :func:`run_benchmark`: ``task``, ``split``, ``index``,
        ``method``, ``params``, ``psnr`` (dB) and ``ssim`` of the mean on the truth's data range,
        ``chi2`` (reduced chi-square of the data fit), ``coverage90`` (None with fewer than two
        samples), ``wall_s`` (seconds), ``peak_mib`` (MiB), ``calls``, ``n_samples``, plus the
        private ``_mean`` (the detached posterior mean, ``(1, C, H, W)``) that the caller pops.
    :raises ConfigError: for an unknown method.
    """
    params = dict(params or {})
    poisson = _gaussian_or_poisson(item.spec) == "poisson"
    if METHODS[method].latent and method != "dwgf-reference" and poisson:
        params.setdefault("data_term", "poisson")  # the reference keeps its mean-squared term
    solver = make_method(method, prior, **params)
    if prior is not None:
        prior.reset_calls()
    device = item.y.device
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        post = solver(item.y, item.physics)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    mean = post.as_tensor()  # every method returns a Posterior
    record: dict[str, Any] = {
        "task": item.task,
        "split": item.split,
        "index": item.index,
        "method": method,
        "params": params,
        "psnr": float(psnr(mean, item.x).mean()),
        "ssim": float(ssim(mean, item.x).mean()),
        "chi2": reduced_chi2(mean, item),
        "coverage90": None,
        "wall_s": wall,
        "peak_mib": mem.peak_mib,
        "calls": dict(post.calls),
        "n_samples": post.n_samples,
    }
    if post.n_samples >= 2:
        record["coverage90"] = coverage(post.samples, item.x, 0.9)
    record["_mean"] = mean.detach()
    return record


def _key(r: dict[str, Any]) -> tuple[str, str, str, int]:
    return (r["task"], r["method"], r["split"], int(r["index"]))


def machine_info() -> dict[str, Any]:
    """Machine and library versions, for the results file."""
    import deepinv

    from .._version import __version__

    info = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepinv": deepinv.__version__,
        "dwgf_sci": __version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def run_benchmark(
    tasks: Sequence[Task],
    methods: Sequence[str],
    priors: Callable[[str], LatentPrior],
    out: str | Path,
    *,
    split: str = "test",
    n: int = 4,
    params: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = print,
    keep_images: int = 1,
) -> list[dict[str, Any]]:
    """Run ``methods`` on ``n`` problems of each task; records go to ``out/results.json``.

    :param priors: ``priors(name)`` returns the prior a task names (e.g.
        :func:`~dwgf_sci.priors.load_prior`, cached by the caller).
    :param params: per-method settings (e.g. tuned step sizes, equal step counts).
    :param keep_images: posterior means of the first ``keep_images`` problems of each task are
        saved to ``out/images.pt`` (plain tensors, loaded with ``weights_only=True``) for plots.
    :return: every record in the results file (earlier runs' included).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results_path = folder / "results.json"
    images_path = folder / "images.pt"
    data = json.loads(results_path.read_text()) if results_path.exists() else {}
    records: list[dict[str, Any]] = data.get("records", [])
    done = {_key(r) for r in records}
    images: dict[str, Tensor] = (
        torch.load(images_path, weights_only=True) if images_path.exists() else {}
    )
    params = params or {}
    for task in tasks:
        methods_here = [m for m in methods if applies(m, task)]
        for item in task.items(split, n):
            if item.index < keep_images:
                images[f"{task.name}/{item.index}/truth"] = item.x
                images[f"{task.name}/{item.index}/y"] = item.y
            for method in methods_here:
                key = (task.name, method, split, item.index)
                if key in done:
                    continue
                prior = priors(task.prior) if METHODS[method].latent else None
                rec = run_one(item, method, prior, params.get(method))
                mean = rec.pop("_mean")
                if item.index < keep_images:
                    images[f"{task.name}/{item.index}/{method}"] = mean
                records.append(rec)
                done.add(key)
                data = {"machine": machine_info(), "records": records}
                with atomic_output(results_path, overwrite=True) as tmp:
                    Path(tmp).write_text(json.dumps(data, indent=1))
                _save_images(images, images_path)
                if progress:
                    progress(
                        f"{task.name} #{item.index} {method}: PSNR {rec['psnr']:.2f} dB, "
                        f"chi2 {rec['chi2']:.2f}, {rec['wall_s']:.1f} s"
                    )
    return records


def _save_images(images: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in images.items()}, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ reporting
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
