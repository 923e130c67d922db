"""Launch planning: algorithm, CTA count and block size for each op, validated before launch.

Every choice is a pure function of (op, shape, dtype, world, options, tuning table), so every rank
derives the same launch configuration, which the kernels' block-pairwise protocol requires.
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..ptx.catalog import LAMPORT_SLOT, MAX_CTAS, VEC_ELEMS

#: torch dtype name -> PTX dtype
PTX_DTYPE = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
ALLREDUCE_ALGORITHMS = ("auto", "lamport", "oneshot", "twoshot", "bulk")
FUSED_ALGORITHMS = ("auto", "lamport", "oneshot", "twoshot", "bulk")
#: "bulk" (TMA bulk copies, bulk.ptx) is correct but 1.2-1.6x slower than "twoshot" at every CTA
#: count on 4xH200; on 2xH200 the fused one is 8-15% faster at 2-16 CTAs, slower at 32-64
#: (bench/*-nvidia-h200-w{2,4}.json). "auto" picks it only from a tuning table.
#: dynamic shared memory of the bulk-copy kernels (an H100/H200 block may have 227 KB; ~1 KB is static)
BULK_SMEM = 200 * 1024
#: target bytes of one bulk-copy chunk (a TMA transfer) of the all-reduce; fused chunks are single rows
BULK_CHUNK_BYTES = 16 * 1024
#: the fused two-shot kernel (fused_twoshot.ptx): 16 warps per block, its default CTA cap
TWOSHOT_BLOCK = 512
FUSED_TWOSHOT_CTAS = 64


@dataclass(frozen=True)
class Launch:
    algorithm: str
    grid: int
    block: int
    vpt: int = 1
    chunk: int = 0  # bulk: vectors (all-reduce) or rows (fused) per copy chunk
    smem: int = 0   # bulk: bytes of dynamic shared memory
    group: int = 0  # fused twoshot: warps that share one row (1..16 of the block's 16)


def ptx_dtype(dtype, op: str) -> str:
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


def device_slug(name: str) -> str:
    """File-name form of a device name ("NVIDIA H200" -> "nvidia-h200")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


#: tables measured on the lent machines, shipped with the package: {device slug: {op: {world: rows}}}
SHIPPED_TUNING = Path(__file__).with_name("tuning.json")


