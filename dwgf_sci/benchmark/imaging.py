"""The imaging benchmark: every method on every task of :mod:`dwgf_sci.benchmark.tasks`.

:func:`run_benchmark` reconstructs the problems of a split with each method, on the same priors
and measurements, and records per problem: PSNR and SSIM of the posterior mean (on the truth's
data range), the reduced chi-square of the data fit of the mean (noise variance from the physics:
Gaussian :math:`\\sigma^2`, Poisson :math:`g(Ax + b)`), the coverage of the per-pixel 90%
credible interval (samplers with at least two samples), network calls (UNet, VAE encoder and
decoder, forward and backward), wall time and peak memory. Records are appended to a JSON file
as they are made, so an interrupted run resumes where it stopped. :func:`summary_markdown` and
:func:`plot_results` (:mod:`~dwgf_sci.benchmark.report`, re-exported here) turn the records into
the committed table and figures.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the largest increase of
the process's resident memory during the reconstruction, sampled every 5 ms (an estimate: memory
freed and reused inside the run is not counted twice).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from deepinv.models import Reconstructor
from torch import Tensor

from ..errors import ConfigError
from ..io.atomic import atomic_output
from ..metrics import coverage, psnr, ssim
from ..priors.base import LatentPrior
from ..solvers import (
    DWGF,
    FBP,
    PSLD,
    LatentDPS,
    PiGDM,
    PseudoInverse,
    REDDiff,
    ReSample,
    RichardsonLucy,
    TVReconstruction,
    Wiener,
)
from ..solvers.likelihood import DataTerm
from .report import aggregate, overview_markdown, plot_results, summary_markdown
from .tasks import Task, TaskItem

__all__ = [
    "METHODS",
    "aggregate",
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
        Method("pigdm", lambda prior, **kw: PiGDM(prior, **kw)),
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
