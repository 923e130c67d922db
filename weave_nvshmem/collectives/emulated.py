"""An emulated world: W virtual ranks on one GPU, so the kernels' cross-rank protocols run at any
world size where fewer GPUs exist (a single-GPU machine, a one-GPU CI runner).

Each virtual rank is a plain Communicator on a fabric of its own (``_RankFabric``, see
``fabric.Fabric``) whose "symmetric heap" is its arena, one slice of a single device allocation:
rank r's arena starts at ``base + r * stride``, so a peer's copy of any address is that address
plus ``(p - r) * stride`` -- exactly the per-peer deltas the kernels take for NVSHMEM peer mappings.
``run`` enqueues every rank's op on a stream of its own, so the W kernels spin on each other's
flags concurrently, as on W GPUs, and every wait stays bounded by ``CommOptions.timeout_s``.

What it measures: correctness at any world size, and the kernels' own per-CTA costs. Memory is one
GPU's HBM, shared by all ranks, not NVLink: never report link figures from it. All ranks' kernels
must be resident at once; a launch that could not be is refused with a ValueError naming the limit.
They must also run at once: give CUDA one hardware queue per stream in use
(``CUDA_DEVICE_MAX_CONNECTIONS=32`` before CUDA starts), so no rank's kernel waits in a queue behind
work that waits on another rank.
Any other kernel ``fn`` launches inside ``run`` must already be loaded: CUDA loads modules lazily
and a load waits for the device, so a compute kernel first launched while another rank's collective
spins stalls until the wait times out. Set ``CUDA_MODULE_LOADING=EAGER`` before CUDA starts (the
emulated tests do), or run the compute once outside ``run`` first.
"""
from __future__ import annotations

import numpy as np

from .. import errors
from ..ptx import catalog
from ..ptx.loader import KernelLibrary, launch
from .channel import Channel, channel_layout
from .communicator import CommOptions, Communicator

__all__ = ["EmulatedWorld", "BlockList"]

_ALIGN = 256


