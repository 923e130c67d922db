"""Validation of the ops' arguments: what the caller passed -> a checked ``Call`` record.

The first of an op's three steps (validate -> plan -> launch, see ``communicator.py``). Bad input
raises ValueError/TypeError naming the op and the argument, before anything is planned or
launched; nothing here allocates or launches. Each function takes the communicator for its
``world``, ``device_id`` and ``channels`` only (the communicator checks it is usable first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..memory.interop import op_stream, to_torch
from ..ptx.catalog import VEC_ELEMS
from .compression import CompressionSpec, algorithms as compressed_algorithms, check as check_compression
from .plan import ptx_dtype

__all__ = ["Call", "VALIDATE", "all_reduce", "scatter_gather", "fused_allreduce_rmsnorm", "barrier", "put",
           "channel_index", "span", "check_apart"]


@dataclass
class Call:
    """One validated op call.

    Attributes
    ----------
    op, dtype : str
        The op and the PTX dtype of its tensors.
    x : torch.Tensor
        The input, contiguous, on the communicator's device (``put``: the source).
    out : torch.Tensor or None
        The caller's ``out`` (checked) or None (a new one is made at launch).
    out_shape : tuple of int
        The output's shape.
    back : callable
        Converts a torch result to the caller's array type.
    stream : object
        The stream to run on (None: torch's current).
    channel : int
        The channel index (checked).
    numel : int
        Elements the kernel handles: ``x.numel()``, or the reduced tensor's for all_gather.
    algorithm, ctas : str, int or None
        As given.
    residual, weight, eps, sharded :
        The fused op's (the residual checked, or None for a new one).
    timeout_s : float or None
        The barrier's bound (None: the communicator's).
    dst, pe :
        ``put``'s symmetric destination and peer.
    compression : CompressionSpec or None
        The checked ``compression=`` (None: uncompressed).
    """

    op: str
    dtype: str
    x: Any
    out: Any
    out_shape: tuple
    back: Callable
    stream: Any
    channel: int
    numel: int
    algorithm: str = "auto"
    ctas: int | None = None
    residual: Any = None
    weight: Any = None
    eps: float = 0.0
    sharded: bool = False
    timeout_s: float | None = None
    dst: Any = None
    pe: int = 0
    compression: CompressionSpec | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor the kernel stages (``numel`` elements; 0 for the barrier)."""
        return 0 if self.x is None else self.numel * self.x.element_size()


def check_contiguous(op, **tensors):
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (got strides {t.stride()}); call .contiguous()")


def aligned(t):
    """Inputs the kernels read with 16-byte loads; a misaligned view is copied (slow path)."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _check_device(op, t, device_id):
    if not t.is_cuda or t.device.index != device_id:
        raise ValueError(f"{op}: x must be on cuda:{device_id} (got {t.device})")


def channel_index(op, channel, nchannels: int) -> int:
    """``channel`` if it is an int in 0..nchannels-1; ValueError naming ``op`` otherwise."""
    if not isinstance(channel, int) or not 0 <= channel < nchannels:
        raise ValueError(f"{op}: channel must be an int in 0..{nchannels - 1} (got {channel!r})")
    return channel


def span(t):
    """The bytes ``(start, end)`` of contiguous ``t``; None for None or an empty tensor (never overlaps)."""
    if t is None or not t.nbytes:
        return None
    start = t.data_ptr()
    return start, start + t.nbytes


def check_apart(op, name_a, a, name_b, b, fix):
    """ValueError naming ``op`` and both arguments when the spans ``a`` and ``b`` (``span()``) intersect.

    A kernel that writes one while it (or a peer) still reads the other would compute from
    overwritten data, so such calls are refused before anything is launched or grown.
    """
    if a and b and a[0] < b[1] and b[0] < a[1]:
        raise ValueError(f"{op}: {name_a} and {name_b} overlap ({name_a} [{a[0]:#x}, +{a[1] - a[0]} bytes), "
                         f"{name_b} [{b[0]:#x}, +{b[1] - b[0]} bytes)); {fix}")


def _input(comm, op, x, channel):
    """(torch x, back, PTX dtype, channel) after the checks every data op shares."""
    xt, back = to_torch(x)
    dt = ptx_dtype(xt.dtype, op)
    _check_device(op, xt, comm.device_id)
    check_contiguous(op, x=xt)
    return xt, back, dt, channel_index(op, channel, comm.channels)


def _out(op, out, shape, like):
    if out is None:
        return None
    o, _ = to_torch(out)
    if tuple(o.shape) != tuple(shape) or o.dtype != like.dtype or o.device != like.device:
        raise ValueError(f"{op}: out must be {tuple(shape)} {like.dtype} on {like.device} "
                         f"(got {tuple(o.shape)} {o.dtype} on {o.device})")
    check_contiguous(op, out=o)
    if o.data_ptr() % 16:
        raise ValueError(f"{op}: out must be 16-byte aligned (got address {o.data_ptr():#x})")
    return o


def _compression(op, compression, numel, world, algorithm="auto", chunk=None):
    """The checked CompressionSpec of ``compression=`` (None stays None)."""
    spec = CompressionSpec.of(compression)
    if spec is None:
        return None
    allowed = compressed_algorithms(op)
    if algorithm not in allowed:
        raise ValueError(f"{op}: compression runs its own kernels; pass algorithm="
                         f"{' or '.join(repr(a) for a in allowed)} with it (got {algorithm!r})")
    if op == "fused_allreduce_rmsnorm" and numel % spec.block:
        raise ValueError(f"{op}: compression {spec.format} with block {spec.block} needs the hidden size to be a "
                         f"multiple of {spec.block} (got {numel})")
    check_compression(op, spec, numel, world, chunk=chunk)
    return spec


def all_reduce(comm, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None,
               compression=None) -> Call:
    """``Communicator.all_reduce``'s arguments, checked."""
    op = "all_reduce"
    xt, back, dt, c = _input(comm, op, x, channel)
    q = _compression(op, compression, xt.numel(), comm.world, algorithm)
    o = _out(op, out, xt.shape, xt)
    # out is x exactly (same start; same shape and dtype, checked) is in place: every algorithm reads a
    # vector of x (pushes it, or sums its own share) before its block writes that vector of out
    if o is not None and o.data_ptr() != xt.data_ptr():
        check_apart(op, "out", span(o), "x", span(xt), "pass out=x (in place) or a separate out")
    return Call(op, dt, xt, o, tuple(xt.shape), back, op_stream(stream, x), c, xt.numel(), algorithm, ctas,
                compression=q)


