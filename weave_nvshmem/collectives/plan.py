"""Launch planning: which kernel of the table an op call runs, on which grid and block, with which
flags, and why.

Every choice is a pure function of (op, shape, dtype, world, options, tuning table), so every rank
derives the same launch, which the kernels' block-pairwise protocol requires. Rules and tuning are
kept apart: an explicit ``algorithm``/``ctas`` wins; else, for ``auto``, a world of one rank has
its own path (no peers), then a tuning-table row (``tuning.pick``) if one applies, then the
built-in size rules below. ``Launch.reason`` names the one that decided.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from ..ptx import table
from ..ptx.catalog import LAMPORT_SLOT, MAX_CTAS, VEC_ELEMS
from ..ptx.table import AllReduceFlags, CompressedFlags, CompressedFusedFlags, FusedFlags, KernelSpec
from . import compression, tuning

__all__ = ["Launch", "plan_all_reduce", "plan_scatter_gather", "plan_fused", "plan_barrier", "plan_put",
           "plan_compressed", "plan_compressed_fused", "pull_fused_fits", "fused_block", "row_group", "owned_rows", "staging_bytes",
           "ptx_dtype", "ALLREDUCE_ALGORITHMS", "FUSED_ALGORITHMS", "SCATTER_GATHER_ALGORITHMS", "PULL_CTAS",
           "CE_CTAS", "pull_chunk_vectors", "LOCAL_PREFETCH_ROWS", "LOCAL_PREFETCH_GRID", "LAMPORT_SLOT"]

#: torch dtype name -> PTX dtype
PTX_DTYPE = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
#: ``algorithm=`` values: "auto" and what the kernel table offers (multicast twins are a transport
#: of "twoshot", chosen by the channel; the compressed kernels, by ``compression=``: never by name)


def _named(op: str) -> tuple:
    return ("auto",) + tuple(a for a in table.algorithms(op) if a not in compression.ALGORITHMS.values())


ALLREDUCE_ALGORITHMS = _named("all_reduce")
FUSED_ALGORITHMS = _named("fused_allreduce_rmsnorm")
#: ``algorithm=`` values of reduce_scatter and all_gather (both take the same ones)
SCATTER_GATHER_ALGORITHMS = _named("reduce_scatter")
assert SCATTER_GATHER_ALGORITHMS == _named("all_gather")
#: the pull transport (pull.ptx): its default CTA cap. Its point is a small SM footprint (an SM
#: reads up to ~199 GB/s with TMA bulk loads but writes only ~48 GB/s to peers), so 8 CTAs at most
#: unless ``ctas`` asks for more. ``auto`` never picks "pull": on one H200 (4 emulated ranks,
#: commit fcd7f3a, bench/transport-footprint-nvidia-h200.md) it was 1.1-1.5x slower than the
#: zero-copy two-shot at the same CTA count and no lighter on a GEMM beside it; what it saves
#: (remote writes) shows only over NVLink, which is not measured yet.
PULL_CTAS = 8
#: the copy-engine transport (collectives/copyengine.py): its default CTA cap (its SMs only reduce
#: and normalise the own segment; copies move the rest). ``auto`` never picks it: NVLink, where
#: the copy engines would carry the bytes, is not measured yet (on one GPU the copies run on SMs)
CE_CTAS = 8
#: the fused two-shot kernel (fused_twoshot.ptx): its block (16 warps) and default CTA cap
TWOSHOT_BLOCK = table.spec("fused_allreduce_rmsnorm", "twoshot").block
FUSED_TWOSHOT_CTAS = 64
#: the world-1 kernel (fused_local.ptx) without a residual at VPT > 1: rows per block, so its
#: prefetch of the next row keeps two rows' loads in flight, but never fewer than
#: LOCAL_PREFETCH_GRID blocks (about 2 per SM of an H200). Rows per block 1/2/4/8/16 timed on one
#: H200 (commit 129b9d8): 8 was the fastest or within 1% from 2048 to 16384 tokens (bf16 8192:
#: 0.74x -> 0.98x Inductor's speed at 2048, 0.72x -> 0.94x at 16384), one per row below 256 rows.
LOCAL_PREFETCH_ROWS, LOCAL_PREFETCH_GRID = 8, 256


@dataclass(frozen=True)
class Launch:
    """What one call of an op runs, and why (``Communicator.plan`` returns it).

    Attributes
    ----------
    op, algorithm : str
        The op and the algorithm chosen (``"copy"``: a device copy, no kernel, at world 1;
        ``"none"``: an empty input, nothing runs).
    kernel : KernelSpec or None
        The kernel-table entry (None when no kernel runs).
    dtype : str
        PTX dtype (``"bf16"``, ``"f16"``, ``"f32"``).
    world, grid, block : int
        World size, CTAs and threads per CTA (0 when no kernel runs).
    vpt, group : int
        16-byte vectors per thread per row, and warps per row, for the fused kernels.
    fmt, qblock : str, int
        The compressed kernels' format and elements per scale (``plan_compressed``), else "", 0.
    smem : int
        Bytes of dynamic shared memory.
    flags : AllReduceFlags or FusedFlags or None
        ``p_flags`` as the kernel receives it (None: the kernel has none).
    reason : str
        The rule or tuning-table row that chose the algorithm and grid.
    """

    op: str
    algorithm: str
    kernel: KernelSpec | None
    dtype: str
    world: int
    grid: int
    block: int
    vpt: int = 1
    group: int = 0
    smem: int = 0
    flags: enum.IntFlag | None = None
    reason: str = ""
    fmt: str = ""
    qblock: int = 0

    @property
    def transport(self) -> str:
        """``"p2p"``, ``"multicast"`` or ``"local"`` (``"local"`` also when no kernel runs)."""
        return self.kernel.transport if self.kernel else "local"

    @property
    def variant(self) -> dict:
        """The kernel's variant axes and their values, e.g. ``{"group": 4}``."""
        return {a: getattr(self, a) for a in self.kernel.axes} if self.kernel else {}

    @property
    def entry(self) -> str | None:
        """The PTX entry that runs, or None."""
        return self.kernel.entry_name(self.dtype, self.world, self.variant) if self.kernel else None

    def __str__(self) -> str:
        if self.kernel is None:
            return f"{self.op}: {self.algorithm} ({self.reason})"
        flags = "" if self.flags is None else f", flags {self.flags!r}"
        return (f"{self.op}: {self.algorithm} over {self.transport}, {self.entry}, grid {self.grid} x block "
                f"{self.block}{flags} ({self.reason})")


