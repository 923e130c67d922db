"""The call signature: what a channel kernel tells its peers about the call it is in, so ranks that
made different calls fail at once, naming both calls, instead of computing garbage or timing out.

Every channel kernel takes three descriptor words and a 32-bit signature (``p_call0..2``,
``p_sig``: ptx/kernels/common_params.ptxinc). In the barrier handshake (barrier.ptxinc) each rank
publishes its descriptor and the channel's two call counters next to its pad, and signals the
signature mixed with those counters instead of the plain 1; a peer that finds a different nonzero
value records a mismatch (status 2) with both descriptors in its error record, which
``Communicator.check`` turns into ``CallMismatchError``. Signature 0 turns the comparison off
(``CommOptions(call_signature=False)``; what ``scripts/signature_overhead.py`` times against).

Descriptor words (u32):

- ``call0``: op id (bits 0-3), algorithm id (4-11, ``ALGORITHMS``), dtype id (12-13), transport
  (14: 1 multicast), channel (15-17), ``p_flags`` (18-23), CTAs (24-31, 0 meaning 256);
- ``call1``, ``call2``: the fused op's rows and hidden size; else the element count, low and high
  32 bits (0 and 0 for the barrier).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CallMismatchError, PeerTimeoutError, WeaveError
from ..ptx import table

__all__ = ["ALGORITHMS", "DTYPES", "CallDescriptor", "encode", "signature", "describe", "RECORD_WORDS", "call_words",
           "record_error"]

#: op ids the kernels write into the error record (the same as ``communicator.OPS``)
OPS = {1: "barrier", 2: "all_reduce", 3: "reduce_scatter", 4: "all_gather", 5: "fused_allreduce_rmsnorm"}
_OP_IDS = {v: k for k, v in OPS.items()}
#: every algorithm of the kernel table, in table order; id = index + 1 (new kernels join here)
ALGORITHMS = tuple(dict.fromkeys(k.algorithm for k in table.KERNELS))
#: dtype name -> id (``encode`` takes the PTX names too)
DTYPES = {"bfloat16": 1, "float16": 2, "float32": 3}
_DTYPE_NAMES = {i: name for name, i in DTYPES.items()}
_PTX_NAMES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
#: u32 words of a Communicator's error record: {status, op, peer, cta, our call0..2, seq, lseq,
#: the peer's call0..2, seq, lseq, the peer's handshake value, 0} (barrier.ptxinc)
RECORD_WORDS = 16
#: status words of the record
TIMEOUT, MISMATCH = 1, 2
#: a call counter the publisher does not know (the copy-engine transport's host-written descriptor)
UNKNOWN = 0xFFFFFFFF


@dataclass(frozen=True)
class CallDescriptor:
    """One rank's call as its kernel published it.

    Attributes
    ----------
    op, algorithm, transport : str
    dtype : str
        ``"bfloat16"``, ``"float16"``, ``"float32"`` or ``"none"`` (the barrier).
    channel, flags, ctas : int
    sizes : tuple of int
        ``(rows, hidden)`` of the fused op, ``(numel,)`` of the others, ``()`` of the barrier.
    seq, lseq : int or None
        The channel's call counter (calls with a barrier) and its Lamport call counter, read on
        the device (None before a launch).
    """

    op: str
    algorithm: str
    dtype: str
    transport: str
    channel: int
    flags: int
    ctas: int
    sizes: tuple
    seq: int | None = None
    lseq: int | None = None

    def words(self) -> tuple:
        """``(call0, call1, call2)``."""
        c0 = (_OP_IDS[self.op] | (ALGORITHMS.index(self.algorithm) + 1) << 4 | DTYPES.get(self.dtype, 0) << 12
              | (self.transport == "multicast") << 14 | (self.channel & 7) << 15 | (self.flags & 63) << 18
              | (self.ctas & 255) << 24)
        if self.op == "fused_allreduce_rmsnorm":
            return c0, self.sizes[0] & 0xFFFFFFFF, self.sizes[1] & 0xFFFFFFFF
        n = self.sizes[0] if self.sizes else 0
        return c0, n & 0xFFFFFFFF, n >> 32 & 0xFFFFFFFF

    @classmethod
    def from_words(cls, c0: int, c1: int, c2: int, seq=None, lseq=None) -> "CallDescriptor":
        """The inverse of ``words`` (unknown ids decode as ``"op<i>"``/``"algorithm<i>"``)."""
        op = OPS.get(c0 & 15, f"op{c0 & 15}")
        a = c0 >> 4 & 255
        algorithm = ALGORITHMS[a - 1] if 1 <= a <= len(ALGORITHMS) else f"algorithm{a}"
        dtype = _DTYPE_NAMES.get(c0 >> 12 & 3, "none")
        sizes = (c1, c2) if op == "fused_allreduce_rmsnorm" else () if op == "barrier" else (c1 | c2 << 32,)
        return cls(op, algorithm, dtype, "multicast" if c0 >> 14 & 1 else "p2p", c0 >> 15 & 7, c0 >> 18 & 63,
                   (c0 >> 24 & 255) or 256, sizes, seq, lseq)

    def __str__(self) -> str:
        if self.op == "fused_allreduce_rmsnorm":
            words = [f"rows={self.sizes[0]}", f"hidden={self.sizes[1]}"]
        elif self.sizes:
            words = [f"numel={self.sizes[0]}"]
        else:
            words = []
        if self.op != "barrier":
            words += [self.dtype, self.algorithm]
        words.append(f"ctas={self.ctas}")
        if self.flags:
            words.append(f"flags={_flag_names(self.op, self.algorithm, self.transport, self.flags)}")
        if self.transport != "p2p":
            words.append(self.transport)
        words.append(f"channel {self.channel}")
        if self.seq is not None:
            words.append(f"call #{self.seq}" + (f", after {self.lseq} Lamport calls" if self.lseq else ""))
        return f"{self.op}({', '.join(words)})"


def _flag_names(op, algorithm, transport, flags) -> str:
    try:
        kind = table.spec(op, algorithm, transport).flags
    except KeyError:
        kind = None
    if kind is None:
        return str(flags)
    names = [m.name.lower() for m in type(kind) if m.value and flags & m.value]
    return "|".join(names) or str(flags)


def encode(op: str, algorithm: str, dtype: str, transport: str, channel: int, flags, ctas: int,
           sizes: tuple) -> CallDescriptor:
    """The descriptor of a launch (``Communicator._common`` builds it from the call and its plan)."""
    return CallDescriptor(op, algorithm, _PTX_NAMES.get(dtype, dtype or "none"), transport, int(channel), int(flags or 0), int(ctas),
                          tuple(int(s) for s in sizes))


def _mix(h: int) -> int:
    h ^= h >> 16
    h = h * 0x85EBCA6B & 0xFFFFFFFF
    h ^= h >> 13
    h = h * 0xC2B2AE35 & 0xFFFFFFFF
    return h ^ h >> 16


def signature(words: tuple) -> int:
    """The nonzero 32-bit signature of descriptor words ``(call0, call1, call2)`` (``p_sig``)."""
    h = 0x2545F491
    for w in words:
        h = _mix(h ^ (w & 0xFFFFFFFF))
    return h or 1


def describe(words, rank: int) -> str:
    """``"rank R called <call>"`` for the five words ``(call0, call1, call2, seq, lseq)``."""
    return f"rank {rank} called {CallDescriptor.from_words(*words)}"


def decode_record(record, rank: int) -> dict:
    """The fields of a mismatch record (``RECORD_WORDS`` u32 words) of rank ``rank``: ``op``,
    ``peer``, ``cta``, ``mine`` and ``theirs`` (CallDescriptor), ``value`` (the peer's)."""
    w = [None if i in (7, 8, 12, 13) and int(v) == UNKNOWN else int(v) for i, v in enumerate(record)]
    return {"op": OPS.get(w[1], f"op{w[1]}"), "peer": w[2], "cta": w[3],
            "mine": CallDescriptor.from_words(*w[4:9]), "theirs": CallDescriptor.from_words(*w[9:14]),
            "value": w[14]}


def call_words(call, p) -> tuple:
    """The descriptor words ``(call0, call1, call2)`` of launching ``p`` (a ``plan.Launch``) for
    ``call`` (a ``calls.Call``)."""
    if call.op == "fused_allreduce_rmsnorm":
        sizes = tuple(call.x.shape)
    else:
        sizes = () if call.op == "barrier" else (call.numel,)
    return encode(call.op, p.algorithm, p.dtype, p.transport, call.channel, p.flags, p.grid, sizes).words()


def record_error(words, rank: int, timeout_s: float) -> WeaveError:
    """The exception an error record (``RECORD_WORDS`` u32) of ``rank`` reports."""
    if int(words[0]) == MISMATCH:
        f = decode_record(words, rank)
        return CallMismatchError(rank, f["peer"], f["mine"], f["theirs"], f["cta"])
    return PeerTimeoutError(OPS.get(int(words[1]), f"op{int(words[1])}"), int(words[2]), int(words[3]), timeout_s)
