"""One error hierarchy for weave_nvshmem: bad input is a ValueError/TypeError that names the op."""


class WeaveError(RuntimeError):
    """Base class of weave_nvshmem runtime failures."""


class NotInitializedError(WeaveError):
    """An op ran before ``weave_nvshmem.init()`` (or after ``finalize()``)."""


class CudaError(WeaveError):
    """A CUDA driver or JIT-link call failed; the message carries the CUresult name and any log."""


class HeapExhaustedError(WeaveError, MemoryError):
    """The NVSHMEM symmetric heap could not satisfy an allocation."""


class MulticastUnavailable(WeaveError):
    """NVLink multicast cannot be used here; ``reason`` says why (disabled, single PE, no hardware)."""

    def __init__(self, reason: str):
        super().__init__(f"multicast unavailable: {reason}")
        self.reason = reason


class PeerTimeoutError(WeaveError, TimeoutError):
    """A cross-rank wait inside a kernel ran past its bound.

    The communicator that raised it is broken (its signal pads are out of step): close it.
    """

    def __init__(self, op: str, peer: int, cta: int, timeout_s: float):
        super().__init__(f"{op}: peer {peer} did not arrive within {timeout_s:g} s (block {cta}); "
                         "the communicator is unusable now, close it and re-create it on all ranks")
        self.op, self.peer, self.cta = op, peer, cta


class NoCudaDeviceError(WeaveError):
    """No usable CUDA GPU: torch was built without CUDA, or no device (or driver) is visible."""


class UnsupportedDeviceError(WeaveError):
    """The GPU is not a Hopper GPU (compute capability 9.0): the kernels are built for ``sm_90a``."""


class MissingDependencyError(WeaveError, ImportError):
    """A runtime dependency (NVSHMEM, nvshmem4py, cuda-core, cuda-bindings, CuPy) cannot be loaded.

    ``requirement`` is what to install (a pip requirement, or the extra that brings it).
    """

    def __init__(self, message: str, requirement: str):
        super().__init__(message)
        self.requirement = requirement


class PeersUnavailableError(WeaveError):
    """The processes of the job cannot find each other: several ranks were launched (``WORLD_SIZE``)
    but torch.distributed is not initialised, or ``LOCAL_RANK`` names no visible GPU."""


class CallMismatchError(WeaveError):
    """Two ranks made different collective calls on one channel (op, shape, dtype, algorithm,
    CTAs, flags or call count), found by the call signature in the kernels' handshake.

    ``rank``/``peer``: the two ranks; ``mine``/``theirs``: their calls as ``CallDescriptor``
    (collectives/signature.py). The communicator is broken (its signal pads are out of step):
    close it and re-create it on all ranks.
    """

    def __init__(self, rank: int, peer: int, mine, theirs, cta: int = 0):
        calls = sorted([(rank, mine), (peer, theirs)], key=lambda rc: rc[0])
        said = "; ".join(f"rank {r} called {c}" for r, c in calls)
        super().__init__(f"collective call mismatch: {said} (seen by rank {rank}, block {cta}); the communicator is "
                         "unusable now, close it and re-create it on all ranks")
        self.rank, self.peer, self.mine, self.theirs, self.cta = rank, peer, mine, theirs, cta