def ptx_dtype(dtype, op: str) -> str:
    """PTX dtype of a torch dtype; TypeError naming ``op`` for unsupported ones."""
    name = str(dtype).replace("torch.", "")
    if name not in PTX_DTYPE:
        raise TypeError(f"{op}: unsupported dtype {name} (expected bfloat16, float16 or float32)")
    return PTX_DTYPE[name]


def _vec_elems(dtype, op: str) -> int:
    """Elements per 16-byte vector of PTX dtype ``dtype``; TypeError naming ``op`` otherwise."""
    if dtype not in VEC_ELEMS:
        raise TypeError(f"{op}: unsupported dtype {dtype!r} (expected one of {tuple(VEC_ELEMS)})")
    return VEC_ELEMS[dtype]


def _check_ctas(ctas, op):
    if ctas is None:
        return None
    if not isinstance(ctas, int) or not 1 <= ctas <= MAX_CTAS:
        raise ValueError(f"{op}: ctas must be an int in 1..{MAX_CTAS} (got {ctas!r})")
    return ctas


def _check_algorithm(op, algorithm, world, allowed):
    if algorithm not in allowed:
        raise ValueError(f"{op}: algorithm must be one of {allowed} (got {algorithm!r})")
    if algorithm == "local" and world != 1:
        raise ValueError(f"{op}: algorithm 'local' runs only at world size 1 (got world {world}); use "
                         f"{', '.join(repr(a) for a in allowed if a != 'local')}")


