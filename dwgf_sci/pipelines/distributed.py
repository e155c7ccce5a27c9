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

from ..errors import ConfigError

__all__ = ["Comm", "batch_comm", "check_device", "launched_by_torchrun"]


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
        import torch.distributed as dist

        # NCCL sums tensors on the process's own GPU, gloo on the CPU
        where = self.context.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=where)
        t = self.context.all_reduce(t)
        return [int(v) for v in t.tolist()]


def check_device(device: str) -> torch.device:
    """The torch device named by ``--device``, if this machine has it.

    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    :return: the :class:`torch.device` (a plain ``"cuda"`` keeps no index).
    :raises ConfigError: an unknown device name, or one this machine lacks.
    """
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        if chosen.index is not None and chosen.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s)")
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {device}: MPS is not available on this machine")
    elif chosen.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return chosen


@contextlib.contextmanager
def batch_comm(device: str = "cpu") -> Iterator[Comm]:
    """Enter the processes of a job; yields a :class:`Comm`.

    :param device: the ``--device`` asked for. Under ``torchrun`` a plain ``"cuda"`` becomes the
        process's own GPU (``cuda:<LOCAL_RANK>`` modulo the visible GPUs); an explicit
        ``"cuda:N"`` is kept. The context chooses NCCL when every process has a GPU of its own,
        gloo otherwise (CPU work, or more processes than GPUs).
    :raises ConfigError: a device this machine lacks.
    """
    from deepinv.distributed import DistributedContext

    chosen = check_device(device)
    mode = "cpu" if chosen.type == "cpu" else None
    with DistributedContext(device_mode=mode, deterministic=True) as ctx:
        if ctx.use_dist and device == "cuda":
            chosen = ctx.device
        yield Comm(int(ctx.rank), int(ctx.world_size), chosen, ctx)
