"""torch.library registrations of the collectives (``torch.ops.weave_nvshmem.*``), for torch.compile
and CUDA-graph capture.

The ops run on the *current* communicator: the one a ``use_communicator(comm)`` block sets, else
the default one (``weave_nvshmem.init()`` first). Each op has

- a fake implementation, so tracing needs no GPU and no communication;
- a CPU reference kernel: the same math on CPU tensors, summed over torch.distributed's default
  group when one of several ranks is up (gloo) and the identity at one rank, so a compiled graph
  can be checked against eager on a CPU.

The fused AllReduce + residual-add + RMSNorm comes in two forms:

- ``fused_allreduce_rmsnorm(x, residual, weight, ...) -> out`` updates ``residual`` in place
  (schema ``Tensor(a!) residual``): the eager form. Under torch.compile a mutated graph input makes
  Inductor skip CUDA graphs ("skipping cudagraphs due to mutated inputs").
- ``fused_allreduce_rmsnorm_functional(x, residual, weight, ...) -> (out, new_residual)`` leaves
  ``residual`` alone: the form to compile (Inductor CUDA-graphs it) and the one the compile pass
  (``weave_nvshmem.compile``) inserts. It costs one copy of ``residual`` per call.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

from . import communicator
from .plan import owned_rows

_current: contextvars.ContextVar = contextvars.ContextVar("weave_nvshmem_communicator", default=None)


def current_communicator():
    """The communicator the ops run on: the innermost ``use_communicator`` one, else the default.

    Returns
    -------
    Communicator
        Set by ``use_communicator`` in this thread (or context), else ``communicator.default()``
        (created on first use; needs ``weave_nvshmem.init()``).
    """
    comm = _current.get()
    return communicator.default() if comm is None else comm


@contextlib.contextmanager
def use_communicator(comm):
    """Run the ops (``torch.ops.weave_nvshmem.*`` and the module-level ones) on ``comm`` in this block.

    For a communicator other than the default: a sub-group's, or a virtual rank of an
    ``EmulatedWorld`` (``world.ranks[0]`` of ``EmulatedWorld(1)`` runs compiled graphs on one GPU
    without NVSHMEM). Compiled graphs look the communicator up at every call, so a graph compiled
    in one block runs on whichever communicator is current when it is called.

    Parameters
    ----------
    comm : Communicator
        Any object with the ``Communicator`` op methods.
    """
    token = _current.set(comm)
    try:
        yield comm
    finally:
        _current.reset(token)


# ---- the CPU reference's communication: torch.distributed when several ranks are up ------------
def _ranks() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``x`` summed over the default group (a copy of ``x`` at one rank)."""
    x = x.clone()
    if _ranks()[1] > 1:
        import torch.distributed as dist

        dist.all_reduce(x)
    return x


def _check_world(op: str, world: int) -> tuple[int, int]:
    rank, ranks = _ranks()
    if world != ranks:
        raise ValueError(f"weave_nvshmem::{op} (CPU reference): world={world} but torch.distributed has "
                         f"{ranks} rank(s) (got world={world})")
    return rank, ranks


def _of_world(op: str, world: int):
    """The current communicator, checked to have the ``world`` the op's output shape was traced with."""
    comm = current_communicator()
    if comm.world != world:
        raise ValueError(f"weave_nvshmem::{op}: world={world} but the current communicator has {comm.world} "
                         f"rank(s) (got world={world})")
    return comm


# ---- all_reduce, reduce_scatter, all_gather ---------------------------------------------------------
def _compression(text: str) -> dict:
    """``compression=`` of a GPU call from the ops' string form ("" none; "fp8", "int8:64:input"):
    an empty dict when none, so the communicator's own default applies."""
    if not text:
        return {}
    from .compression import CompressionSpec

    return {"compression": CompressionSpec.parse(text)}


def _compressed_reference(x, compression: str):
    """The CPU reference of a compressed all-reduce: the kernel's math (quantize.py) over the
    ranks' inputs gathered with torch.distributed (the input itself at one rank: no compression)."""
    from .compression import CompressionSpec
    from .quantize import compressed_all_reduce

    spec = CompressionSpec.parse(compression)
    _, world = _ranks()
    if world == 1:
        return x.clone()
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return compressed_all_reduce(parts, spec)


