"""Symmetric memory on NVSHMEM: bootstrap, heap tensors, peer and multicast views."""
from .heap import as_cupy, empty, free, is_symmetric, peer_view, zeros
from .multicast import multicast_view, unavailable_reason as multicast_unavailable_reason
from .runtime import finalize, init, is_initialized, runtime, session

__all__ = ["init", "finalize", "session", "is_initialized", "runtime", "empty", "zeros", "free",
           "is_symmetric", "peer_view", "as_cupy", "multicast_view", "multicast_unavailable_reason"]
