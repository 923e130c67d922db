"""The fabric: what a Communicator needs from the ranks and memory under it.

A ``Communicator`` plans and packs its launches itself; where its workspaces live, how ranks
meet on the host, which inputs peers can read in place and how a kernel is launched are the
fabric's. Two implementations: ``NvshmemFabric`` (one process per GPU, NVSHMEM's symmetric heap,
torch.distributed for host barriers) and the emulated world's ranks (``emulated.py``: W virtual
ranks in one process, arenas of one allocation).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..memory import heap
from ..memory.runtime import runtime
from ..ptx.loader import KernelLibrary, launch
from .channel import Channel, channel_layout

__all__ = ["Fabric", "NvshmemFabric"]


class Fabric(Protocol):
    """What one rank's Communicator stands on.

    Attributes
    ----------
    rank, world, device_id : int
        This rank, the world size, and the CUDA device the rank's kernels run on.
    kernels : KernelLibrary
        Where kernels are loaded (one per process, or shared by an emulated world's ranks).
    """

    rank: int
    world: int
    device_id: int
    kernels: KernelLibrary

    def new_channel(self, cap: int, index: int) -> Channel:
        """Allocate channel ``index`` with ``cap`` bytes of staging (collective)."""

    def sync_ranks(self) -> None:
        """Host-side barrier of all ranks (collective set-up steps)."""

    def check_growth(self, nbytes: int) -> None:
        """Raise if channels cannot grow to ``nbytes`` of staging now (checked before anything is
        freed; a CUDA-graph capture in progress is refused by the Communicator itself)."""

    def zero_copy(self, channel: Channel, t) -> bool:
        """Whether the peers can read tensor ``t`` in place: it lies in symmetric memory at the
        same offsets as ``channel`` (the caller's contract: the same tensor on every rank)."""

    def launch(self, stream, grid: int, block: int, kernel, args: tuple, shmem: int = 0) -> None:
        """Launch ``kernel`` with ``args`` (``KernelSpec.pack``) on ``stream``."""


class NvshmemFabric:
    """The fabric of ``weave_nvshmem.init()``: this process's PE, the NVSHMEM heap, peer mappings.

    Raises NotInitializedError before ``init()``.
    """

    def __init__(self):
        rt = runtime()
        self.rank, self.world, self.device_id = rt.rank, rt.world, rt.device_id
        self.kernels = KernelLibrary(self.device_id)

    def new_channel(self, cap: int, index: int) -> Channel:
        import torch

        buf = heap.empty((channel_layout(self.world, cap)[2],), torch.uint8, label=f"weave:channel{index}")
        alloc = heap.allocation_of(buf, op="Communicator")
        deltas = tuple(np.int64(p - alloc.base if p else 0) for p in alloc.peer_bases)
        return Channel(buf, self.world, cap, deltas, release=heap.free)

    def sync_ranks(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def check_growth(self, nbytes: int) -> None:
        pass  # every rank runs its own process: an op that needs more staging grows it collectively

    def zero_copy(self, channel: Channel, t) -> bool:
        a = heap.lookup(t.data_ptr(), t.numel() * t.element_size())
        return a is not None and all(p and p - a.base == d for p, d in zip(a.peer_bases, channel.deltas))

    def launch(self, stream, grid: int, block: int, kernel, args: tuple, shmem: int = 0) -> None:
        launch(stream, grid, block, kernel, args, shmem)
