"""Wave-aware token splitting: where to cut a batch so both halves' GEMMs fill whole SM waves.

A GEMM of M tokens against an [K, N] weight runs as ceil(M/tile_m) * ceil(N/tile_n) output tiles
in waves of ``sms`` tiles; its time is close to waves * K (each tile streams K). Splitting T tokens
into (a, T - a) pays when both halves round to few waves on the SMs left beside the collective's
CTAs, and the overlapped collective of one half hides behind the other half's compute.

These are predictions that rank candidates; ``SplitTuner`` measures the best few and decides.
Everything here is pure host arithmetic, identical on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerShape:
    """A TP decoder layer's GEMMs per rank: ``hidden``, ``intermediate``, heads and ``world``."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    world: int
    head_dim: int = 128

    def __post_init__(self):
        for name in ("hidden", "intermediate", "heads", "kv_heads", "world", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LayerShape: {name} must be > 0 (got {getattr(self, name)})")
        if self.heads % self.world or self.intermediate % self.world:
            raise ValueError(f"LayerShape: heads ({self.heads}) and intermediate ({self.intermediate}) must divide "
                             f"by world ({self.world})")

    def gemms(self) -> list[tuple[int, int]]:
        """(N, K) of qkv, o_proj, gate_up, down on one rank (column- then row-parallel)."""
        w, d = self.world, self.head_dim
        kv = max(1, self.kv_heads // w) if self.kv_heads >= w else 1
        qkv_n = (self.heads // w + 2 * kv) * d
        return [(qkv_n, self.hidden), (self.hidden, self.heads // w * d),
                (2 * self.intermediate // w, self.hidden), (self.hidden, self.intermediate // w)]


@dataclass(frozen=True)
class CommModel:
    """Fused AllReduce-RMSNorm time of m tokens: ``latency_us + m * us_per_token``.

    Defaults: a line through bench/fused-nvidia-h200-w4.json (hidden 8192, 1024 and 8192 tokens)."""

    latency_us: float = 18.0
    us_per_token: float = 0.086

    def us(self, tokens: int) -> float:
        return 0.0 if tokens <= 0 else self.latency_us + tokens * self.us_per_token


@dataclass(frozen=True)
class Candidate:
    """``mode``: "plain" (NCCL-style all-reduce, no fusion), "fused" (fused op, no split) or
    "weave" (split at ``split`` tokens, first subset = rows [0, split))."""

    mode: str
    split: int = 0
    #: the fused collective's CTA budget (None: the planner's) and algorithm ("auto": the planner's)
    ctas: int | None = None
    algorithm: str = "auto"

    def __post_init__(self):
        if self.mode not in ("plain", "fused", "weave"):
            raise ValueError(f"Candidate: mode must be plain, fused or weave (got {self.mode!r})")
        if self.ctas is not None and not (isinstance(self.ctas, int) and 1 <= self.ctas <= 128):
            raise ValueError(f"Candidate: ctas must be None or an int in 1..128 (got {self.ctas!r})")

    @property
    def label(self) -> str:
        """``mode:split`` plus ``:ctas=N`` / ``:algorithm`` where they are not the defaults."""
        return ":".join([self.mode, str(self.split)] + ([f"ctas={self.ctas}"] if self.ctas is not None else [])
                        + ([self.algorithm] if self.algorithm != "auto" else []))


def gemm_waves(m: int, n: int, sms: int, tile_m: int = 128, tile_n: int = 256) -> int:
    """Waves of a [m, n] output tiled tile_m x tile_n on ``sms`` multiprocessors."""
    if m <= 0:
        return 0
    if sms <= 0:
        raise ValueError(f"gemm_waves: sms must be > 0 (got {sms})")
    tiles = -(-m // tile_m) * -(-n // tile_n)
    return -(-tiles // sms)


def compute_units(shape: LayerShape, m: int, sms: int, gemms=None) -> int:
    """Predicted GEMM time of one layer (or of ``gemms``) on m tokens, in wave*K units."""
    return sum(gemm_waves(m, n, sms) * k for n, k in (gemms or shape.gemms()))


def predict_us(shape: LayerShape, tokens: int, cand: Candidate, *, sms: int, comm_ctas: int,
               comm: CommModel, unit_us: float) -> float:
    """Predicted steady-state layer time (compute in wave*K units times ``unit_us``).

    weave, per layer: attn(A) | comm2(B of the previous layer); attn(B) | comm1(A);
    mlp(A) | comm1(B); mlp(B) | comm2(A) -- each a max of the two sides, compute on the SMs the
    collective leaves free. fused: compute then two exposed collectives. plain: the same plus a
    separate RMSNorm pass after each all-reduce (one more latency each).
    """
    if cand.mode != "weave":
        t = compute_units(shape, tokens, sms) * unit_us + 2 * comm.us(tokens)
        return t + (2 * comm.latency_us if cand.mode == "plain" else 0.0)
    a, b = cand.split, tokens - cand.split
    free = max(1, sms - comm_ctas)
    attn, mlp = shape.gemms()[:2], shape.gemms()[2:]

    def part(m, gemms):
        return compute_units(shape, m, free, gemms) * unit_us

    return (max(part(a, attn), comm.us(b)) + max(part(b, attn), comm.us(a))
            + max(part(a, mlp), comm.us(b)) + max(part(b, mlp), comm.us(a)))


def candidates(shape: LayerShape, tokens: int, *, sms: int, comm_ctas: int, comm: CommModel | None = None,
               unit_us: float = 0.011, granularity: int = 128, keep: int = 3) -> list[Candidate]:
    """"fused" and "plain", plus the ``keep`` best-predicted splits (multiples of ``granularity``
    and the balanced point), best first. No split for fewer than 2 * granularity tokens.
    ``unit_us``: one 128x256 bf16 tile's time per unit of K on one SM (0.011 at ~790 TFLOP/s)."""
    if tokens <= 0:
        raise ValueError(f"candidates: tokens must be > 0 (got {tokens})")
    comm = comm or CommModel()
    base = [Candidate("fused"), Candidate("plain")]
    if tokens < 2 * granularity:
        return base
    points = {s for s in range(granularity, tokens - granularity + 1, granularity)}
    points.add(tokens // 2)
    scored = sorted(points, key=lambda s: (predict_us(shape, tokens, Candidate("weave", s), sms=sms,
                                                      comm_ctas=comm_ctas, comm=comm, unit_us=unit_us),
                                           abs(2 * s - tokens), s))
    return base + [Candidate("weave", s) for s in scored[:keep]]


def variants(cands: list[Candidate], *, ctas=(), algorithms=()) -> list[Candidate]:
    """``cands`` with every "fused"/"weave" candidate also tried at each CTA budget in ``ctas`` and
    each collective algorithm in ``algorithms`` (the tuner's transport/budget axes), order kept,
    no duplicates. "plain" (NCCL) has neither knob."""
    out: list[Candidate] = []
    for c in cands:
        options = [c]
        if c.mode != "plain":
            options += [Candidate(c.mode, c.split, n, a)
                        for n in (ctas or [c.ctas]) for a in (algorithms or [c.algorithm])]
        for o in options:
            if o not in out:
                out.append(o)
    return out
