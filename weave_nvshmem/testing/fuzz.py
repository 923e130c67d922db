"""The fuzzer's calls: call K of a run is a pure function of (seed, world, K), so a failing call is
rebuilt alone from the one line its failure prints, and the generator is tested on the CPU.

A call draws an op (every collective and the barrier), a dtype, an algorithm from the planner's
public lists, a shape (0 and 1 element, odd sizes, up to ``MAX_BYTES`` of staging), a CTA count,
a channel, eager or CUDA-graph execution, compression (``compression.CompressionSpec``: every
format, block and gather, on ``COMPRESSED_OPS``, on both transports where the op has them) and a
zero-copy (symmetric) input, always a valid combination for an emulated world of ``world`` ranks
on one GPU (``runner.Fuzzer`` runs and checks them there).
"""
from __future__ import annotations

import argparse
import collections
import math
import random
import shlex
from dataclasses import dataclass

from ..collectives import compression, plan
from ..collectives.compression import CompressionSpec
from ..ptx.catalog import LAMPORT_SLOT, MAX_WORLD
from .numerics import DTYPES

OPS = ("all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm", "barrier")
#: how often each op is drawn, relative to the others
OP_WEIGHTS = (3, 2, 2, 3, 1)
RESIDUAL_MODES = ("replicated", "sharded")
#: fused algorithms in which every rank normalises every row: they need the whole (replicated) residual
REPLICATED_ONLY = ("oneshot", "lamport")
#: channels of the world the calls run on (each call draws one)
CHANNELS = 2
#: the most staging bytes a call needs (the fuzz world reserves this on every channel)
MAX_BYTES = 8 << 20
#: the widest fused row drawn, in elements
MAX_HIDDEN = 16384
#: blocks of 512 threads one GPU holds at once, shared by all emulated ranks (one per SM, as the
#: big kernels need; an H100/H200 has 132 SMs): an explicit CTA count is at most this // world
RESIDENT_BLOCKS = 128
#: the ops that take ``compression=`` (every collective)
COMPRESSED_OPS = ("all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm")
#: the share of their calls drawn compressed (format uniform, then its block, then the gather)
COMPRESSED_SHARE = 0.25
#: the share of collective calls whose input is symmetric (``world.empty``, the same tensor on every
#: rank: the twoshot and pull kernels read it on the peers in place, zero copy)
ZERO_COPY_SHARE = 0.25
#: the command a reproducer line runs
SCRIPT = "scripts/fuzz.py"


def algorithms(op: str, world: int) -> tuple:
    """The algorithms the planner offers for ``op`` (a collective) that a test may request at
    ``world`` ranks, in planner order: its public list, without "local" (world 1 only) above one rank."""
    names = {"all_reduce": plan.ALLREDUCE_ALGORITHMS, "fused_allreduce_rmsnorm": plan.FUSED_ALGORITHMS,
             "reduce_scatter": plan.SCATTER_GATHER_ALGORITHMS, "all_gather": plan.SCATTER_GATHER_ALGORITHMS}[op]
    return tuple(a for a in names if not (a == "local" and world > 1))


def element_size(dtype: str) -> int:
    """Bytes per element of dtype name ``dtype``."""
    return 4 if dtype == "float32" else 2


