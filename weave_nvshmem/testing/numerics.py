"""What a correct result is: references rounded as the kernels round, per-dtype tolerances, the
normwise relative error, per-rank inputs, poisoned outputs and bitwise comparison.

The references compute on the inputs' device (CPU or CUDA) and return tensors of the inputs'
dtype, so the CPU suite checks them and both GPU suites compare against them. The float64 math
and the error measure are ``weave_nvshmem.collectives.reference``'s; this module adds the
rounding the kernels do and the torch plumbing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..collectives import reference as _reference
from ..collectives.plan import owned_rows

#: the dtypes every collective supports, by name
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: normwise relative tolerance per dtype name (``collectives.reference.TOLERANCE``)
TOLERANCE = _reference.TOLERANCE
#: what the rows of a sharded residual a rank does not own hold before a fused call (they must stay)
RESIDUAL_SENTINEL = 3.0


def dtype_name(dtype) -> str:
    """``"bfloat16"``, ``"float16"`` or ``"float32"`` for a torch dtype or one of those names."""
    name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise TypeError(f"testing: unsupported dtype {dtype!r} (expected one of {tuple(DTYPES)})")
    return name


def tolerance(dtype) -> float:
    """The normwise relative tolerance of ``dtype`` (torch dtype or name)."""
    return TOLERANCE[dtype_name(dtype)]


def _shape(a) -> tuple:
    return tuple(a.shape) if isinstance(a, torch.Tensor) else np.shape(a)


def rel_err(got, ref) -> float:
    """``||got - ref|| / ||ref||`` in float64 over the positions where ``ref`` is finite.

    Parameters
    ----------
    got, ref : torch.Tensor or array-like
        The same shape, any dtype and device. ``inf`` when ``got`` is not finite exactly where
        ``ref`` is not (a NaN left by a poisoned output counts); ``||got - ref||`` when
        ``||ref|| == 0``. Computed on the first tensor's device (``collectives.reference``):
        one scalar comes back to the host.

    Returns
    -------
    float
    """
    if _shape(got) != _shape(ref):
        raise ValueError(f"rel_err: got has shape {_shape(got)}, ref {_shape(ref)}")
    return _reference.rel_error(got, ref)


def still_poisoned(t: torch.Tensor) -> int:
    """How many elements of ``t`` still hold the poison (``poison``): NaN, or the integer sentinel."""
    if t.dtype.is_floating_point:
        return int(torch.isnan(t).sum())
    return int((t == _int_sentinel(t.dtype)).sum())


def check_close(got: torch.Tensor, ref, what: str = "result") -> list[str]:
    """``[]`` when ``rel_err(got, ref) <= tolerance(got.dtype)``, else one line saying why.

    Parameters
    ----------
    got : torch.Tensor
        `[...]` bfloat16/float16/float32, a kernel's output.
    ref : torch.Tensor
        The same shape (any dtype): the reference.
    what : str
        Name of the output in the message.
    """
    err, tol = rel_err(got, ref), tolerance(got.dtype)
    if err <= tol:
        return []
    why = f"{what}: normwise relative error {err:.3g} > {tol:g} ({dtype_name(got.dtype)}, shape {tuple(got.shape)})"
    if math.isinf(err):
        why += f"; {still_poisoned(got)} of {got.numel()} elements NaN (poison left or produced)"
    return [why]


# ---- inputs, poison, bits -------------------------------------------------------------------

def rank_input(seed: int, rank: int, shape, dtype, *, scale: float = 1.0, device="cuda") -> torch.Tensor:
    """Rank ``rank``'s input of a check: standard normal times ``scale``, rounded to ``dtype``.

    A ``torch.Generator`` on ``device`` seeded with ``seed * 1000 + rank``, so every rank (and
    every process) can rebuild every rank's input to compute the reference.

    Returns
    -------
    torch.Tensor
        `shape` of ``dtype`` on ``device``.
    """
    g = torch.Generator(device=device).manual_seed(seed * 1000 + rank)
    return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)


def rank_inputs(seed: int, world: int, shape, dtype, *, scale: float = 1.0, device="cuda") -> list:
    """``[rank_input(seed, r, shape, dtype) for r in range(world)]``: `world` tensors of `shape`."""
    return [rank_input(seed, r, shape, dtype, scale=scale, device=device) for r in range(world)]


def _int_sentinel(dtype) -> int:
    info = torch.iinfo(dtype)
    return -1 if info.min < 0 else info.max  # all bits set


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` in place with NaN (floating dtypes) or all-ones bits (integer dtypes); return it.

    An output poisoned before a call shows every element the call failed to write.
    """
    if t.dtype == torch.bool:
        raise TypeError("poison: bool tensors have no value to spare for a sentinel")
    return t.fill_(float("nan") if t.dtype.is_floating_point else _int_sentinel(t.dtype))


def poisoned(shape, dtype, *, device="cuda") -> torch.Tensor:
    """A new `shape` tensor of ``dtype`` on ``device``, poisoned (``poison``)."""
    return poison(torch.empty(shape, dtype=dtype, device=device))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(tensors) -> bool:
    """Whether all ``tensors`` have one dtype, one shape and identical bytes (NaNs included).

    Parameters
    ----------
    tensors : sequence of torch.Tensor
        On one device; e.g. every emulated rank's output of one call.
    """
    first = tensors[0]
    return all(t.dtype == first.dtype and t.shape == first.shape and torch.equal(_bits(t), _bits(first))
               for t in tensors[1:])


