"""weave_nvshmem: TokenWeave-style fused collectives for tensor-parallel inference on NVSHMEM.

Layers: ``memory`` (NVSHMEM bootstrap, symmetric tensors) -> ``ptx`` (handwritten kernels, loader)
-> ``collectives`` (Communicator and its ops) -> ``compile`` (torch.compile pass). Importing needs
no GPU and does not import torch; CUDA and NVSHMEM start in ``init()``, which first checks what it
needs (``weave_nvshmem.preflight``) and raises a ``WeaveError`` naming what is missing.

The module-level ops run on the current communicator: the one a ``use_communicator(comm)`` block
sets, else a default Communicator created on first use. ``torch.ops.weave_nvshmem.*`` (registered
by ``weave_nvshmem.collectives.ops``) are the same ops for torch.compile and CUDA graphs.
"""
from .collectives import CommOptions, Communicator, owned_rows
from .errors import (CallMismatchError, CudaError, HeapExhaustedError, MissingDependencyError, MulticastUnavailable,
                     NoCudaDeviceError, NotInitializedError, PeersUnavailableError, PeerTimeoutError, UnsupportedDeviceError, WeaveError)
from .memory import (as_cupy, empty, finalize, free, init, is_initialized, is_symmetric, multicast_unavailable_reason,
                     multicast_view, peer_view, session, zeros)

__version__ = "0.1.0"

_LAZY = ("use_communicator", "current_communicator")  # live in collectives.ops, which imports torch


def __getattr__(name):
    if name in _LAZY:
        from .collectives import ops

        return getattr(ops, name)
    raise AttributeError(f"module 'weave_nvshmem' has no attribute {name!r}")


def _given(**options) -> dict:
    """The options that are not None (so a communicator without them still takes the call)."""
    return {k: v for k, v in options.items() if v is not None}


def _async(async_op: bool) -> dict:
    """``async_op`` only when set (a communicator without async ops still takes the call)."""
    return {"async_op": True} if async_op else {}


def _comm():
    from .collectives import ops

    return ops.current_communicator()


def all_reduce(x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
               compression=None, async_op: bool = False, after=None):
    """Sum ``x`` over all ranks, on the current communicator.

    Collective: every rank calls it in the same order, with the same shape, dtype and options.

    Parameters
    ----------
    x : torch.Tensor or cupy.ndarray
        Any shape, ``bfloat16``/``float16``/``float32``, contiguous, on this rank's GPU. A symmetric
        tensor (``weave_nvshmem.empty``, the same one on every rank) is read by the peers in place.
    out : torch.Tensor or cupy.ndarray, optional
        Same shape and dtype as ``x``; may be ``x`` itself (in place). A new tensor when None.
    algorithm : str
        ``"auto"`` (by size, or from the device's tuning table) or a name in
        ``weave_nvshmem.collectives.plan.ALLREDUCE_ALGORITHMS`` (``"lamport"``, ``"oneshot"``,
        ``"twoshot"``, ``"pull"``: few CTAs, TMA bulk loads from the peers, docs/transport.md).
    ctas : int, optional
        Thread blocks to launch; the planner's choice when None.
    channel : int
        Workspace to use: ops that may run concurrently on different streams need different ones.
    stream : torch.cuda.Stream, optional
        Default: torch's current stream (CuPy's current stream for CuPy input).
    compression : str, dict or CompressionSpec, optional
        Blockwise low-bit compression of the traffic (``"fp8"``, ``"int8"``, ``"mxfp4"``;
        ``weave_nvshmem.collectives.compression.CompressionSpec``; docs/compression.md). None:
        uncompressed.

    async_op : bool
        True: enqueue the op on the channel's high-priority side stream and return a ``Work``
        handle (``weave_nvshmem.collectives.work``); ``work.wait()`` orders the caller's stream
        after it and gives the outputs. No host synchronisation; graph-capturable.
    after : torch.cuda.Event or Work, optional
        With ``async_op``: what the op waits for (default: the caller's stream at call time).

    Returns
    -------
    torch.Tensor or cupy.ndarray
        ``out``: the shape and dtype of ``x``, bitwise identical on all ranks.

    See Also
    --------
    Communicator.all_reduce
    """
    return _comm().all_reduce(x, out=out, algorithm=algorithm, ctas=ctas, channel=channel, stream=stream,
                              **_given(compression=compression, after=after), **_async(async_op))