@dataclass(frozen=True)
class FuzzCall:
    """One randomised collective call, as ``fuzz_call`` draws it.

    Attributes
    ----------
    seed, world, index : int
        Where it comes from: ``fuzz_call(seed, world, index)``.
    op : str
        One of ``OPS``.
    dtype : str
        ``DTYPES`` name of the inputs (unused by ``"barrier"``).
    shape : tuple of int
        The shape of each rank's ``x``: `[...]` (all_reduce), `[world*n, ...]` (reduce_scatter),
        `[n, ...]` (all_gather), `[T, H]` (fused).
    algorithm : str or None
        Every collective (compressed: ``"auto"``, compressed.ptx, or ``"pull"``, compressed_pull.ptx,
        where the op has it: ``compression.algorithms``); None for the barrier.
    ctas : int or None
        None: the planner's grid (drawn only at 2 ranks, where it is always resident).
    channel : int
        In ``range(CHANNELS)``.
    graph : bool
        Also capture the call in a CUDA graph and check two replays.
    residual_mode : str
        fused: ``"replicated"`` or ``"sharded"``.
    residual : bool
        fused: a residual is passed (else None: the first layer).
    eps : float
        fused.
    scale : float
        The inputs' standard deviation.
    data_seed : int
        The inputs' seed (``numerics.rank_inputs``).
    compression : CompressionSpec or None
        ``compression=`` of the call (None: uncompressed).
    zero_copy : bool
        The input is symmetric (``EmulatedWorld.empty``): peers read it in place.
    """

    seed: int
    world: int
    index: int
    op: str
    dtype: str = "float32"
    shape: tuple = ()
    algorithm: str | None = None
    ctas: int | None = None
    channel: int = 0
    graph: bool = False
    residual_mode: str = "replicated"
    residual: bool = True
    eps: float = 1e-6
    scale: float = 1.0
    data_seed: int = 0
    compression: CompressionSpec | None = None
    zero_copy: bool = False

    @property
    def reproducer(self) -> str:
        """The command that reruns this call alone."""
        return reproducer(self.world, self.seed, self.index)

    def describe(self) -> str:
        """The call on one line: op, dtype, shape and the options it sets."""
        words = [f"call {self.index}", self.op]
        if self.op != "barrier":
            words += [self.dtype, "x".join(map(str, self.shape)), f"ctas={self.ctas}", f"scale={self.scale:g}"]
        if self.algorithm is not None:
            words.append(f"algorithm={self.algorithm}")
        if self.compression is not None:
            words.append(f"compression={self.compression}")
        if self.zero_copy:
            words.append("zero_copy")
        if self.op == "fused_allreduce_rmsnorm":
            words += [f"residual_mode={self.residual_mode}", f"residual={'yes' if self.residual else 'None'}",
                      f"eps={self.eps:g}"]
        words += [f"channel={self.channel}", "graph" if self.graph else "eager"]
        return " ".join(words)


def _count(rng: random.Random, hi: int) -> int:
    """A count in [0, hi]: 0 and 1 often, small (odd) counts often, else log-uniform up to hi."""
    if hi <= 0:
        return 0
    u = rng.random()
    if u < 0.08:
        return min(hi, rng.choice((0, 1)))
    if u < 0.35:
        return rng.randint(0, min(hi, 40))
    return min(hi, int(2 ** rng.uniform(0, math.log2(hi + 1))))


def _dims(rng: random.Random, ndim: int, budget: int) -> tuple:
    """``ndim`` sizes whose product is at most ``budget``, in random order."""
    dims = []
    for _ in range(ndim):
        d = _count(rng, budget)
        dims.append(d)
        budget //= max(d, 1)
    rng.shuffle(dims)
    return tuple(dims)


