"""The copy-engine transport, ``algorithm="copyengine"`` (all_reduce and fused_allreduce_rmsnorm):
device copies move the bytes between ranks; the SMs run only the owner's reduce (+ residual +
RMSNorm) and write only its own rows. Same bits as ``twoshot`` (ptx/kernels/ce.ptx).

One call on rank r of W, channel ``ch`` (docs/transport.md gives the protocol's reasoning and costs):

1. for every owner s != r: copy s's segment of x into s's slot [r] (``ch.ce + r * ch.ce_slot``
   on s: our address plus s's delta), then raise s's flag ``CE_ARRIVE_OFF + 4r`` with a write
   ordered after the copy on the stream (``loader.write_value32``); with call signatures on, our
   call's descriptor words first go to our desc[0][s], where s's wait reads them when our flag
   holds another call's signature than s's (a CallMismatchError naming both calls);
2. the bounded wait (cewait.ptx) takes the W-1 arrive flags of our segment;
3. ce.ptx reduces our segment, writes our rows of out (and of the residual) and our result slot
   (slot W: the out rows; slot r: the s rows of a replicated residual); then we raise every
   peer's flag ``CE_READY_OFF + 4r``;
4. the bounded wait takes the W-1 ready flags; every owner's result slot (and s slot) is copied
   into our out (and residual) rows.

A flag's value is a constant of the call (its signature, or 1 without signatures), so a captured
graph replays it unchanged; the wait takes the flag (resets it to 0). A flag is never raised again
before it was taken: our next arrive flag to s follows our ready wait, which follows s's reduce,
which follows s's arrive wait; our next ready flag follows our next arrive wait, which follows
every peer's ready wait of this call. The same order keeps the slots from being overwritten while
read, so the slots need no call parity; no other algorithm touches them (channel.py).
"""
from __future__ import annotations

from ..ptx import catalog, loader, table
from . import signature
from .plan import owned_rows

__all__ = ["segments", "run", "WAIT"]

#: the bounded wait kernel (cewait.ptx)
WAIT = table.spec("wait", "copyengine")


def segments(call, world: int) -> list:
    """``(first byte, bytes)`` of every rank's segment of ``call``'s input (a ``calls.Call``):
    all_reduce, vectors ``[nvec*r/W, nvec*(r+1)/W)`` (the last one ending at the input's end);
    the fused op, rows ``owned_rows(rows, r, W)``."""
    es = call.x.element_size()
    if call.op == "fused_allreduce_rmsnorm":
        rows, hidden = call.x.shape
        return [(o.start * hidden * es, len(o) * hidden * es) for o in (owned_rows(rows, r, world) for r in range(world))]
    nbytes = call.numel * es
    nvec = -(-nbytes // 16)
    cuts = [nvec * r // world * 16 for r in range(world + 1)]
    return [(cuts[r], max(0, min(cuts[r + 1], nbytes) - cuts[r])) for r in range(world)]


def run(comm, call, p, values: dict) -> None:
    """Enqueue ``call`` (planned as ``p``, a ``plan.Launch`` of algorithm "copyengine") on its
    stream: copies, flag writes, two bounded waits and the reduce kernel, steps 1-4 above.

    ``values`` are the reduce kernel's arguments by name (``Communicator._values`` and
    ``_common``); its landing-slot arguments are added here.
    """
    ch = comm._channels[call.channel]
    w, r, stream, fab = comm.world, comm.rank, call.stream, comm._fabric
    # both kernels loaded before anything is enqueued: a module load may wait for the device, where
    # our own wait kernel could already spin on ranks not enqueued yet (emulated.py)
    wait = fab.kernels.kernel(WAIT, None, w, {})
    kernel = fab.kernels.kernel(p.kernel, p.dtype, w, p.variant)
    values.update(land=ch.ce, slot=ch.ce_slot)
    flag = values["sig"] or 1
    segs = segments(call, w)
    peers = [s for s in range(w) if s != r]

    def slot(i: int, owner: int) -> int:  # slot i of ``owner``'s copy-engine slots
        return ch.ce + i * ch.ce_slot + int(ch.deltas[owner])

    wait_args = {n: values[n] for n, _ in WAIT.param_list(w) if n in values}

    def raise_and_wait(off: int) -> None:
        for s in peers:
            loader.write_value32(stream, ch.ws + int(ch.deltas[s]) + off + 4 * r, flag)
        if peers:
            fab.launch(stream, 1, WAIT.block, wait, WAIT.pack(w, wait_args | {"off": off, "value": flag}))

    if values["sig"]:  # our call where a peer's wait finding another value reads it (cewait.ptx)
        words = (values["call0"], values["call1"], values["call2"], signature.UNKNOWN, signature.UNKNOWN)
        for s in peers:
            desc = ch.ws + catalog.DESC_OFF + s * catalog.DESC_BYTES
            for i, word in enumerate(words):
                loader.write_value32(stream, desc + 4 * i, word)

    for s in peers:
        start, n = segs[s]
        if n:
            loader.copy_async(stream, slot(r, s), values["inp"] + start, n)
    raise_and_wait(catalog.CE_ARRIVE_OFF)
    fab.launch(stream, p.grid, p.block, kernel, p.kernel.pack(w, values), p.smem)
    raise_and_wait(catalog.CE_READY_OFF)
    replicated = call.op == "fused_allreduce_rmsnorm" and not call.sharded
    for s in peers:
        start, n = segs[s]
        if n:
            loader.copy_async(stream, values["out"] + start, slot(w, s), n)
            if replicated:
                loader.copy_async(stream, values["res"] + start, slot(s, s), n)