def _make(op, algorithm, transport, dtype, world, grid, flags, reason, *, hidden=0, vpt=1, group=0) -> Launch:
    """The Launch of the table's (op, algorithm, transport) kernel: its block rule, its smem, and
    only the flags it honours."""
    spec = table.spec(op, algorithm, transport)
    if spec.block == "row":
        block = fused_block(hidden, dtype)[0]
    elif spec.block == "group":
        block = 32 * group
    else:
        block = spec.block
    honoured = None if spec.flags is None else type(spec.flags)(flags) & spec.flags
    return Launch(op, algorithm, spec, dtype, world, grid, block, vpt, group, spec.smem, honoured, reason)


def _copy(op, dtype, why) -> Launch:
    return Launch(op, "copy", None, dtype, 1, 0, 0, reason=f"world 1: {why}; a device copy, none when out is x")


def plan_all_reduce(nelem: int, dtype: str, world: int, algorithm: str = "auto", ctas=None, *,
                    zero_copy: bool = False, multicast: bool = False) -> Launch:
    """Plan ``all_reduce`` of ``nelem`` elements over ``world`` ranks.

    Parameters
    ----------
    nelem : int
        Elements of the input (any shape, flattened).
    dtype : str
        PTX dtype: ``"bf16"``, ``"f16"`` or ``"f32"``.
    world : int
        World size.
    algorithm : str
        One of ``ALLREDUCE_ALGORITHMS``.
    ctas : int, optional
        CTAs, 1..MAX_CTAS (default: the tuning table's or the built-in rule's).
    zero_copy : bool
        The input is symmetric (the two-shot's peers read it in place).
    multicast : bool
        The channel has a multicast address (the two-shot runs its multimem twin).

    Returns
    -------
    Launch
        ``algorithm == "copy"`` (no kernel) for ``auto`` at world 1.
    """
    op = "all_reduce"
    _check_algorithm(op, algorithm, world, ALLREDUCE_ALGORITHMS)
    ctas = _check_ctas(ctas, op)
    ve = _vec_elems(dtype, op)
    nvec = -(-nelem // ve)
    nbytes = nelem * (16 // ve)
    fits_lamport = nvec * 16 <= LAMPORT_SLOT
    if algorithm == "lamport" and not fits_lamport:
        raise ValueError(f"{op}: algorithm 'lamport' takes inputs up to {LAMPORT_SLOT} bytes (got {nbytes}); "
                         "use 'oneshot', 'twoshot' or 'auto'")
    reason = f"algorithm={algorithm!r} given"
    user_ctas = ctas
    if algorithm == "auto":
        if world == 1:
            return _copy(op, dtype, "the sum over one rank is x")
        tuned = tuning.pick(op, world, nbytes, tuple(a for a in ALLREDUCE_ALGORITHMS[1:] if a != "copyengine"))
        if tuned and (tuned.algorithm != "lamport" or fits_lamport):
            algorithm, ctas, reason = tuned.algorithm, ctas or tuned.ctas, str(tuned)
        elif fits_lamport:
            algorithm, reason = "lamport", f"rule: inputs up to one Lamport slot ({LAMPORT_SLOT} bytes)"
        else:
            # crossover measured on H200 (bench/allreduce-*.json): 4 MB at 2 ranks, 1 MB at 4
            limit = (4 if world <= 2 else 1) << 20
            algorithm = "oneshot" if nbytes <= limit else "twoshot"
            reason = f"rule: oneshot up to {limit} bytes at {world} ranks, twoshot beyond"
    if ctas is None:
        ctas, why = _all_reduce_ctas(nvec, world, algorithm)
        reason += "; " + why
    elif user_ctas is not None:
        reason += "; ctas given"
    transport = "multicast" if multicast and algorithm == "twoshot" else "p2p"
    flags = AllReduceFlags.ZERO_COPY if zero_copy else AllReduceFlags.NONE
    return _make(op, algorithm, transport, dtype, world, ctas, flags, reason)


def pull_chunk_vectors(world: int) -> int:
    """16-byte vectors of one pull.ptx chunk (a bulk load): 4096/world rounded down to a power of
    two, so a pipeline stage (world chunks) is at most 64 KB."""
    n = 4096
    while n * world > 4096:
        n //= 2
    return n


def _all_reduce_ctas(nvec: int, world: int, algorithm: str) -> tuple[int, str]:
    """The default grid of allreduce.ptx (and ce.ptx, capped at ``CE_CTAS``) and why: one CTA per
    1024 vectors a rank handles, capped; pull.ptx: one CTA per chunk of a rank's segment, at most
    ``PULL_CTAS``."""
    if algorithm == "pull":
        chunks = -(-(-(-nvec // world)) // pull_chunk_vectors(world))
        return max(1, min(PULL_CTAS, chunks)), f"grid: one CTA per pull chunk a rank reduces, at most {PULL_CTAS}"
    per_rank = -(-nvec // world) if algorithm in ("twoshot", "copyengine") else nvec
    # large two-shot: best measured at 32 blocks with 4 ranks, 64 with 2
    cap = {"twoshot": 64 if world <= 2 else 32, "copyengine": CE_CTAS}.get(algorithm, 16)
    ctas = max(1, min(cap, -(-per_rank // 1024)))
    return ctas, f"grid: one CTA per 1024 vectors a rank handles, at most {cap}"


def plan_scatter_gather(op: str, total: int, dtype: str, world: int, ctas=None, *, zero_copy: bool = False,
                        algorithm: str = "auto") -> Launch:
    """Plan ``reduce_scatter`` or ``all_gather`` (``op``): the two-shot all-reduce kernel (or
    pull.ptx) in its reduce-scatter or all-gather mode, a device copy at world 1.

    Parameters
    ----------
    op : str
        ``"reduce_scatter"`` or ``"all_gather"``.
    total : int
        Elements of the reduced (RS input / AG output) tensor; ``total / world`` per rank.
    dtype, world, ctas, zero_copy
        As in ``plan_all_reduce`` (all_gather reads no input in place: zero copy is masked off).
    algorithm : str
        One of ``SCATTER_GATHER_ALGORITHMS``; ``auto`` is ``"twoshot"`` (unmeasured rules stay out).
    """
    _check_algorithm(op, algorithm, world, SCATTER_GATHER_ALGORITHMS)
    ctas = _check_ctas(ctas, op)
    if world == 1:
        return _copy(op, dtype, "this rank's chunk is the whole tensor")
    kind = "twoshot" if algorithm == "auto" else algorithm
    nvec = -(-total // _vec_elems(dtype, op))
    ctas, why = (ctas, "ctas given") if ctas else _all_reduce_ctas(nvec, world, kind)
    flags = AllReduceFlags.ALL_GATHER if op == "all_gather" else (
        AllReduceFlags.REDUCE_SCATTER | (AllReduceFlags.ZERO_COPY if zero_copy else AllReduceFlags.NONE))
    name = "the two-shot kernel" if kind == "twoshot" else "the pull kernel (pull.ptx)"
    given = "" if algorithm == "auto" else f"algorithm={algorithm!r} given; "
    return _make(op, kind, "p2p", dtype, world, ctas, flags, f"{given}{op}: {name}'s {op} mode; {why}")


def _compressed_grid(spec, own: int, ctas, unit: str, per: int = 16, cap: int = 32) -> tuple:
    """(ctas, reason) of a compressed kernel whose rank owns ``own`` units: one CTA per ``per``."""
    reason = f"compression {spec.format}, block {spec.block}, gather {spec.gather}"
    if ctas is not None:
        return ctas, reason + "; ctas given"
    each = unit if per == 1 else f"{per} {unit}"
    return max(1, min(cap, -(-own // per))), reason + f"; grid: one CTA per {each} a rank owns, at most {cap}"


def plan_compressed(op: str, numel: int, dtype: str, world: int, spec, ctas=None, algorithm: str = "auto") -> Launch:
    """Plan a compressed ``all_reduce``, ``reduce_scatter`` or ``all_gather`` (``op``):
    compressed.ptx's entry for ``spec`` (a ``compression.CompressionSpec``), or with ``algorithm``
    ``"pull"`` compressed_pull.ptx's (the same bits); a device copy at world 1 (nothing crosses a link).

    Parameters
    ----------
    op : str
        ``"all_reduce"``, ``"reduce_scatter"`` or ``"all_gather"``.
    numel : int
        Elements of the reduced (all_gather: gathered) tensor, a multiple of ``spec.block``.
    dtype, world, ctas, algorithm
        As in ``plan_all_reduce``; ``algorithm`` ``"auto"`` or ``"pull"`` (``compression.ALGORITHMS``).

    Returns
    -------
    Launch
        ``"twoshot_q"`` (one CTA per 16 blocks a rank owns, at most 32) or ``"pull_q"`` (one per pull
        chunk, at most ``PULL_CTAS``); ``fmt``/``qblock`` the spec's.
    """
    ctas = _check_ctas(ctas, op)
    if world == 1:
        return _copy(op, dtype, "nothing crosses a link at one rank")
    ve = _vec_elems(dtype, op)
    own = -(-(numel // spec.block) // world)
    kind = compression.ALGORITHMS[algorithm]
    # compressed_pull.ptx's chunk: the blocks of a pull.ptx chunk's bytes in the input dtype
    ctas, reason = (_compressed_grid(spec, own, ctas, "blocks") if kind == "twoshot_q" else _compressed_grid(
        spec, own, ctas, "blocks (a pull chunk)", pull_chunk_vectors(world) * ve // spec.block, PULL_CTAS))
    flags = {"all_reduce": CompressedFlags.NONE, "reduce_scatter": CompressedFlags.REDUCE_SCATTER,
             "all_gather": CompressedFlags.ALL_GATHER}[op]
    if spec.gather == "input" and op == "all_reduce":
        flags |= CompressedFlags.GATHER_INPUT
    base = _make(op, kind, "p2p", dtype, world, ctas, flags, reason)
    return dataclasses.replace(base, fmt=spec.format, qblock=spec.block)


def plan_compressed_fused(rows: int, hidden: int, dtype: str, world: int, spec, ctas=None, sharded: bool = False,
                          *, residual: bool = False, algorithm: str = "auto") -> Launch:
    """Plan a compressed ``fused_allreduce_rmsnorm`` of ``[rows, hidden]`` (``hidden`` a multiple of
    ``spec.block``): compressed_fused.ptx's entry, a CTA's 16 warps on one row at a time, or with
    ``algorithm`` ``"pull"`` compressed_fused_pull.ptx's (the same bits; a row's W-1 peer rows must
    fit one 64 KB pipeline stage, ``pull_fused_fits``); at world 1 the local kernel (``plan_fused``:
    nothing crosses a link).

    Returns
    -------
    Launch
        ``algorithm`` ``"twoshot_q"`` (one CTA per row a rank owns, at most 32) or ``"pull_q"`` (at
        most ``PULL_CTAS``); ``fmt``/``qblock`` the spec's.
    """
    op = "fused_allreduce_rmsnorm"
    ctas = _check_ctas(ctas, op)
    if world == 1:
        return plan_fused(rows, hidden, dtype, world, "auto", ctas, sharded, residual=residual)
    _vec_elems(dtype, op)
    kind = compression.ALGORITHMS[algorithm]
    if kind == "pull_q" and not pull_fused_fits(spec, hidden, 16 // VEC_ELEMS[dtype], world):
        raise ValueError(f"{op}: algorithm='pull' with compression {spec.format}:{spec.block}:{spec.gather} "
                         f"takes a row's {world - 1} peer rows in one 64 KB pipeline stage; hidden {hidden} "
                         f"{dtype} at {world} ranks does not fit (use algorithm='auto')")
    ctas, reason = (_compressed_grid(spec, -(-rows // world), ctas, "row (its 16 warps on the row)", 1)
                    if kind == "twoshot_q" else
                    _compressed_grid(spec, -(-rows // world), ctas, "row (a pull job)", 1, PULL_CTAS))
    flags = CompressedFusedFlags.NONE
    for wanted, bit in ((sharded, CompressedFusedFlags.SHARDED), (residual, CompressedFusedFlags.RESIDUAL),
                        (spec.gather == "input", CompressedFusedFlags.GATHER_INPUT)):
        flags |= bit if wanted else CompressedFusedFlags.NONE
    base = _make(op, kind, "p2p", dtype, world, ctas, flags, reason)
    return dataclasses.replace(base, fmt=spec.format, qblock=spec.block)


def pull_fused_fits(spec, hidden: int, element_size: int, world: int) -> bool:
    """Whether compressed_fused_pull.ptx takes rows of ``hidden``: a stage (64 KB) holds the W-1
    peers' regions (a row's payload + its scales' 16-byte span, ``nbr*SB + 15`` rounded up to 16)
    and, input gather, one row in the input dtype."""
    nbr = hidden // spec.block
    region = nbr * spec.payload_bytes + (nbr * spec.scale_bytes + 30) // 16 * 16
    gathered = hidden * element_size if spec.gather == "input" else 0
    return (world - 1) * region <= 65536 and gathered <= 65536


def plan_barrier(world: int) -> Launch:
    """Plan ``barrier``: one CTA of 32 threads (thread t < world meets peer t)."""
    return _make("barrier", "barrier", "p2p", "", world, 1, 0, "one CTA, thread t meets peer t")


def plan_put(nbytes: int, world: int) -> Launch:
    """Plan ``put`` of ``nbytes``: copy.ptx, one CTA per 8 KB of 16-byte vectors, at most 32."""
    grid = max(1, min(32, -(-nbytes // (16 * 512))))
    return _make("put", "copy", "p2p", "", world, grid, 0, "grid: one CTA per 8 KB, at most 32")


def fused_block(hidden: int, dtype: str) -> tuple[int, int]:
    """(threads, vectors per thread) covering one row of ``hidden`` elements, <= 512 threads.

    The one-row kernels' block, whose reduction order every fused kernel follows (``p_vthreads``).
    """
    hvec = hidden // _vec_elems(dtype, "fused_allreduce_rmsnorm")
    for vpt in (1, 2, 4, 8):
        if hvec <= 512 * vpt:
            per_thread = -(-hvec // vpt)
            return max(32, -(-per_thread // 32) * 32), vpt
    raise ValueError(f"fused_allreduce_rmsnorm: hidden size {hidden} too large for {dtype} "
                     f"(max {4096 * VEC_ELEMS[dtype]})")


def plan_fused(rows: int, hidden: int, dtype: str, world: int, algorithm: str = "auto", ctas=None,
               sharded: bool = False, *, residual: bool = False, zero_copy: bool = False,
               multicast: bool = False) -> Launch:
    """Plan ``fused_allreduce_rmsnorm`` of an input ``[rows, hidden]`` over ``world`` ranks.

    Parameters
    ----------
    rows, hidden : int
        The input's shape (``hidden`` a multiple of the dtype's 16-byte vector).
    dtype, world, ctas, zero_copy, multicast
        As in ``plan_all_reduce``.
    algorithm : str
        One of ``FUSED_ALGORITHMS`` (``"local"`` only at world 1, where ``auto`` picks it;
        ``"pull"``, fused_pull.ptx, and ``"copyengine"``, ce.ptx, only by name: twoshot's bits on at
        most ``PULL_CTAS`` / ``CE_CTAS`` CTAs).
    sharded : bool
        Sharded residual (the one-shot kernels need every residual row: two-shot or local).
    residual : bool
        A residual is given (``FusedFlags.RESIDUAL``).

    Returns
    -------
    Launch
    """
    op = "fused_allreduce_rmsnorm"
    _check_algorithm(op, algorithm, world, FUSED_ALGORITHMS)
    if sharded and algorithm in ("oneshot", "lamport"):
        raise ValueError(f"{op}: algorithm '{algorithm}' needs residual_mode='replicated' (every rank reads "
                         "every residual row); use 'twoshot' or 'auto' with a sharded residual")
    ctas = _check_ctas(ctas, op)
    threads, vpt = fused_block(hidden, dtype)
    nbytes = rows * hidden * (16 // _vec_elems(dtype, op))
    if algorithm == "lamport" and nbytes > LAMPORT_SLOT:
        raise ValueError(f"{op}: algorithm 'lamport' takes inputs up to {LAMPORT_SLOT} bytes (got {nbytes}); "
                         "use 'oneshot', 'twoshot' or 'auto'")
    reason = f"algorithm={algorithm!r} given"
    user_ctas = ctas
    if algorithm == "auto":
        # auto never picks "pull" (PULL_CTAS: slower than twoshot on one GPU; NVLink not measured)
        # nor "copyengine" (CE_CTAS)
        tuned = None if world == 1 else tuning.pick(op, world, nbytes, tuple(a for a in FUSED_ALGORITHMS[1:]
                                                                              if a not in ("pull", "copyengine")))
        if world == 1:
            algorithm, reason = "local", "world 1: the single-pass local kernel (no channel, no barrier)"
        elif (tuned and tuned.algorithm != "local" and not (sharded and tuned.algorithm in ("oneshot", "lamport"))
              and (tuned.algorithm != "lamport" or nbytes <= LAMPORT_SLOT)):
            algorithm, ctas, reason = tuned.algorithm, ctas or tuned.ctas, str(tuned)
        elif not sharded and ((world <= 2 and rows <= 64) or rows <= 16):
            # decode sizes: every rank reduces every row; Lamport (no barrier) measured 1.4-1.9 us
            # faster than the barrier one-shot at 1-16 tokens on 2xH200 (bench/quick-5d6717c-w2)
            algorithm = "lamport" if nbytes <= LAMPORT_SLOT else "oneshot"
            reason = f"rule: decode size (<= {64 if world <= 2 else 16} rows at {world} ranks), " + (
                "within one Lamport slot" if algorithm == "lamport" else "beyond one Lamport slot")
        else:
            algorithm, reason = "twoshot", "rule: " + ("sharded residual" if sharded else "beyond decode sizes")
    flags = FusedFlags.NONE
    for wanted, bit in ((sharded, FusedFlags.SHARDED), (residual, FusedFlags.RESIDUAL), (zero_copy, FusedFlags.ZERO_COPY)):
        flags |= bit if wanted else FusedFlags.NONE
    kw = {"hidden": hidden, "vpt": vpt}
    if algorithm == "local":
        default, why = max(1, rows), "grid: one CTA per row"
        if not residual and vpt > 1:
            default = min(default, max(LOCAL_PREFETCH_GRID, -(-rows // LOCAL_PREFETCH_ROWS)))
            why = (f"grid: {LOCAL_PREFETCH_ROWS} rows per CTA, at least {LOCAL_PREFETCH_GRID} CTAs (no residual: "
                   "each CTA prefetches its next row)")
        transport = "local"
    elif algorithm in ("twoshot", "copyengine"):
        per_rank_rows = -(-rows // world)
        most = FUSED_TWOSHOT_CTAS if algorithm == "twoshot" else CE_CTAS
        default = max(1, min(most, per_rank_rows))
        why = f"grid: one CTA per own row, at most {most}"
        kw["group"] = row_group(-(-per_rank_rows // (ctas or default)))
        transport = "multicast" if multicast and algorithm == "twoshot" else "p2p"
    elif algorithm == "pull":
        default = max(1, min(PULL_CTAS, -(-rows // world)))
        why = f"grid: one CTA per own row, at most {PULL_CTAS} (the pull kernel, fused_pull.ptx)"
        transport = "p2p"
    else:  # one row per block at a time
        default, why = max(1, min(16, rows)), "grid: one CTA per row, at most 16"
        transport = "p2p"
    if ctas is None:
        ctas, reason = default, f"{reason}; {why}"
    elif user_ctas is not None:
        reason += "; ctas given"
    return _make(op, algorithm, transport, dtype, world, ctas, flags, reason, **kw)


def row_group(rows_per_block: int) -> int:
    """Warps per row in the fused two-shot kernel: as few as keep every one of the block's 16
    warps busy (a warp alone walks a row in many short steps; several share it via a named barrier)."""
    groups = 1
    while groups * 2 <= min(16, rows_per_block):
        groups *= 2
    return 16 // groups


def owned_rows(rows: int, rank: int, world: int) -> range:
    """Rows of a ``[rows, H]`` tensor that ``rank`` reduces (and keeps, in sharded residual mode).

    Parameters
    ----------
    rows, rank, world : int
        Row count, this rank, world size.

    Returns
    -------
    range
        ``[rows*rank//world, rows*(rank+1)//world)``: every row belongs to exactly one rank.
    """
    return range(rows * rank // world, rows * (rank + 1) // world)


def staging_bytes(nbytes: int) -> int:
    """Bytes of one staging slot an op of ``nbytes`` input needs (slots hold a whole input)."""
    return (nbytes + 15) // 16 * 16
