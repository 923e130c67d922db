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
from .plan import ptx_dtype

__all__ = ["Call", "VALIDATE", "all_reduce", "scatter_gather", "fused_allreduce_rmsnorm", "barrier", "put",
           "channel_index"]


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


def all_reduce(comm, x, *, out=None, algorithm: str = "auto", ctas=None, channel: int = 0, stream=None) -> Call:
    """``Communicator.all_reduce``'s arguments, checked."""
    op = "all_reduce"
    xt, back, dt, c = _input(comm, op, x, channel)
    return Call(op, dt, xt, _out(op, out, xt.shape, xt), tuple(xt.shape), back, op_stream(stream, x), c, xt.numel(),
                algorithm, ctas)


def scatter_gather(comm, op: str, x, *, out=None, ctas=None, channel: int = 0, stream=None) -> Call:
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
    return Call(op, dt, xt, _out(op, out, shape, xt), shape, back, op_stream(stream, x), c, total, ctas=ctas)


def fused_allreduce_rmsnorm(comm, x, residual, weight, eps: float = 1e-6, *, residual_mode: str = "replicated",
                            algorithm: str = "auto", ctas=None, out=None, channel: int = 0, stream=None) -> Call:
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
    return Call(op, dt, xt, o, (rows, hidden), back, op_stream(stream, x), c, xt.numel(), algorithm, ctas,
                residual=rt, weight=wt.contiguous(), eps=eps, sharded=residual_mode == "sharded")


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
