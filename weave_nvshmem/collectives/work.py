"""Asynchronous collectives: an op run with ``async_op=True`` is enqueued on its channel's
high-priority side stream and returns a ``Work`` handle (its outputs and a ready event).

Stream/event protocol (no host synchronisation anywhere, so it records into a CUDA graph)::

    caller stream  ──●after───────────────────────────────●wait()── consumer ──
                      ╲                                   ╱
    side stream[ch]    ╲── wait(after) ── kernel ── ●done╱

``after`` defaults to an event recorded on the caller's stream at call time (so the op sees all
work issued before it); ``Work.wait(stream)`` makes ``stream`` (default: the current one) wait on
``done``. Input tensors are marked ``record_stream(side)`` when the op is enqueued and outputs
``record_stream(stream)`` when waited, so the caching allocator never hands their memory to another
user while the other stream still reads it. Under graph capture on the caller's stream the side
stream joins the capture at ``wait(after)`` and leaves it at ``Work.wait``: wait every Work before
the capture ends.

One side stream per channel and communicator (an EmulatedWorld's ranks each have their own): ops
on one channel run in order on its stream; ops meant to run at once use different channels. A
synchronous op must not use a channel that still has an un-waited async op on it.
"""
from __future__ import annotations

import functools
import inspect

__all__ = ["Work", "completed", "overlappable", "SideStreams"]


class Work:
    """The handle of an asynchronous op: what the op returns, and when it is ready.

    Attributes
    ----------
    op : str
        The op's name.
    outputs
        Exactly what the synchronous op returns (a tensor, or ``(out, residual)`` for the fused op).
        The tensors exist at once; their contents are defined only after ``wait()``.
    event : torch.cuda.Event or None
        Recorded on the side stream after the op; None when the op already ran in order (CPU
        tensors, ``completed``).
    stream : torch.cuda.Stream or None
        The side stream the op ran on.
    """

    __slots__ = ("op", "outputs", "event", "stream", "_waited")

    def __init__(self, op: str, outputs, event=None, stream=None):
        self.op, self.outputs, self.event, self.stream = op, outputs, event, stream
        self._waited = set()

    def wait(self, stream=None):
        """Make ``stream`` (default: torch's current stream) wait for the op; return ``outputs``.

        Device-side only (``cudaStreamWaitEvent``): the host does not block. Safe to call again,
        from several streams; the outputs are marked as used on each waiting stream.
        """
        if self.event is None:
            return self.outputs
        import torch

        s = torch.cuda.current_stream() if stream is None else stream
        s.wait_event(self.event)
        key = int(s.cuda_stream)
        if key not in self._waited:
            self._waited.add(key)
            for t in _tensors(self.outputs):
                if t.is_cuda:
                    t.record_stream(s)
        return self.outputs

    def is_completed(self) -> bool:
        """Whether the op has finished on the device (a non-blocking query; True without an event)."""
        return True if self.event is None else bool(self.event.query())

    def synchronize(self):
        """Block the host until the op has finished; return ``outputs``."""
        if self.event is not None:
            self.event.synchronize()
        return self.outputs

    def __repr__(self):
        state = "done" if self.event is None else "pending"
        return f"Work({self.op}, {state})"


def completed(outputs, op: str = "completed") -> Work:
    """A Work whose outputs are already ordered on the caller's stream (a synchronous result):
    lets code that expects handles take a synchronous collective (NCCL, a CPU stand-in)."""
    return Work(op, outputs)


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