@functools.lru_cache(maxsize=8)
def _device_name(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


def _current_slug() -> str | None:
    """Slug of this process's CUDA device model; None without torch or CUDA."""
    try:
        import torch

        return device_slug(_device_name(torch.cuda.current_device())) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch / no CUDA: built-in rules
        return None


def tuning_path() -> Path | None:
    """Where this process's own tuning table lives: $WEAVE_NVSHMEM_TUNING, else the one the tune
    command wrote for this device model ($WEAVE_NVSHMEM_CACHE or ~/.cache/weave_nvshmem, then
    tuning/<device>.json); None without CUDA. Every rank of a homogeneous node gets the same file."""
    path = os.environ.get("WEAVE_NVSHMEM_TUNING")
    if path:
        return Path(path)
    slug = _current_slug()
    if slug is None:
        return None
    base = Path(os.environ.get("WEAVE_NVSHMEM_CACHE", Path.home() / ".cache" / "weave_nvshmem"))
    return base / "tuning" / f"{slug}.json"


@functools.lru_cache(maxsize=8)
def _load(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def _table() -> dict:
    """The tuning table, {op: {world: [{"bytes", "algorithm", "ctas"}, ...]}} ({} if none):
    $WEAVE_NVSHMEM_TUNING's file alone if set; else the table shipped for this device model, each
    (op, world) of this machine's own (the tune command's, ``tuning_path()``) taking precedence.
    Files are read once per path (``_load.cache_clear()`` after writing one)."""
    own = _load(tuning_path())
    if os.environ.get("WEAVE_NVSHMEM_TUNING"):
        return own
    shipped = _load(SHIPPED_TUNING).get(_current_slug() or "", {})
    return {op: {**shipped.get(op, {}), **own.get(op, {})} for op in set(shipped) | set(own)}


def _tuned(op: str, world: int, nbytes: int):
    """The tuned (algorithm, ctas) of the smallest measured size >= nbytes, if any."""
    rows = _table().get(op, {}).get(str(world), [])
    algorithms = ALLREDUCE_ALGORITHMS if op == "all_reduce" else FUSED_ALGORITHMS
    for row in sorted(rows, key=lambda r: r["bytes"]):
        if nbytes <= row["bytes"]:
            ok = row.get("algorithm") in algorithms[1:] and isinstance(row.get("ctas"), int) \
                and 1 <= row["ctas"] <= MAX_CTAS
            return (row["algorithm"], row["ctas"]) if ok else None  # stale or foreign rows: built-in rules
    return None


def plan_all_reduce(nelem: int, dtype: str, world: int, algorithm: str = "auto", ctas=None) -> Launch:
    op = "all_reduce"
    if algorithm not in ALLREDUCE_ALGORITHMS:
        raise ValueError(f"{op}: algorithm must be one of {ALLREDUCE_ALGORITHMS} (got {algorithm!r})")
    ctas = _check_ctas(ctas, op)
    ve = _vec_elems(dtype, op)
    nvec = -(-nelem // ve)
    nbytes = nelem * (16 // ve)
    bulk_chunk = min(BULK_CHUNK_BYTES, BULK_SMEM // (2 * world)) // 16
    bulk_ok = nelem % ve == 0
    if algorithm == "bulk" and not bulk_ok:
        raise ValueError(f"{op}: algorithm 'bulk' moves whole 16-byte vectors; {nelem} elements of {dtype} "
                         f"are not a multiple of {ve} (use 'twoshot' or 'auto')")
    if algorithm == "lamport" and nvec * 16 > LAMPORT_SLOT:
        raise ValueError(f"{op}: algorithm 'lamport' takes inputs up to {LAMPORT_SLOT} bytes (got {nbytes}); "
                         "use 'oneshot', 'twoshot' or 'auto'")
    if algorithm == "auto":
        tuned = _tuned(op, world, nbytes)
        if tuned and (tuned[0] != "bulk" or bulk_ok) and (tuned[0] != "lamport" or nvec * 16 <= LAMPORT_SLOT):
            algorithm, ctas = tuned[0], ctas or tuned[1]
        elif nvec * 16 <= LAMPORT_SLOT:
            algorithm = "lamport"
        else:
            # crossover measured on H200 (bench/allreduce-*.json): 4 MB at 2 ranks, 1 MB at 4
            algorithm = "oneshot" if nbytes <= (4 if world <= 2 else 1) * 1024 * 1024 else "twoshot"
    block = 512
    if algorithm == "bulk":
        segment = -(-nvec // world)
        chunks = -(-segment // bulk_chunk)
        return Launch(algorithm, ctas or max(1, min(16, chunks)), block, chunk=bulk_chunk, smem=BULK_SMEM)
    if ctas is None:
        per_rank = -(-nvec // world) if algorithm == "twoshot" else nvec
        # large two-shot: best measured at 32 blocks with 4 ranks, 64 with 2
        cap = (64 if world <= 2 else 32) if algorithm == "twoshot" else 16
        ctas = max(1, min(cap, -(-per_rank // (2 * block))))
    return Launch(algorithm, ctas, block)


def fused_block(hidden: int, dtype: str) -> tuple[int, int]:
    """(threads, vectors per thread) covering one row of ``hidden`` elements, <= 512 threads."""
    hvec = hidden // _vec_elems(dtype, "fused_allreduce_rmsnorm")
    for vpt in (1, 2, 4, 8):
        if hvec <= 512 * vpt:
            per_thread = -(-hvec // vpt)
            return max(32, -(-per_thread // 32) * 32), vpt
    raise ValueError(f"fused_allreduce_rmsnorm: hidden size {hidden} too large for {dtype} (max {4096 * VEC_ELEMS[dtype]})")


def plan_fused(rows: int, hidden: int, dtype: str, world: int, algorithm: str = "auto", ctas=None,
               sharded: bool = False) -> Launch:
    """One-shot (every rank normalises every row) needs the whole residual, so sharded mode is two-shot."""
    op = "fused_allreduce_rmsnorm"
    if algorithm not in FUSED_ALGORITHMS:
        raise ValueError(f"{op}: algorithm must be one of {FUSED_ALGORITHMS} (got {algorithm!r})")
    if sharded and algorithm in ("oneshot", "lamport"):
        raise ValueError(f"{op}: algorithm '{algorithm}' needs residual_mode='replicated' (every rank reads "
                         "every residual row); use 'twoshot' or 'auto' with a sharded residual")
    ctas = _check_ctas(ctas, op)
    block, vpt = fused_block(hidden, dtype)
    row_bytes = hidden * (16 // _vec_elems(dtype, op))
    nbytes = rows * row_bytes
    if algorithm == "lamport" and nbytes > LAMPORT_SLOT:
        raise ValueError(f"{op}: algorithm 'lamport' takes inputs up to {LAMPORT_SLOT} bytes (got {nbytes}); "
                         "use 'oneshot', 'twoshot' or 'auto'")
    # bulk: a phase-2 stage holds a row of every rank plus the residual row, and 2 stages must fit
    bulk_ok = 2 * (world + 1) * row_bytes <= BULK_SMEM
    if algorithm == "bulk" and not bulk_ok:
        raise ValueError(f"{op}: algorithm 'bulk' needs 2*(world+1) rows of {row_bytes} bytes in "
                         f"{BULK_SMEM} bytes of shared memory; hidden {hidden} is too large (use 'twoshot')")
    if algorithm == "auto":
        tuned = _tuned(op, world, nbytes)
        if (tuned and not (sharded and tuned[0] in ("oneshot", "lamport")) and (tuned[0] != "bulk" or bulk_ok)
                and (tuned[0] != "lamport" or nbytes <= LAMPORT_SLOT)):
            algorithm, ctas = tuned[0], ctas or tuned[1]
        elif not sharded and ((world <= 2 and rows <= 64) or rows <= 16):
            # decode sizes: every rank reduces every row; Lamport (no barrier) measured 1.4-1.9 us
            # faster than the barrier one-shot at 1-16 tokens on 2xH200 (bench/quick-5d6717c-w2)
            algorithm = "lamport" if nbytes <= LAMPORT_SLOT else "oneshot"
        else:
            algorithm = "twoshot"
    if algorithm == "bulk":
        # one row per copy chunk: phase 2 gives row lo+b+i*grid to block b, so only then are the rows
        # block b pushes (phase 1) and pulls (phase 3) the ones its pairwise barriers cover. (Chunks
        # of 2 rows raced: rows reduced before their push arrived, seen on 5-8 emulated ranks.)
        return Launch(algorithm, ctas or max(1, min(16, -(-rows // world))), block, vpt, 1, BULK_SMEM)
    if algorithm == "twoshot":
        per_rank_rows = -(-rows // world)
        ctas = ctas or max(1, min(FUSED_TWOSHOT_CTAS, per_rank_rows))
        return Launch(algorithm, ctas, TWOSHOT_BLOCK, vpt, group=row_group(-(-per_rank_rows // ctas)))
    # one row per block at a time
    return Launch(algorithm, ctas or max(1, min(16, rows)), block, vpt)


def row_group(rows_per_block: int) -> int:
    """Warps per row in the fused two-shot kernel: as few as keep every one of the block's 16
    warps busy (a warp alone walks a row in many short steps; several share it via a named barrier)."""
    groups = 1
    while groups * 2 <= min(16, rows_per_block):
        groups *= 2
    return 16 // groups


def owned_rows(rows: int, rank: int, world: int) -> range:
    """Rows of a [rows, H] tensor that ``rank`` reduces (and keeps, in sharded residual mode)."""
    return range(rows * rank // world, rows * (rank + 1) // world)


def staging_bytes(nbytes: int) -> int:
    """Bytes of one staging slot an op of ``nbytes`` input needs (slots hold a whole input)."""
    return (nbytes + 15) // 16 * 16
