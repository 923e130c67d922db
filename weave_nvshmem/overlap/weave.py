"""The weave: a chain of (compute, collective) steps run over token chunks, so that one chunk's
collective (on the communicator's side stream) runs beside the next chunk's compute (on the
caller's stream).

Order of issue, for steps S0, S1 and chunks A, B::

    main : S0.compute(A)  S0.compute(B)  wait S0(A)  S1.compute(A)  wait S0(B)  S1.compute(B) ...
    side :       S0.coll(A)          S0.coll(B)               S1.coll(A)               S1.coll(B)

Each step's compute of a chunk waits only for that chunk's previous collective (an event), never
for the whole side stream, and nothing waits on the host: the chain records into a CUDA graph.
A collective is any callable returning a ``collectives.work.Work`` (``async_op=True``) or a plain
value (a synchronous collective: NCCL, a CPU stand-in), so the same steps run everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..collectives.work import Work, completed

__all__ = ["Chunk", "Step", "chunks", "weave"]


@dataclass
class Chunk:
    """Rows ``[start, stop)`` of the batch, chunk ``index`` of ``count``.

    ``state``: this chunk's own values carried along the chain (a residual, say); ``shared``: one
    dict common to every chunk of the weave (e.g. earlier chunks' keys and values for attention).
    """

    index: int
    start: int
    stop: int
    count: int
    state: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Step:
    """``compute(value, chunk) -> y`` on the caller's stream, then ``collective(y, chunk) -> Work
    or value`` (None: no collective, ``y`` passes on). ``value`` is the previous step's result for
    the chunk (the first step's: the chunk's rows of the input)."""

    compute: Callable[[Any, Chunk], Any]
    collective: Callable[[Any, Chunk], Any] | None = None


def chunks(tokens: int, splits) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of the chunks cut at ``splits`` (increasing, inside (0, tokens))."""
    if tokens < 0:
        raise ValueError(f"chunks: tokens must be >= 0 (got {tokens})")
    cuts = [int(s) for s in splits]
    if any(not 0 < s < tokens for s in cuts) or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"chunks: splits must increase strictly inside (0, {tokens}) (got {list(splits)})")
    edges = [0] + cuts + [tokens]
    return list(zip(edges[:-1], edges[1:]))


def weave(steps, x, splits, *, state=None) -> list:
    """Run ``steps`` over the chunks of ``x`` cut at ``splits``; the last step's result per chunk.

    Parameters
    ----------
    steps : sequence of Step or (compute, collective) pairs
    x : torch.Tensor
        ``[T, ...]``; chunk c's first value is ``x[start:stop]`` (a view).
    splits : sequence of int
        Cut points, increasing, in (0, T); empty: one chunk (no overlap).
    state : callable, optional
        ``state(start, stop) -> dict``: each chunk's initial ``Chunk.state``.

    Returns
    -------
    list
        Per chunk, the last step's value, the caller's stream ordered after it.
    """
    steps = [s if isinstance(s, Step) else Step(*s) for s in steps]
    shared: dict = {}
    spans = chunks(x.shape[0], splits)
    parts = [Chunk(i, a, b, len(spans), dict(state(a, b)) if state else {}, shared) for i, (a, b) in enumerate(spans)]
    pending = [completed(x[c.start:c.stop]) for c in parts]
    for step in steps:
        for c in parts:
            y = step.compute(pending[c.index].wait(), c)
            out = y if step.collective is None else step.collective(y, c)
            pending[c.index] = out if isinstance(out, Work) else completed(out)
    return [p.wait() for p in pending]