class SideStreams:
    """The high-priority side streams of one communicator, one per channel, made on first use.

    Streams of our own (cuda.core when present), not torch's pool: the pool hands the same stream
    to later callers, and an EmulatedWorld rank's kernel queued behind another rank's on one stream
    would wait for a peer that cannot start.
    """

    def __init__(self, device_id: int):
        self.device_id = device_id
        self._streams = {}
        self._owned = []

    def get(self, channel: int):
        s = self._streams.get(channel)
        if s is None:
            s = self._streams[channel] = self._new()
        return s

    def _new(self):
        import torch

        priority = min(torch.cuda.Stream.priority_range())  # numerically lowest = highest priority
        try:
            from cuda.core import Device, StreamOptions

            dev = Device(self.device_id)
            dev.set_current()  # the primary context, torch's too
            own = dev.create_stream(options=StreamOptions(nonblocking=True, priority=priority))
        except ImportError:
            return torch.cuda.Stream(device=self.device_id, priority=priority)
        self._owned.append(own)
        return torch.cuda.ExternalStream(int(own.handle), device=torch.device("cuda", self.device_id))

    def used(self) -> list:
        """The side streams made so far, by channel."""
        return [self._streams[c] for c in sorted(self._streams)]

    def close(self) -> None:
        """Release our streams (after the device is synchronised). Idempotent."""
        for s in self._owned:
            s.close()
        self._owned, self._streams = [], {}


def _after_event(op: str, after, caller):
    """The event the side stream waits on: ``after`` (an event or a Work), else one recorded now on
    ``caller``."""
    import torch

    if after is None:
        return caller.record_event()
    if isinstance(after, Work):
        return after.event  # None: already ordered on the caller's stream
    if isinstance(after, torch.cuda.Event):
        return after
    raise TypeError(f"{op}: after must be a torch.cuda.Event, a Work or None (got {type(after).__name__})")


def enqueue(comm, op: str, method, args, kwargs, after) -> Work:
    """Run ``method(comm, *args, **kwargs)`` on the side stream of its channel, after ``after``."""
    import torch

    from ..memory.interop import torch_stream
    from . import calls

    channel = calls.channel_index(op, kwargs.get("channel", 0), comm.channels)
    tensors = [t for t in _tensors(list(args) + list(kwargs.values()))]
    if tensors and not any(t.is_cuda for t in tensors):  # CPU tensors (a recording fabric): runs in order
        if after is not None and not isinstance(after, Work):
            raise TypeError(f"{op}: after must be a Work or None for CPU tensors (got {type(after).__name__})")
        return completed(method(comm, *args, **kwargs), op)
    caller = kwargs.pop("stream", None)
    caller = torch.cuda.current_stream() if caller is None else torch_stream(caller)
    side = comm._side_streams.get(channel)
    comm._validate(op, *args, stream=side, **kwargs)  # bad input: an error before any stream is touched
    ev = _after_event(op, after, caller)
    if ev is not None:
        side.wait_event(ev)
    elif isinstance(after, Work):
        side.wait_stream(caller)
    for t in tensors:
        if t.is_cuda:
            t.record_stream(side)
    with torch.cuda.stream(side):  # outputs the op allocates belong to the side stream
        outputs = method(comm, *args, stream=side, **kwargs)
    return Work(op, outputs, side.record_event(), side)


def overlappable(method):
    """Give a Communicator op the keywords ``async_op=False`` and ``after=None``.

    ``async_op=True``: the op is enqueued on its channel's side stream after ``after`` (a
    ``torch.cuda.Event`` or a ``Work``; default: the caller's stream at call time, i.e. ``stream=``
    or torch's current stream) and returns a ``Work`` whose ``wait()`` gives the op's outputs.
    """
    op = method.__name__
    sig = inspect.signature(method)
    extra = [inspect.Parameter("async_op", inspect.Parameter.KEYWORD_ONLY, default=False),
             inspect.Parameter("after", inspect.Parameter.KEYWORD_ONLY, default=None)]

    @functools.wraps(method)
    def run(self, *args, async_op: bool = False, after=None, **kwargs):
        if not isinstance(async_op, bool):
            raise TypeError(f"{op}: async_op must be a bool (got {async_op!r})")
        if not async_op:
            if after is not None:
                raise ValueError(f"{op}: after= orders an async op; pass async_op=True (or order the caller's "
                                 "stream yourself)")
            return method(self, *args, **kwargs)
        return enqueue(self, op, method, args, kwargs, after)

    run.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + extra)
    run.__doc__ = (method.__doc__ or "") + (
        "\n        async_op, after\n            ``async_op=True`` enqueues the op on the channel's side stream after "
        "``after``\n            (event or Work; default the caller's stream now) and returns a ``Work``"
        "\n            (``collectives.work``); ``work.wait()`` orders the caller after it.\n")
    return run
