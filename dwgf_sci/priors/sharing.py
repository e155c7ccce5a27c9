r"""Chunks of one network batch shared by the processes of a ``torchrun`` job.

A patch prior (:class:`~dwgf_sci.priors.patches.PatchPrior`) cuts one large image into many
patches and tiles and sends them through its networks in chunks. When every process of a job runs
the same reconstruction (the same image, seed and solver), :class:`ChunkSharing` lets each
process compute every ``world_size``-th chunk only and receive the others by broadcast: the
image's network work is split across the processes, and since each chunk is computed exactly as
one process computes it (same rows, same order, same thread count), the result is bit for bit
that of one process.

Only calls without gradient are shared (the fast preset's: no backward pass through the
networks); a call that records a graph computes all its chunks locally, so its gradients stay
exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ChunkSharing", "map_chunks"]

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_DIMS = 8


def map_chunks(fn: Callable[[Tensor], Tensor], rows: Tensor, size: int) -> Tensor:
    """``fn`` on consecutive chunks of at most ``size`` rows of ``rows``, concatenated."""
    return torch.cat([fn(rows[s : s + size]) for s in range(0, len(rows), size)])


class ChunkSharing:
    """Round-robin chunks over the processes of torch.distributed's default group.

    :param int rank: this process's rank (default: the group's).
    :param int world_size: number of processes (default: the group's).
    """

    def __init__(self, rank: int | None = None, world_size: int | None = None) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ChunkSharing needs an initialised torch.distributed group")
        self.rank = dist.get_rank() if rank is None else int(rank)
        self.world_size = dist.get_world_size() if world_size is None else int(world_size)

    def map(self, fn: Callable[[Tensor], Tensor], rows: Tensor, size: int) -> Tensor:
        """As :func:`map_chunks`, chunk ``j`` computed by process ``j % world_size``."""
        if self.world_size == 1 or (torch.is_grad_enabled() and rows.requires_grad):
            return map_chunks(fn, rows, size)
        starts = list(range(0, len(rows), size))
        parts: list[Tensor | None] = [None] * len(starts)
        for owner in range(min(self.world_size, len(starts))):
            mine = list(range(owner, len(starts), self.world_size))
            if owner == self.rank:
                data = torch.cat([fn(rows[starts[j] : starts[j] + size]) for j in mine])
            else:
                data = None
            data = self._broadcast(data, owner, rows.device)
            offset = 0
            for j in mine:
                n = min(size, len(rows) - starts[j])
                parts[j] = data[offset : offset + n]
                offset += n
        return torch.cat(parts)  # type: ignore[arg-type]

    def _broadcast(self, data: Tensor | None, owner: int, device: torch.device) -> Tensor:
        """``data`` of process ``owner`` on every process (its shape and dtype sent first)."""
        import torch.distributed as dist

        where = torch.device("cpu") if dist.get_backend() == "gloo" else device
        head = torch.full((_MAX_DIMS + 2,), -1, dtype=torch.int64, device=where)
        if data is not None:
            if data.ndim > _MAX_DIMS or data.dtype not in _DTYPES:
                raise RuntimeError(f"cannot share a {data.dtype} tensor of shape {data.shape}")
            head[0], head[1] = _DTYPES.index(data.dtype), data.ndim
            head[2 : 2 + data.ndim] = torch.tensor(data.shape)
        dist.broadcast(head, src=owner)
        shape = [int(s) for s in head[2 : 2 + int(head[1])]]
        if data is None:
            buf = torch.empty(shape, dtype=_DTYPES[int(head[0])], device=where)
        else:
            buf = data.detach().to(where).contiguous()
        dist.broadcast(buf, src=owner)
        return buf.to(device) if data is None else data
