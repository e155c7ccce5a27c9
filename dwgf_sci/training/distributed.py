"""Data-parallel training over processes with ``torchrun`` (``torch.distributed``).

Launch the same command once per process::

    torchrun --nproc_per_node 4 -m dwgf_sci.cli train-prior --dataset galaxies --out galaxy-64/

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
the trainer then joins a process group (NCCL on CUDA, gloo on the CPU), wraps the trained
network in ``DistributedDataParallel`` and gives each process a slice of every global batch.
The global batch (indices, noise, timesteps) is drawn identically on every process from the
step's seed, so a run on ``k`` processes computes the same updates as a run on one process with
the same ``--batch-size``, up to the order of floating-point sums. Only rank 0 writes files.
Without ``WORLD_SIZE`` in the environment the trainer runs as a single plain process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..priors.folders import resolve_device

__all__ = ["DistContext", "init_distributed"]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    :param int rank: global rank.
    :param int world_size: number of processes.
    :param torch.device device: the device this process trains on.
    :param bool distributed: a process group is in use (``torchrun``).
    :param bool owns_group: this context created the process group (and destroys it).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """The part of a global batch this process computes."""
        per, extra = divmod(int(batch_size), self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))

    def mean(self, value: float) -> float:
        """Mean of ``value`` over processes (weighted equally)."""
        if not self.distributed:
            return float(value)
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        """Wait for every process."""
        if self.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def init_distributed(device: torch.device | str | None = None) -> DistContext:
    """Join the ``torchrun`` process group if there is one; choose this process's device.

    :param device: ``"cpu"``, ``"cuda"`` (then ``cuda:LOCAL_RANK``), a specific device, or
        ``None`` (CUDA when available, else the CPU).
    :raises ConfigError: a CUDA device that is not available.
    """
    world = os.environ.get("WORLD_SIZE")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world is not None else 0)
    if world is None:
        return DistContext(device=dev)
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(
        rank=dist.get_rank() if dist.is_initialized() else rank,
        world_size=dist.get_world_size(),
        device=dev,
        distributed=True,
        owns_group=owns,
    )
