"""The public benchmark harness: one method for every figure, ours and baselines alike.

``Harness.measure`` times a callable the same way wherever it is used (the microbenchmarks, the
norm suite, the layer benchmark, the scripts):

* one CUDA graph of ``calls`` back-to-back calls, call j on input set j % n_sets;
* before every replay (untimed): every input set is regenerated from its seed (fresh random data,
  never zeros; values stay finite however often an in-place op runs), a buffer of twice the L2 is
  rewritten to evict the inputs, and the ranks are aligned by a device-side barrier;
* whatever a captured call returns stays alive until the graph is timed, so a baseline that returns
  new tensors writes fresh memory in every call, as a forward's layers do, never one L2-resident
  buffer over and over (ours writes per-input-set outputs for the same reason);
* warm-up replays, then timed replays between CUDA events; the figure is the median over replays
  of (replay time / calls) on rank 0 (``us``), with the max over ranks of the per-rank medians
  (``us_max_rank``);
* any failure (warm-up, capture, replay) is agreed on by every rank and returned as an error
  string, so the run goes on and every rank stays in step.

``InputSets`` holds the rotated input sets; ``plan_sets`` says how many sets, calls and replays a
size gets. Choices that must be identical on every rank go through ``weave_nvshmem.testing``'s rank
agreement (``Harness.gather`` / ``first_error`` / ``rank0`` on the run's control group).
"""
from __future__ import annotations

import datetime
import os
import statistics
import time
import traceback
import warnings

from .. import testing

KB, MB = 1 << 10, 1 << 20
#: L2 bytes assumed when the device reports none (H100/H200: 50-60 MB)
L2_BYTES = 60 * MB
#: input sets of at least this many bytes get fewer calls per graph and replays
LARGE_SET_BYTES = 64 * MB


