"""torch / CuPy / stream interop: the one place that turns what a caller passes into torch tensors
and raw CUDA streams, and hands results back in the caller's array type.

Every op accepts torch tensors and CuPy arrays (anything with ``__cuda_array_interface__`` and
``__dlpack__``); the library works on zero-copy torch views and returns the caller's type. A CuPy
input runs on CuPy's current stream unless a stream is given; torch input on torch's.
"""
from __future__ import annotations

__all__ = ["as_torch", "to_torch", "op_stream", "stream_handle", "torch_stream"]


def as_torch(x):
    """A zero-copy torch view of ``x``.

    Parameters
    ----------
    x : torch.Tensor or array with ``__dlpack__`` (CuPy)
        Any shape and dtype.

    Returns
    -------
    torch.Tensor
        ``x`` itself for a torch tensor, else ``torch.from_dlpack(x)`` (same memory, shape, dtype).
    """
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(f"expected a torch tensor or CuPy array (got {type(x).__name__})")


def to_torch(x):
    """``(view, back)``: a torch view of ``x`` and a function that converts a torch result to the
    caller's array type (identity for torch, ``cupy.from_dlpack`` for CuPy).

    Parameters
    ----------
    x : torch.Tensor or CuPy array
        Any shape and dtype, on a CUDA device (CuPy) or anywhere (torch).
    """
    import torch

    if isinstance(x, torch.Tensor):
        return x, _same
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "__dlpack__"):
        import cupy

        return torch.from_dlpack(x), cupy.from_dlpack
    raise TypeError(f"expected a torch tensor or CuPy array (got {type(x).__name__})")


def _same(t):
    return t


def op_stream(stream, x):
    """The stream an op on ``x`` runs on: ``stream`` if given, else CuPy's current stream for a
    CuPy ``x``, else None (torch's current stream)."""
    if stream is not None:
        return stream
    import torch

    if not isinstance(x, torch.Tensor):
        import cupy

        return cupy.cuda.get_current_stream()
    return None


def stream_handle(stream) -> int:
    """Raw ``cudaStream_t`` of ``stream``.

    Parameters
    ----------
    stream : torch.cuda.Stream, cupy.cuda.Stream, object with ``__cuda_stream__``, int, or None
        None means torch's current stream.

    Returns
    -------
    int
        The handle.
    """
    if stream is None:
        import torch

        return torch.cuda.current_stream().cuda_stream
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):  # torch, cupy
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    raise TypeError(f"cannot use {type(stream).__name__} as a CUDA stream")


def torch_stream(stream):
    """``stream`` as a torch stream (None stays None: the current one), for torch work such as a
    device copy that must run in an op's stream order."""
    import torch

    if stream is None or isinstance(stream, torch.cuda.Stream):
        return stream
    return torch.cuda.ExternalStream(stream_handle(stream))
