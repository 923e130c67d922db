"""Benchmarks of weave_nvshmem against NCCL and torch symmetric memory, all in CUDA graphs.

Run one process per GPU::

    torchrun --nproc-per-node=4 -m weave_nvshmem.bench {allreduce,fused,reducescatter,allgather,all} --out bench/ [--quick]
    python -m weave_nvshmem.bench plot bench/allreduce-nvidia-h200-w4.json   # redraw PNG + markdown

Method (identical for every variant, ours and baselines):

* Inputs: bf16, fresh ``torch.randn``-distributed data (``normal_`` from a seeded generator) in
  ``n_sets`` distinct input sets per size, enough that their total exceeds 2x the L2 (60 MB) or,
  for small sizes, ``--max-sets`` sets. Seeds depend on (size, rank) only, so every variant sees
  the same inputs on a given rank.
* One CUDA graph per (variant, size) of ``calls`` back-to-back calls, call j on set j % n_sets.
* Before every replay (untimed): all input sets (x and residual) are regenerated from their seeds
  ("reset" policy: in-place all-reduces grow the data by world^uses and the residual grows
  additively; resetting keeps every value finite and every replay identical), a 2xL2 buffer is
  rewritten to evict the inputs from L2, and ranks are aligned by a device-side barrier.
* ``dist.barrier()`` before each op's replays; 3 warm-up + 25 timed replays (``--quick``: 2 + 12;
  sets >= 64 MB: 2 sets, 10 calls per graph, at most 10 timed replays), each timed with CUDA events.
  ``--budget-s`` (default 190 s quick, 420 s full) skips the remaining sizes, recording why.
  Figure = median over replays of (replay time / calls), in microseconds, on rank 0 ("us"); the max
  over ranks of the per-rank medians is "us_max_rank".
* Any failure (warm-up, capture, replay) is agreed on by all ranks and recorded as an error string
  in that row; the run goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

KB, MB = 1 << 10, 1 << 20
L2_BYTES = 60 * MB
TOKENS_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TOKENS_QUICK = (1, 16, 128, 1024, 8192)
AR_HIDDEN = 8192
FUSED_HIDDENS = (8192, 5120)
RAW_BYTES = tuple(4 ** k for k in range(6, 15))  # 4 KiB .. 256 MiB
AR_CTAS = (2, 4, 8, 16, 32, 64)
AR_CTA_TOKENS = (1024, 8192)
FUSED_CTAS = (2, 4, 8, 16, 32, 64)
FUSED_CTA_MIN_TOKENS = 1024
#: the tune command: CTA counts tried per algorithm, and how much slower than the best a choice with
#: fewer CTAs may be (CTAs the collective leaves free run the GEMMs beside it)
TUNE_CTAS = (2, 4, 8, 16, 32, 64)
TUNE_TOLERANCE = 0.03
#: the variants swept over CTA counts (fused: bulk at every hidden size, twoshot at AR_HIDDEN)
SWEPT = ("ours_bulk", "ours_twoshot")
ONESHOT_MAX_BYTES = 64 * MB  # ours oneshot all-reduce only up to this size
LARGE_SET_BYTES = 64 * MB  # sets at least this big get fewer calls / replays
EPS = 1e-6
SCHEMA = "weave_nvshmem.bench/1"

AR_VARIANTS = ("ours_auto", "ours_lamport", "ours_oneshot", "ours_twoshot", "ours_bulk", "ours_zerocopy", "nccl",
               "symm_oneshot", "symm_twoshot")
AR_BASELINES = ("nccl", "symm_oneshot", "symm_twoshot")
FUSED_VARIANTS = ("ours_auto", "ours_sharded", "ours_lamport", "ours_oneshot", "ours_twoshot", "ours_bulk", "ours_zerocopy",
                  "nccl_add_rmsnorm",
                  "symm_add_rmsnorm", "ours_ar_add_rmsnorm", "add_rmsnorm")
FUSED_BASELINES = ("nccl_add_rmsnorm", "symm_add_rmsnorm", "ours_ar_add_rmsnorm")
#: reduce_scatter / all_gather of a tokens x AR_HIDDEN tensor (the full one; each rank holds 1/W)
SG_TOKENS = (16, 128, 1024, 4096, 8192, 16384)
SG_TOKENS_QUICK = (128, 8192)
SG_VARIANTS = {"reducescatter": ("ours_auto", "ours_zerocopy", "nccl"), "allgather": ("ours_auto", "nccl")}
#: per benchmark: (variants, baselines of the speedup columns)
SERIES = {"allreduce": (AR_VARIANTS, AR_BASELINES), "fused": (FUSED_VARIANTS, FUSED_BASELINES),
          "reducescatter": (SG_VARIANTS["reducescatter"], ("nccl",)), "allgather": (SG_VARIANTS["allgather"], ("nccl",))}
BENCHES = ("allreduce", "fused", "reducescatter", "allgather")
LABELS = {
    "ours_auto": "ours auto", "ours_oneshot": "ours oneshot", "ours_twoshot": "ours twoshot", "ours_bulk": "ours bulk",
    "ours_lamport": "ours lamport", "ours_zerocopy": "ours 2shot zero-copy",
    "ours_sharded": "ours sharded", "nccl": "NCCL", "symm_oneshot": "symm 1shot", "symm_twoshot": "symm 2shot",
    "nccl_add_rmsnorm": "A: NCCL+add+norm", "symm_add_rmsnorm": "B: symm2shot+add+norm",
    "ours_ar_add_rmsnorm": "C: ours AR+add+norm", "add_rmsnorm": "add+norm only",
}


# ---------------------------------------------------------------------------------------------
# small helpers (no GPU)
# ---------------------------------------------------------------------------------------------
def _err(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    msg = " ".join(msg.split())
    return msg[:500]


def _median(xs):
    return statistics.median(xs) if xs else None


def _pct(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _slug(name: str) -> str:
    from .collectives.plan import device_slug

    return device_slug(name) or "unknown"


def _git_commit() -> str:
    """HEAD of the checkout, or $WEAVE_NVSHMEM_COMMIT where the tree travelled without .git."""
    if os.environ.get("WEAVE_NVSHMEM_COMMIT"):
        return os.environ["WEAVE_NVSHMEM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return "unknown"


def _dist_version(*names):
    from importlib import metadata

    for n in names:
        try:
            return f"{n} {metadata.version(n)}"
        except Exception:  # noqa: BLE001
            continue
    return None


def _fmt_bytes(b) -> str:
    if b is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", MB), ("KB", KB)):
        if b >= size:
            v = b / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{b} B"


def _sets_for(set_bytes: int, s: dict) -> tuple[int, int, int, int]:
    """(n_sets, calls per graph, warm-up replays, timed replays) for one input set of ``set_bytes``.

    Deterministic in its arguments: every rank derives the same counts (they include collectives).
    """
    need = -(-2 * s["l2_bytes"] // max(1, set_bytes)) + 1
    n_sets = max(2, min(need, s["max_sets"]))
    if set_bytes >= LARGE_SET_BYTES:
        return 2, s["calls_large"], min(2, s["warmup"]), min(10, s["replays"])
    calls = min(max(s["calls"], n_sets), s["max_calls"])
    n_sets = min(n_sets, calls)
    return n_sets, calls, s["warmup"], s["replays"]


def _plan_dict(fn, *args, **kw):
    try:
        p = fn(*args, **kw)
        return {"algorithm": p.algorithm, "grid": p.grid, "block": p.block, "vpt": p.vpt}
    except Exception as exc:  # noqa: BLE001
        return {"error": _err(exc)}


# ---------------------------------------------------------------------------------------------
# distributed context
# ---------------------------------------------------------------------------------------------
class Ctx:
    """Everything a rank needs: process groups, our communicator, torch symm buffer, scratch."""

    def __init__(self, args, settings):
        import torch
        import torch.distributed as dist

        self.args, self.s = args, settings
        self.t0 = time.perf_counter()
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                     ("MASTER_PORT", "29517")):
            os.environ.setdefault(k, v)  # plain `python -m` runs as a single rank
        self.local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank)
        dist.init_process_group("nccl", device_id=self.device,
                                timeout=datetime.timedelta(seconds=args.nccl_timeout_s))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        try:  # control traffic (agreements) on gloo, independent of the GPU streams
            self.ctrl = dist.new_group(backend="gloo")
        except Exception:  # noqa: BLE001
            self.ctrl = None
        self.group_name = dist.group.WORLD.group_name
        props = torch.cuda.get_device_properties(self.device)
        self.device_name = props.name
        self.l2_prop = int(getattr(props, "L2_cache_size", 0) or 0)
        self.tiny = torch.zeros(1, dtype=torch.float32, device=self.device)
        self.flush_buf = torch.empty(2 * max(self.l2_prop, L2_BYTES), dtype=torch.uint8, device=self.device)
        self.flush_buf.random_(0, 256)  # random bytes: rewriting them evicts the inputs from L2
        self.comm = None
        self.comm_err = None
        self.wn = None
        self.reserved = 0
        self.symm_flat = None
        self.symm_err = None
        self.zc_flat = None  # input sets on our heap (the zero-copy variants)
        self.zc_err = None
        self.rebuilds = 0

    # ---- logging / agreement -------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def gather(self, obj) -> list:
        import torch.distributed as dist

        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.ctrl)
        return out

    def agree(self, err):
        """All ranks' error strings -> the first one (prefixed by its rank), or None if all ok."""
        errs = self.gather(err)
        for r, e in enumerate(errs):
            if e:
                return f"rank {r}: {e}"
        return None

    def decide(self, value):
        """Rank 0's ``value`` on every rank."""
        return self.gather(value)[0]

    # ---- our communicator ------------------------------------------------------------------
    def start_ours(self, reserve_bytes: int) -> None:
        def start():
            import weave_nvshmem as wn

            self.wn = wn
            wn.init()

        err = self.agree(self._try(start))
        if err:
            self.comm_err = f"weave_nvshmem.init failed: {err}"
            self.log(self.comm_err)
            return
        self.reserved = reserve_bytes
        self._make_comm()

    def _make_comm(self) -> None:
        made = []

        def make():
            comm = self.wn.Communicator(self.wn.CommOptions(timeout_s=self.args.timeout_s, channels=1))
            made.append(comm)
            comm.reserve(self.reserved)

        err = self.agree(self._try(make))
        if err:
            self.comm, self.comm_err = None, f"Communicator/reserve({self.reserved}) failed: {err}"
            self.log(self.comm_err)
        else:
            self.comm, self.comm_err = made[0], None

    def comm_broken_local(self) -> bool:
        if self.comm is None:
            return False
        try:
            self.comm.check()
            return False
        except Exception:  # noqa: BLE001
            return True

    def rebuild_comm(self) -> None:
        """Collective: close a communicator that timed out on some rank and build a fresh one."""
        import torch
        import torch.distributed as dist

        self.rebuilds += 1
        self.log(f"rebuilding the communicator (rebuild #{self.rebuilds})")
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001
            pass
        if self.comm is not None:
            try:
                if self.comm_broken_local() and self.world > 1:
                    dist.barrier()  # matches the barrier close() makes on the ranks that are not broken
                self.comm.close()
            except Exception:  # noqa: BLE001
                pass
        self.comm = None
        if self.rebuilds > 2:
            self.comm_err = "communicator broke repeatedly; ours disabled for the rest of the run"
            return
        self._make_comm()

    def check_comm(self) -> None:
        if self.comm is not None:
            self.comm.check()

    def start_zero_copy(self, nbytes: int) -> None:
        """Input sets on our symmetric heap, read in place by the peers (zero-copy variants)."""
        import torch

        if self.comm is None:
            self.zc_err = self.comm_err or "communicator unavailable"
            return
        made = []
        err = self.agree(self._try(lambda: made.append(self.wn.empty((max(8, nbytes // 2),), torch.bfloat16))))
        if err:
            self.zc_err = f"symmetric input buffer of {_fmt_bytes(nbytes)} failed: {err}"
            self.log(self.zc_err)
        else:
            self.zc_flat = made[0]

    # ---- torch symmetric memory ------------------------------------------------------------
    def start_symm(self, nbytes: int) -> None:
        import torch

        err = None
        if self.args.no_symm:
            self.symm_err = "disabled by --no-symm"
            return
        try:
            import torch.distributed._symmetric_memory as symm_mem

            if hasattr(symm_mem, "enable_symm_mem_for_group"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    symm_mem.enable_symm_mem_for_group(self.group_name)
            flat = symm_mem.empty(max(8, nbytes // 2), dtype=torch.bfloat16, device=self.device)
            symm_mem.rendezvous(flat, self.group_name)
            self.symm_flat = flat
        except Exception as exc:  # noqa: BLE001
            err = _err(exc)
        err = self.agree(err)
        if err:
            self.symm_flat, self.symm_err = None, f"torch symm_mem unavailable: {err}"
            self.log(self.symm_err)

    # ---- per-replay preparation ------------------------------------------------------------
    def flush_l2(self) -> None:
        self.flush_buf.add_(1)

    def align(self) -> None:
        """Device-side alignment of all ranks right before a timed replay."""
        import torch.distributed as dist

        if self.world == 1:
            return
        if self.comm is not None:
            self.comm.barrier()
        else:
            dist.all_reduce(self.tiny)

    # ---- the measurement -------------------------------------------------------------------
    def measure(self, call, refresh, n_sets, calls, warmup, replays) -> dict:
        """Graph of ``calls`` calls ``call(j % n_sets)``; median per-call us. Collective, never raises."""
        import torch
        import torch.distributed as dist

        res = {"n_sets": n_sets, "calls_per_graph": calls, "warmup_replays": warmup, "replays": replays}
        # 1) eager warm-up on a side stream (lazy inits, kernel JIT, errors surface here)
        def warm_up():
            refresh()
            cur = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(cur)
            with torch.cuda.stream(side):
                for i in range(min(n_sets, 2)):
                    call(i)
            cur.wait_stream(side)
            torch.cuda.synchronize()
            self.check_comm()

        err = self._attempt("warm-up", warm_up)
        if err:
            res["error"] = err
            return res
        # 2) capture
        graph = torch.cuda.CUDAGraph()

        def capture():
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                for j in range(calls):
                    call(j % n_sets)
            torch.cuda.synchronize()

        err = self._attempt("capture", capture)
        if err:
            res["error"] = err
            return res
        # 3) timed replays
        times = []
        try:
            torch.cuda.synchronize()
            dist.barrier()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(replays)]
            for k in range(warmup + replays):
                refresh()
                self.flush_l2()
                self.align()
                if k >= warmup:
                    events[k - warmup][0].record()
                graph.replay()
                if k >= warmup:
                    events[k - warmup][1].record()
            torch.cuda.synchronize()
            self.check_comm()
            times = [a.elapsed_time(b) * 1e3 / calls for a, b in events]
        except Exception as exc:  # noqa: BLE001
            err = _err(exc)
            times = []
            if self.args.verbose:
                traceback.print_exc()
        finally:
            graph.reset()  # free the graph's memory before any communicator rebuild
        med = _median(times)
        gathered = self.gather((err, med, self.comm_broken_local()))
        errs = [f"rank {r}: {g[0]}" for r, g in enumerate(gathered) if g[0]]
        if any(g[2] for g in gathered):
            self.rebuild_comm()
        if errs:
            res["error"] = f"replay: {errs[0]}"
            return res
        meds = [g[1] for g in gathered]
        # us: rank 0's median; us_min / us_p90: spread of this rank's replays (rank 0 writes the JSON)
        res.update(us=meds[0], us_max_rank=max(meds), us_ranks=meds, us_min=min(times), us_p90=_pct(times, 0.9),
                   error=None)
        return res

    def _try(self, fn):
        """Run ``fn``; this rank's error text, or None. The run goes on either way."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            if self.args.verbose:
                traceback.print_exc()
            return _err(exc)
        return None

    def _attempt(self, stage, fn):
        """Run ``fn`` on every rank; the error all ranks agree on, or None (see ``_settle``)."""
        return self._settle(stage, self._try(fn))

    def _settle(self, stage, err):
        """Agree on ``err``; rebuild our communicator if it timed out anywhere.

        A rebuild fails the measurement too: a graph captured before it would use freed workspaces.
        """
        gathered = self.gather((err, self.comm_broken_local()))
        rebuilt = any(g[1] for g in gathered)
        if rebuilt:
            self.rebuild_comm()
        for r, g in enumerate(gathered):
            if g[0]:
                return f"{stage}: rank {r}: {g[0]}"
        if rebuilt:
            return f"{stage}: our communicator timed out on rank(s) " \
                   f"{[r for r, g in enumerate(gathered) if g[1]]} and was rebuilt"
        return None


# ---------------------------------------------------------------------------------------------
# input pools
# ---------------------------------------------------------------------------------------------
class Pool:
    """``n_sets`` input sets of ``shape``: x, optionally the residual, and views of the same sets
    in the two symmetric buffers (torch symm_mem's; ours, for the zero-copy variants)."""

    def __init__(self, ctx: Ctx, shape, n_sets: int, key: int, residual: bool = False):
        import torch

        self.ctx, self.shape, self.n_sets = ctx, tuple(shape), n_sets
        n = 1
        for d in shape:
            n *= d
        self.n = n
        dev = ctx.device
        self.x = torch.empty(n_sets * n, dtype=torch.bfloat16, device=dev)
        self.xs = [self.x[i * n:(i + 1) * n].view(self.shape) for i in range(n_sets)]
        self.r = torch.empty(n_sets * n, dtype=torch.bfloat16, device=dev) if residual else None
        self.rs = [self.r[i * n:(i + 1) * n].view(self.shape) for i in range(n_sets)] if residual else None
        self.y, self.ys, self.symm_err = self._sets(ctx.symm_flat, ctx.symm_err, "torch symm")
        self.z, self.zs, self.zc_err = self._sets(ctx.zc_flat, ctx.zc_err, "our symmetric")
        self.gen = torch.Generator(device=dev)
        self.seed_x = 1_000_003 * key + 7919 * ctx.rank + 1
        self.seed_r = self.seed_x + 104_729

    def _sets(self, flat, err, what):
        """(flat prefix, per-set views, None) in a symmetric buffer, or (None, None, why not)."""
        if flat is None:
            return None, None, err
        if self.n_sets * self.n > flat.numel():
            return None, None, f"{what} buffer too small ({flat.numel()} < {self.n_sets * self.n} elements)"
        y = flat[: self.n_sets * self.n]
        return y, [y[i * self.n:(i + 1) * self.n].view(self.shape) for i in range(self.n_sets)], None

    def refresh(self, copy_to=None) -> None:
        """Regenerate the sets from their seeds; ``copy_to``: a symmetric copy of x to refresh too."""
        self.gen.manual_seed(self.seed_x)
        self.x.normal_(generator=self.gen)
        if self.r is not None:
            self.gen.manual_seed(self.seed_r)
            self.r.normal_(generator=self.gen)
        if copy_to is not None:
            copy_to.copy_(self.x)

    def bytes_per_set(self) -> int:
        return self.n * 2


def _rms_norm(x, weight, eps):
    import torch
    import torch.nn.functional as F

    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# benches
# ---------------------------------------------------------------------------------------------
def _row(ctx, series, variant, *, tokens=None, hidden=None, nbytes, **extra):
    return {"series": series, "variant": variant, "tokens": tokens, "hidden": hidden, "bytes": nbytes,
            "ctas": extra.pop("ctas", None), **extra}


def _finish_row(ctx, row, res, bus: int | None):
    """Record ``res`` in ``row`` and log it. ``bus``: NCCL's bus-bandwidth factor (all-reduce 2,
    reduce-scatter / all-gather 1: busbw = algbw * bus * (W-1)/W of the full tensor), None: none."""
    row.update(res)
    us = row.get("us")
    if us:
        row["algbw_gbps"] = row["bytes"] / us / 1e3
        if bus and ctx.world > 1:
            row["busbw_gbps"] = row["algbw_gbps"] * bus * (ctx.world - 1) / ctx.world
    what = f"{row['series']:9s} " + (f"T={row['tokens']:<6}" if row["tokens"] else f"{_fmt_bytes(row['bytes']):>8s}")
    if row.get("hidden") and not bus:
        what += f" H={row['hidden']}"
    name = row["variant"] + (f"[ctas={row['ctas']}]" if row.get("ctas") else "")
    if row.get("error"):
        ctx.log(f"{what} {name:28s} ERROR {row['error'][:160]}")
    else:
        ctx.log(f"{what} {name:28s} {row['us']:10.2f} us (max over ranks {row['us_max_rank']:.2f})")
    return row


def _skip_all(ctx, rows_spec, reason, allreduce):
    out = []
    for row in rows_spec:
        row.update(error=reason, us=None)
        out.append(row)
    if rows_spec:
        ctx.log(f"skipped {len(rows_spec)} rows: {reason}")
    return out


def _budget_exhausted(ctx) -> bool:
    if not ctx.args.budget_s:
        return False
    return bool(ctx.decide(time.perf_counter() - ctx.t0 > ctx.args.budget_s))


def bench_allreduce(ctx: Ctx, s: dict, name: str = "allreduce") -> list:
    import torch
    import torch.distributed as dist

    from .collectives import plan as planning

    rows = []
    cases = [("tokens", t, t * AR_HIDDEN * 2, (t, AR_HIDDEN)) for t in s["tokens"]]
    if not s["quick"]:
        cases += [("bytes", None, b, (b // 2,)) for b in s["raw_bytes"]]
    for idx, (series, tokens, nbytes, shape) in enumerate(cases):
        n_sets, calls, warm, reps = _sets_for(nbytes, s)
        specs = []
        for v in AR_VARIANTS:
            specs.append((_row(ctx, series, v, tokens=tokens, hidden=AR_HIDDEN if tokens else None, nbytes=nbytes),
                          v, None))
        if series == "tokens" and tokens in AR_CTA_TOKENS:
            for v in SWEPT:
                for c in AR_CTAS:
                    specs.append((_row(ctx, "cta_sweep", v, tokens=tokens, hidden=AR_HIDDEN, nbytes=nbytes, ctas=c),
                                  v, c))
        if _budget_exhausted(ctx):
            rows += _skip_all(ctx, [sp[0] for sp in specs], "skipped: --budget-s exhausted", True)
            continue
        made = {}
        err = ctx.agree(ctx._try(lambda: made.update(pool=Pool(ctx, shape, n_sets, key=100 + idx))))
        if err:
            rows += _skip_all(ctx, [sp[0] for sp in specs], f"input allocation failed: {err}", True)
            made.clear()
            torch.cuda.empty_cache()
            continue
        pool = made["pool"]
        nelem = pool.n
        for row, v, ctas in specs:
            res = None
            copy_to = pool.y if v.startswith("symm") else pool.z if v == "ours_zerocopy" else None
            if v == "ours_zerocopy":
                row.update(algorithm="twoshot", zero_copy=True,
                           plan=_plan_dict(planning.plan_all_reduce, nelem, "bf16", ctx.world, "twoshot", None))
                if pool.zs is None:
                    res = {"error": pool.zc_err or "no symmetric input buffer"}
                else:
                    def call(i):
                        ctx.comm.all_reduce(pool.zs[i], out=pool.zs[i], algorithm="twoshot")
            elif v.startswith("ours"):
                alg = v.split("_", 1)[1]
                row.update(algorithm=alg, plan=_plan_dict(planning.plan_all_reduce, nelem, "bf16", ctx.world, alg, ctas))
                if ctx.comm is None:
                    res = {"error": ctx.comm_err or "communicator unavailable"}
                elif alg == "oneshot" and nbytes > ONESHOT_MAX_BYTES:
                    res = {"error": f"skipped: oneshot only up to {_fmt_bytes(ONESHOT_MAX_BYTES)}"}
                elif alg == "lamport" and nbytes > planning.LAMPORT_SLOT:
                    res = {"error": f"skipped: lamport takes up to {_fmt_bytes(planning.LAMPORT_SLOT)}"}
                else:
                    def call(i, alg=alg, ctas=ctas):
                        ctx.comm.all_reduce(pool.xs[i], out=pool.xs[i], algorithm=alg, ctas=ctas)
            elif v == "nccl":
                def call(i):
                    dist.all_reduce(pool.xs[i])
            elif v == "symm_oneshot":
                def call(i):
                    torch.ops.symm_mem.one_shot_all_reduce(pool.ys[i], "sum", ctx.group_name)
            elif v == "symm_twoshot":
                def call(i):
                    torch.ops.symm_mem.two_shot_all_reduce_(pool.ys[i], "sum", ctx.group_name)
            if v.startswith("symm") and pool.ys is None:
                res = {"error": pool.symm_err or "torch symm_mem unavailable"}
            if res is None:
                res = ctx.measure(call, lambda copy_to=copy_to: pool.refresh(copy_to), n_sets, calls, warm, reps)
            rows.append(_finish_row(ctx, row, res, 2))
        pool = None
        made.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return rows


def bench_fused(ctx: Ctx, s: dict, name: str = "fused") -> list:
    import torch
    import torch.distributed as dist

    from .collectives import plan as planning

    rows = []
    idx = 0
    for hidden in FUSED_HIDDENS:
        wgen = torch.Generator(device=ctx.device)
        wgen.manual_seed(4242 + hidden)  # same weight on every rank (replicated, as in TP)
        weight = torch.randn(hidden, generator=wgen, device=ctx.device, dtype=torch.float32).to(torch.bfloat16)
        for tokens in s["tokens"]:
            idx += 1
            nbytes = tokens * hidden * 2
            n_sets, calls, warm, reps = _sets_for(nbytes, s)
            specs = [(_row(ctx, "tokens", v, tokens=tokens, hidden=hidden, nbytes=nbytes), v, None)
                     for v in FUSED_VARIANTS]
            if tokens >= FUSED_CTA_MIN_TOKENS:
                specs += [(_row(ctx, "cta_sweep", v, tokens=tokens, hidden=hidden, nbytes=nbytes, ctas=c), v, c)
                          for v in SWEPT if v == "ours_bulk" or hidden == AR_HIDDEN for c in FUSED_CTAS]
            if _budget_exhausted(ctx):
                rows += _skip_all(ctx, [sp[0] for sp in specs], "skipped: --budget-s exhausted", False)
                continue
            made = {}
            err = ctx.agree(ctx._try(lambda: made.update(
                pool=Pool(ctx, (tokens, hidden), n_sets, key=1000 + idx, residual=True),
                out=torch.empty((tokens, hidden), dtype=torch.bfloat16, device=ctx.device))))
            if err:
                rows += _skip_all(ctx, [sp[0] for sp in specs], f"input allocation failed: {err}", False)
                made.clear()
                torch.cuda.empty_cache()
                continue
            pool, out = made["pool"], made["out"]
            for row, v, ctas in specs:
                res = None
                copy_to = pool.y if v == "symm_add_rmsnorm" else pool.z if v == "ours_zerocopy" else None
                if v == "ours_zerocopy":
                    row.update(algorithm="twoshot", residual_mode="replicated", zero_copy=True,
                               plan=_plan_dict(planning.plan_fused, tokens, hidden, "bf16", ctx.world, "twoshot", None))
                    if pool.zs is None:
                        res = {"error": pool.zc_err or "no symmetric input buffer"}
                    else:
                        def call(i):
                            ctx.comm.fused_allreduce_rmsnorm(pool.zs[i], pool.rs[i], weight, EPS,
                                                             algorithm="twoshot", out=out)
                elif v.startswith("ours") and v != "ours_ar_add_rmsnorm":
                    alg = v.split("_", 1)[1] if v in ("ours_lamport", "ours_oneshot", "ours_twoshot", "ours_bulk") else "auto"
                    mode = "sharded" if v == "ours_sharded" else "replicated"
                    row.update(algorithm=alg, residual_mode=mode,
                               plan=_plan_dict(planning.plan_fused, tokens, hidden, "bf16", ctx.world, alg, ctas))
                    if ctx.comm is None:
                        res = {"error": ctx.comm_err or "communicator unavailable"}
                    elif alg == "lamport" and nbytes > planning.LAMPORT_SLOT:
                        res = {"error": f"skipped: lamport takes up to {_fmt_bytes(planning.LAMPORT_SLOT)}"}
                    else:
                        def call(i, alg=alg, mode=mode, ctas=ctas):
                            ctx.comm.fused_allreduce_rmsnorm(pool.xs[i], pool.rs[i], weight, EPS, residual_mode=mode,
                                                             algorithm=alg, ctas=ctas, out=out)
                elif v == "nccl_add_rmsnorm":
                    def call(i):
                        dist.all_reduce(pool.xs[i])
                        pool.rs[i].add_(pool.xs[i])
                        _rms_norm(pool.rs[i], weight, EPS)
                elif v == "symm_add_rmsnorm":
                    def call(i):
                        torch.ops.symm_mem.two_shot_all_reduce_(pool.ys[i], "sum", ctx.group_name)
                        pool.rs[i].add_(pool.ys[i])
                        _rms_norm(pool.rs[i], weight, EPS)
                elif v == "ours_ar_add_rmsnorm":
                    row.update(plan=_plan_dict(planning.plan_all_reduce, pool.n, "bf16", ctx.world, "auto", None))
                    if ctx.comm is None:
                        res = {"error": ctx.comm_err or "communicator unavailable"}
                    else:
                        def call(i):
                            ctx.comm.all_reduce(pool.xs[i], out=pool.xs[i])
                            pool.rs[i].add_(pool.xs[i])
                            _rms_norm(pool.rs[i], weight, EPS)
                elif v == "add_rmsnorm":
                    def call(i):
                        pool.rs[i].add_(pool.xs[i])
                        _rms_norm(pool.rs[i], weight, EPS)
                if v == "symm_add_rmsnorm" and pool.ys is None:
                    res = {"error": pool.symm_err or "torch symm_mem unavailable"}
                if res is None:
                    res = ctx.measure(call, lambda copy_to=copy_to: pool.refresh(copy_to), n_sets, calls, warm, reps)
                rows.append(_finish_row(ctx, row, res, None))
            pool = out = None
            made.clear()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return rows


def bench_scatter_gather(ctx: Ctx, s: dict, name: str) -> list:
    """reduce_scatter ("reducescatter") or all_gather ("allgather") of a tokens x AR_HIDDEN tensor."""
    import torch
    import torch.distributed as dist

    from .collectives import plan as planning

    rows = []
    w = ctx.world
    for idx, tokens in enumerate(s["scatter_gather_tokens"]):
        nbytes = tokens * AR_HIDDEN * 2
        full, part = (tokens, AR_HIDDEN), (tokens // w, AR_HIDDEN)
        n_sets, calls, warm, reps = _sets_for(nbytes, s)
        specs = [(_row(ctx, "tokens", v, tokens=tokens, hidden=AR_HIDDEN, nbytes=nbytes), v, None)
                 for v in SG_VARIANTS[name]]
        if tokens in AR_CTA_TOKENS:
            specs += [(_row(ctx, "cta_sweep", "ours_auto", tokens=tokens, hidden=AR_HIDDEN, nbytes=nbytes, ctas=c),
                       "ours_auto", c) for c in AR_CTAS]
        if tokens % w:
            rows += _skip_all(ctx, [sp[0] for sp in specs], f"skipped: {tokens} tokens do not split over {w} ranks",
                              True)
            continue
        if _budget_exhausted(ctx):
            rows += _skip_all(ctx, [sp[0] for sp in specs], "skipped: --budget-s exhausted", True)
            continue
        made = {}
        err = ctx.agree(ctx._try(lambda: made.update(
            pool=Pool(ctx, full if name == "reducescatter" else part, n_sets, key=2000 + idx),
            out=torch.empty(part if name == "reducescatter" else full, dtype=torch.bfloat16, device=ctx.device))))
        if err:
            rows += _skip_all(ctx, [sp[0] for sp in specs], f"input allocation failed: {err}", True)
            made.clear()
            torch.cuda.empty_cache()
            continue
        pool, out = made["pool"], made["out"]
        op = None if ctx.comm is None else ctx.comm.reduce_scatter if name == "reducescatter" else ctx.comm.all_gather
        for row, v, ctas in specs:
            res = None
            copy_to = pool.z if v == "ours_zerocopy" else None
            if v.startswith("ours"):
                row.update(algorithm="twoshot", zero_copy=v == "ours_zerocopy",
                           plan=_plan_dict(planning.plan_all_reduce, tokens * AR_HIDDEN, "bf16", w, "twoshot", ctas))
                sets = pool.zs if v == "ours_zerocopy" else pool.xs
                if ctx.comm is None:
                    res = {"error": ctx.comm_err or "communicator unavailable"}
                elif sets is None:
                    res = {"error": pool.zc_err or "no symmetric input buffer"}
                else:
                    def call(i, sets=sets, ctas=ctas):
                        op(sets[i], out=out, ctas=ctas)
            elif name == "reducescatter":
                def call(i):
                    dist.reduce_scatter_tensor(out, pool.xs[i])
            else:
                def call(i):
                    dist.all_gather_into_tensor(out, pool.xs[i])
            if res is None:
                res = ctx.measure(call, lambda copy_to=copy_to: pool.refresh(copy_to), n_sets, calls, warm, reps)
            rows.append(_finish_row(ctx, row, res, 1))
        pool = out = None
        made.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return rows


def tune_pick(times: dict, tolerance: float = TUNE_TOLERANCE):
    """The (algorithm, ctas) to use from ``times`` {(algorithm, ctas): us or None}: the fewest CTAs
    within ``tolerance`` of the fastest, then the faster; None if nothing ran."""
    ok = {k: v for k, v in times.items() if v}
    if not ok:
        return None
    best = min(ok.values())
    return min((k for k, v in ok.items() if v <= best * (1 + tolerance)), key=lambda k: (k[1], ok[k]))


def bench_tune(ctx: Ctx, s: dict, name: str = "tune") -> list:
    """Time every algorithm x TUNE_CTAS of all_reduce and the fused op (replicated residual) at
    tokens x AR_HIDDEN; one row per (op, size) with every time and rank 0's pick (broadcast)."""
    import torch
    import torch.distributed as dist

    from .collectives import plan as planning

    rows = []
    wgen = torch.Generator(device=ctx.device)
    wgen.manual_seed(4242)
    weight = torch.randn(AR_HIDDEN, generator=wgen, device=ctx.device, dtype=torch.float32).to(torch.bfloat16)
    for op, algorithms, plan_fn in (("all_reduce", planning.ALLREDUCE_ALGORITHMS, planning.plan_all_reduce),
                                    ("fused_allreduce_rmsnorm", planning.FUSED_ALGORITHMS, planning.plan_fused)):
        for idx, tokens in enumerate(s["tokens"]):
            nbytes = tokens * AR_HIDDEN * 2
            row = {"op": op, "tokens": tokens, "hidden": AR_HIDDEN, "bytes": nbytes, "measured": {}}
            rows.append(row)
            if _budget_exhausted(ctx):
                row["error"] = "skipped: --budget-s exhausted"
                continue
            n_sets, calls, warm, reps = _sets_for(nbytes, s)
            made = {}
            err = ctx.agree(ctx._try(lambda: made.update(
                pool=Pool(ctx, (tokens, AR_HIDDEN), n_sets, key=5000 + idx, residual=op != "all_reduce"),
                out=torch.empty((tokens, AR_HIDDEN), dtype=torch.bfloat16, device=ctx.device))))
            if err or ctx.comm is None:
                row["error"] = f"input allocation failed: {err}" if err else (ctx.comm_err or "no communicator")
                made.clear()
                continue
            pool, out = made["pool"], made["out"]
            times = {}
            for alg in algorithms[1:]:
                for c in TUNE_CTAS:
                    if alg == "oneshot" and nbytes > ONESHOT_MAX_BYTES:
                        continue
                    try:
                        plan_fn(*((pool.n, "bf16") if op == "all_reduce" else (tokens, AR_HIDDEN, "bf16")),
                                ctx.world, alg, c)
                    except ValueError:  # this algorithm cannot take this size
                        continue
                    if op == "all_reduce":
                        def call(i, alg=alg, c=c):
                            ctx.comm.all_reduce(pool.xs[i], out=pool.xs[i], algorithm=alg, ctas=c)
                    else:
                        def call(i, alg=alg, c=c):
                            ctx.comm.fused_allreduce_rmsnorm(pool.xs[i], pool.rs[i], weight, EPS, algorithm=alg,
                                                             ctas=c, out=out)
                    res = ctx.measure(call, lambda: pool.refresh(), n_sets, calls, warm, reps)
                    times[(alg, c)] = None if res.get("error") else res.get("us")
                    row["measured"][f"{alg}:{c}"] = res.get("us") if times[(alg, c)] else res.get("error")
            pick = [tune_pick(times)]
            if ctx.world > 1:
                dist.broadcast_object_list(pick, src=0)
            if pick[0] is None:
                row["error"] = "no configuration ran"
            else:
                row.update(algorithm=pick[0][0], ctas=pick[0][1], us=times.get(tuple(pick[0])))
                ctx.log(f"tune {op} T={tokens}: {pick[0][0]} x {pick[0][1]} CTAs, {row['us']} us")
            pool = out = None
            made.clear()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return rows


def tuning_table(rows: list, world: int, previous: dict | None = None) -> dict:
    """The planner's table from tune rows (other world sizes of ``previous`` are kept)."""
    table = {op: dict(v) for op, v in (previous or {}).items()}
    for op in ("all_reduce", "fused_allreduce_rmsnorm"):
        picks = [{"bytes": r["bytes"], "algorithm": r["algorithm"], "ctas": r["ctas"]}
                 for r in rows if r["op"] == op and r.get("algorithm")]
        if picks:
            table.setdefault(op, {})[str(world)] = sorted(picks, key=lambda r: r["bytes"])
    return table


def tune_markdown(doc: dict) -> str:
    """The picks of a tune document as a markdown table."""
    lines = [f"**tune** on {doc['world_size']}x {doc['device']} (bf16, tokens x {AR_HIDDEN}; fewest CTAs within "
             f"{TUNE_TOLERANCE:.0%} of the fastest)\n", "| op | tokens | algorithm | ctas | us |", "|---|---:|---|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {r['op']} | {r['tokens']} | {r.get('algorithm', r.get('error', '-'))} | {r.get('ctas', '-')} | "
                     f"{_f(r.get('us'))} |")
    return "\n".join(lines) + "\n"


def install_tuning(rows: list, world: int) -> Path:
    """Merge the picks into this device's table where the planner looks (plan.tuning_path())."""
    from .collectives import plan as planning

    path = planning.tuning_path()
    if path is None:
        raise RuntimeError("tune: no CUDA device, nowhere to install the table")
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(tuning_table(rows, world, previous), indent=1, sort_keys=True))
    os.replace(tmp, path)
    planning._load.cache_clear()
    return path


# ---------------------------------------------------------------------------------------------
# speedups, markdown, plot (pure functions of the JSON document; no GPU)
# ---------------------------------------------------------------------------------------------
def _index(rows):
    idx = {}
    for r in rows:
        key = (r["series"], r.get("hidden"), r.get("tokens"), r["bytes"], r["variant"], r.get("ctas"))
        idx[key] = r
    return idx


def _us(idx, series, hidden, tokens, nbytes, variant, ctas=None):
    r = idx.get((series, hidden, tokens, nbytes, variant, ctas))
    return r.get("us") if r and not r.get("error") else None


def speedups(name: str, rows: list) -> list:
    """ours_auto vs each baseline: baseline_us / ours_auto_us (> 1: ours faster), per size."""
    baselines = SERIES[name][1]
    idx = _index(rows)
    out, seen = [], set()
    for r in rows:
        if r["series"] not in ("tokens", "bytes"):
            continue
        key = (r["series"], r.get("hidden"), r.get("tokens"), r["bytes"])
        if key in seen:
            continue
        seen.add(key)
        ours = _us(idx, *key, "ours_auto")
        ours_max = idx.get(key + ("ours_auto", None), {}).get("us_max_rank")
        vs, vs_max = {}, {}
        for b in baselines:
            bu = _us(idx, *key, b)
            bm = idx.get(key + (b, None), {}).get("us_max_rank")
            vs[b] = bu / ours if (bu and ours) else None
            vs_max[b] = bm / ours_max if (bm and ours_max and bu) else None
        out.append({"series": key[0], "hidden": key[1], "tokens": key[2], "bytes": key[3], "ours_auto_us": ours,
                    "vs": vs, "vs_max_rank": vs_max})
    return out


def _f(v, digits=1):
    return "err" if v is None else f"{v:.{digits}f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def markdown(doc: dict, full: bool = True) -> str:
    """Markdown tables of one result document (``full``: also raw-bytes, CTA sweeps and errors)."""
    name, rows = doc["name"], doc["results"]
    idx = _index(rows)
    sp = {(x["series"], x["hidden"], x["tokens"], x["bytes"]): x for x in doc.get("speedups", [])}
    head = (f"**{name}** on {doc['world_size']}x {doc['device']} (bf16; median us per call, rank 0, "
            f"CUDA graphs; speedup = baseline / ours auto)\n")
    lines = [head]

    def table(series, hidden, keys, variants, baselines, first_col):
        cols = [first_col] + [LABELS[v] + " us" for v in variants] + [f"x vs {LABELS[b]}" for b in baselines]
        out = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
        for tokens, nbytes in keys:
            cells = [str(tokens) if tokens is not None else _fmt_bytes(nbytes)]
            cells += [_f(_us(idx, series, hidden, tokens, nbytes, v)) for v in variants]
            s = sp.get((series, hidden, tokens, nbytes), {}).get("vs", {})
            cells += [_x(s.get(b)) for b in baselines]
            out.append("| " + " | ".join(cells) + " |")
        return out

    def keys_of(series, hidden):
        ks = []
        for r in rows:
            if r["series"] == series and r.get("hidden") == hidden and (r.get("tokens"), r["bytes"]) not in ks:
                ks.append((r.get("tokens"), r["bytes"]))
        return ks

    if name == "allreduce":
        variants = AR_VARIANTS if full else ("ours_auto", "nccl", "symm_twoshot")
        baselines = AR_BASELINES if full else ("nccl", "symm_twoshot")
        lines.append(f"all_reduce, tokens x {AR_HIDDEN}:\n")
        lines += table("tokens", AR_HIDDEN, keys_of("tokens", AR_HIDDEN), variants, baselines, "tokens")
        if full and keys_of("bytes", None):
            lines.append("\nall_reduce, raw sizes:\n")
            lines += table("bytes", None, keys_of("bytes", None), AR_VARIANTS, AR_BASELINES, "bytes")
    elif name in SG_VARIANTS:
        lines.append(f"{'reduce_scatter' if name == 'reducescatter' else 'all_gather'}, the full tensor tokens x "
                     f"{AR_HIDDEN} (each rank holds 1/{doc['world_size']} of the rows):\n")
        lines += table("tokens", AR_HIDDEN, keys_of("tokens", AR_HIDDEN), SG_VARIANTS[name], ("nccl",), "tokens")
    else:
        variants = FUSED_VARIANTS if full else ("ours_auto", "nccl_add_rmsnorm", "symm_add_rmsnorm",
                                                 "ours_ar_add_rmsnorm")
        for hidden in FUSED_HIDDENS:
            ks = keys_of("tokens", hidden)
            if not ks:
                continue
            lines.append(f"\nfused all-reduce + residual add + RMSNorm, hidden {hidden}:\n")
            lines += table("tokens", hidden, ks, variants, FUSED_BASELINES, "tokens")
    if full:
        sweep = [r for r in rows if r["series"] == "cta_sweep"]
        if sweep:
            groups = []
            for r in sweep:
                g = (r["variant"], r.get("hidden"), r.get("tokens"))
                if g not in groups:
                    groups.append(g)
            ctas = sorted({r["ctas"] for r in sweep})
            lines.append("\nCTA sweep (fused: replicated residual), us per call:\n")
            lines.append("| variant | hidden | tokens | " + " | ".join(f"ctas={c}" for c in ctas) + " | default |")
            lines.append("|" + "---:|" * (len(ctas) + 4))
            for v, hidden, tokens in groups:
                cells = [LABELS[v], str(hidden), str(tokens)]
                for c in ctas:
                    r = next((x for x in sweep if (x["variant"], x.get("hidden"), x.get("tokens"), x["ctas"])
                              == (v, hidden, tokens, c)), None)
                    cells.append(_f(r.get("us") if r and not r.get("error") else None))
                cells.append(_f(_us(idx, "tokens", hidden, tokens, tokens * hidden * 2, v)))
                lines.append("| " + " | ".join(cells) + " |")
        errs = {}
        for r in rows:
            if r.get("error"):
                errs.setdefault((r["variant"], r["error"][:200]), 0)
                errs[(r["variant"], r["error"][:200])] += 1
        if errs:
            lines.append("\nErrors / skips:\n")
            for (v, e), n in errs.items():
                lines.append(f"- {v} ({n} rows): {e}")
    return "\n".join(lines) + "\n"


def pyplot():
    """(matplotlib.pyplot, FuncFormatter) on the Agg backend, or None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except Exception as exc:  # noqa: BLE001
        print(f"warning: matplotlib unavailable ({_err(exc)}); no plot written", file=sys.stderr, flush=True)
        return None
    return plt, FuncFormatter


def plot(doc: dict, path) -> str | None:
    """PNG of one result document: latency vs size per variant (log-log) and the CTA sweep."""
    if (mpl := pyplot()) is None:
        return None
    plt, FuncFormatter = mpl
    name, rows = doc["name"], doc["results"]
    if name == "allreduce":
        panels = [("tokens", AR_HIDDEN, "tokens", f"all_reduce, tokens x {AR_HIDDEN} bf16")]
        if any(r["series"] == "bytes" for r in rows):
            panels.append(("bytes", None, "bytes", "all_reduce, raw sizes"))
        variants = AR_VARIANTS
    elif name in SG_VARIANTS:
        panels = [("tokens", AR_HIDDEN, "tokens", f"{name}, tokens x {AR_HIDDEN} bf16 (full tensor)")]
        variants = SG_VARIANTS[name]
    else:
        panels = [("tokens", h, "tokens", f"fused AR+add+RMSNorm, hidden {h}") for h in FUSED_HIDDENS
                  if any(r["series"] == "tokens" and r.get("hidden") == h for r in rows)]
        variants = FUSED_VARIANTS
    panels.append(("cta_sweep", None, "ctas", "CTA sweep"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (series, hidden, xkey, title) in zip(axes[0], panels):
        if series == "cta_sweep":
            sweep = [r for r in rows if r["series"] == "cta_sweep"]
            groups = []
            for r in sweep:
                g = (r["variant"], r.get("hidden"), r.get("tokens"))
                if g not in groups:
                    groups.append(g)
            for v, hidden_g, tokens in groups:
                pts = sorted((r["ctas"], r["us"]) for r in sweep
                             if (r["variant"], r.get("hidden"), r.get("tokens")) == (v, hidden_g, tokens)
                             and not r.get("error") and r.get("us"))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if v == "ours_bulk" else ":", marker="o",
                            label=f"{LABELS[v]} T={tokens}" + (f" H={hidden_g}" if name == "fused" else ""))
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_yscale("log")
            ax.set_xlabel("CTAs")
            ax.set_title(title)
        else:
            for v in variants:
                pts = sorted((r[xkey], r["us"]) for r in rows if r["series"] == series and r.get("hidden") == hidden
                             and r["variant"] == v and not r.get("error") and r.get("us"))
                if pts:
                    style = "-" if v.startswith("ours") and "add" not in v else "--"
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=LABELS[v])
            ax.set_xscale("log", base=2 if xkey == "tokens" else 4)
            ax.xaxis.set_major_formatter(FuncFormatter(
                (lambda v, _: f"{v:g}") if xkey == "tokens" else (lambda v, _: _fmt_bytes(int(v)).replace(" ", ""))))
            ax.set_yscale("log")
            ax.set_xlabel("tokens" if xkey == "tokens" else "bytes")
            ax.set_title(title)
        ax.set_ylabel("us per call (median, rank 0)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"weave_nvshmem {name}: {doc['world_size']}x {doc['device']} ({doc.get('git_commit', '?')[:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_outputs(doc: dict, out_dir) -> dict:
    """JSON, markdown and PNG of one document under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['name']}-{doc['device_slug']}-w{doc['world_size']}"
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    doc["speedups"] = speedups(doc["name"], doc["results"])
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(doc, full=True))
    try:
        if plot(doc, paths["png"]) is None:
            paths.pop("png")
    except Exception as exc:  # noqa: BLE001
        print(f"warning: plot failed ({_err(exc)})", file=sys.stderr, flush=True)
        paths.pop("png")
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def _settings(args) -> dict:
    quick = bool(args.quick)
    return {
        "quick": quick,
        "dtype": "bfloat16",
        "tokens": list(TOKENS_QUICK if quick else TOKENS_FULL),
        "allreduce_hidden": AR_HIDDEN,
        "raw_bytes": [] if quick else list(RAW_BYTES),
        "fused_hiddens": list(FUSED_HIDDENS),
        "eps": EPS,
        "allreduce_cta_sweep": {"tokens": list(AR_CTA_TOKENS), "ctas": list(AR_CTAS), "variants": list(SWEPT)},
        "fused_cta_sweep": {"min_tokens": FUSED_CTA_MIN_TOKENS, "ctas": list(FUSED_CTAS), "variants": list(SWEPT),
                            "twoshot_hidden": AR_HIDDEN},
        "scatter_gather_tokens": list(SG_TOKENS_QUICK if quick else SG_TOKENS),
        "scatter_gather": "reducescatter: x = tokens x 8192 per rank, out = its 1/W rows; allgather: x = 1/W of "
                          "the rows, out = tokens x 8192; NCCL reduce_scatter_tensor / all_gather_into_tensor; "
                          "ours at its default CTAs and swept over CTAs at 1024 and 8192 tokens",
        "oneshot_max_bytes_allreduce": ONESHOT_MAX_BYTES,
        "calls": args.calls if args.calls else 20,
        "calls_large": 10,
        "max_calls": 128,
        "max_sets": args.max_sets if args.max_sets else (128 if not quick else 64),
        "warmup": args.warmup if args.warmup is not None else (3 if not quick else 2),
        "replays": args.replays if args.replays else (25 if not quick else 12),
        "large_set_bytes": LARGE_SET_BYTES,
        "l2_bytes": L2_BYTES,
        "timeout_s": args.timeout_s,
        "budget_s": args.budget_s,
        "residual_policy": "reset: before every replay (untimed) all x/residual sets are regenerated from "
                           "fixed per-(size, rank) seeds, so values stay finite and every variant and replay "
                           "sees identical inputs",
        "timing": "per replay: refresh inputs, rewrite a 2xL2 buffer, device barrier, then CUDA events "
                  "around graph.replay(); us = median over replays of replay_time / calls_per_graph",
        "zero_copy": "ours_zerocopy: the input sets live on our symmetric heap (refreshed like torch symm's); the "
                     "two-shot kernels read them on the peers in place (all-reduce in place)",
        "inplace": "ours all_reduce out=x, NCCL all_reduce and symm two_shot_all_reduce_ in place; symm "
                   "one_shot_all_reduce out of place; fused ops write a separate out and update residual",
        "baselines": {"nccl_add_rmsnorm": "dist.all_reduce(x) in place; residual.add_(x); rms_norm(residual)",
                      "symm_add_rmsnorm": "symm_mem.two_shot_all_reduce_(x on symm buffer); residual.add_; rms_norm",
                      "ours_ar_add_rmsnorm": "comm.all_reduce(x, out=x) (auto); residual.add_; rms_norm",
                      "add_rmsnorm": "residual.add_(x); rms_norm(residual) (no communication)"},
    }


def _max_bytes(what, s):
    m = 16
    if what in ("allreduce", "all", "tune"):
        m = max([m, max(s["tokens"]) * AR_HIDDEN * 2] + s["raw_bytes"])
    if what in ("fused", "all"):
        m = max(m, max(s["tokens"]) * max(FUSED_HIDDENS) * 2)
    if what in ("reducescatter", "allgather", "all"):
        m = max(m, max(s["scatter_gather_tokens"]) * AR_HIDDEN * 2)
    return m


def _symm_bytes(what, s):
    sizes = []
    if what in ("allreduce", "all"):
        sizes += [t * AR_HIDDEN * 2 for t in s["tokens"]] + s["raw_bytes"]
    if what in ("fused", "all"):
        sizes += [t * h * 2 for t in s["tokens"] for h in FUSED_HIDDENS]
    if what in ("reducescatter", "all"):
        sizes += [t * AR_HIDDEN * 2 for t in s["scatter_gather_tokens"]]
    return max((_sets_for(b, s)[0] * b for b in sizes), default=16)  # allgather, tune: none


def _versions():
    import torch

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        v["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
    except Exception as exc:  # noqa: BLE001
        v["nccl"] = f"unknown ({_err(exc)})"
    try:
        from . import __version__

        v["weave_nvshmem"] = __version__
    except Exception:  # noqa: BLE001
        pass
    v["nvshmem"] = _dist_version("nvshmem4py-cu12", "nvshmem4py-cu13", "nvshmem4py", "nvidia-nvshmem-cu12",
                                 "nvidia-nvshmem-cu13")
    v["cuda_core"] = _dist_version("cuda-core", "cuda_core")
    return v


def _env_snapshot():
    keep = ("NCCL_", "NVSHMEM_", "TORCH_SYMM_MEM", "TORCH_NCCL", "CUDA_VISIBLE", "WEAVE_NVSHMEM")
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(keep)}


def run(args) -> int:
    s = _settings(args)
    what = args.what
    names = list(BENCHES) if what == "all" else [what]
    reserve = _max_bytes(what, s)
    # NVSHMEM's heap must hold one channel of (2*world + 2) staging slots; default it generously
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    zero_copy = _symm_bytes(what, s) if what != "tune" else 0  # input sets of the zero-copy variants
    heap = 8192 + (2 * world_env + 2) * ((reserve + 255) // 256 * 256) + zero_copy + 512 * MB
    os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(heap))
    ctx = Ctx(args, s)
    rc = 0
    written = []
    tables = []
    try:
        ctx.log(f"weave_nvshmem.bench {what}{' --quick' if s['quick'] else ''}: world {ctx.world}, "
                f"{ctx.device_name}, reserve {_fmt_bytes(reserve)}, NVSHMEM_SYMMETRIC_SIZE="
                f"{os.environ.get('NVSHMEM_SYMMETRIC_SIZE')}")
        ctx.start_ours(reserve)
        if what != "tune":  # tune times ours only
            ctx.start_zero_copy(zero_copy)
            ctx.start_symm(zero_copy)
        tuning = None
        try:
            from .collectives import plan as planning

            tuning = planning._table() or None
        except Exception:  # noqa: BLE001
            pass
        common = {
            "schema": SCHEMA, "device": ctx.device_name, "device_slug": _slug(ctx.device_name),
            "world_size": ctx.world, "git_commit": _git_commit(), "versions": _versions(),
            "settings": dict(s, l2_cache_size_property=ctx.l2_prop, reserved_bytes=reserve,
                             comm_channels=1, env=_env_snapshot(), tuning_table=tuning,
                             symm_buffer_bytes=(ctx.symm_flat.numel() * 2 if ctx.symm_flat is not None else None)),
            "setup_errors": {"ours": ctx.comm_err, "symm_mem": ctx.symm_err},
        }
        for name in names:
            t_start = time.perf_counter()
            ctx.log(f"=== {name} ===")
            doc = dict(common, name=name, timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat())
            try:
                rows = {"allreduce": bench_allreduce, "fused": bench_fused, "tune": bench_tune,
                        "reducescatter": bench_scatter_gather, "allgather": bench_scatter_gather}[name](ctx, s, name)
                doc["fatal"] = None
            except Exception as exc:  # noqa: BLE001
                rows = []
                doc["fatal"] = _err(exc)
                rc = 1
                traceback.print_exc()
            doc["results"] = rows
            doc["elapsed_s"] = time.perf_counter() - t_start
            doc["communicator_rebuilds"] = ctx.rebuilds
            if ctx.rank == 0 and name == "tune":
                doc["tuning_table"] = tuning_table(rows, ctx.world)
                path = Path(args.out) / f"tune-{doc['device_slug']}-w{ctx.world}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(doc, indent=1))
                tables.append(tune_markdown(doc))
                ctx.log(f"tune: wrote {path}; installed {install_tuning(rows, ctx.world)}")
            elif ctx.rank == 0:
                paths = write_outputs(doc, args.out)
                written.append(paths)
                tables.append(markdown(doc, full=False))
                ctx.log(f"{name}: wrote {', '.join(paths.values())}")
            if doc["fatal"]:
                break
    except Exception:  # noqa: BLE001
        rc = 1
        traceback.print_exc()
    finally:
        if ctx.rank == 0 and tables:
            print("\n" + "\n".join(tables), flush=True)
        _shutdown(ctx)
    if ctx.rank == 0:
        ctx.log(f"done (rc={rc})")
    return rc


def _shutdown(ctx: Ctx) -> None:
    import torch
    import torch.distributed as dist

    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001
        pass
    ctx.symm_flat = None
    if ctx.comm is not None:
        try:
            if ctx.comm_broken_local() and ctx.world > 1:
                dist.barrier()
            ctx.comm.close()
        except Exception as exc:  # noqa: BLE001
            print(f"rank {ctx.rank}: comm.close failed: {_err(exc)}", file=sys.stderr, flush=True)
        ctx.comm = None
    if ctx.wn is not None:
        try:
            leaks = ctx.wn.finalize()
            if leaks and ctx.rank == 0:
                print(f"warning: symmetric allocations freed at finalize: {leaks}", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"rank {ctx.rank}: weave_nvshmem.finalize failed: {_err(exc)}", file=sys.stderr, flush=True)
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001
        print(f"rank {ctx.rank}: destroy_process_group failed: {_err(exc)}", file=sys.stderr, flush=True)


def replot(files) -> int:
    rc = 0
    for f in files:
        try:
            doc = json.loads(Path(f).read_text())
            paths = write_outputs(doc, Path(f).parent)
            print(markdown(doc, full=False))
            print(f"wrote {', '.join(paths.values())}")
        except Exception as exc:  # noqa: BLE001
            print(f"{f}: {_err(exc)}", file=sys.stderr)
            rc = 1
    return rc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m weave_nvshmem.bench",
        description="Graph-captured latency of weave_nvshmem all-reduce, fused all-reduce+RMSNorm, reduce-scatter and "
                    "all-gather vs NCCL and "
                    "torch symmetric memory. Run under torchrun, one process per GPU: "
                    "torchrun --nproc-per-node=N -m weave_nvshmem.bench {allreduce,fused,reducescatter,allgather,all} --out bench/ [--quick]. "
                    "Rank 0 writes <out>/<name>-<device>-w<world>.{json,md,png}. "
                    "'plot FILE.json...' redraws the PNG/markdown of saved results (no GPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=[*BENCHES, "all", "tune", "plot"],
                   help="which benchmark, 'tune' (measure every algorithm x CTA count, write the planner's "
                        "table for this device) or 'plot'")
    p.add_argument("files", nargs="*", help="result JSON files (only for 'plot')")
    p.add_argument("--out", default="bench", help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="tokens {1,16,128,1024,8192}, no raw-byte sizes, fewer replays")
    p.add_argument("--calls", type=int, default=0, help="calls per graph (0: 20; more when more input sets are needed, up to 128; >=64 MB sets: 10)")
    p.add_argument("--replays", type=int, default=0, help="timed replays (0: 25, quick 12)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up replays (default 3, quick 2)")
    p.add_argument("--max-sets", type=int, default=0, help="cap on distinct input sets per size (0: 128, quick 64)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip remaining sizes after this many seconds (default 190 quick, 420 full; 0: no limit)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="weave_nvshmem cross-rank wait timeout")
    p.add_argument("--nccl-timeout-s", type=float, default=300.0, help="torch.distributed (NCCL/gloo) timeout")
    p.add_argument("--no-symm", action="store_true", help="skip torch symmetric-memory baselines")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of recorded errors")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.what == "plot":
        if not args.files:
            parser().error("plot needs result JSON files")
        return replot(args.files)
    if args.files:
        parser().error(f"unexpected arguments: {args.files}")
    if args.budget_s is None:
        args.budget_s = 190.0 if args.quick else 420.0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
