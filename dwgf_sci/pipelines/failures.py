"""Foreseeable failures of a run, told in one line: memory exhausted (too many particles for the
device) and storage failures (:mod:`dwgf_sci.io.storage`), as opposed to the unexpected errors
that are worth a bug report."""

from __future__ import annotations

import re
from typing import Any

import torch

from ..io.storage import format_bytes, storage_message

__all__ = ["failure_message", "is_out_of_memory", "out_of_memory_message"]

#: Phrases of the allocators' messages (CUDA, the CPU allocator, other backends).
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")
_REQUESTED = re.compile(r"(?:tried to allocate|allocate) (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors (any device) and Python's MemoryError.

    Besides ``torch.OutOfMemoryError`` (or ``torch.cuda.OutOfMemoryError`` on older torch) and
    :class:`MemoryError`, any :class:`RuntimeError` whose message says "out of memory" or "can't
    allocate memory" (case-insensitive; the CPU allocator's words) counts, which covers the
    allocation failures of every backend.

    :param exc: the exception caught.
    :return: whether it reports an exhausted memory.
    """
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(phrase in text for phrase in _OOM_PHRASES)


def _requested(exc: BaseException) -> str:
    """`` (an allocation of 409.6 GB failed)`` when the message says the size, else ``""``."""
    match = _REQUESTED.search(str(exc))
    if match is None:
        return ""
    amount = f"{match[1]} {match[2]}"
    if match[2] == "bytes":
        amount = format_bytes(float(match[1]))
    return f" (an allocation of {amount} failed)"


def out_of_memory_message(solver: Any, exc: BaseException | None = None) -> str:
    """What to lower after running out of memory with ``solver`` (a latent solver).

    :param solver: the solver that ran out of memory (its particles, ``max_batch`` and device).
    :param exc: the error, for the size of the failed allocation when it says it.
    """
    device = solver.prior.device
    per_call = solver.max_batch if solver.max_batch is not None else solver.particles
    hint = max(1, per_call // 2)
    return (
        f"out of memory on {device} with {solver.particles} particle(s), up to {per_call} per "
        f"network call{_requested(exc) if exc is not None else ''}; lower --max-batch "
        f"(particles per network call, e.g. --max-batch {hint}) or --particles, or use a device "
        "with more memory"
    )


def failure_message(exc: BaseException, solver: Any = None) -> str | None:
    """The one-line message of a foreseeable failure, or None for an unexpected error.

    :param exc: the exception caught.
    :param solver: the latent solver that ran, if any (its settings go into an out-of-memory
        message).
    :return: an out-of-memory message naming ``--particles`` and ``--max-batch``, or a storage
        message (:func:`~dwgf_sci.io.storage.storage_message`), or None.
    """
    if is_out_of_memory(exc):
        if solver is not None:
            return out_of_memory_message(solver, exc)
        return (
            f"out of memory{_requested(exc)}; lower --particles (and --max-batch, the particles "
            "per network call), or use a device with more memory"
        )
    return storage_message(exc)