class EmulatedWorld:
    """``world`` virtual ranks on the current GPU, each with an arena of ``arena_bytes``.

    ``ranks[r]`` is rank r's Communicator (its ops take the same arguments as on W GPUs);
    ``run(fn)`` calls ``fn(rank, comm)`` for every rank, each on its own stream; ``empty`` makes a
    symmetric tensor (the same arena offset on every rank: zero-copy inputs). Close it when done.
    Async ops (``async_op=True``) work inside ``run``: each rank's Communicator has side streams
    of its own (``collectives.work.SideStreams``), so its kernels never queue behind a peer's.

    Parameters
    ----------
    world : int
        Virtual ranks, 1..8.
    arena_bytes : int
        Bytes of each rank's arena: its channels (``channel.workspace_bytes``) plus its symmetric
        tensors.
    options : CommOptions, dict or None
        Every rank's options (no multicast: virtual ranks have no multicast object).
    """

    def __init__(self, world: int, *, arena_bytes: int = 1 << 30, options=None):
        import torch
        from cuda.core import Device

        if not isinstance(world, int) or not 1 <= world <= catalog.MAX_WORLD:
            raise ValueError(f"EmulatedWorld: world must be an int in 1..{catalog.MAX_WORLD} (got {world!r})")
        if CommOptions.of(options).multicast:
            raise ValueError("EmulatedWorld: virtual ranks have no multicast object (use the P2P kernels)")
        from .. import preflight

        preflight.require_gpu("EmulatedWorld")  # a WeaveError naming what is missing, not a torch traceback
        self.world = world
        self.stride = -(-int(arena_bytes) // _ALIGN) * _ALIGN
        self.device_id = torch.cuda.current_device()
        Device(self.device_id).set_current()
        self.sms = torch.cuda.get_device_properties(self.device_id).multi_processor_count
        self._mem = torch.empty(world * self.stride, dtype=torch.uint8, device="cuda")
        self._blocks = BlockList(self.stride, world)
        self._channels = {}  # (channel index, cap) -> arena offset, until every rank has taken it
        self._growing = False
        # streams of our own (torch's pool hands its streams out again to later callers)
        self._own_streams = [Device(self.device_id).create_stream() for _ in range(world)]
        self.streams = [torch.cuda.ExternalStream(int(s.handle)) for s in self._own_streams]
        # one library for all ranks: a kernel is loaded once, at rank 0's launch. (CUDA loads modules
        # lazily, and a load waits for the device: rank 1 loading its own copy while rank 0's
        # kernel spins on rank 1's flags would stall until the wait times out.)
        self._kernels = KernelLibrary(self.device_id)
        self.ranks = [Communicator(options, fabric=_RankFabric(self, r)) for r in range(world)]
        # every rank's side streams now, right after the rank streams: made together, they get
        # hardware queues of their own (and none is created during a graph capture)
        for comm in self.ranks:
            for ch in range(comm.channels):
                comm._side_streams.get(ch)
        self._channels.clear()

    # ---- arenas ----------------------------------------------------------------------------
    def _arena(self, rank: int):
        return self._mem[rank * self.stride:(rank + 1) * self.stride]

    def _offset_of(self, rank: int, t) -> int | None:
        """Offset of ``t`` in rank's arena, or None when it lies outside."""
        start = t.data_ptr() - self._arena(rank).data_ptr()
        end = start + t.numel() * t.element_size()
        return start if 0 <= start and end <= self.stride else None

    def _channel(self, rank: int, cap: int, index: int) -> Channel:
        """Rank's copy of channel ``index`` (the first rank to ask allocates it for all)."""
        nbytes = channel_layout(self.world, cap)[2]
        if (index, cap) not in self._channels:
            self._channels[(index, cap)] = self._blocks.take(nbytes)
        off = self._channels[(index, cap)]
        deltas = tuple(np.int64((p - rank) * self.stride) for p in range(self.world))
        return Channel(self._arena(rank)[off:off + nbytes], self.world, cap, deltas,
                       release=lambda _buf: self._blocks.give_back(off, rank))

    # ---- the user's verbs ------------------------------------------------------------------
    def empty(self, shape, dtype) -> list:
        """A symmetric tensor: W tensors (one per rank) at the same arena offset, contents undefined."""
        import torch

        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        numel = int(np.prod(shape, dtype=np.int64))
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        off = self._blocks.take(nbytes) if nbytes else 0  # no block for no bytes (free() knows)
        return [self._arena(r)[off:off + nbytes].view(dtype).view(shape) for r in range(self.world)]

    def free(self, tensors) -> None:
        """Free a symmetric tensor ``empty`` returned (pass the list)."""
        if tensors[0].numel() == 0:  # torch gives an empty tensor no address; empty() took no block
            return
        off = self._offset_of(0, tensors[0])
        if off is None or not self._blocks.holds(off):
            raise ValueError("EmulatedWorld.free: not a tensor this world's empty() returned")
        for r in range(self.world):
            self._blocks.give_back(off, r)

    def reserve(self, nbytes: int, channel: int | None = None) -> None:
        """Grow staging on every rank together (ops that need more raise instead of growing)."""
        self._growing = True
        try:
            for c in self.ranks:
                c.reserve(nbytes, channel)
        finally:
            self._growing = False
        self._channels.clear()

    def run(self, fn) -> list:
        """``[fn(r, ranks[r]) for r]``, each on rank r's stream (after the current stream's work);
        the current stream then waits for all of them. Works inside CUDA-graph capture."""
        import torch

        cur = torch.cuda.current_stream()
        results = []
        for r, (comm, s) in enumerate(zip(self.ranks, self.streams)):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                results.append(fn(r, comm))
        for s in self.streams:
            cur.wait_stream(s)
        return results

    def check(self) -> None:
        """Raise the first rank's PeerTimeoutError, if any kernel reported one."""
        for c in self.ranks:
            c.check()

    def close(self) -> None:
        import torch

        torch.cuda.synchronize()
        for c in self.ranks:
            c.close()
        for s in self._own_streams:
            s.close()
        self._mem = self._own_streams = self.streams = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class BlockList:
    """First-fit blocks of one arena layout, the same offsets on every rank; a block goes back to
    the free list when the last rank gives it back (ranks free their channels one by one)."""

    def __init__(self, size: int, world: int):
        self.size, self.world = size, world
        self.holes = [(0, size)]  # free (offset, bytes), sorted by offset, coalesced
        self._owners = {}  # offset -> (ranks that still hold the block, its bytes)

    def take(self, nbytes: int) -> int:
        nbytes = -(-max(1, nbytes) // _ALIGN) * _ALIGN
        for i, (off, size) in enumerate(self.holes):
            if size >= nbytes:
                self.holes[i:i + 1] = [(off + nbytes, size - nbytes)] if size > nbytes else []
                self._owners[off] = (set(range(self.world)), nbytes)
                return off
        raise errors.HeapExhaustedError(f"EmulatedWorld: {nbytes} bytes do not fit in the {self.size}-byte "
                                        "arenas; free tensors or pass a larger arena_bytes")

    def holds(self, offset: int) -> bool:
        return offset in self._owners

    def give_back(self, offset: int, rank: int) -> None:
        owners, nbytes = self._owners[offset]
        owners.discard(rank)
        if owners:
            return
        del self._owners[offset]
        merged = []
        for off, size in sorted(self.holes + [(offset, nbytes)]):
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((off, size))
        self.holes = merged


class _RankFabric:
    """The fabric of rank ``rank`` of an EmulatedWorld (``fabric.Fabric``): channels in its arena,
    no host barrier (one process: the ranks' set-up steps are already ordered), channels that grow
    only in ``EmulatedWorld.reserve`` (all ranks together), and launches checked for co-residency
    with the other ranks' kernels (at world 1 nothing waits on another rank, so nothing is)."""

    def __init__(self, emu: EmulatedWorld, rank: int):
        self._emu = emu
        self.rank, self.world, self.device_id = rank, emu.world, emu.device_id
        self.kernels = emu._kernels

    def new_channel(self, cap: int, index: int) -> Channel:
        return self._emu._channel(self.rank, cap, index)

    def sync_ranks(self) -> None:
        pass

    def check_growth(self, nbytes: int) -> None:
        if not self._emu._growing:
            raise errors.WeaveError(f"EmulatedWorld: an op needs {nbytes} bytes of staging; call "
                                    f"world.reserve({nbytes}) before running it")

    def zero_copy(self, channel: Channel, t) -> bool:
        return self._emu._offset_of(self.rank, t) is not None

    def launch(self, stream, grid: int, block: int, kernel, args: tuple, shmem: int = 0) -> None:
        per_sm = kernel.occupancy.max_active_blocks_per_multiprocessor(block, shmem)
        fits = per_sm * self._emu.sms // self.world
        if self.world > 1 and grid > fits:  # one rank waits on no other: its grid may queue
            raise ValueError(f"EmulatedWorld: {self.world} ranks x {grid} blocks of {block} threads cannot all be "
                             f"resident on {self._emu.sms} SMs ({per_sm} per SM); pass ctas <= {fits}")
        launch(stream, grid, block, kernel, args, shmem)
