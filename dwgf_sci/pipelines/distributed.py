"""Processes of a batch job: one, or several launched by ``torchrun``.

``torchrun --nproc_per_node=K -m dwgf_sci.cli reconstruct ...`` starts K copies of the command with
``RANK``/``WORLD_SIZE`` in their environment. :func:`batch_comm` enters a
:class:`deepinv.distributed.DistributedContext`, which then creates the process group (gloo for CPU
work, NCCL for GPUs, one GPU per process); without those variables it is a plain single process.
The job only needs a barrier, integer sums and the round-robin sharding of the context: every
process computes the same item list, works on its share and writes its own files, and no data
travel between processes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Comm", "batch_comm", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """True when ``RANK`` and ``WORLD_SIZE`` are set (a ``torchrun`` worker)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class Comm:
    """What a batch job needs from its processes.

    :ivar rank: this process's index, ``0 <= rank < world_size``.
    :ivar world_size: number of processes.
    :ivar device: torch device this process works on.
    :ivar context: the deepinv ``DistributedContext`` (``None`` for a bare single process).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    context: Any = None

    @property
    def distributed(self) -> bool:
        """True when several processes take part."""
        return self.world_size > 1

    def local_indices(self, n: int) -> list[int]:
        """Indices of the items this process works on: ``i % world_size == rank``."""
        if self.context is None:
            return list(range(n))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*has no work items.*")
            return list(self.context.local_indices(n))

    def barrier(self) -> None:
        """Wait for every process (no-op for one)."""
        if self.distributed:
            self.context.barrier()

    def sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sums of ``values`` over the processes."""
        if not self.distributed:
            return [int(v) for v in values]
        where = self.context.device  # NCCL sums tensors on the process's own GPU
        t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=where)
        t = self.context.all_reduce(t)
        return [int(v) for v in t.tolist()]


def _device_mode(device: str) -> str | None:
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        return "gpu"
    return None


@contextlib.contextmanager
def batch_comm(device: str = "cpu") -> Iterator[Comm]:
    """Enter the processes of a job; yields a :class:`Comm`.

    :param device: the ``--device`` asked for. Under ``torchrun`` a plain ``"cuda"`` becomes the
        process's own GPU (``cuda:<LOCAL_RANK>``); an explicit ``"cuda:N"`` is kept.
    """
    from deepinv.distributed import DistributedContext

    with DistributedContext(device_mode=_device_mode(device), deterministic=True) as ctx:
        chosen = torch.device(device)
        if ctx.use_dist and device == "cuda":
            chosen = ctx.device
        yield Comm(int(ctx.rank), int(ctx.world_size), chosen, ctx)
