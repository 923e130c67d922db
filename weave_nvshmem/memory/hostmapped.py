"""Page-locked host words the GPU writes and the host polls: the kernels' error records.

Why this is memory's concern and needs no raw driver call: it is an allocation, like the heap's.
It comes from cuda.core's ``LegacyPinnedMemoryResource`` (``cuMemAllocHost`` behind cuda.core's
own error handling). Under unified addressing, which every 64-bit platform CUDA 13 runs on, such
memory is reachable from every device at its host address, so that address is also the kernels'
``p_err`` (no ``cuMemHostGetDevicePointer``). Raw ``cuda.bindings`` calls stay in the ptx loader.
"""
from __future__ import annotations

__all__ = ["HostMappedWords"]


class HostMappedWords:
    """``count`` u32 words of pinned host memory, zeroed, readable by the host at any time.

    Parameters
    ----------
    count : int
        Number of 32-bit words.

    Attributes
    ----------
    words : numpy.ndarray
        ``[count]`` ``uint32`` view the host reads (None after ``close()``).
    device_ptr : int
        The address kernels write to (the same as the host address).
    """

    def __init__(self, count: int):
        import ctypes

        import numpy as np
        from cuda.core import LegacyPinnedMemoryResource

        self._buf = LegacyPinnedMemoryResource().allocate(4 * count)
        self.device_ptr = int(self._buf.handle)
        self.words = np.ctypeslib.as_array((ctypes.c_uint32 * count).from_address(self.device_ptr))
        self.words[:] = 0

    def close(self) -> None:
        """Free the words (idempotent); the caller makes sure no kernel still writes them."""
        if self._buf is not None:
            self.words = None
            self._buf.close()
            self._buf = None
