"""Rank agreement: every rank of a multi-process run reaches the same verdict, so no rank takes a
collective path the others skip (a failed check on one rank must not hang the rest).

Each helper is collective when torch.distributed is initialised with more than one rank in
``group`` (every rank must call it, in the same order) and answers for this process alone
otherwise. They move Python objects (``all_gather_object``), so they work over any backend:
NCCL (the current CUDA device must be set) or a gloo control group.
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def rank_world(group=None) -> tuple[int, int]:
    """``(rank, world size)`` in ``group`` (the default group if None); ``(0, 1)`` without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def gather(obj, group=None) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` on one rank). Collective."""
    world = rank_world(group)[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def all_true(ok, group=None) -> bool:
    """Whether ``ok`` (a bool, or a one-element tensor) holds on every rank. Collective."""
    return all(gather(bool(ok), group))


def first_error(err: str | None, group=None) -> str | None:
    """The lowest rank's error text, prefixed ``"rank r: "``; None when every rank passed a
    false value (None or ``""``). Collective."""
    return next((f"rank {r}: {e}" for r, e in enumerate(gather(err or None, group)) if e), None)


def rank0(obj, group=None):
    """Rank 0's ``obj`` on every rank (a measured choice, a verdict). Collective."""
    return gather(obj, group)[0]


def digest(t: torch.Tensor) -> str:
    """A hex digest of ``t``'s dtype, shape and bytes (equal digests: the same bits)."""
    h = hashlib.sha1(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def same_on_ranks(t: torch.Tensor, group=None) -> bool:
    """Whether ``t`` (any dtype, shape, device) holds identical bits on every rank. Collective."""
    return len(set(gather(digest(t), group))) == 1
