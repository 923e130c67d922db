"""Symmetric-heap tensors: allocation, views (torch and CuPy), peer views, and a registry.

nvshmem4py tracks allocations by base pointer only; this registry maps *any* address inside an
allocation (slices, views, reshapes) back to it, so peer views and symmetric checks work on
whatever view the user holds. Every PE must allocate and free in the same order (collective).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..errors import HeapExhaustedError
from .interop import as_torch
from .runtime import runtime


@dataclass
class Allocation:
    """One symmetric allocation: ``nbytes`` at ``base`` here, and each PE's copy mapped locally."""

    base: int
    nbytes: int
    buffer: object  # cuda.core.Buffer from nvshmem.core.buffer
    label: str
    peer_bases: tuple  # base address of each PE's copy, mapped locally (0 where not mapped)


_bases: list[int] = []  # sorted
_allocs: dict[int, Allocation] = {}


def _torch_dtype(dtype):
    import torch

    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))


def empty(shape, dtype="float32", *, label: str = "tensor"):
    """A torch tensor on the symmetric heap (collective: every PE allocates in the same order).

    Parameters
    ----------
    shape : int or tuple of int
        Its shape; every PE passes the same.
    dtype : torch.dtype or str
        E.g. ``torch.bfloat16`` or ``"float32"``.
    label : str
        Named in the leak report of ``finalize()``.

    Returns
    -------
    torch.Tensor
        ``shape`` ``dtype`` on this PE's GPU, contents undefined, at the same heap offset on every
        PE (so peers can map it: ``peer_view``). Free it with ``free``.
    """
    import torch
    import nvshmem.core as nvshmem

    rt = runtime()
    dtype = _torch_dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if any(s < 0 for s in shape):
        raise ValueError(f"symmetric empty: negative dimension in shape {shape}")
    numel = 1
    for s in shape:
        numel *= s
    esize = torch.empty((), dtype=dtype).element_size()
    nbytes = max(16, numel * esize)
    nbytes = (nbytes + 255) // 256 * 256
    free_bytes, _ = torch.cuda.mem_get_info(rt.device_id)
    if nbytes > free_bytes:
        # NVSHMEM aborts the process on some failed heap growths: refuse before asking it
        raise HeapExhaustedError(
            f"symmetric empty: {nbytes} bytes requested but only {free_bytes} bytes of device memory are free "
            "for the NVSHMEM heap; free symmetric tensors or allocate less")
    try:
        buf = nvshmem.buffer(nbytes)
    except Exception as exc:  # noqa: BLE001 - nvshmem raises its own types
        raise HeapExhaustedError(
            f"symmetric empty: could not allocate {nbytes} bytes on the NVSHMEM heap ({exc}); "
            "free symmetric tensors or raise NVSHMEM_SYMMETRIC_SIZE / NVSHMEM_MAX_MEMORY_PER_GPU") from exc
    base = int(buf.handle)
    peers = []
    for pe in range(rt.world):
        if pe == rt.rank:
            peers.append(base)
            continue
        try:
            peers.append(int(nvshmem.get_peer_buffer(buf, pe).handle))
        except Exception:  # noqa: BLE001 - not reachable by load/store
            peers.append(0)
    alloc = Allocation(base, nbytes, buf, label, tuple(peers))
    bisect.insort(_bases, base)
    _allocs[base] = alloc
    raw = torch.utils.dlpack.from_dlpack(buf)
    return raw.view(torch.uint8)[: numel * esize].view(dtype).view(shape)


def zeros(shape, dtype="float32", *, label: str = "tensor"):
    """``empty(shape, dtype)`` filled with zeros (collective)."""
    t = empty(shape, dtype, label=label)
    t.zero_()
    return t


def lookup(ptr: int, nbytes: int = 1) -> Allocation | None:
    """The allocation holding [ptr, ptr+nbytes), or None if that range is not symmetric."""
    i = bisect.bisect_right(_bases, ptr) - 1
    if i < 0:
        return None
    a = _allocs[_bases[i]]
    return a if ptr + max(nbytes, 1) <= a.base + a.nbytes else None