def err_text(exc: BaseException) -> str:
    """One line of at most 500 characters naming ``exc``'s type and message."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def fmt_bytes(b) -> str:
    """``b`` bytes as "4 KB", "1.5 MB", ...; "-" for None."""
    if b is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", MB), ("KB", KB)):
        if b >= size:
            v = b / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{b} B"


def timing_settings(*, quick: bool, calls=None, replays=None, warmup=None, max_sets=None) -> dict:
    """The replay counts of a run (``None``: the default of full or ``quick`` runs)."""
    return {"calls": calls or 20, "calls_large": 10, "max_calls": 128,
            "max_sets": max_sets or (64 if quick else 128),
            "warmup": warmup if warmup is not None else (2 if quick else 3),
            "replays": replays or (12 if quick else 25), "l2_bytes": L2_BYTES, "large_set_bytes": LARGE_SET_BYTES}


def plan_sets(set_bytes: int, s: dict) -> tuple[int, int, int, int]:
    """(input sets, calls per graph, warm-up replays, timed replays) for input sets of ``set_bytes``.

    Enough sets that together they exceed twice the L2 (at most ``s["max_sets"]``); pure in its
    arguments, so every rank derives the same counts.
    """
    need = -(-2 * s["l2_bytes"] // max(1, set_bytes)) + 1
    n_sets = max(2, min(need, s["max_sets"]))
    if set_bytes >= s["large_set_bytes"]:
        return 2, s["calls_large"], min(2, s["warmup"]), min(10, s["replays"])
    calls = min(max(s["calls"], n_sets), s["max_calls"])
    return min(n_sets, calls), calls, s["warmup"], s["replays"]


def heap_bytes(world: int, reserve: int, extra: int = 0, channels: int = 1) -> int:
    """NVSHMEM heap bytes for ``channels`` channels staging ``reserve`` bytes (``workspace_bytes``,
    Lamport buffers included), ``extra`` bytes of symmetric tensors, and 512 MB of slack."""
    from ..collectives.channel import workspace_bytes

    return workspace_bytes(world, reserve, channels) + extra + 512 * MB


def _dist():
    import torch.distributed as dist

    return dist


class Harness:
    """One process's benchmark context: its rank, GPU, control group, L2 flush buffer, and the
    optional resources of a run (our communicator, symmetric input buffers, torch symm_mem).

    ``distributed``: join torch.distributed (NCCL; a plain ``python`` run is one rank); False: one
    process, no process group (``world`` is 1). ``budget_s``: ``budget_exhausted()`` turns true
    after this many seconds (None or 0: never). ``verbose``: print tracebacks of recorded errors.
    """

    def __init__(self, *, distributed: bool = True, timeout_s: float = 30.0, nccl_timeout_s: float = 300.0,
                 budget_s: float | None = None, verbose: bool = False):
        import torch

        self.t0 = time.perf_counter()
        self.timeout_s, self.budget_s, self.verbose = timeout_s, budget_s, verbose
        self.distributed = distributed
        if distributed:
            for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                         ("MASTER_PORT", "29517")):
                os.environ.setdefault(k, v)  # a plain `python -m` run is one rank
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank)
        self.ctrl = None
        self.group_name = None
        if distributed:
            dist = _dist()
            dist.init_process_group("nccl", device_id=self.device, timeout=datetime.timedelta(seconds=nccl_timeout_s))
            try:  # control traffic (agreements) on gloo, apart from the GPU streams
                self.ctrl = dist.new_group(backend="gloo")
            except Exception:  # noqa: BLE001 - fall back to the NCCL group
                self.ctrl = None
            self.group_name = dist.group.WORLD.group_name
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        props = torch.cuda.get_device_properties(self.device)
        self.device_name = props.name
        self.sms = props.multi_processor_count
        self.l2_bytes = int(getattr(props, "L2_cache_size", 0) or 0)
        self.tiny = torch.zeros(1, dtype=torch.float32, device=self.device)
        self.flush_buf = torch.empty(2 * max(self.l2_bytes, L2_BYTES), dtype=torch.uint8, device=self.device)
        self.flush_buf.random_(0, 256)  # rewriting random bytes evicts the inputs from L2
        self.wn = self.comm = None
        self.comm_err = "not started"
        self.reserved = 0
        self.rebuilds = 0
        self.zc_flat, self.zc_err = None, "not started"
        self.symm_flat, self.symm_err = None, "not started"

    # ---- logging and agreement -----------------------------------------------------------
    def log(self, msg: str) -> None:
        """Print ``msg`` on rank 0 with the seconds since start."""
        if self.rank == 0:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (collective; see ``weave_nvshmem.testing.gather``)."""
        return testing.gather(obj, self.ctrl) if self.distributed else [obj]

    def first_error(self, err):
        """The first rank's error, prefixed by its rank, or None (collective)."""
        return testing.first_error(err, self.ctrl) if self.distributed else err

    def rank0(self, value):
        """Rank 0's ``value`` on every rank: the verdict of a choice measured on rank 0 (collective)."""
        return testing.rank0(value, self.ctrl) if self.distributed else value

    def try_run(self, fn) -> str | None:
        """Run ``fn``; this rank's error text, or None. Never raises."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            if self.verbose:
                traceback.print_exc()
            return err_text(exc)
        return None

    def attempt(self, stage: str, fn) -> str | None:
        """Run ``fn`` on every rank: the error every rank agrees on ("stage: rank r: ..."), or None.

        If our communicator timed out on any rank it is rebuilt, and that fails the attempt too
        (a graph captured before the rebuild would use freed workspaces).
        """
        gathered = self.gather((self.try_run(fn), self._comm_broken_local()))
        rebuilt = any(g[1] for g in gathered)
        if rebuilt:
            self.rebuild_comm()
        for r, g in enumerate(gathered):
            if g[0]:
                return f"{stage}: rank {r}: {g[0]}"
        if rebuilt:
            return f"{stage}: our communicator timed out on rank(s) {[r for r, g in enumerate(gathered) if g[1]]} " \
                   "and was rebuilt"
        return None

    def budget_exhausted(self) -> bool:
        """Whether the run's ``budget_s`` is spent (rank 0's clock decides for all)."""
        if not self.budget_s:
            return False
        return bool(self.rank0(time.perf_counter() - self.t0 > self.budget_s))

    # ---- our communicator -------------------------------------------------------------------
    def start_ours(self, reserve_bytes: int) -> None:
        """``weave_nvshmem.init()`` and a one-channel Communicator staging ``reserve_bytes``
        (collective); on failure ``comm`` stays None and ``comm_err`` says why."""
        def start():
            import weave_nvshmem as wn

            self.wn = wn
            wn.init()

        err = self.first_error(self.try_run(start))
        if err:
            self.comm_err = f"weave_nvshmem.init failed: {err}"
            self.log(self.comm_err)
            return
        self.reserved = reserve_bytes
        self._make_comm()

    def _make_comm(self) -> None:
        made = []

        def make():
            comm = self.wn.Communicator(self.wn.CommOptions(timeout_s=self.timeout_s, channels=1))
            made.append(comm)
            comm.reserve(self.reserved)

        err = self.first_error(self.try_run(make))
        if err:
            self.comm, self.comm_err = None, f"Communicator/reserve({self.reserved}) failed: {err}"
            self.log(self.comm_err)
        else:
            self.comm, self.comm_err = made[0], None

    def _comm_broken_local(self) -> bool:
        if self.comm is None:
            return False
        try:
            self.comm.check()
            return False
        except Exception:  # noqa: BLE001 - a peer timeout broke it
            return True

    def _close_comm(self) -> None:
        import torch

        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001
            pass
        if self.comm is not None:
            try:
                if self._comm_broken_local() and self.world > 1:
                    _dist().barrier()  # matches the barrier close() makes on the ranks that are not broken
                self.comm.close()
            except Exception as exc:  # noqa: BLE001
                print(f"rank {self.rank}: comm.close failed: {err_text(exc)}", flush=True)
        self.comm = None

    def rebuild_comm(self) -> None:
        """Collective: close a communicator that timed out on some rank and build a fresh one
        (after the third rebuild, ours stays disabled for the rest of the run)."""
        self.rebuilds += 1
        self.log(f"rebuilding the communicator (rebuild #{self.rebuilds})")
        self._close_comm()
        if self.rebuilds > 2:
            self.comm_err = "communicator broke repeatedly; ours disabled for the rest of the run"
            return
        self._make_comm()

    def start_zero_copy(self, nbytes: int) -> None:
        """``nbytes`` on our symmetric heap (``zc_flat``, bf16) for the zero-copy variants' inputs."""
        import torch

        if self.comm is None:
            self.zc_err = self.comm_err or "communicator unavailable"
            return
        made = []
        err = self.first_error(self.try_run(lambda: made.append(self.wn.empty((max(8, nbytes // 2),),
                                                                              torch.bfloat16))))
        if err:
            self.zc_err = f"symmetric input buffer of {fmt_bytes(nbytes)} failed: {err}"
            self.log(self.zc_err)
        else:
            self.zc_flat, self.zc_err = made[0], None

    # ---- torch symmetric memory ------------------------------------------------------------
    def start_symm(self, nbytes: int) -> None:
        """``nbytes`` of torch SymmetricMemory (``symm_flat``, bf16), rendezvoused on the world group."""
        import torch

        err = None
        if not self.distributed:
            err = "needs torch.distributed"
        else:
            try:
                import torch.distributed._symmetric_memory as symm_mem

                if hasattr(symm_mem, "enable_symm_mem_for_group"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        symm_mem.enable_symm_mem_for_group(self.group_name)
                flat = symm_mem.empty(max(8, nbytes // 2), dtype=torch.bfloat16, device=self.device)
                symm_mem.rendezvous(flat, self.group_name)
                self.symm_flat = flat
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on without it
                err = err_text(exc)
        err = self.first_error(err)
        if err:
            self.symm_flat, self.symm_err = None, f"torch symm_mem unavailable: {err}"
            self.log(self.symm_err)
        else:
            self.symm_err = None

    def disable_symm(self, reason: str) -> None:
        """Record why the torch symm_mem variants do not run."""
        self.symm_flat, self.symm_err = None, reason

    # ---- the measurement -------------------------------------------------------------------
    def flush_l2(self) -> None:
        """Rewrite twice the L2's bytes, so the next replay reads its inputs from HBM."""
        self.flush_buf.add_(1)

    def align(self) -> None:
        """Device-side alignment of all ranks right before a timed replay."""
        if self.world == 1:
            return
        if self.comm is not None:
            self.comm.barrier()
        else:
            _dist().all_reduce(self.tiny)

    def measure(self, call, refresh, n_sets: int, calls: int, warmup: int, replays: int) -> dict:
        """Time ``call(j % n_sets)`` for j < ``calls`` in one CUDA graph (see the module docstring).

        Collective: every rank calls it with the same counts. Never raises.

        Parameters
        ----------
        call : callable
            ``call(i)`` enqueues one call on input set ``i`` on the current stream (graph-capturable).
        refresh : callable
            ``refresh()`` regenerates every input set; runs untimed before every replay.
        n_sets, calls, warmup, replays : int
            Input sets, calls per graph, warm-up replays and timed replays (``plan_sets``).

        Returns
        -------
        dict
            ``{"us", "us_max_rank", "us_ranks", "us_min", "us_p90", "error": None}`` (microseconds
            per call: rank 0's median, the slowest rank's median, every rank's, rank 0's fastest and
            90th percentile) plus the counts; or ``{"error": "stage: rank r: ..."}``.
        """
        import torch

        res = {"n_sets": n_sets, "calls_per_graph": calls, "warmup_replays": warmup, "replays": replays}

        def warm_up():  # eager, on a side stream: lazy inits, compilation and errors surface here
            refresh()
            cur = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(cur)
            with torch.cuda.stream(side):
                for i in range(min(n_sets, 2)):
                    call(i)
            cur.wait_stream(side)
            torch.cuda.synchronize()
            if self.comm is not None:
                self.comm.check()

        graph = torch.cuda.CUDAGraph()
        kept = []  # every captured call's outputs (module docstring), freed with the graph

        def capture():
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                for j in range(calls):
                    kept.append(call(j % n_sets))
            torch.cuda.synchronize()

        for stage, fn in (("warm-up", warm_up), ("capture", capture)):
            err = self.attempt(stage, fn)
            if err:
                res["error"] = err
                return res
        times, err = [], None
        try:
            torch.cuda.synchronize()
            if self.world > 1:
                _dist().barrier()
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
            if self.comm is not None:
                self.comm.check()
            times = [a.elapsed_time(b) * 1e3 / calls for a, b in events]
        except Exception as exc:  # noqa: BLE001 - agreed below
            err, times = err_text(exc), []
            if self.verbose:
                traceback.print_exc()
        finally:
            kept.clear()
            graph.reset()  # free the graph's memory before any communicator rebuild
        med = statistics.median(times) if times else None
        gathered = self.gather((err, med, self._comm_broken_local()))
        if any(g[2] for g in gathered):
            self.rebuild_comm()
        errs = [f"rank {r}: {g[0]}" for r, g in enumerate(gathered) if g[0]]
        if errs:
            res["error"] = f"replay: {errs[0]}"
            return res
        meds = [g[1] for g in gathered]
        times.sort()
        res.update(us=meds[0], us_max_rank=max(meds), us_ranks=meds, us_min=times[0],
                   us_p90=times[min(len(times) - 1, round(0.9 * (len(times) - 1)))], error=None)
        return res

    # ---- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Free the communicator, finalize weave_nvshmem and leave torch.distributed. Idempotent."""
        self.symm_flat = self.zc_flat = None
        self._close_comm()
        if self.wn is not None:
            try:
                leaks = self.wn.finalize()
                if leaks and self.rank == 0:
                    print(f"warning: symmetric allocations freed at finalize: {leaks}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"rank {self.rank}: weave_nvshmem.finalize failed: {err_text(exc)}", flush=True)
            self.wn = None
        if self.distributed:
            try:
                if _dist().is_initialized():
                    _dist().destroy_process_group()
            except Exception as exc:  # noqa: BLE001
                print(f"rank {self.rank}: destroy_process_group failed: {err_text(exc)}", flush=True)


class InputSets:
    """``n_sets`` input sets rotated by ``Harness.measure``, regenerated by ``refresh``.

    Parameters
    ----------
    h : Harness
        Gives the device, the rank and the symmetric buffers.
    shape : tuple of int
        Shape of one set's tensors, e.g. ``(tokens, hidden)``.
    n_sets : int
        Number of sets (``plan_sets``).
    key : int
        Seeds depend on (``key``, rank) only, so every variant sees the same data on a rank.
    residual : bool
        Also make residual sets (``rs``).
    dtype : torch.dtype
        Of every set (default ``torch.bfloat16``).

    Attributes
    ----------
    xs, rs : list of torch.Tensor
        The sets' x and residual, each ``shape`` and ``dtype`` (``rs`` None without a residual).
    ys, zs : list of torch.Tensor or None
        Views of x's sets in torch symm_mem's buffer and in ours (zero copy), or None with
        ``symm_err`` / ``zc_err`` saying why (missing or too small).
    """

    def __init__(self, h: Harness, shape, n_sets: int, key: int, *, residual: bool = False, dtype=None):
        import torch

        dtype = dtype or torch.bfloat16
        self.shape, self.n_sets, self.dtype = tuple(shape), n_sets, dtype
        self.n = 1
        for d in self.shape:
            self.n *= d
        self.x = torch.empty(n_sets * self.n, dtype=dtype, device=h.device)
        self.xs = self._views(self.x)
        self.r = torch.empty(n_sets * self.n, dtype=dtype, device=h.device) if residual else None
        self.rs = self._views(self.r) if residual else None
        self.y, self.ys, self.symm_err = self._symmetric(h.symm_flat, h.symm_err, "torch symm")
        self.z, self.zs, self.zc_err = self._symmetric(h.zc_flat, h.zc_err, "our symmetric")
        self.gen = torch.Generator(device=h.device)
        self.seed_x = 1_000_003 * key + 7919 * h.rank + 1
        self.seed_r = self.seed_x + 104_729

    def _views(self, flat) -> list:
        return [flat[i * self.n:(i + 1) * self.n].view(self.shape) for i in range(self.n_sets)]

    def _symmetric(self, flat, err, what):
        """(flat prefix, per-set views, None) in a symmetric buffer, or (None, None, why not)."""
        if flat is None:
            return None, None, err
        nbytes = self.n_sets * self.n * self.x.element_size()
        if nbytes > flat.numel() * flat.element_size():
            return None, None, f"{what} buffer too small ({flat.numel() * flat.element_size()} < {nbytes} bytes)"
        y = flat[: nbytes // flat.element_size()]
        if y.dtype != self.dtype:
            y = y.view(self.dtype)
        return y, self._views(y), None

    def refresh(self, copy_to=None) -> None:
        """Regenerate the sets from their seeds (normal distribution); ``copy_to``: a symmetric copy
        of x (``y`` or ``z``) to refresh too."""
        self.gen.manual_seed(self.seed_x)
        self.x.normal_(generator=self.gen)
        if self.r is not None:
            self.gen.manual_seed(self.seed_r)
            self.r.normal_(generator=self.gen)
        if copy_to is not None:
            copy_to.copy_(self.x)


def replicated_weight(h: Harness, hidden: int, dtype=None, seed: int = 4242):
    """A random ``[hidden]`` norm weight, the same on every rank (replicated, as in TP)."""
    import torch

    gen = torch.Generator(device=h.device)
    gen.manual_seed(seed + hidden)
    return torch.randn(hidden, generator=gen, device=h.device, dtype=torch.float32).to(dtype or torch.bfloat16)