def reduce_scatter(x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
                   compression=None, async_op: bool = False, after=None):
    """Sum ``x`` over all ranks and keep this rank's chunk of dim 0, on the current communicator.

    Collective: every rank calls it in the same order, with the same shape, dtype and options.

    Parameters
    ----------
    x : torch.Tensor or cupy.ndarray
        ``[world * n, ...]``, ``bfloat16``/``float16``/``float32``, contiguous; each chunk of
        ``n`` rows a multiple of 16 bytes.
    out : torch.Tensor or cupy.ndarray, optional
        ``[n, ...]``, the dtype of ``x``. A new tensor when None.
    algorithm : str
        ``"auto"`` (today: ``"twoshot"``), ``"twoshot"`` or ``"pull"`` (few CTAs, TMA bulk loads
        from the peers; ``plan.SCATTER_GATHER_ALGORITHMS``).
    ctas : int, optional
        Thread blocks to launch; the planner's choice when None.
    channel : int
        Workspace to use (see ``all_reduce``).
    stream : torch.cuda.Stream, optional
        Default: torch's current stream.
    compression : str, dict or CompressionSpec, optional
        Blockwise low-bit compression of the traffic (``"fp8"``, ``"int8"``, ``"mxfp4"``;
        ``weave_nvshmem.collectives.compression.CompressionSpec``; docs/compression.md). None:
        uncompressed.

    async_op : bool
        True: enqueue the op on the channel's high-priority side stream and return a ``Work``
        handle (``weave_nvshmem.collectives.work``); ``work.wait()`` orders the caller's stream
        after it and gives the outputs. No host synchronisation; graph-capturable.
    after : torch.cuda.Event or Work, optional
        With ``async_op``: what the op waits for (default: the caller's stream at call time).

    Returns
    -------
    torch.Tensor or cupy.ndarray
        ``out``: ``[n, ...]``, rows ``[rank * n, (rank + 1) * n)`` of the sum.

    See Also
    --------
    Communicator.reduce_scatter
    """
    return _comm().reduce_scatter(x, out=out, algorithm=algorithm, ctas=ctas, channel=channel, stream=stream,
                                  **_given(compression=compression, after=after), **_async(async_op))


def all_gather(x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
               compression=None, async_op: bool = False, after=None):
    """Concatenate every rank's ``x`` along dim 0 in rank order, on the current communicator.

    Collective: every rank calls it in the same order, with the same shape, dtype and options.

    Parameters
    ----------
    x : torch.Tensor or cupy.ndarray
        ``[n, ...]``, ``bfloat16``/``float16``/``float32``, contiguous, a multiple of 16 bytes.
    out : torch.Tensor or cupy.ndarray, optional
        ``[world * n, ...]``, the dtype of ``x``. A new tensor when None.
    algorithm : str
        ``"auto"`` (today: ``"twoshot"``), ``"twoshot"`` or ``"pull"`` (few CTAs, TMA bulk loads
        from the peers; ``plan.SCATTER_GATHER_ALGORITHMS``).
    ctas : int, optional
        Thread blocks to launch; the planner's choice when None.
    channel : int
        Workspace to use (see ``all_reduce``).
    stream : torch.cuda.Stream, optional
        Default: torch's current stream.
    compression : str, dict or CompressionSpec, optional
        Blockwise low-bit compression of the traffic (``"fp8"``, ``"int8"``, ``"mxfp4"``;
        ``weave_nvshmem.collectives.compression.CompressionSpec``; docs/compression.md). None:
        uncompressed.

    async_op : bool
        True: enqueue the op on the channel's high-priority side stream and return a ``Work``
        handle (``weave_nvshmem.collectives.work``); ``work.wait()`` orders the caller's stream
        after it and gives the outputs. No host synchronisation; graph-capturable.
    after : torch.cuda.Event or Work, optional
        With ``async_op``: what the op waits for (default: the caller's stream at call time).

    Returns
    -------
    torch.Tensor or cupy.ndarray
        ``out``: ``[world * n, ...]``, rank ``r``'s ``x`` in rows ``[r * n, (r + 1) * n)``.

    See Also
    --------
    Communicator.all_gather
    """
    return _comm().all_gather(x, out=out, algorithm=algorithm, ctas=ctas, channel=channel, stream=stream,
                              **_given(compression=compression, after=after), **_async(async_op))