def _span(t) -> tuple[int, int]:
    """(first byte, byte extent) a tensor's view covers."""
    if t.numel() == 0:
        return t.data_ptr(), 0
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return t.data_ptr(), (last + 1) * t.element_size()


def is_symmetric(t) -> bool:
    """Whether every byte of tensor/array ``t``'s view lies in one symmetric allocation."""
    ptr, n = _span(as_torch(t))
    return lookup(ptr, n) is not None


def allocation_of(t, *, op: str = "op") -> Allocation:
    """The allocation holding ``t``'s view; ValueError naming ``op`` if it is not symmetric."""
    ptr, n = _span(as_torch(t))
    a = lookup(ptr, n)
    if a is None:
        raise ValueError(f"{op}: tensor at {ptr:#x} is not on the symmetric heap "
                         "(allocate it with weave_nvshmem.empty())")
    return a


def peer_address(ptr: int, pe: int, *, op: str = "op") -> int:
    """The local mapping of PE ``pe``'s copy of symmetric address ``ptr``."""
    a = lookup(ptr)
    if a is None:
        raise ValueError(f"{op}: address {ptr:#x} is not on the symmetric heap")
    if not 0 <= pe < len(a.peer_bases):
        raise ValueError(f"{op}: peer {pe} out of range 0..{len(a.peer_bases) - 1}")
    if a.peer_bases[pe] == 0:
        raise ValueError(f"{op}: PE {pe}'s memory is not mapped here (no P2P path)")
    return a.peer_bases[pe] + (ptr - a.base)


def peer_view(t, pe: int):
    """PE ``pe``'s copy of symmetric ``t``, mapped here.

    Parameters
    ----------
    t : torch.Tensor or CuPy array
        A view of a symmetric allocation, any shape/dtype/strides.
    pe : int
        The peer, 0..world-1 (reachable by load/store: P2P).

    Returns
    -------
    torch.Tensor
        Same shape, strides and dtype as ``t``, aliasing ``pe``'s memory (``t`` itself for this PE).
    """
    import torch

    t = as_torch(t)
    allocation_of(t, op="peer_view")
    addr = peer_address(t.data_ptr(), pe, op="peer_view")
    if addr == t.data_ptr():
        return t
    a = lookup(t.data_ptr())
    peer_raw = torch.utils.dlpack.from_dlpack(_peer_buffer(a, pe)).view(torch.uint8)
    off = t.data_ptr() - a.base
    return peer_raw[off:].view(t.dtype).as_strided(t.shape, t.stride())


def _peer_buffer(a: Allocation, pe: int):
    import nvshmem.core as nvshmem

    return nvshmem.get_peer_buffer(a.buffer, pe)


def as_cupy(t):
    """The same memory as ``t`` (torch tensor, any shape/dtype) as a CuPy array (zero copy)."""
    from .. import preflight

    return preflight.require_cupy("as_cupy").from_dlpack(as_torch(t))


def free(t) -> None:
    """Free the allocation that ``t`` starts (collective). Views of it become invalid."""
    import nvshmem.core as nvshmem

    t = as_torch(t)
    a = lookup(t.data_ptr())
    if a is None or a.base != t.data_ptr():
        raise ValueError("free: tensor does not start a symmetric allocation "
                         "(pass the tensor weave_nvshmem.empty() returned)")
    _bases.remove(a.base)
    del _allocs[a.base]
    nvshmem.free(a.buffer)


def live() -> list[Allocation]:
    """Every allocation not yet freed, by address."""
    return [_allocs[b] for b in _bases]


def release_all() -> list[str]:
    """Free every remaining allocation (at finalize); returns one line per leaked user tensor."""
    import nvshmem.core as nvshmem

    leaks = [f"{a.label}: {a.nbytes} bytes at {a.base:#x}" for a in live() if not a.label.startswith("weave:")]
    for a in live():
        nvshmem.free(a.buffer)
    _bases.clear()
    _allocs.clear()
    return leaks