def scatter_gather(comm, op: str, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0,
                   stream=None, compression=None) -> Call:
    """``reduce_scatter``'s or ``all_gather``'s (``op``) arguments, checked."""
    xt, back, dt, c = _input(comm, op, x, channel)
    world = comm.world
    if xt.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension")
    if op == "reduce_scatter":
        if xt.shape[0] % world:
            raise ValueError(f"{op}: x.shape[0]={xt.shape[0]} is not divisible by world size {world}")
        shape = (xt.shape[0] // world,) + tuple(xt.shape[1:])
        total = xt.numel()
    else:
        shape = (xt.shape[0] * world,) + tuple(xt.shape[1:])
        total = xt.numel() * world
    chunk_bytes = total // world * xt.element_size()
    if chunk_bytes % 16:
        raise ValueError(f"{op}: each rank's chunk must be a multiple of 16 bytes (got {chunk_bytes}); "
                         "pad the tensor or use all_reduce")
    q = _compression(op, compression, total, world, algorithm, chunk=total // world)
    o = _out(op, out, shape, xt)
    # out's chunks are written while peers still read x's (or x is a chunk of out); world 1 is a
    # device copy, none when out is x
    if o is not None and not (world == 1 and o.data_ptr() == xt.data_ptr()):
        check_apart(op, "out", span(o), "x", span(xt), "pass a separate out")
    return Call(op, dt, xt, o, shape, back, op_stream(stream, x), c, total, algorithm, ctas, compression=q)


def fused_allreduce_rmsnorm(comm, x, residual, weight, eps: float = 1e-6, *, residual_mode: str = "replicated",
                            algorithm: str = "auto", ctas=None, out=None, channel: int = 0, stream=None,
                            compression=None) -> Call:
    """``Communicator.fused_allreduce_rmsnorm``'s arguments, checked."""
    op = "fused_allreduce_rmsnorm"
    xt, back, dt, c = _input(comm, op, x, channel)
    if xt.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D [tokens, hidden] (got shape {tuple(xt.shape)})")
    rows, hidden = xt.shape
    ve = VEC_ELEMS[dt]
    if hidden % ve or hidden == 0:
        raise ValueError(f"{op}: hidden size must be a positive multiple of {ve} for {xt.dtype} (got {hidden})")
    if residual_mode not in ("replicated", "sharded"):
        raise ValueError(f"{op}: residual_mode must be 'replicated' or 'sharded' (got {residual_mode!r})")
    q = _compression(op, compression, hidden, comm.world, algorithm)  # whole blocks per row
    wt, _ = to_torch(weight)
    if tuple(wt.shape) != (hidden,) or wt.dtype != xt.dtype or wt.device != xt.device:
        raise ValueError(f"{op}: weight must be [{hidden}] {xt.dtype} on {xt.device} "
                         f"(got {tuple(wt.shape)} {wt.dtype} on {wt.device})")
    rt = None
    if residual is not None:
        rt, _ = to_torch(residual)
        if tuple(rt.shape) != (rows, hidden) or rt.dtype != xt.dtype or rt.device != xt.device:
            raise ValueError(f"{op}: residual must be [{rows}, {hidden}] {xt.dtype} on {xt.device} "
                             f"(got {tuple(rt.shape)} {rt.dtype} on {rt.device})")
        check_contiguous(op, residual=rt)
        if rt.data_ptr() % 16:
            raise ValueError(f"{op}: residual must be 16-byte aligned")
    o = _out(op, out, (rows, hidden), xt)
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0 (got {eps})")
    wt = wt.contiguous()
    _check_fused_apart(op, xt, rt, wt, o)
    return Call(op, dt, xt, o, (rows, hidden), back, op_stream(stream, x), c, xt.numel(), algorithm, ctas,
                residual=rt, weight=wt, eps=eps, sharded=residual_mode == "sharded", compression=q)


def _check_fused_apart(op, x, residual, weight, out):
    """Refuse the overlaps that give wrong results: the kernels write residual and out while x,
    residual and weight are still read (x also by the peers, zero copy), and out on residual would
    return one memory as both results. x and weight are only read, so they may share bytes."""
    n = x.nbytes  # residual's and out's too (checked)
    if not n or (out is None and residual is None):
        return
    # a few integer comparisons on the decode path; a missing tensor is the span (0, 0), which meets none
    x0, w0 = x.data_ptr(), weight.data_ptr()
    r0 = 0 if residual is None else residual.data_ptr()
    o0 = 0 if out is None else out.data_ptr()
    x1, w1, r1, o1 = x0 + n, w0 + weight.nbytes, r0 and r0 + n, o0 and o0 + n
    if not ((o0 < r1 and r0 < o1) or (o0 < x1 and x0 < o1) or (o0 < w1 and w0 < o1)
            or (r0 < x1 and x0 < r1) or (r0 < w1 and w0 < r1)):
        return
    xs, rs, ws, outs = (x0, x1), (r0, r1), (w0, w1), (o0, o1)
    for name, s in (("residual", rs), ("x", xs), ("weight", ws)):
        check_apart(op, "out", outs, name, s, "pass a separate out")
    for name, s in (("x", xs), ("weight", ws)):
        check_apart(op, "residual", rs, name, s, "pass a separate residual")


def barrier(comm, *, channel: int = 0, timeout: float | None = None, stream=None) -> Call:
    """``Communicator.barrier``'s arguments, checked."""
    op = "barrier"
    c = channel_index(op, channel, comm.channels)
    if timeout is not None and not float(timeout) > 0:
        raise ValueError(f"{op}: timeout must be > 0 (got {float(timeout)})")
    return Call(op, "", None, None, (), None, stream, c, 0, timeout_s=None if timeout is None else float(timeout))


def put(comm, dst, src, pe: int, *, stream=None) -> Call:
    """``Communicator.put``'s arguments, checked (``dst`` symmetric, both contiguous and aligned)."""
    from ..memory import heap

    op = "put"
    dst, _ = to_torch(dst)
    src, _ = to_torch(src)
    check_contiguous(op, dst=dst, src=src)
    if dst.numel() * dst.element_size() != src.numel() * src.element_size():
        raise ValueError(f"{op}: dst has {dst.numel() * dst.element_size()} bytes, src "
                         f"{src.numel() * src.element_size()}")
    if not 0 <= pe < comm.world:
        raise ValueError(f"{op}: pe must be in 0..{comm.world - 1} (got {pe})")
    heap.allocation_of(dst, op=op)
    for name, t in (("dst", dst), ("src", src)):
        if t.data_ptr() % 16:
            raise ValueError(f"{op}: {name} must be 16-byte aligned (got address {t.data_ptr():#x})")
    return Call(op, "", src, None, (), None, stream, 0, src.numel(), dst=dst, pe=pe)


#: op -> its validation (``Communicator.plan`` dispatches through it)
VALIDATE = {
    "all_reduce": all_reduce,
    "reduce_scatter": lambda comm, *a, **kw: scatter_gather(comm, "reduce_scatter", *a, **kw),
    "all_gather": lambda comm, *a, **kw: scatter_gather(comm, "all_gather", *a, **kw),
    "fused_allreduce_rmsnorm": fused_allreduce_rmsnorm,
    "barrier": barrier,
    "put": put,
}