@torch.library.custom_op("weave_nvshmem::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor, algorithm: str = "auto", ctas: int = 0, compression: str = "") -> torch.Tensor:
    """Sum of ``x`` over ranks, a new tensor (``Communicator.all_reduce``). Collective.
    ``compression``: "" (none) or ``CompressionSpec.parse``'s form, e.g. "fp8" or "int8:64:input"."""
    return current_communicator().all_reduce(x, algorithm=algorithm, ctas=ctas or None, **_compression(compression))


@all_reduce.register_fake
def _(x, algorithm="auto", ctas=0, compression=""):
    return torch.empty_like(x)


@all_reduce.register_kernel("cpu")
def _(x, algorithm="auto", ctas=0, compression=""):
    return _compressed_reference(x, compression) if compression else _sum_over_ranks(x)


@torch.library.custom_op("weave_nvshmem::reduce_scatter", mutates_args=())
def reduce_scatter(x: torch.Tensor, world: int, ctas: int = 0, compression: str = "",
                   algorithm: str = "auto") -> torch.Tensor:
    """Sum over ranks, keep this rank's chunk of dim 0. ``world``: the world size (for shapes).
    ``compression`` as in ``all_reduce`` (the CPU reference ignores it: it sums exactly)."""
    return _of_world("reduce_scatter", world).reduce_scatter(x, algorithm=algorithm, ctas=ctas or None,
                                                      **_compression(compression))


@reduce_scatter.register_fake
def _(x, world, ctas=0, compression="", algorithm="auto"):
    return x.new_empty((x.shape[0] // world,) + tuple(x.shape[1:]))


@reduce_scatter.register_kernel("cpu")
def _(x, world, ctas=0, compression="", algorithm="auto"):
    rank, _ = _check_world("reduce_scatter", world)
    n = x.shape[0] // world
    return _sum_over_ranks(x)[rank * n:(rank + 1) * n].clone()


@torch.library.custom_op("weave_nvshmem::all_gather", mutates_args=())
def all_gather(x: torch.Tensor, world: int, ctas: int = 0, compression: str = "",
               algorithm: str = "auto") -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order. ``world``: the world size.
    ``compression`` as in ``all_reduce`` (the CPU reference ignores it: it gathers exactly)."""
    return _of_world("all_gather", world).all_gather(x, algorithm=algorithm, ctas=ctas or None,
                                                  **_compression(compression))


@all_gather.register_fake
def _(x, world, ctas=0, compression="", algorithm="auto"):
    return x.new_empty((x.shape[0] * world,) + tuple(x.shape[1:]))


@all_gather.register_kernel("cpu")
def _(x, world, ctas=0, compression="", algorithm="auto"):
    _check_world("all_gather", world)
    if world == 1:
        return x.clone()
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# ---- the fused AllReduce + residual-add + RMSNorm ------------------------------------------------
def _fused_shapes(op: str, x, residual, weight) -> int:
    """The hidden size; ValueError naming the argument when shapes do not fit ``[..., H]``."""
    if x.dim() < 1 or tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"weave_nvshmem::{op}: residual must have x's shape {tuple(x.shape)} "
                         f"(got {tuple(residual.shape)})")
    hidden = x.shape[-1]
    if tuple(weight.shape) != (hidden,):
        raise ValueError(f"weave_nvshmem::{op}: weight must be [{hidden}] (got {tuple(weight.shape)})")
    return hidden


def _fused_into(op, x, residual, weight, eps, residual_mode, algorithm, ctas, compression=""):
    """Run the communicator's fused op with ``residual`` (contiguous) updated in place; returns out."""
    hidden = _fused_shapes(op, x, residual, weight)
    if not residual.is_contiguous():
        raise ValueError(f"weave_nvshmem::{op}: residual must be contiguous, it is updated in place "
                         f"(got strides {residual.stride()})")
    out, _ = current_communicator().fused_allreduce_rmsnorm(
        x.reshape(-1, hidden).contiguous(), residual.view(-1, hidden), weight.contiguous(), eps,
        residual_mode=residual_mode, algorithm=algorithm, ctas=ctas or None, **_compression(compression))
    return out.view(x.shape)


def _fused_reference_into(op, x, residual, weight, eps, residual_mode, compression=""):
    """CPU reference: the kernel's math (fp32 sums, the new residual rounded to the dtype before it
    is normalised); ``residual`` is updated in place (only the owned rows when sharded). With
    ``compression``: quantize.compressed_fused over the ranks' inputs (gathered with
    torch.distributed); at one rank nothing is compressed."""
    _fused_shapes(op, x, residual, weight)
    if compression and _ranks()[1] > 1:
        return _compressed_fused_reference(x, residual, weight, eps, residual_mode, compression)
    if residual_mode not in ("replicated", "sharded"):
        raise ValueError(f"weave_nvshmem::{op}: residual_mode must be 'replicated' or 'sharded' "
                         f"(got {residual_mode!r})")
    rank, world = _ranks()
    rows = x.reshape(-1, x.shape[-1])
    res = residual.view(-1, x.shape[-1])
    if residual_mode == "sharded":  # each row's residual comes from the rank that owns it
        own = owned_rows(rows.shape[0], rank, world)
        mine = slice(own.start, own.stop)
        part = rows.to(torch.float32, copy=True)
        part[mine] += res[mine].float()
        s = _sum_over_ranks(part).to(x.dtype)
    else:
        mine = slice(None)
        s = (_sum_over_ranks(rows.float()) + res.float()).to(x.dtype)
    res[mine] = s[mine]
    sf = s.float()
    out = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype).view(x.shape)


def _compressed_fused_reference(x, residual, weight, eps, residual_mode, compression):
    import torch.distributed as dist

    from .compression import CompressionSpec
    from .quantize import compressed_fused

    rank, world = _ranks()
    hidden = x.shape[-1]
    rows, res = x.reshape(-1, hidden).contiguous(), residual.view(-1, hidden)
    parts = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(parts, rows)
    if residual_mode == "sharded":  # each row's residual comes from the rank that owns it
        own = owned_rows(rows.shape[0], rank, world)
        full = torch.zeros_like(res)
        full[own.start:own.stop] = res[own.start:own.stop]
        dist.all_reduce(full)
        mine = slice(own.start, own.stop)
    else:
        full, mine = res.clone(), slice(None)
    out, s = compressed_fused(parts, full, weight, eps, CompressionSpec.parse(compression), residual_mode)
    res[mine] = s[mine]
    return out.view(x.shape)


@torch.library.custom_op("weave_nvshmem::fused_allreduce_rmsnorm", mutates_args=("residual",))
def fused_allreduce_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                            residual_mode: str = "replicated", algorithm: str = "auto",
                            ctas: int = 0, compression: str = "") -> torch.Tensor:
    """``s = all_reduce(x) + residual; residual <- s``; returns ``rmsnorm(s) * weight``. Collective.

    ``x``, ``residual``: ``[..., H]``, same dtype (bf16/fp16/fp32); ``residual`` contiguous.
    ``weight``: ``[H]``. The in-place form: compile the functional one instead. ``compression``
    as in ``all_reduce``.
    """
    return _fused_into("fused_allreduce_rmsnorm", x, residual, weight, eps, residual_mode, algorithm, ctas,
                       compression)


@fused_allreduce_rmsnorm.register_fake
def _(x, residual, weight, eps=1e-6, residual_mode="replicated", algorithm="auto", ctas=0, compression=""):
    _fused_shapes("fused_allreduce_rmsnorm", x, residual, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@fused_allreduce_rmsnorm.register_kernel("cpu")
def _(x, residual, weight, eps=1e-6, residual_mode="replicated", algorithm="auto", ctas=0, compression=""):
    return _fused_reference_into("fused_allreduce_rmsnorm", x, residual, weight, eps, residual_mode, compression)


@torch.library.custom_op("weave_nvshmem::fused_allreduce_rmsnorm_functional", mutates_args=())
def fused_allreduce_rmsnorm_functional(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                                       eps: float = 1e-6, residual_mode: str = "replicated",
                                       algorithm: str = "auto", ctas: int = 0,
                                       compression: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``(rmsnorm(s) * weight, s)`` with ``s = all_reduce(x) + residual``; ``residual`` is not written.

    Shapes and dtypes as ``fused_allreduce_rmsnorm``; the new residual is a new contiguous tensor
    (with ``residual_mode="sharded"``, its rows this rank does not own are ``residual``'s).
    """
    new = residual.clone(memory_format=torch.contiguous_format)
    out = _fused_into("fused_allreduce_rmsnorm_functional", x, new, weight, eps, residual_mode, algorithm, ctas,
                      compression)
    return out, new


@fused_allreduce_rmsnorm_functional.register_fake
def _(x, residual, weight, eps=1e-6, residual_mode="replicated", algorithm="auto", ctas=0, compression=""):
    _fused_shapes("fused_allreduce_rmsnorm_functional", x, residual, weight)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(residual, memory_format=torch.contiguous_format))


@fused_allreduce_rmsnorm_functional.register_kernel("cpu")
def _(x, residual, weight, eps=1e-6, residual_mode="replicated", algorithm="auto", ctas=0, compression=""):
    new = residual.clone(memory_format=torch.contiguous_format)
    out = _fused_reference_into("fused_allreduce_rmsnorm_functional", x, new, weight, eps, residual_mode,
                                compression)
    return out, new
