r"""Hyperparameter search on validation problems, shared by every benchmark script.

A method's main parameter (a step size, a regularisation weight, an iteration count) is chosen by
the mean PSNR of its reconstruction over a few validation problems. The parameter's useful range
is not known in advance (a DPS step size for images in photon counts is orders of magnitude
smaller than for images in [0, 1] in the DPS code's absolute units; the baselines' default,
scale-free units remove most of that, see ``benchmarks/results/baseline_defaults.md``), so
:func:`log_search` walks on a logarithmic grid:

1. score ``start``, ``start * factor`` and ``start / factor``;
2. while the best value is at an end of what was scored, go one more ``factor`` past it
   (at most ``max_expand`` times);
3. score the best value times and divided by ``sqrt(factor)``.

A failed or non-finite score counts as :math:`-\infty`, so a diverging setting is never chosen.
:func:`grid_search` scores a given list of values instead. :func:`tune_method` applies either
to one method on one task's validation problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..priors.base import LatentPrior
from .imaging import run_one
from .tasks import TaskItem

__all__ = ["SearchResult", "grid_search", "log_search", "tune_method"]


@dataclass
class SearchResult:
    """Outcome of :func:`log_search`: the chosen value and every score, in evaluation order."""

    best: float | int
    scores: dict[float, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (scores as ``[[value, score], ...]`` sorted by value)."""
        return {"chosen": self.best, "scores": sorted(self.scores.items())}


def _safe_score(
    score: Callable[[float], float], value: float, log: Callable[[str], None] | None
) -> float:
    """``score(value)``, with failures and non-finite results as -inf (and logged)."""
    try:
        s = float(score(value))
    except (RuntimeError, ValueError, FloatingPointError) as err:
        s = -math.inf
        if log:
            log(f"  value {value}: failed ({err})")
    s = s if math.isfinite(s) else -math.inf
    if log:
        log(f"  value {value}: {s:.3f}")
    return s


def grid_search(
    score: Callable[[float], float],
    values: Sequence[float],
    *,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Maximise ``score`` over the given ``values`` (in that order; ties keep the first).

    :param score: higher is better; exceptions and NaN count as -inf.
    :param values: the grid (at least one value).
    :return: the best value and all scores.
    """
    if not values:
        raise ValueError("the grid is empty")
    scores = {v: _safe_score(score, v, log) for v in values}
    return SearchResult(max(scores, key=scores.__getitem__), scores)


def log_search(
    score: Callable[[float], float],
    start: float,
    *,
    factor: float = 10.0,
    max_expand: int = 3,
    integer: bool = False,
    minimum: float | None = None,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Maximise ``score(value)`` over a logarithmic grid around ``start`` (see the module doc).

    :param score: higher is better (e.g. mean validation PSNR); exceptions and NaN count as -inf.
    :param float start: first guess (> 0).
    :param float factor: spacing of the coarse grid (> 1); the refinement uses its square root.
    :param int max_expand: most extra coarse steps past an end of the grid.
    :param bool integer: round values to integers (iteration counts).
    :param minimum: values below it are not tried (e.g. 1 iteration).
    :return: the best value and all scores.
    """
    if not (start > 0 and factor > 1):
        raise ValueError(f"need start > 0 and factor > 1, found {start}, {factor}")
    scores: dict[float, float] = {}

    def norm(v: float) -> float | None:
        v = float(round(v)) if integer else float(f"{v:.6g}")
        return None if (minimum is not None and v < minimum) else v

    def visit(v: float | None) -> None:
        if v is None or v in scores:
            return
        scores[v] = _safe_score(score, int(v) if integer else v, log)

    for v in (start, start * factor, start / factor):
        visit(norm(v))
    for _ in range(max_expand):
        best = max(scores, key=scores.__getitem__)
        if best == max(scores):
            nxt = norm(best * factor)
        elif best == min(scores):
            nxt = norm(best / factor)
        else:
            break
        if nxt is None or nxt in scores:
            break
        visit(nxt)
    best = max(scores, key=scores.__getitem__)
    for v in (best * math.sqrt(factor), best / math.sqrt(factor)):
        visit(norm(v))
    best = max(scores, key=scores.__getitem__)
    return SearchResult(int(best) if integer else best, scores)


def tune_method(
    method: str,
    param: str,
    start: float | Sequence[float],
    items: Sequence[TaskItem],
    prior: LatentPrior | None,
    fixed: dict[str, Any] | None = None,
    *,
    integer: bool = False,
    factor: float = 10.0,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Choose ``param`` of ``method`` by mean PSNR over validation ``items``.

    :param str method: a method name of :data:`~dwgf_sci.benchmark.imaging.METHODS`.
    :param str param: the keyword of the method to tune (e.g. ``"zeta"``, ``"iterations"``).
    :param start: the first guess of :func:`log_search`, or a list of values for
        :func:`grid_search`.
    :param items: validation problems (the test split is refused).
    :param prior: the latent prior (``None`` for classical methods).
    :param fixed: the method's other settings (steps, particles, seed), unchanged by the search.
    :param bool integer: integer parameter (log search only).
    :param float factor: coarse grid spacing of the log search.
    :param log: progress callback, one line per scored value.
    """
    for item in items:
        if item.split == "test":
            raise ValueError("tuning must not use the test split")

    def score(value: float) -> float:
        params = {**(fixed or {}), param: value}
        return sum(run_one(it, method, prior, params)["psnr"] for it in items) / len(items)

    if isinstance(start, (int, float)):
        minimum = 1 if integer else None
        return log_search(score, start, factor=factor, integer=integer, minimum=minimum, log=log)
    return grid_search(score, list(start), log=log)
