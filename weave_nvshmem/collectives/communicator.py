"""The Communicator: one object owns a rank's channels, error record and kernels.

Built collectively after ``weave_nvshmem.init()`` (or by an ``EmulatedWorld``: any ``Fabric``);
ops are its methods and are stream-ordered and CUDA-graph capturable once the workspace is large
enough (``reserve()`` before capturing). Each *channel* is an independent workspace (signal pad
+ parity buffers): ops that may run concurrently on different streams must use different channels.

Every op runs in three steps: validate (``calls.py``: arguments -> a checked ``Call``), plan
(``plan.py``: the kernel-table entry, grid, block, flags and the reason; ``Communicator.plan``
returns it without launching), launch (``_run``: outputs, channel growth, ``KernelSpec.pack``,
``Fabric.launch``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from .. import errors
from ..memory.hostmapped import HostMappedWords
from ..memory.interop import torch_stream
from ..memory.runtime import on_finalize
from . import calls, compression, copyengine, signature
from . import plan as planning
from .calls import Call
from .channel import Channel
from .fabric import Fabric, NvshmemFabric
from .work import SideStreams, overlappable

__all__ = ["CommOptions", "Communicator", "default", "close_default", "launch_local", "OPS", "OP_IDS"]

#: op ids the kernels write into the error record (and the call descriptors: signature.py)
OPS = signature.OPS
OP_IDS = {v: k for k, v in OPS.items()}


@dataclass(frozen=True)
class CommOptions:
    """Options of a Communicator, validated at construction.

    Attributes
    ----------
    timeout_s : float
        Bound on every cross-rank wait, seconds (> 0).
    channels : int
        Independent workspaces, 1..8.
    initial_bytes : int
        Staging capacity per channel reserved up front (>= 16).
    multicast : bool
        Use the NVLink-multicast (multimem) kernels for two-shot ops where a multicast object
        exists (needs ``init(multicast=True)``; refused, falling back to P2P, when
        NVSHMEM_DISABLE_NVLS is set).
    call_signature : bool
        Compare every call with the peers' in the kernels' handshake (``collectives/signature.py``,
        docs/reliability.md): ranks calling different ops, shapes, dtypes, algorithms or CTA counts
        on a channel raise ``CallMismatchError`` at once. Off only to measure what it costs.
    """

    timeout_s: float = 30.0
    channels: int = 2
    initial_bytes: int = 1 << 20
    multicast: bool = False
    call_signature: bool = True

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"CommOptions: timeout_s must be > 0 (got {self.timeout_s})")
        if not 1 <= self.channels <= 8:
            raise ValueError(f"CommOptions: channels must be in 1..8 (got {self.channels})")
        if self.initial_bytes < 16:
            raise ValueError(f"CommOptions: initial_bytes must be >= 16 (got {self.initial_bytes})")

    @classmethod
    def of(cls, options) -> "CommOptions":
        """``options`` as CommOptions: a CommOptions, a dict of its fields, or None (defaults)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, dict):
            return cls(**options)
        raise TypeError(f"CommOptions: expected CommOptions, dict or None (got {type(options).__name__})")


