"""All-gather -> GEMM and GEMM -> reduce-scatter overlapped by chunks of rows.

all_gather_matmul: chunk i's all-gather runs on the side stream while chunk i-1's GEMM runs on the
caller's stream. matmul_reduce_scatter: chunk i's GEMM runs while chunk i-1's reduce-scatter runs.
Both are collective (every rank calls them with the same shapes and ``chunks``) and
graph-capturable; the communicator's async ops carry the stream/event protocol
(``collectives.work``).
"""
from __future__ import annotations

from ..collectives.work import Work

__all__ = ["all_gather_matmul", "matmul_reduce_scatter", "row_chunks"]


def row_chunks(rows: int, chunks: int, *, align: int = 1) -> list[tuple[int, int]]:
    """``rows`` cut into at most ``chunks`` near-equal spans, each start a multiple of ``align``."""
    if not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"row_chunks: chunks must be an int >= 1 (got {chunks!r})")
    edges = sorted({min(rows, (rows * i // chunks) // align * align) for i in range(chunks)} | {rows})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _check(op: str, a, b):
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"{op}: a and b must be 2-D (got {tuple(a.shape)} and {tuple(b.shape)})")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{op}: a's columns ({a.shape[1]}) must equal b's rows ({b.shape[0]})")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: a and b must share a dtype (got {a.dtype} and {b.dtype})")


def all_gather_matmul(comm, a_shard, b, *, chunks: int = 2, ctas=None, channel: int = 0, out=None):
    """``all_gather(a_shard) @ b`` with the gather of one chunk beside the GEMM of the previous.

    Collective: all ranks call it with the same shapes and ``chunks``.

    Parameters
    ----------
    comm : Communicator
    a_shard : torch.Tensor
        ``[m, k]`` this rank's rows (bf16/fp16/fp32, contiguous; ``k * itemsize`` a multiple of 16).
    b : torch.Tensor
        ``[k, n]``, same dtype.
    chunks : int
        Row chunks of ``a_shard`` (each gathered by one all-gather).
    ctas, channel
        The all-gathers' CTA budget and channel.
    out : torch.Tensor, optional
        ``[world * m, n]``.

    Returns
    -------
    torch.Tensor
        ``[world * m, n]``: rank r's rows at ``[r * m, (r + 1) * m)``.
    """
    _check("all_gather_matmul", a_shard, b)
    m, w = a_shard.shape[0], comm.world
    out = a_shard.new_empty((w * m, b.shape[1])) if out is None else out
    if tuple(out.shape) != (w * m, b.shape[1]):
        raise ValueError(f"all_gather_matmul: out must be [{w * m}, {b.shape[1]}] (got {tuple(out.shape)})")
    by_rank = out.view(w, m, b.shape[1])
    spans = row_chunks(m, chunks)
    works = [comm.all_gather(a_shard[s:e], ctas=ctas, channel=channel, async_op=True) for s, e in spans]
    for (s, e), work in zip(spans, works):
        gathered = work.wait() if isinstance(work, Work) else work  # [w * (e - s), k], rank-major
        by_rank[:, s:e] = (gathered @ b).view(w, e - s, b.shape[1])
    return out


def matmul_reduce_scatter(comm, a, b, *, chunks: int = 2, ctas=None, channel: int = 0, out=None):
    """``reduce_scatter(a @ b)`` with the reduce-scatter of one chunk beside the GEMM of the next.

    Collective: all ranks call it with the same shapes and ``chunks``.

    Parameters
    ----------
    comm : Communicator
    a : torch.Tensor
        ``[M, k]`` with ``M % world == 0`` (this rank's partial-sum operand, e.g. a row-parallel
        activation shard).
    b : torch.Tensor
        ``[k, n]``, same dtype (``n * itemsize`` a multiple of 16).
    chunks, ctas, channel
        Row chunks of each rank's block, the reduce-scatters' CTA budget and channel.
    out : torch.Tensor, optional
        ``[M // world, n]``.

    Returns
    -------
    torch.Tensor
        ``[M // world, n]``: rows ``[rank * M / world, (rank + 1) * M / world)`` of the sum over
        ranks of ``a @ b``.
    """
    _check("matmul_reduce_scatter", a, b)
    M, w, n = a.shape[0], comm.world, b.shape[1]
    if M % w:
        raise ValueError(f"matmul_reduce_scatter: a's rows ({M}) must divide by world ({w})")
    m = M // w
    out = a.new_empty((m, n)) if out is None else out
    if tuple(out.shape) != (m, n):
        raise ValueError(f"matmul_reduce_scatter: out must be [{m}, {n}] (got {tuple(out.shape)})")
    blocks = a.view(w, m, a.shape[1])
    works = []
    for s, e in row_chunks(m, chunks):
        part = (blocks[:, s:e].reshape(w * (e - s), a.shape[1]) @ b)  # every rank's rows s..e, rank-major
        works.append(comm.reduce_scatter(part, out=out[s:e], ctas=ctas, channel=channel, async_op=True))
    for work in works:
        if isinstance(work, Work):
            work.wait()
    return out
