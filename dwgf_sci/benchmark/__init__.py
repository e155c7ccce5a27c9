"""Benchmark problems with exact posteriors, shared by tests, benchmark scripts and the CLI."""

from __future__ import annotations

from .mixture import (
    MixtureProblem,
    evaluate,
    exact_samples,
    make_mixture_problem,
    mixture_means,
    mode_weights,
    noise_floor,
    oracle_ancestral_sampler,
)

__all__ = [
    "MixtureProblem",
    "evaluate",
    "exact_samples",
    "make_mixture_problem",
    "mixture_means",
    "mode_weights",
    "noise_floor",
    "oracle_ancestral_sampler",
]