class Communicator:
    """Symmetric resources and collective ops of this rank. Collective to build and to close.

    Parameters
    ----------
    options : CommOptions, dict or None
        See ``CommOptions``.
    fabric : Fabric, optional
        What the ranks stand on; default ``NvshmemFabric()`` (needs ``weave_nvshmem.init()``).
    """

    def __init__(self, options=None, *, fabric: Fabric | None = None):
        import torch

        self.options = CommOptions.of(options)
        self._fabric = NvshmemFabric() if fabric is None else fabric
        self.rank, self.world, self.device_id = self._fabric.rank, self._fabric.world, self._fabric.device_id
        self._err = HostMappedWords(signature.RECORD_WORDS)
        self._channels = [self._fabric.new_channel(self.options.initial_bytes, i) for i in range(self.options.channels)]
        self._broken = None
        self._side_streams = SideStreams(self.device_id)  # async ops: one high-priority stream per channel
        #: why the multimem kernels are not used (None when they are)
        self.multicast_reason = "not requested (CommOptions(multicast=True))"
        if self.options.multicast:
            self._map_multicast()
        torch.cuda.synchronize()
        self._fabric.sync_ranks()

    @property
    def channels(self) -> int:
        """Number of channels."""
        return len(self._channels)

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
        if getattr(self, "_side_streams", None) is not None:
            self._side_streams.close()
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
        targets = range(self.channels) if channel is None else [calls.channel_index("reserve", channel, self.channels)]
        grow = [i for i in targets if self._channels[i].cap < nbytes]
        if not grow:
            return
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"weave_nvshmem: an op needs {nbytes} bytes of staging on channel(s) {grow} "
                               "while a CUDA graph is being captured; call comm.reserve(max_bytes) on every "
                               "rank before capturing")
        self._fabric.check_growth(nbytes)
        torch.cuda.synchronize()
        self._fabric.sync_ranks()
        for i in grow:
            self._channels[i].free()
            self._channels[i] = self._fabric.new_channel(nbytes, i)
            if self.multicast_reason is None:
                self._channels[i].map_multicast()
        torch.cuda.synchronize()
        self._fabric.sync_ranks()

    # ---- errors ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise PeerTimeoutError if a kernel reported a timed-out wait, CallMismatchError if a
        peer's kernel was in a different call (non-blocking read of the error record)."""
        w = self._err.words
        if w is not None and w[0]:
            exc = signature.record_error(w, self.rank, self.options.timeout_s)
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
            raise errors.WeaveError(f"{op}: communicator is broken by an earlier failure ({self._broken})")
        self.check()

    # ---- validate -> plan -> launch ----------------------------------------------------------
    def plan(self, op: str, *args, **kwargs) -> planning.Launch:
        """What ``getattr(self, op)(*args, **kwargs)`` would run, without running it.

        Parameters
        ----------
        op : str
            ``"all_reduce"``, ``"reduce_scatter"``, ``"all_gather"``, ``"fused_allreduce_rmsnorm"``,
            ``"barrier"`` or ``"put"``.
        *args, **kwargs
            The op's arguments, checked exactly as the op checks them.

        Returns
        -------
        plan.Launch
            The algorithm, kernel-table entry, grid, block and flags, and in ``reason`` the rule or
            tuning-table row that chose them (``str()`` gives all of it on one line). The same on
            every rank for the same arguments.
        """
        if op not in calls.VALIDATE:
            raise ValueError(f"plan: op must be one of {tuple(calls.VALIDATE)} (got {op!r})")
        return self._plan(self._validate(op, *args, **kwargs))

    def _validate(self, op, *args, **kwargs) -> Call:
        self._usable(op)
        return calls.VALIDATE[op](self, *args, **kwargs)

    def _plan(self, call: Call) -> planning.Launch:
        op, dt = call.op, call.dtype
        if op == "barrier":
            return planning.plan_barrier(self.world)
        if op == "put":
            return planning.plan_put(call.nbytes, self.world)
        if call.numel == 0:
            return planning.Launch(op, "none", None, dt, self.world, 0, 0, reason="empty input: nothing to launch")
        if call.compression is not None and op == "fused_allreduce_rmsnorm":
            return planning.plan_compressed_fused(*call.x.shape, dt, self.world, call.compression, call.ctas,
                                                  call.sharded, residual=call.residual is not None,
                                                  algorithm=call.algorithm)
        if call.compression is not None:
            return planning.plan_compressed(op, call.numel, dt, self.world, call.compression, call.ctas,
                                            call.algorithm)
        ch = self._channels[call.channel]
        zero_copy = call.x.data_ptr() % 16 == 0 and self._fabric.zero_copy(ch, call.x)
        if op == "all_reduce":
            return planning.plan_all_reduce(call.numel, dt, self.world, call.algorithm, call.ctas,
                                            zero_copy=zero_copy, multicast=bool(ch.mc_ws))
        if op == "fused_allreduce_rmsnorm":
            rows, hidden = call.x.shape
            return planning.plan_fused(rows, hidden, dt, self.world, call.algorithm, call.ctas, call.sharded,
                                       residual=call.residual is not None, zero_copy=zero_copy,
                                       multicast=bool(ch.mc_ws))
        return planning.plan_scatter_gather(op, call.numel, dt, self.world, call.ctas, zero_copy=zero_copy,
                                            algorithm=call.algorithm)

    def _run(self, call: Call, p: planning.Launch):
        """Launch ``p`` for ``call``; the op's outputs."""
        import torch

        x = call.x
        o = call.out
        if o is None and call.out_shape:
            o = torch.empty(call.out_shape, dtype=x.dtype, device=x.device)
        res = call.residual
        if call.op == "fused_allreduce_rmsnorm" and res is None:
            # world 1: the sum is x itself, which the local kernel leaves alone (no copy written)
            res = x if p.algorithm == "local" else torch.empty_like(x)
        if p.algorithm == "copy" and o.data_ptr() != x.data_ptr():
            with torch.cuda.stream(torch_stream(call.stream)):
                o.copy_(x)
        elif p.kernel is not None:
            spec = p.kernel
            need = planning.staging_bytes(call.nbytes) if call.compression is None else \
                compression.staging_bytes(call.compression, call.numel, x.element_size(), self.world,
                                          row=x.shape[1] if call.op == "fused_allreduce_rmsnorm" else None)
            if spec.channel and self._channels[call.channel].cap < need:
                self.reserve(need, call.channel)  # grows collectively
            values = self._values(call, p, o, res)
            if spec.channel:
                values.update(self._common(self._channels[call.channel], call, p))
            if p.algorithm == "copyengine":  # copies, flags and bounded waits around its kernel
                copyengine.run(self, call, p, values)
            else:
                kernel = self._fabric.kernels.kernel(spec, p.dtype or None, self.world, p.variant)
                self._fabric.launch(call.stream, p.grid, p.block, kernel, spec.pack(self.world, values), p.smem)
        if call.op == "fused_allreduce_rmsnorm":
            return call.back(o), (call.residual if call.residual is not None else call.back(res))
        return None if o is None else call.back(o)

    def _values(self, call: Call, p: planning.Launch, o, res) -> dict:
        """The op's own kernel arguments, by parameter name (the channel block follows)."""
        names = {n for n, _ in p.kernel.params}
        if call.op == "put":
            from ..memory import heap

            remote = heap.peer_address(call.dst.data_ptr(), call.pe, op="put")
            return {"dst": remote, "src": call.x.data_ptr(), "nbytes": call.nbytes}
        if call.op == "barrier":
            return {}
        x_in = calls.aligned(call.x)
        values = {"out": o.data_ptr(), "inp": x_in.data_ptr(), "flags": int(p.flags)}
        if call.op == "fused_allreduce_rmsnorm":
            rows, hidden = x_in.shape
            values.update(res=res.data_ptr(), weight=calls.aligned(call.weight).data_ptr(), rows=rows, hidden=hidden,
                          eps=call.eps)
        else:
            values["nelem"] = call.numel
        if "vthreads" in names:  # the reduction order of the one-row kernels' block
            values["vthreads"] = planning.fused_block(x_in.shape[1], p.dtype)[0]
        if "mc_ws" in names:
            values["mc_ws"] = self._channels[call.channel].mc_ws
        return values

    def _common(self, ch: Channel, call: Call, p: planning.Launch) -> dict:
        """The channel block of a launch (common_params.ptxinc), the call signature included."""
        t = self.options.timeout_s if call.timeout_s is None else call.timeout_s
        words = signature.call_words(call, p)
        sig = signature.signature(words) if self.options.call_signature else 0
        return {**ch.values(), "rank": self.rank, "timeout": int(t * 1e9), "err": self._err.device_ptr,
                "opid": OP_IDS[call.op], "sig": sig, "call0": words[0], "call1": words[1], "call2": words[2]}

    # ---- ops ------------------------------------------------------------------------------
    def barrier(self, *, channel: int = 0, timeout: float | None = None, stream=None) -> None:
        """Collective: all ranks call it; returns (stream-ordered) once every rank arrived.

        A rank that does not arrive within ``timeout`` seconds makes the waiting ranks report
        ``PeerTimeoutError`` (naming that peer) at the next ``check()``/``synchronize()``.
        """
        call = self._validate("barrier", channel=channel, timeout=timeout, stream=stream)
        self._run(call, self._plan(call))

    def put(self, dst, src, pe: int, *, stream=None) -> None:
        """Copy ``src`` (any local tensor) into PE ``pe``'s copy of symmetric ``dst``.

        Not synchronising: follow it with ``barrier()`` before ``pe`` reads. Shapes may differ;
        byte sizes must match; both contiguous and 16-byte aligned.
        """
        call = self._validate("put", dst, src, pe, stream=stream)
        if call.nbytes:
            self._run(call, self._plan(call))

    @overlappable
    def all_reduce(self, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
                   compression=None):
        """Sum ``x`` over all ranks. Collective: same shape/dtype/algorithm/ctas on every rank.

        Parameters
        ----------
        x : torch.Tensor or CuPy array
            Any shape, ``bfloat16``/``float16``/``float32``, contiguous, on this rank's GPU:
            ordinary (the kernel itself moves it, no copy launch) or symmetric
            (``weave_nvshmem.empty``, the same tensor on every rank: the two-shot kernel reads it
            on the peers in place, zero copy).
        out : same type, shape and dtype as ``x``, optional
            May be ``x`` itself (in place, every algorithm); any other overlap with ``x`` raises
            ValueError.
        algorithm : str
            ``"auto"``, ``"lamport"``, ``"oneshot"``, ``"twoshot"``, ``"pull"`` or ``"copyengine"``
            (``plan.ALLREDUCE_ALGORITHMS``; the last two twoshot's bits, never picked by ``auto``).
        ctas : int, optional
            CTAs, 1..128 (default: the plan's).
        channel : int
            The workspace to use.
        stream : optional
            Default: torch's current stream (CuPy's for CuPy input).
        compression : str, dict or compression.CompressionSpec, optional
            Blockwise low-bit compression of the traffic (``"fp8"``, ``"int8"``, ``"mxfp4"``, or
            ``CompressionSpec(format, block, gather)``; docs/compression.md): the compressed
            two-shot kernel (``algorithm`` ``"auto"``) or its pull form (``"pull"``, the same bits),
            ``x.numel()`` a multiple of the block. None: uncompressed.

        Returns
        -------
        out
            ``out``, or a new tensor of the caller's array type; bitwise identical on all ranks.
        """
        call = self._validate("all_reduce", x, out=out, algorithm=algorithm, ctas=ctas, channel=channel,
                              stream=stream, compression=compression)
        return self._run(call, self._plan(call))

    @overlappable
    def reduce_scatter(self, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
                       compression=None):
        """Sum over ranks, keep chunk ``rank`` of the flattened result. Collective.

        ``x``: ``[world * n, ...]`` bf16/fp16/fp32 (numel divisible by world, chunk bytes a multiple
        of 16); returns/out: ``[n, ...]`` (``x.shape[0] // world`` rows), not overlapping ``x``
        (ValueError; ``out=x`` only at world 1). Other arguments as in ``all_reduce``
        (``compression``: each chunk a multiple of the block; the chunk is the fp32 sum rounded).
        """
        call = self._validate("reduce_scatter", x, out=out, algorithm=algorithm, ctas=ctas, channel=channel, stream=stream,
                              compression=compression)
        return self._run(call, self._plan(call))

    @overlappable
    def all_gather(self, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
                   compression=None):
        """Concatenate every rank's ``x`` along dim 0 in rank order. Collective.

        ``x``: ``[n, ...]`` bf16/fp16/fp32 with its bytes a multiple of 16; returns/out:
        ``[world * n, ...]``, not overlapping ``x`` (ValueError; ``out=x`` only at world 1). Other
        arguments as in ``all_reduce`` (``compression``: the chunks travel quantized, every rank,
        the owner too, returns the dequantized values; gather must be "compressed").
        """
        call = self._validate("all_gather", x, out=out, algorithm=algorithm, ctas=ctas, channel=channel, stream=stream,
                              compression=compression)
        return self._run(call, self._plan(call))

    @overlappable
    def fused_allreduce_rmsnorm(self, x, residual, weight, eps: float = 1e-6, *, residual_mode: str = "replicated",
                                algorithm: str = "auto", ctas=None, out=None, channel: int = 0, stream=None,
                                compression=None):
        """``s = all_reduce(x) + residual; residual <- s; out = s * rsqrt(mean(s^2) + eps) * weight``.

        Collective: same shapes/options on every rank.

        Parameters
        ----------
        x : torch.Tensor or CuPy array
            ``[T, H]`` bf16/fp16/fp32, H % 8 == 0 (fp32: H % 4), contiguous. A symmetric ``x`` (the
            same tensor on every rank, e.g. a GEMM's output buffer from ``weave_nvshmem.empty``)
            is read by the peers in place by the two-shot and pull kernels (zero copy).
        residual : same type, ``[T, H]`` same dtype, or None
            Updated in place, so it must not overlap ``x``, ``weight`` or ``out`` (ValueError);
            None (first layer): a new residual holding ``all_reduce(x)`` is returned; at world 1
            that is ``x`` itself (no copy), as an engine's first norm keeps it.
        weight : ``[H]`` same dtype
        eps : float
            >= 0.
        residual_mode : str
            ``"replicated"`` (every rank ends with all T rows) or ``"sharded"`` (rank r reads and
            writes only rows ``owned_rows(T, r, world)`` = [T*r//W, T*(r+1)//W); other rows of
            residual are left untouched).
        algorithm : str
            ``"auto"``, ``"lamport"``, ``"oneshot"``, ``"twoshot"``, ``"pull"`` (twoshot's bits on
            few CTAs, TMA bulk loads from the peers, docs/transport.md; never picked by ``auto``),
            ``"copyengine"`` (twoshot's bits; device copies move the rows, the SMs only reduce
            and normalise their own; never picked by ``auto``), or ``"local"`` (world 1 only;
            what ``auto`` runs there).
        ctas, out, channel, stream
            As in ``all_reduce``; ``out`` is ``[T, H]`` and must not overlap ``x``, ``residual``
            or ``weight`` (ValueError). Only ``x`` and ``weight``, both read-only, may share bytes.
        compression : str, dict or compression.CompressionSpec, optional
            As in ``all_reduce`` (H a multiple of the block, ``algorithm="auto"``): the partial rows
            travel quantized, the owner sums, adds and normalises in fp32, the gather re-quantizes
            (the residual rows, replicated; the out rows, sharded) or sends the input dtype. Every
            rank ends with the same bits, but not the uncompressed kernels' bits.

        Returns
        -------
        (out, residual)
            ``out`` is bitwise identical on all ranks, and so are the residual rows each rank
            keeps, whatever the algorithm and CTA count.
        """
        call = self._validate("fused_allreduce_rmsnorm", x, residual, weight, eps, residual_mode=residual_mode,
                              algorithm=algorithm, ctas=ctas, out=out, channel=channel, stream=stream,
                              compression=compression)
        return self._run(call, self._plan(call))


def launch_local(comm: Communicator, x, residual, weight, eps: float = 1e-6, *, grid: int, out=None,
                 residual_mode: str = "replicated", stream=None):
    """``comm.fused_allreduce_rmsnorm(x, residual, weight, eps, algorithm="local")`` at world 1 on
    ``grid`` blocks instead of the planned number (any grid >= 1 gives the same bits: block b takes
    rows b, b + grid, ...): to check or time the grid rule. Same arguments and results as the op."""
    call = comm._validate("fused_allreduce_rmsnorm", x, residual, weight, eps, residual_mode=residual_mode,
                          algorithm="local", out=out, stream=stream)
    if not (isinstance(grid, int) and grid >= 1):
        raise ValueError(f"launch_local: grid must be an int >= 1 (got {grid!r})")
    p = comm._plan(call)
    return comm._run(call, replace(p, grid=grid) if call.numel else p)


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
    """Close the default communicator, if any (collective); ``finalize()`` calls it."""
    global _default
    if _default is not None:
        _default.close()
        _default = None


on_finalize(close_default)
