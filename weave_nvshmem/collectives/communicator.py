"""The Communicator: one object owns a rank's symmetric workspaces, error record and kernels.

Built collectively after ``weave_nvshmem.init()``; ops are its methods and are stream-ordered and
CUDA-graph capturable once the workspace is large enough (``reserve()`` before capturing).
Each *channel* is an independent workspace (signal pad + parity buffers): ops that may run
concurrently on different streams must use different channels.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..memory import heap
from ..memory.runtime import runtime
from ..ptx import catalog
from ..ptx.loader import HostMappedWords, KernelLibrary, launch
from . import plan as planning

OPS = {1: "barrier", 2: "all_reduce", 3: "reduce_scatter", 4: "all_gather", 5: "fused_allreduce_rmsnorm"}
OP_IDS = {v: k for k, v in OPS.items()}


@dataclass(frozen=True)
class CommOptions:
    """``timeout_s``: bound on every cross-rank wait; ``channels``: independent workspaces;
    ``initial_bytes``: staging capacity per channel reserved up front; ``multicast``: use the
    NVLink-multicast (multimem) kernels for two-shot ops where a multicast object exists (needs
    ``init(multicast=True)``; refused, falling back to P2P, when NVSHMEM_DISABLE_NVLS is set)."""

    timeout_s: float = 30.0
    channels: int = 2
    initial_bytes: int = 1 << 20
    multicast: bool = False

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"CommOptions: timeout_s must be > 0 (got {self.timeout_s})")
        if not 1 <= self.channels <= 8:
            raise ValueError(f"CommOptions: channels must be in 1..8 (got {self.channels})")
        if self.initial_bytes < 16:
            raise ValueError(f"CommOptions: initial_bytes must be >= 16 (got {self.initial_bytes})")

    @classmethod
    def of(cls, options) -> "CommOptions":
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, dict):
            return cls(**options)
        raise TypeError(f"CommOptions: expected CommOptions, dict or None (got {type(options).__name__})")


def channel_layout(world: int, cap: int) -> tuple[int, int, int]:
    """(staging capacity rounded up, offset of the Lamport buffers, total bytes) of one channel."""
    cap = (cap + 255) // 256 * 256
    lamport = catalog.DATA_OFF + (2 * world + 2) * cap  # 3 Lamport buffers of world slots follow
    return cap, lamport, lamport + 3 * world * catalog.LAMPORT_SLOT


class _Channel:
    """One workspace: control words, the signal pad the kernels synchronise on (u32 flags
    [MAX_CTAS][MAX_WORLD], zeroed here), parity-alternated staging/result buffers, then the three
    Lamport buffers (filled with the sentinel word here). Layout in ptx/catalog.py; protocols in
    ptx/kernels/barrier.ptxinc and allreduce.ptx (lamport). ``deltas[p]``: peer p's copy of any
    address in it minus the local one; ``release`` frees ``buf``."""

    def __init__(self, buf, world: int, cap: int, deltas: tuple, release):
        import torch

        self.cap, lamport, nbytes = channel_layout(world, cap)
        assert buf.numel() == nbytes and buf.dtype == torch.uint8
        buf[: catalog.DATA_OFF].zero_()
        buf[lamport:].view(torch.int32).fill_(-(1 << 31))  # every word "not yet written"
        self.buf, self.ws, self.deltas, self._release = buf, buf.data_ptr(), deltas, release
        self.mc_ws = 0  # multicast address of ws, when the multimem kernels may run

    @classmethod
    def on_heap(cls, world: int, cap: int, index: int) -> "_Channel":
        import torch

        buf = heap.empty((channel_layout(world, cap)[2],), torch.uint8, label=f"weave:channel{index}")
        alloc = heap.allocation_of(buf, op="Communicator")
        deltas = tuple(np.int64(p - alloc.base if p else 0) for p in alloc.peer_bases)
        return cls(buf, world, cap, deltas, release=heap.free)

    def map_multicast(self):
        """Multicast address of the workspace, or MulticastUnavailable (never creates one itself)."""
        from ..memory.multicast import multicast_view

        self.mc_ws = multicast_view(self.buf).data_ptr()

    def free(self):
        self._release(self.buf)
        self.buf = None


def _is_capturing() -> bool:
    import torch

    return torch.cuda.is_current_stream_capturing()


class Communicator:
    """Symmetric resources and collective ops of this rank. Collective to build and to close."""

    def __init__(self, options=None):
        rt = runtime()
        self._start(rt.rank, rt.world, rt.device_id, options)

    def _start(self, rank: int, world: int, device_id: int, options, kernels: KernelLibrary | None = None) -> None:
        import torch

        self.options = CommOptions.of(options)
        self.rank, self.world, self.device_id = rank, world, device_id
        self._kernels = kernels or KernelLibrary(self.device_id)
        self._err = HostMappedWords(4)
        self._channels = [self._new_channel(self.options.initial_bytes, i) for i in range(self.options.channels)]
        self._broken = None
        #: why the multimem kernels are not used (None when they are)
        self.multicast_reason = "not requested (CommOptions(multicast=True))"
        if self.options.multicast:
            self._map_multicast()
        torch.cuda.synchronize()
        self._sync_ranks()

    # ---- what an emulated world replaces (collectives/emulated.py) -------------------------
    def _new_channel(self, cap: int, index: int) -> _Channel:
        return _Channel.on_heap(self.world, cap, index)

    def _sync_ranks(self) -> None:
        """Host-side barrier of all ranks (collective set-up steps)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _launch(self, stream, grid: int, block: int, kernel, *args, shmem: int = 0) -> None:
        launch(stream, grid, block, kernel, *args, shmem=shmem)

    def _zero_copy(self, ch: _Channel, t) -> bool:
        """Whether the two-shot kernels may read ``t`` on the peers directly instead of having it
        pushed: ``t`` lies on the symmetric heap, mapped from every peer at the workspace's offsets.
        The caller's contract: a symmetric input is the same tensor (same offset) on every rank."""
        a = heap.lookup(t.data_ptr(), t.numel() * t.element_size())
        return a is not None and all(p and p - a.base == d for p, d in zip(a.peer_bases, ch.deltas))

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Free the workspaces (collective; synchronises the device first). Idempotent."""
        if self._channels is None:
            return
        import torch

        torch.cuda.synchronize()
        # nvshmem free is collective with an implicit barrier: no peer still uses the workspaces
        for ch in self._channels:
            ch.free()
        self._channels = None
        self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _map_multicast(self):
        """Bind every channel to its multicast address, or record why not and stay on P2P."""
        import warnings

        try:
            for ch in self._channels:
                ch.map_multicast()
            self.multicast_reason = None
        except errors.MulticastUnavailable as exc:
            for ch in self._channels:
                ch.mc_ws = 0
            self.multicast_reason = exc.reason
            warnings.warn(f"weave_nvshmem: multicast requested but unavailable ({exc.reason}); using the P2P kernels",
                          stacklevel=3)

    # ---- capacity -------------------------------------------------------------------------
    def reserve(self, nbytes: int, channel: int | None = None) -> None:
        """Make the staging of ``channel`` (all if None) hold ``nbytes`` of input. Collective.

        Call it before capturing a CUDA graph whose ops are larger than what was reserved.
        """
        import torch

        self._usable("reserve")
        targets = range(len(self._channels)) if channel is None else [self._channel_index(channel, "reserve")]
        grow = [i for i in targets if self._channels[i].cap < nbytes]
        if not grow:
            return
        if _is_capturing():
            raise RuntimeError(f"weave_nvshmem: an op needs {nbytes} bytes of staging on channel(s) {grow} "
                               "while a CUDA graph is being captured; call comm.reserve(max_bytes) on every "
                               "rank before capturing")
        torch.cuda.synchronize()
        self._sync_ranks()
        for i in grow:
            self._channels[i].free()
            self._channels[i] = self._new_channel(nbytes, i)
            if self.multicast_reason is None:
                self._channels[i].map_multicast()
        torch.cuda.synchronize()
        self._sync_ranks()

    # ---- errors ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise PeerTimeoutError if a kernel reported a timed-out wait (non-blocking read)."""
        w = self._err.words
        if w is not None and w[0]:
            exc = errors.PeerTimeoutError(OPS.get(int(w[1]), f"op{int(w[1])}"), int(w[2]), int(w[3]),
                                          self.options.timeout_s)
            self._broken = exc
            raise exc

    def synchronize(self, stream=None) -> None:
        """Wait for ``stream`` (default: the current torch stream), then ``check()``."""
        import torch

        if stream is None:
            torch.cuda.current_stream().synchronize()
        else:
            stream.synchronize()
        self.check()

    def _usable(self, op: str):
        if self._channels is None:
            raise errors.WeaveError(f"{op}: communicator is closed")
        if self._broken is not None:
            raise errors.WeaveError(f"{op}: communicator is broken by an earlier timeout ({self._broken})")
        self.check()

    def _channel_index(self, channel, op):
        if not isinstance(channel, int) or not 0 <= channel < len(self._channels):
            raise ValueError(f"{op}: channel must be an int in 0..{len(self._channels) - 1} (got {channel!r})")
        return channel

    def _common(self, ch: _Channel, op: str, timeout_s):
        t = self.options.timeout_s if timeout_s is None else float(timeout_s)
        if not t > 0:
            raise ValueError(f"{op}: timeout must be > 0 (got {t})")
        return (np.uint64(ch.ws), np.uint64(ch.cap), np.uint32(self.rank), np.uint64(int(t * 1e9)),
                np.uint64(self._err.device_ptr), np.uint32(OP_IDS[op])) + ch.deltas

    def _prepare(self, op, channel, nbytes):
        self._usable(op)
        c = self._channel_index(channel, op)
        if self._channels[c].cap < nbytes:
            self.reserve(nbytes, c)
        return self._channels[c]

    # ---- ops ------------------------------------------------------------------------------
    def barrier(self, *, channel: int = 0, timeout: float | None = None, stream=None) -> None:
        """Collective: all ranks call it; returns (stream-ordered) once every rank arrived.

        A rank that does not arrive within ``timeout`` seconds makes the waiting ranks report
        ``PeerTimeoutError`` (naming that peer) at the next ``check()``/``synchronize()``.
        """
        ch = self._prepare("barrier", channel, 0)
        k = self._kernels.kernel("barrier.ptx", f"wn_barrier_w{self.world}", None, self.world)
        self._launch(stream, 1, 32, k, *self._common(ch, "barrier", timeout))

    def put(self, dst, src, pe: int, *, stream=None) -> None:
        """Copy ``src`` (any local tensor) into PE ``pe``'s copy of symmetric ``dst``.

        Not synchronising: follow it with ``barrier()`` before ``pe`` reads. Shapes may differ;
        byte sizes must match; both contiguous and 16-byte aligned.
        """
        self._usable("put")
        dst, src = heap._as_torch(dst), heap._as_torch(src)
        _check_contiguous("put", dst=dst, src=src)
        if dst.numel() * dst.element_size() != src.numel() * src.element_size():
            raise ValueError(f"put: dst has {dst.numel() * dst.element_size()} bytes, src "
                             f"{src.numel() * src.element_size()}")
        if not 0 <= pe < self.world:
            raise ValueError(f"put: pe must be in 0..{self.world - 1} (got {pe})")
        heap.allocation_of(dst, op="put")
        for name, t in (("dst", dst), ("src", src)):
            if t.data_ptr() % 16:
                raise ValueError(f"put: {name} must be 16-byte aligned (got address {t.data_ptr():#x})")
        nbytes = dst.numel() * dst.element_size()
        if nbytes == 0:
            return
        remote = heap.peer_address(dst.data_ptr(), pe, op="put")
        k = self._kernels.kernel("copy.ptx", "wn_copy", None, 1)
        grid = max(1, min(32, -(-nbytes // (16 * 512))))
        self._launch(stream, grid, 512, k, np.uint64(remote), np.uint64(src.data_ptr()), np.uint64(nbytes))

    def all_reduce(self, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None):
        """Sum ``x`` over all ranks. Collective: same shape/dtype/algorithm/ctas on every rank.

        ``x``: any shape, bf16/fp16/fp32, contiguous, on this rank's GPU: ordinary (the kernel
        itself moves it, no copy launch) or symmetric (``weave_nvshmem.empty``, the same tensor on
        every rank: the two-shot kernel reads it on the peers in place, zero copy). ``out``: same
        shape/dtype, may be ``x`` (in place). Returns ``out`` (a new tensor if None); bitwise
        identical on all ranks.
        """
        xt, back = _to_torch(x)
        dt = self._validate("all_reduce", xt)
        o = _output("all_reduce", out, xt.shape, xt.dtype, xt.device)
        n = xt.numel()
        if n == 0:
            return back(o)
        p = planning.plan_all_reduce(n, dt, self.world, algorithm, ctas)
        ch = self._prepare("all_reduce", channel, planning.staging_bytes(n * xt.element_size()))
        x_in = _aligned(xt)
        head = (np.uint64(o.data_ptr()), np.uint64(x_in.data_ptr()), np.uint64(n))
        if p.algorithm in ("twoshot", "bulk") and ch.mc_ws:
            k = self._kernels.kernel("multimem.ptx", f"wn_allreduce_multimem_{dt}_w{self.world}", dt, self.world)
            head += (np.uint32(0), np.uint64(ch.mc_ws))
            p = dataclasses.replace(p, smem=0)
        elif p.algorithm == "bulk":
            k = self._kernels.kernel("bulk.ptx", f"wn_allreduce_bulk_{dt}_w{self.world}", dt, self.world, shmem=p.smem)
            head += (np.uint32(p.chunk), np.uint32(p.smem))
        else:
            k = self._kernels.kernel("allreduce.ptx", f"wn_allreduce_{p.algorithm}_{dt}_w{self.world}", dt, self.world)
            head += (np.uint32(4 if p.algorithm == "twoshot" and self._zero_copy(ch, x_in) else 0),)
        self._launch(_stream(stream, x), p.grid, p.block, k, *head, *self._common(ch, "all_reduce", None), shmem=p.smem)
        return back(o)

    def reduce_scatter(self, x, *, out=None, ctas=None, channel: int = 0, stream=None):
        """Sum over ranks, keep chunk ``rank`` of the flattened result. Collective.

        ``x``: [world * n, ...] (numel divisible by world, chunk bytes a multiple of 16);
        returns/out: [n, ...] (``x.shape[0] // world`` rows).
        """
        return self._scatter_gather("reduce_scatter", x, out, ctas, channel, stream)

    def all_gather(self, x, *, out=None, ctas=None, channel: int = 0, stream=None):
        """Concatenate every rank's ``x`` along dim 0 in rank order. Collective.

        ``x``: [n, ...] with n*... bytes a multiple of 16; returns/out: [world * n, ...].
        """
        return self._scatter_gather("all_gather", x, out, ctas, channel, stream)

    def _scatter_gather(self, op, x, out, ctas, channel, stream):
        xt, back = _to_torch(x)
        dt = self._validate(op, xt)
        if xt.dim() == 0:
            raise ValueError(f"{op}: x must have at least one dimension")
        if op == "reduce_scatter":
            if xt.shape[0] % self.world:
                raise ValueError(f"{op}: x.shape[0]={xt.shape[0]} is not divisible by world size {self.world}")
            shape = (xt.shape[0] // self.world,) + tuple(xt.shape[1:])
            total = xt.numel()
        else:
            shape = (xt.shape[0] * self.world,) + tuple(xt.shape[1:])
            total = xt.numel() * self.world
        chunk_bytes = total // self.world * xt.element_size()
        if chunk_bytes % 16:
            raise ValueError(f"{op}: each rank's chunk must be a multiple of 16 bytes (got {chunk_bytes}); "
                             "pad the tensor or use all_reduce")
        o = _output(op, out, shape, xt.dtype, xt.device)
        if total == 0:
            return back(o)
        p = planning.plan_all_reduce(total, dt, self.world, "twoshot", ctas)
        ch = self._prepare(op, channel, total * xt.element_size())
        x_in = _aligned(xt)
        k = self._kernels.kernel("allreduce.ptx", f"wn_allreduce_twoshot_{dt}_w{self.world}", dt, self.world)
        flags = (1 | (4 if self._zero_copy(ch, x_in) else 0)) if op == "reduce_scatter" else 2
        self._launch(_stream(stream, x), p.grid, p.block, k, np.uint64(o.data_ptr()), np.uint64(x_in.data_ptr()),
               np.uint64(total), np.uint32(flags), *self._common(ch, op, None))
        return back(o)

    def fused_allreduce_rmsnorm(self, x, residual, weight, eps: float = 1e-6, *, residual_mode: str = "replicated",
                                algorithm: str = "auto", ctas=None, out=None, channel: int = 0, stream=None):
        """``s = all_reduce(x) + residual; residual <- s; out = s * rsqrt(mean(s^2) + eps) * weight``.

        Collective: same shapes/options on every rank. ``x``: [T, H] bf16/fp16/fp32, H % 8 == 0
        (fp32: H % 4), contiguous. ``residual``: [T, H] same dtype, updated in place, or None (first
        layer: a new residual holding ``all_reduce(x)`` is returned). ``weight``: [H] same dtype.
        ``residual_mode``: "replicated" (every rank ends with all T rows) or "sharded" (rank r reads
        and writes only rows ``owned_rows(T, r, world)`` = [T*r//W, T*(r+1)//W); other rows of
        residual are left untouched). Returns ``(out, residual)``; out is bitwise identical on all
        ranks, and so are the residual rows each rank keeps, whatever the algorithm and CTA count.
        A symmetric ``x`` (the same tensor on every rank, e.g. a GEMM's output buffer from
        ``weave_nvshmem.empty``) is read by the peers in place by the two-shot kernel (zero copy).
        """
        import torch

        op = "fused_allreduce_rmsnorm"
        xt, back = _to_torch(x)
        dt = self._validate(op, xt)
        if xt.dim() != 2:
            raise ValueError(f"{op}: x must be 2-D [tokens, hidden] (got shape {tuple(xt.shape)})")
        rows, hidden = xt.shape
        ve = catalog.VEC_ELEMS[dt]
        if hidden % ve or hidden == 0:
            raise ValueError(f"{op}: hidden size must be a positive multiple of {ve} for {xt.dtype} (got {hidden})")
        if residual_mode not in ("replicated", "sharded"):
            raise ValueError(f"{op}: residual_mode must be 'replicated' or 'sharded' (got {residual_mode!r})")
        wt, _ = _to_torch(weight)
        if tuple(wt.shape) != (hidden,) or wt.dtype != xt.dtype or wt.device != xt.device:
            raise ValueError(f"{op}: weight must be [{hidden}] {xt.dtype} on {xt.device} "
                             f"(got {tuple(wt.shape)} {wt.dtype} on {wt.device})")
        has_res = residual is not None
        if has_res:
            rt_, _ = _to_torch(residual)
            if tuple(rt_.shape) != (rows, hidden) or rt_.dtype != xt.dtype or rt_.device != xt.device:
                raise ValueError(f"{op}: residual must be [{rows}, {hidden}] {xt.dtype} on {xt.device} "
                                 f"(got {tuple(rt_.shape)} {rt_.dtype} on {rt_.device})")
            _check_contiguous(op, residual=rt_)
            if rt_.data_ptr() % 16:
                raise ValueError(f"{op}: residual must be 16-byte aligned")
        else:
            rt_ = torch.empty_like(xt)
        o = _output(op, out, (rows, hidden), xt.dtype, xt.device)
        eps = float(eps)
        if not eps >= 0:
            raise ValueError(f"{op}: eps must be >= 0 (got {eps})")
        if rows == 0:
            return back(o), (residual if has_res else back(rt_))
        p = planning.plan_fused(rows, hidden, dt, self.world, algorithm, ctas, sharded=residual_mode == "sharded")
        ch = self._prepare(op, channel, rows * hidden * xt.element_size())
        x_in, w_in = _aligned(xt), _aligned(wt.contiguous())
        flags = (1 if residual_mode == "sharded" else 0) | (2 if has_res else 0)
        if p.algorithm == "twoshot" and not ch.mc_ws and self._zero_copy(ch, x_in):
            flags |= 4  # the peers read x in place
        head = (np.uint64(o.data_ptr()), np.uint64(rt_.data_ptr()), np.uint64(x_in.data_ptr()),
                np.uint64(w_in.data_ptr()), np.uint64(rows), np.uint32(hidden), np.float32(eps), np.uint32(flags))
        if p.algorithm in ("twoshot", "bulk") and ch.mc_ws:
            k = self._kernels.kernel("multimem.ptx", f"wn_fused_multimem_{dt}_w{self.world}_v{p.vpt}", dt, self.world)
            head += (np.uint64(ch.mc_ws),)
            p = dataclasses.replace(p, block=planning.fused_block(hidden, dt)[0], smem=0)
        elif p.algorithm == "bulk":
            k = self._kernels.kernel("bulk.ptx", f"wn_fused_bulk_{dt}_w{self.world}", dt, self.world, shmem=p.smem)
            head += (np.uint32(p.chunk), np.uint32(p.smem))
        elif p.algorithm == "twoshot":  # reduces each row in the order of the one-row kernels' block
            k = self._kernels.kernel("fused_twoshot.ptx", f"wn_fused_twoshot_{dt}_w{self.world}_g{p.group}",
                                     dt, self.world)
            head += (np.uint32(planning.fused_block(hidden, dt)[0]),)
        else:
            k = self._kernels.kernel("fused_rmsnorm.ptx", f"wn_fused_{p.algorithm}_{dt}_w{self.world}_v{p.vpt}",
                                     dt, self.world)
        self._launch(_stream(stream, x), p.grid, p.block, k, *head, *self._common(ch, op, None), shmem=p.smem)
        return back(o), (residual if has_res else back(rt_))

    def _validate(self, op, xt) -> str:
        self._usable(op)
        dt = planning.ptx_dtype(xt.dtype, op)
        if not xt.is_cuda or xt.device.index != self.device_id:
            raise ValueError(f"{op}: x must be on cuda:{self.device_id} (got {xt.device})")
        _check_contiguous(op, x=xt)
        return dt


def _check_contiguous(op, **tensors):
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (got strides {t.stride()}); call .contiguous()")


def _aligned(t):
    """Inputs the kernels read with 16-byte loads; a misaligned view is copied (slow path)."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _output(op, out, shape, dtype, device):
    import torch

    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    o, _ = _to_torch(out)
    if tuple(o.shape) != tuple(shape) or o.dtype != dtype or o.device != device:
        raise ValueError(f"{op}: out must be {tuple(shape)} {dtype} on {device} "
                         f"(got {tuple(o.shape)} {o.dtype} on {o.device})")
    _check_contiguous(op, out=o)
    if o.data_ptr() % 16:
        raise ValueError(f"{op}: out must be 16-byte aligned (got address {o.data_ptr():#x})")
    return o


def _to_torch(x):
    """(torch view, converter back to the caller's array type) for torch tensors and CuPy arrays."""
    import torch

    if isinstance(x, torch.Tensor):
        return x, lambda t: t
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "__dlpack__"):
        import cupy

        return torch.from_dlpack(x), lambda t: cupy.from_dlpack(t)
    raise TypeError(f"expected a torch tensor or CuPy array (got {type(x).__name__})")


def _stream(stream, x):
    """Explicit stream, else CuPy's current stream for CuPy input, else torch's current stream."""
    if stream is not None:
        return stream
    import torch

    if not isinstance(x, torch.Tensor):
        import cupy

        return cupy.cuda.get_current_stream()
    return None


_default: Communicator | None = None
_lock = threading.Lock()


def default() -> Communicator:
    """The process-wide communicator the module-level ops use (created on first use)."""
    global _default
    with _lock:
        if _default is None:
            _default = Communicator()
        return _default


def close_default() -> None:
    global _default
    if _default is not None:
        _default.close()
        _default = None