def _ctas(rng: random.Random, world: int):
    if world == 2 and rng.random() < 0.3:
        return None
    return rng.randint(1, RESIDENT_BLOCKS // world)


def _rows_and_inner(rng: random.Random, world: int, dtype: str, unit: int) -> tuple:
    """(rows, trailing dims) of a chunk: rows * prod(inner) elements are a multiple of ``unit``
    elements (16-byte vectors, or compression blocks), and world chunks fit in ``MAX_BYTES``."""
    elems = MAX_BYTES // element_size(dtype) // world
    inner = _dims(rng, rng.choice((0, 1, 1, 2)), elems // unit)  # leaves room for a whole unit of rows
    m = math.prod(inner)
    step = unit // math.gcd(m, unit) if m else 1
    return step * _count(rng, elems // max(m, 1) // step), inner


def _compression(rng: random.Random, op: str) -> CompressionSpec | None:
    """None, or (``COMPRESSED_SHARE`` of the time) a spec: a format, one of its blocks, a gather
    (all_gather: "compressed", the only one it takes)."""
    if rng.random() >= COMPRESSED_SHARE:
        return None
    fmt = rng.choice(compression.FORMATS)
    gather = "compressed" if op == "all_gather" else rng.choice(compression.GATHERS)
    return CompressionSpec(fmt, rng.choice(compression.BLOCKS[fmt]), gather)


def _algorithm(rng: random.Random, op: str, spec: CompressionSpec | None, algs, fits: bool = True) -> str:
    """The call's ``algorithm=``: one of ``algs``, or for a compressed call one of the compressed
    kernels' (``compression.algorithms``: "auto", the two-shot, or "pull" where it ``fits``)."""
    return rng.choice(algs if spec is None else [a for a in compression.algorithms(op) if fits or a != "pull"])


def fuzz_call(seed: int, world: int, index: int) -> FuzzCall:
    """Call ``index`` of the run ``(seed, world)``: a valid call of a random op (pure function).

    Parameters
    ----------
    seed : int
        The run's seed.
    world : int
        Ranks, 2..8.
    index : int
        The call's number in the run, >= 0.

    Returns
    -------
    FuzzCall
    """
    if not 2 <= world <= MAX_WORLD:
        raise ValueError(f"fuzz_call: world must be in 2..{MAX_WORLD} (got {world})")
    rng = random.Random(f"weave_nvshmem.fuzz/{seed}/{world}/{index}")
    op = rng.choices(OPS, OP_WEIGHTS)[0]
    call = dict(seed=seed, world=world, index=index, op=op, channel=rng.randrange(CHANNELS),
                graph=rng.random() < 0.3)
    if op == "barrier":
        return FuzzCall(**call)
    dtype = rng.choice(tuple(DTYPES))
    es = element_size(dtype)
    spec = _compression(rng, op)
    # the unit every count below is a multiple of: a 16-byte vector, or a compression block
    ve = 16 // es
    unit = ve if spec is None else spec.block
    call.update(dtype=dtype, ctas=_ctas(rng, world), scale=rng.choice((1.0, 1.0, 0.01, 64.0)),
                data_seed=rng.randrange(1 << 30), compression=spec, zero_copy=rng.random() < ZERO_COPY_SHARE)
    if op == "all_reduce":
        if spec is None:
            shape = _dims(rng, rng.choice((1, 1, 2, 3)), MAX_BYTES // es)
        else:  # numel a multiple of the block
            rows, inner = _rows_and_inner(rng, 1, dtype, unit)
            shape = (rows,) + inner
        vec_bytes = -(-math.prod(shape) * es // 16) * 16
        algs = [a for a in algorithms(op, world) if a != "lamport" or vec_bytes <= LAMPORT_SLOT]
        return FuzzCall(**call, shape=shape, algorithm=_algorithm(rng, op, spec, algs))
    if op in ("reduce_scatter", "all_gather"):
        rows, inner = _rows_and_inner(rng, world, dtype, unit)  # each rank's chunk: whole units
        return FuzzCall(**call, shape=((world * rows if op == "reduce_scatter" else rows),) + inner,
                        algorithm=_algorithm(rng, op, spec, algorithms(op, world)))
    if rng.random() < 0.3:
        hidden = rng.choice((4096, 5120, 7168, 8192))  # multiples of every block
    else:
        hidden = unit * max(1, _count(rng, MAX_HIDDEN // unit))
    tokens = _count(rng, MAX_BYTES // (hidden * es))
    mode = rng.choice(RESIDUAL_MODES)
    algs = [a for a in algorithms(op, world)
            if not (mode == "sharded" and a in REPLICATED_ONLY)
            and (a != "lamport" or tokens * hidden * es <= LAMPORT_SLOT)]
    fits = spec is None or plan.pull_fused_fits(spec, hidden, es, world)  # compressed_fused_pull.ptx's stage
    return FuzzCall(**call, shape=(tokens, hidden), algorithm=_algorithm(rng, op, spec, algs, fits),
                    residual_mode=mode, residual=rng.random() < 0.8, eps=rng.choice((1e-6, 1e-5)))


# ---- the command line ------------------------------------------------------------------------

def reproducer(world: int, seed: int, index: int) -> str:
    """The one-line command that reruns call ``index`` of the run ``(seed, world)`` alone."""
    return f"python {SCRIPT} --world {world} --seed {seed} --only {index}"


def coverage(calls) -> collections.Counter:
    """How often ``calls`` drew each op, dtype, algorithm, residual mode, execution, CTA choice,
    channel, empty or one-element shape, compression (format:block, gather) and zero copy (keys
    such as ``"all_reduce algorithm=lamport"``, ``"all_gather compression=mxfp4:32"``,
    ``"all_reduce compression algorithm=pull"``, ``"reduce_scatter zero_copy algorithm=pull"``)."""
    seen = collections.Counter()
    for c in calls:
        keys = [f"op={c.op}", "graph" if c.graph else "eager", f"channel={c.channel}"]
        if c.op != "barrier":
            n = math.prod(c.shape)
            keys += [f"{c.op} dtype={c.dtype}", "ctas=None" if c.ctas is None else "ctas=int"]
            keys += ["0 elements"] if n == 0 else ["1 element"] if n == 1 else []
        q = c.compression
        if q is not None:
            keys += [f"{c.op} compression={q.format}:{q.block}", f"{c.op} compression gather={q.gather}",
                     f"{c.op} compression dtype={c.dtype}", f"{c.op} compression algorithm={c.algorithm}"]
            if c.op == "fused_allreduce_rmsnorm":
                keys.append(f"{c.op} compression residual_mode={c.residual_mode}")
        elif c.algorithm is not None:
            keys.append(f"{c.op} algorithm={c.algorithm}")
        if c.zero_copy:
            keys += [f"{c.op} zero_copy"] + ([] if q else [f"{c.op} zero_copy algorithm={c.algorithm}"])
        if c.op == "fused_allreduce_rmsnorm":
            keys.append(f"{c.op} residual_mode={c.residual_mode} residual={'yes' if c.residual else 'None'}")
        seen.update(keys)
    return seen


def failure_line(call: FuzzCall, problems) -> str:
    """One line (newlines in ``problems`` folded): the call, what went wrong, and the command
    that reruns it."""
    what = "; ".join(" ".join(str(p).split()) for p in problems)
    return f"FAIL world {call.world}: {call.describe()}: {what} | reproduce: {call.reproducer}"


def parser() -> argparse.ArgumentParser:
    """The arguments of ``scripts/fuzz.py`` (and of every reproducer line)."""
    ap = argparse.ArgumentParser(prog=SCRIPT, description="Randomised collective calls on emulated ranks (one GPU), "
                                 "checked against the references and across ranks.")
    ap.add_argument("--world", type=int, nargs="+", default=[2, 4, 8], help="world sizes, 2..8 (default 2 4 8)")
    ap.add_argument("--calls", type=int, default=10000, help="calls per world size (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    ap.add_argument("--only", type=int, metavar="K", help="run call K alone (what a failure's reproducer does)")
    ap.add_argument("--out", "--log", dest="out", metavar="FILE",
                    help="also write the header, failures, progress and the summary to FILE")
    ap.add_argument("--budget-s", type=float, metavar="S",
                    help="stop in time: at most S seconds in all, shared evenly by the world sizes not yet run")
    ap.add_argument("--timeout", type=float, default=10.0, help="CommOptions.timeout_s of the world (default 10)")
    return ap


def world_deadline(start: float, now: float, budget_s: float | None, worlds_left: int) -> float | None:
    """When the next world size's calls must stop (``time.perf_counter`` seconds): an even share of
    what is left of ``budget_s`` (counted from ``start``) for each of the ``worlds_left`` world
    sizes still to run, this one included; None without a budget."""
    if budget_s is None:
        return None
    left = max(0.0, start + budget_s - now)
    return now + left / max(1, worlds_left)


def parse_reproducer(line: str) -> tuple:
    """``(world, seed, index)`` of a ``reproducer`` line (the inverse of ``reproducer``)."""
    words = shlex.split(line)
    if words[:2] != ["python", SCRIPT]:
        raise ValueError(f"parse_reproducer: not a '{SCRIPT}' command (got {line!r})")
    args = parser().parse_args(words[2:])
    if len(args.world) != 1 or args.only is None:
        raise ValueError(f"parse_reproducer: a reproducer names one world and --only (got {line!r})")
    return args.world[0], args.seed, args.only