# ---- references ----------------------------------------------------------------------------

def _fp32_sum(xs) -> torch.Tensor:
    """The kernels' accumulation: fp32, ranks in order 0..W-1."""
    first = xs[0]
    if any(x.shape != first.shape or x.dtype != first.dtype for x in xs):
        raise ValueError("testing: every rank's input must have one shape and dtype "
                         f"(got {[(tuple(x.shape), x.dtype) for x in xs]})")
    acc = first.float()
    for x in xs[1:]:
        acc = acc + x.float()
    return acc


def reference_all_reduce(xs) -> torch.Tensor:
    """What ``all_reduce`` returns: the fp32 sum in rank order 0..W-1, rounded to the dtype.

    Parameters
    ----------
    xs : sequence of torch.Tensor
        Every rank's input, rank order: W tensors of one shape `[...]` and dtype.

    Returns
    -------
    torch.Tensor
        `[...]`, the inputs' dtype and device.
    """
    return _fp32_sum(xs).to(xs[0].dtype, copy=True)


def reference_reduce_scatter(xs, rank: int) -> torch.Tensor:
    """Rank ``rank``'s ``reduce_scatter`` result: rows `[rank*n, (rank+1)*n)` of the all-reduce.

    ``xs``: W tensors `[W*n, ...]`; returns `[n, ...]` of their dtype.
    """
    n = xs[0].shape[0] // len(xs)
    return reference_all_reduce(xs)[rank * n:(rank + 1) * n]


def reference_all_gather(xs) -> torch.Tensor:
    """``all_gather``'s result on every rank: ``xs`` (W tensors `[n, ...]`) concatenated, `[W*n, ...]`."""
    return torch.cat(list(xs))


def reference_fused(xs, residual, weight, eps: float) -> tuple:
    """What ``fused_allreduce_rmsnorm`` computes, rounded as its kernels round.

    ``s = round(fp32 sum of xs in rank order + residual)``, then
    ``out = round(s * rsqrt(mean(s^2) + eps) * weight)`` in float64 from the rounded ``s``.

    Parameters
    ----------
    xs : sequence of torch.Tensor
        Every rank's input, W tensors `[T, H]` of one dtype.
    residual : torch.Tensor or None
        `[T, H]`, the same dtype (the full residual, before the call).
    weight : torch.Tensor
        `[H]`, the same dtype.
    eps : float

    Returns
    -------
    out, s : torch.Tensor
        `[T, H]` of the inputs' dtype and device: the normalised output and the new residual.
    """
    s = _fp32_sum(xs)
    if residual is not None:
        s = s + residual.float()
    s = s.to(xs[0].dtype)
    out, _ = _reference.fused_allreduce_rmsnorm([s], None, weight, eps)  # float64 on s's device
    return out.to(s.dtype), s


# ---- the fused op's residual modes ---------------------------------------------------------

def sharded_residual(residual: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s copy of a sharded residual: its rows ``owned_rows(T, rank, world)`` from
    ``residual`` (`[T, H]`), every other row ``RESIDUAL_SENTINEL``. A new `[T, H]` tensor."""
    keep = owned_rows(residual.shape[0], rank, world)
    t = torch.full_like(residual, RESIDUAL_SENTINEL)
    t[keep.start:keep.stop] = residual[keep.start:keep.stop]
    return t


def fused_problems(out, residual, ref_out, ref_s, *, rank: int, world: int, mode: str,
                   sentinel_rows: bool) -> list[str]:
    """What is wrong with one rank's ``(out, residual)`` of a fused call (``[]``: nothing).

    Parameters
    ----------
    out, residual : torch.Tensor
        `[T, H]`: the call's results on rank ``rank``.
    ref_out, ref_s : torch.Tensor
        `[T, H]`: ``reference_fused``'s results.
    mode : str
        ``"replicated"`` (every row of ``residual`` is checked) or ``"sharded"`` (the rank's own
        rows are checked, and with ``sentinel_rows`` the others must still hold
        ``RESIDUAL_SENTINEL``, as ``sharded_residual`` left them).

    Cross-rank bits are the caller's check (``same_bits`` or ``same_on_ranks``).
    """
    tokens = out.shape[0]
    problems = check_close(out, ref_out, "out")
    keep = owned_rows(tokens, rank, world) if mode == "sharded" else range(tokens)
    if len(keep):
        problems += check_close(residual[keep.start:keep.stop], ref_s[keep.start:keep.stop], "residual")
    if mode == "sharded" and sentinel_rows:
        problems += foreign_rows_problems(residual, rank, world)
    return problems


def foreign_rows_problems(residual, rank: int, world: int) -> list[str]:
    """``[]`` when every row of a sharded residual ``residual`` (`[T, H]`) outside rank ``rank``'s
    ``owned_rows`` still holds ``RESIDUAL_SENTINEL`` (as ``sharded_residual`` left it), else one line."""
    keep = owned_rows(residual.shape[0], rank, world)
    others = torch.cat([residual[:keep.start], residual[keep.stop:]])
    if bool(torch.all(others == RESIDUAL_SENTINEL)):
        return []
    return [f"residual: rows outside {keep.start}..{keep.stop - 1} (not rank {rank}'s) were written"]
