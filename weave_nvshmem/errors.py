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