def fused_allreduce_rmsnorm(x, residual, weight, eps: float = 1e-6, *, residual_mode: str = "replicated",
                            algorithm: str = "auto", ctas=None, out=None, channel: int = 0, stream=None,
                            compression=None, async_op: bool = False, after=None):
    """All-reduce, residual add and RMSNorm in one kernel, on the current communicator.

    ``s = all_reduce(x) + residual; residual <- s; out = s * rsqrt(mean(s**2, -1) + eps) * weight``.
    Collective: every rank calls it in the same order, with the same shapes and options.

    Parameters
    ----------
    x : torch.Tensor or cupy.ndarray
        ``[T, H]``, ``bfloat16``/``float16``/``float32``, contiguous; ``H`` a multiple of 8
        (``float32``: of 4). A symmetric ``x`` is read by the peers in place (two-shot).
    residual : torch.Tensor or cupy.ndarray or None
        ``[T, H]``, the dtype of ``x``, updated in place; None for the first layer (a new
        residual holding ``all_reduce(x)`` is returned).
    weight : torch.Tensor or cupy.ndarray
        ``[H]``, the dtype of ``x``.
    eps : float
        Added to the mean square, ``>= 0``.
    residual_mode : {"replicated", "sharded"}
        ``"replicated"``: every rank ends with all ``T`` rows of the residual. ``"sharded"``: rank
        ``r`` reads and writes only rows ``owned_rows(T, r, world)``.
    algorithm : str
        ``"auto"`` (by size, or from the device's tuning table) or a name in
        ``weave_nvshmem.collectives.plan.FUSED_ALGORITHMS``.
    ctas : int, optional
        Thread blocks to launch; the planner's choice when None.
    out : torch.Tensor or cupy.ndarray, optional
        ``[T, H]``, the dtype of ``x``. A new tensor when None.
    channel : int
        Workspace to use (see ``all_reduce``).
    stream : torch.cuda.Stream, optional
        Default: torch's current stream.
    compression : str, dict or CompressionSpec, optional
        Blockwise low-bit compression of the traffic (H a multiple of the block;
        docs/compression.md). None: uncompressed.

    async_op : bool
        True: enqueue the op on the channel's high-priority side stream and return a ``Work``
        handle (``weave_nvshmem.collectives.work``); ``work.wait()`` orders the caller's stream
        after it and gives the outputs. No host synchronisation; graph-capturable.
    after : torch.cuda.Event or Work, optional
        With ``async_op``: what the op waits for (default: the caller's stream at call time).

    Returns
    -------
    out : torch.Tensor or cupy.ndarray
        ``[T, H]``, bitwise identical on all ranks.
    residual : torch.Tensor or cupy.ndarray
        ``[T, H]``: the ``residual`` passed in (now ``s``), or a new one when it was None.

    See Also
    --------
    Communicator.fused_allreduce_rmsnorm
    weave_nvshmem.collectives.ops.fused_allreduce_rmsnorm_functional : the form to torch.compile.
    """
    return _comm().fused_allreduce_rmsnorm(x, residual, weight, eps, residual_mode=residual_mode, algorithm=algorithm,
                                           ctas=ctas, out=out, channel=channel, stream=stream,
                                           **_given(compression=compression, after=after), **_async(async_op))


def barrier(*, channel: int = 0, timeout: float | None = None, stream=None) -> None:
    """Wait (stream-ordered) until every rank arrived, on the current communicator.

    Collective: every rank calls it. A rank that does not arrive within ``timeout`` seconds makes
    the waiting ranks raise ``PeerTimeoutError`` (naming that peer) at their next ``check()``.

    Parameters
    ----------
    channel : int
        Workspace to use (see ``all_reduce``).
    timeout : float, optional
        Seconds; the communicator's ``CommOptions.timeout_s`` when None.
    stream : torch.cuda.Stream, optional
        Default: torch's current stream.

    See Also
    --------
    Communicator.barrier
    """
    return _comm().barrier(channel=channel, timeout=timeout, stream=stream)


__all__ = ["init", "finalize", "session", "is_initialized", "empty", "zeros", "free", "is_symmetric", "peer_view",
           "as_cupy", "multicast_view", "multicast_unavailable_reason", "Communicator", "CommOptions",
           "owned_rows", "all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm", "barrier",
           "use_communicator", "current_communicator",
           "WeaveError", "NotInitializedError", "CudaError", "HeapExhaustedError", "MulticastUnavailable",
           "PeerTimeoutError", "CallMismatchError", "NoCudaDeviceError", "UnsupportedDeviceError", "MissingDependencyError",
           "PeersUnavailableError"]
