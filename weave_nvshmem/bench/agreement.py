"""Rank agreement: every rank learns the same verdict, so collective code paths never diverge.

The one place of these helpers for the benchmarks and the examples (they move to
``weave_nvshmem.testing`` once that module exists). Each is collective when torch.distributed is
initialised with more than one rank, and a no-op otherwise.
"""
from __future__ import annotations


def _world(group=None) -> int:
    import torch.distributed as dist

    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def gather(obj, group=None) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` on one rank). Collective."""
    import torch.distributed as dist

    if _world(group) == 1:
        return [obj]
    out = [None] * _world(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def first_error(err: str | None, group=None) -> str | None:
    """The first rank's error text, prefixed "rank r: ", or None when every rank passed None. Collective."""
    return next((f"rank {r}: {e}" for r, e in enumerate(gather(err, group)) if e), None)


def rank0(obj, group=None):
    """Rank 0's ``obj`` on every rank (a measured choice, a verdict). Collective."""
    import torch.distributed as dist

    if _world(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def same_on_ranks(t) -> bool:
    """Whether tensor ``t`` holds identical bits on every rank. Collective (NCCL for CUDA tensors)."""
    import torch
    import torch.distributed as dist

    if _world() == 1:
        return True
    ref = t.clone()
    dist.broadcast(ref, 0)
    flag = torch.tensor([int(torch.equal(t, ref))], device=t.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_true(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank. Collective."""
    return all(gather(bool(ok)))
