"""Symmetric memory on NVSHMEM: bootstrap, heap tensors, peer and multicast views; the lowest layer.

Modules: ``runtime`` (init/finalize, ``on_finalize`` hooks for upper layers), ``heap`` (symmetric
tensors and their registry), ``multicast`` (multicast views, opt-in), ``interop`` (torch/CuPy
arrays and streams), ``hostmapped`` (pinned host words the kernels write). It imports nothing
above it (``tests/test_interop.py`` checks the import graph).
"""
from .heap import as_cupy, empty, free, is_symmetric, peer_view, zeros
from .multicast import multicast_view, unavailable_reason as multicast_unavailable_reason
from .runtime import finalize, init, is_initialized, runtime, session

__all__ = ["init", "finalize", "session", "is_initialized", "runtime", "empty", "zeros", "free",
           "is_symmetric", "peer_view", "as_cupy", "multicast_view", "multicast_unavailable_reason"]
