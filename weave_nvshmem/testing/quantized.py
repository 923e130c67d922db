"""What a correct compressed result is (``compression=``, docs/compression.md): the bits of the
float-exact model (``collectives/quantize.py``), the same on every rank, and within the model's
normwise bound of the float64 result.

Everything computes on the inputs' device (the model is float-exact on any device); the fuzz
runner and its CPU test use it. Cross-rank bits are the caller's check (``same_bits``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..collectives import quantize, reference
from ..collectives.compression import CompressionSpec
from ..collectives.plan import owned_rows
from .numerics import foreign_rows_problems, rank_inputs, rel_err, same_bits

#: all_gather's bound beyond the format's: the dequantized values rounded to the dtype (two bf16
#: units, as tests/emulated/test_compression.py holds the kernels to)
GATHER_ROUNDING = 2.0 ** -7


@dataclass(frozen=True)
class Expected:
    """What a compressed all_reduce, reduce_scatter or all_gather must give (``expected``).

    Attributes
    ----------
    model : torch.Tensor
        The model's bits, the inputs' dtype: every rank's out (all_reduce `[...]`, all_gather
        `[W*n, ...]`), or the whole reduced tensor `[W*n, ...]` (reduce_scatter: rank r's out is
        its rows ``[r*n, (r+1)*n)``).
    exact : torch.Tensor
        The same shape, float64: the exact result.
    bound : float
        Normwise relative bound of ``model`` against ``exact`` (inf when ``exact`` is all zero).
    """

    model: torch.Tensor
    exact: torch.Tensor
    bound: float


def expected(op: str, xs, spec: CompressionSpec) -> Expected:
    """The expected result of ``op(x, compression=spec)`` (``"all_reduce"``, ``"reduce_scatter"``
    or ``"all_gather"``) on every rank's input ``xs`` (W tensors of one shape and dtype)."""
    if op == "all_gather":
        chunks = torch.cat(list(xs))
        model = torch.cat([quantize.roundtrip(x, spec).to(x.dtype) for x in xs])
        den = float(torch.linalg.vector_norm(chunks.double()))
        eb = float(torch.linalg.vector_norm(quantize.element_bound(chunks.float().reshape(-1), spec)))
        return Expected(model, chunks.double(), eb / den + GATHER_ROUNDING if den else float("inf"))
    if op == "reduce_scatter":  # the owner's fp32 sum rounded, never re-quantized: the input gather
        spec = CompressionSpec(spec.format, spec.block, "input")
    elif op != "all_reduce":
        raise ValueError(f"expected: op must be all_reduce, reduce_scatter or all_gather (got {op!r})")
    return Expected(quantize.compressed_all_reduce(xs, spec), reference.all_reduce(xs),
                    quantize.all_reduce_bound(xs, spec))


def problems(got: torch.Tensor, model: torch.Tensor, exact: torch.Tensor, bound: float, what: str) -> list[str]:
    """What is wrong with ``got`` (``[]``: nothing): bits other than ``model``'s, or a normwise
    error against ``exact`` above ``bound``.

    Parameters
    ----------
    got, model : torch.Tensor
        One shape and dtype: a kernel's result and the model's.
    exact : torch.Tensor
        The same shape, float64.
    bound : float
    what : str
        Name of the result in the messages.
    """
    found = []
    if not same_bits([got, model]):
        ints = {2: torch.int16, 4: torch.int32}[got.element_size()]
        n = int((got.contiguous().view(ints) != model.contiguous().view(ints)).sum())
        found.append(f"{what}: {n} of {model.numel()} elements differ from the model (collectives/quantize.py)")
    err = rel_err(got, exact)
    if not err <= bound:
        found.append(f"{what}: normwise error {err:.3g} above the bound {bound:.3g}")
    return found


@dataclass(frozen=True)
class ExpectedFused:
    """What a compressed ``fused_allreduce_rmsnorm`` must give (``expected_fused``): the model's
    ``out`` and new residual ``s`` (`[T, H]`, the dtype; every row), the float64 ``ref_out`` and
    ``ref_s``, and the normwise bounds ``bound_out`` and ``bound_s`` (``quantize.fused_bound``)."""

    out: torch.Tensor
    s: torch.Tensor
    ref_out: torch.Tensor
    ref_s: torch.Tensor
    bound_out: float
    bound_s: float


def fused_inputs(seed: int, world: int, rows: int, hidden: int, dtype) -> tuple:
    """A compressed fused call's inputs on the GPU: every rank's ``x`` `[rows, hidden]` (a list), the
    full residual before the call `[rows, hidden]` and a weight `[hidden]` near 1, all ``dtype``
    (reproducible from ``seed``)."""
    xs = rank_inputs(seed + 1, world, (rows, hidden), dtype)
    res0 = rank_inputs(seed + 2, 1, (rows, hidden), dtype)[0]
    g = torch.Generator(device="cuda").manual_seed(seed)
    weight = (1 + 0.1 * torch.randn(hidden, generator=g, device="cuda")).to(dtype)
    return xs, res0, weight


def expected_fused(xs, residual, weight, eps: float, spec: CompressionSpec, mode: str) -> ExpectedFused:
    """The expected result of ``fused_allreduce_rmsnorm(x, residual, weight, eps, residual_mode=mode,
    compression=spec)``: ``xs`` every rank's `[T, H]`, ``residual`` the full `[T, H]` before the
    call (or None), ``weight`` `[H]`."""
    out, s = quantize.compressed_fused(xs, residual, weight, eps, spec, mode)
    ref_out, ref_s = reference.fused_allreduce_rmsnorm(xs, residual, weight, eps)
    bound_s, bound_out = quantize.fused_bound(xs, residual, weight, spec, mode)
    return ExpectedFused(out, s, ref_out, ref_s, bound_out, bound_s)


def fused_problems(got, e: ExpectedFused, *, world: int, mode: str, sentinel_rows: bool) -> list[str]:
    """What is wrong with every rank's ``(out, residual)`` of a compressed fused call (``got``, in
    rank order) against ``e``: rank 0's out, and the residual (replicated: rank 0's; sharded:
    each rank's own rows, and with ``sentinel_rows`` its other rows still ``RESIDUAL_SENTINEL``)."""
    found = problems(got[0][0], e.out, e.ref_out, e.bound_out, "rank 0 out")
    if mode == "replicated":
        return found + problems(got[0][1], e.s, e.ref_s, e.bound_s, "rank 0 residual")
    own = []
    for r, (_, res) in enumerate(got):
        keep = owned_rows(e.s.shape[0], r, world)
        own.append(res[keep.start:keep.stop])
    found += problems(torch.cat(own), e.s, e.ref_s, e.bound_s, "residual (every rank's own rows)")
    if sentinel_rows:
        found += [f"rank {r} {p}" for r, (_, res) in enumerate(got) for p in foreign_rows_problems(res, r, world)]
    return found
