"""A channel: one rank's symmetric workspace of the channel kernels, and its size.

Layout (offsets in bytes; ``catalog.PAD_OFF``/``DESC_OFF``/``DATA_OFF``; protocols in
ptx/kernels/allreduce.ptx and barrier.ptxinc): control words at 0 (call counter, blocks done,
Lamport counter and received bytes, at 32 the failure lock), the signal pad (u32 flags
``[MAX_CTAS][MAX_WORLD]``) at ``PAD_OFF``, the call descriptors the handshake publishes
(``[MAX_CTAS][MAX_WORLD]`` x ``DESC_BYTES``, docs/reliability.md) at ``DESC_OFF``, from
``DATA_OFF`` the staging buffers (2 parities x ``world`` slots of ``cap`` bytes)
and the result buffers (2 x ``cap``), then the three Lamport buffers (``world`` slots of
``catalog.LAMPORT_SLOT`` bytes each), then the copy-engine transport's ``world + 1`` slots of
``ce_slot`` bytes (collectives/copyengine.py: the peers' shares of our segment, our s rows in the
slot of our own rank, our result rows in the last; its flags are control words,
``catalog.CE_ARRIVE_OFF``/``CE_READY_OFF``). No other algorithm touches them, so the transport's
buffers need no call parity.
"""
from __future__ import annotations

from ..ptx import catalog

__all__ = ["Channel", "channel_layout", "ce_slot", "workspace_bytes"]


def channel_layout(world: int, cap: int) -> tuple[int, int, int]:
    """Where a channel's parts lie.

    Parameters
    ----------
    world : int
        World size.
    cap : int
        Bytes of input one staging slot must hold (an op's input bytes).

    Returns
    -------
    (cap, lamport, total) : tuple of int
        The slot size rounded up to 256 bytes, the offset of the Lamport buffers, and the bytes of
        the whole channel.
    """
    cap = (cap + 255) // 256 * 256
    lamport = catalog.DATA_OFF + (2 * world + 2) * cap
    return cap, lamport, _ce_offset(world, lamport) + (world + 1) * ce_slot(world, cap)


def _ce_offset(world: int, lamport: int) -> int:
    return lamport + 3 * world * catalog.LAMPORT_SLOT


def ce_slot(world: int, cap: int) -> int:
    """Bytes of one copy-engine slot of a channel of ``cap`` staging bytes: the largest segment a
    rank owns, rounded up to 256 -- all_reduce: ``ceil(nvec/world)`` vectors; the fused ops:
    ``ceil(rows/world)`` rows, at most ``cap/world`` plus one row of ``catalog.MAX_ROW_BYTES``."""
    return (-(-cap // world) + catalog.MAX_ROW_BYTES + 255) // 256 * 256


def workspace_bytes(world: int, cap: int, channels: int = 1) -> int:
    """Symmetric-heap bytes of a Communicator's ``channels`` channels of staging ``cap`` bytes.

    What to size the NVSHMEM heap (``NVSHMEM_SYMMETRIC_SIZE``) or an EmulatedWorld arena with,
    before adding the caller's own symmetric tensors. The heap allocates in 256-byte units, and
    ``channel_layout``'s total already is one.
    """
    return channels * channel_layout(world, cap)[2]


class Channel:
    """One workspace: the layout above in ``buf``, the signal pad and control words zeroed and the
    Lamport buffers filled with the sentinel word here.

    Parameters
    ----------
    buf : torch.Tensor
        ``[channel_layout(world, cap)[2]]`` ``uint8``, symmetric (at the same offset on every rank).
    world, cap : int
        World size and staging bytes.
    deltas : tuple of numpy.int64
        ``deltas[p]``: peer p's copy of any address in ``buf`` minus the local one.
    release : callable
        ``release(buf)`` frees ``buf`` (collective where the memory is).

    Attributes
    ----------
    ws : int
        Address of the workspace (``p_ws``).
    mc_ws : int
        Its multicast address, or 0 (the multimem kernels run only when it is set).
    ce, ce_slot : int
        Address of the copy-engine slots, and the bytes of one.
    """

    def __init__(self, buf, world: int, cap: int, deltas: tuple, release):
        import torch

        self.cap, lamport, nbytes = channel_layout(world, cap)
        if buf.numel() != nbytes or buf.dtype != torch.uint8:
            raise ValueError(f"Channel: buf must be [{nbytes}] uint8 (got [{buf.numel()}] {buf.dtype})")
        buf[: catalog.DATA_OFF].zero_()  # control words, pad and descriptors
        ce = _ce_offset(world, lamport)
        buf[lamport:ce].view(torch.int32).fill_(-(1 << 31))  # every word "not yet written"
        self.buf, self.ws, self.deltas, self._release = buf, buf.data_ptr(), deltas, release
        self.ce, self.ce_slot = self.ws + ce, ce_slot(world, self.cap)
        self.mc_ws = 0

    def values(self) -> dict:
        """The channel's part of a launch's ``common_params`` (``ws``, ``cap``, ``dl0``..)."""
        return {"ws": self.ws, "cap": self.cap, **{f"dl{p}": d for p, d in enumerate(self.deltas)}}

    def map_multicast(self) -> None:
        """Bind ``mc_ws`` to the workspace's multicast address, or raise MulticastUnavailable
        (never creates a multicast object itself)."""
        from ..memory.multicast import multicast_view

        self.mc_ws = multicast_view(self.buf).data_ptr()

    def free(self) -> None:
        """Release the workspace (collective where the memory is)."""
        self._release(self.buf)
        self.buf = None
