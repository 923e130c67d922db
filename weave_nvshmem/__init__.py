"""weave_nvshmem: TokenWeave-style fused collectives for tensor-parallel inference on NVSHMEM.

Layers: ``memory`` (NVSHMEM bootstrap, symmetric tensors) -> ``ptx`` (handwritten kernels, loader)
-> ``collectives`` (Communicator and its ops). Importing needs no GPU; CUDA and NVSHMEM start in
``init()``. The module-level ops use a default Communicator created on first use.
"""
from .collectives import CommOptions, Communicator, owned_rows
from .collectives import communicator as _communicator
from .errors import (CudaError, HeapExhaustedError, MulticastUnavailable, NotInitializedError, PeerTimeoutError,
                     WeaveError)
from .memory import (as_cupy, empty, finalize, free, init, is_initialized, is_symmetric, multicast_unavailable_reason,
                     multicast_view, peer_view, session, zeros)

__version__ = "0.1.0"


def all_reduce(x, **kw):
    """Sum ``x`` over ranks on the default communicator; see ``Communicator.all_reduce``."""
    return _communicator.default().all_reduce(x, **kw)


def reduce_scatter(x, **kw):
    """See ``Communicator.reduce_scatter``."""
    return _communicator.default().reduce_scatter(x, **kw)


def all_gather(x, **kw):
    """See ``Communicator.all_gather``."""
    return _communicator.default().all_gather(x, **kw)


def fused_allreduce_rmsnorm(x, residual, weight, eps=1e-6, **kw):
    """See ``Communicator.fused_allreduce_rmsnorm``."""
    return _communicator.default().fused_allreduce_rmsnorm(x, residual, weight, eps, **kw)


def barrier(**kw):
    """See ``Communicator.barrier``."""
    return _communicator.default().barrier(**kw)


__all__ = ["init", "finalize", "session", "is_initialized", "empty", "zeros", "free", "is_symmetric", "peer_view",
           "as_cupy", "multicast_view", "multicast_unavailable_reason", "Communicator", "CommOptions",
           "owned_rows", "all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm", "barrier",
           "WeaveError", "NotInitializedError", "CudaError", "HeapExhaustedError", "MulticastUnavailable",
           "PeerTimeoutError"]
