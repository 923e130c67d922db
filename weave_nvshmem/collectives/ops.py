"""torch.library registrations of the collectives, for torch.compile and CUDA-graph capture.

The ops run on the default communicator (``weave_nvshmem.init()`` first). Each has a fake
implementation, so tracing needs no GPU and no communication.
"""
from __future__ import annotations

import torch

from . import communicator


@torch.library.custom_op("weave_nvshmem::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor, algorithm: str = "auto", ctas: int = 0) -> torch.Tensor:
    """Sum over ranks; a new tensor. Collective."""
    return communicator.default().all_reduce(x, algorithm=algorithm, ctas=ctas or None)


@all_reduce.register_fake
def _(x, algorithm="auto", ctas=0):
    return torch.empty_like(x)


@torch.library.custom_op("weave_nvshmem::reduce_scatter", mutates_args=())
def reduce_scatter(x: torch.Tensor, world: int, ctas: int = 0) -> torch.Tensor:
    """Sum over ranks, keep this rank's chunk of dim 0. ``world`` is the world size (for shapes)."""
    return communicator.default().reduce_scatter(x, ctas=ctas or None)


@reduce_scatter.register_fake
def _(x, world, ctas=0):
    return x.new_empty((x.shape[0] // world,) + tuple(x.shape[1:]))


@torch.library.custom_op("weave_nvshmem::all_gather", mutates_args=())
def all_gather(x: torch.Tensor, world: int, ctas: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0."""
    return communicator.default().all_gather(x, ctas=ctas or None)


@all_gather.register_fake
def _(x, world, ctas=0):
    return x.new_empty((x.shape[0] * world,) + tuple(x.shape[1:]))


@torch.library.custom_op("weave_nvshmem::fused_allreduce_rmsnorm", mutates_args=("residual",))
def fused_allreduce_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                            residual_mode: str = "replicated", ctas: int = 0) -> torch.Tensor:
    """out = rmsnorm(all_reduce(x) + residual) * weight; residual updated in place."""
    out, _ = communicator.default().fused_allreduce_rmsnorm(x, residual, weight, eps, residual_mode=residual_mode,
                                                            ctas=ctas or None)
    return out


@fused_allreduce_rmsnorm.register_fake
def _(x, residual, weight, eps=1e-6, residual_mode="replicated", ctas=0):
    return torch.empty_like(x)
