"""Compile PTX to cubin once, cache it on disk, load it, and launch kernels on any stream.

The only module that talks to the CUDA driver directly. Compilation goes through ``cuda.core``
(``ObjectCode.from_ptx`` -> ``Linker`` -> cubin, nvJitLink where present); cubins are cached per
(source hash, architecture) under ``$WEAVE_NVSHMEM_CACHE`` (default ``~/.cache/weave_nvshmem``).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..errors import CudaError
from . import catalog

#: the PTX targets sm_90a (Hopper); other architectures are refused with a clear error
ARCH = "sm_90a"
#: dynamic shared memory a kernel may use without opting in
DEFAULT_SHMEM = 48 * 1024


def cache_dir() -> Path:
    return Path(os.environ.get("WEAVE_NVSHMEM_CACHE", Path.home() / ".cache" / "weave_nvshmem"))


def cache_key(ptx: str, arch: str) -> str:
    return hashlib.sha256(f"{arch}\0{ptx}".encode()).hexdigest()[:32]


def link_cubin(ptx: str, arch: str) -> bytes:
    """PTX text -> cubin bytes through cuda.core's Linker; raises CudaError with the JIT log."""
    from cuda.core import Linker, LinkerOptions, ObjectCode

    linker = Linker(ObjectCode.from_ptx(ptx.encode()), options=LinkerOptions(arch=arch))
    try:
        return bytes(linker.link("cubin").code)
    except Exception as exc:  # noqa: BLE001 - attach the JIT log
        try:
            log = linker.get_error_log()
        except Exception:  # noqa: BLE001
            log = ""
        raise CudaError(f"linking PTX for {arch} failed: {exc}\n{log}") from exc
    finally:
        linker.close()


def cubin_for(ptx: str, arch: str = ARCH, *, link=link_cubin) -> bytes:
    """The cubin of ``ptx``: from the disk cache, else linked and stored (atomic rename)."""
    path = cache_dir() / f"{cache_key(ptx, arch)}.{arch}.cubin"
    if path.exists():
        return path.read_bytes()
    cubin = link(ptx, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(cubin)
    os.replace(tmp.name, path)
    return cubin


def _check(result, what: str):
    """Unwrap a cuda.bindings (CUresult, value...) tuple or raise CudaError naming the call."""
    from cuda.bindings import driver

    err, *rest = result
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        _, text = driver.cuGetErrorString(err)
        raise CudaError(f"{what}: {name.decode() if name else err}: {text.decode() if text else ''}")
    return rest[0] if len(rest) == 1 else rest


def device_arch(device_id: int) -> str:
    from cuda.core import Device

    major, minor = Device(device_id).compute_capability
    if (major, minor) != (9, 0):
        raise CudaError(f"weave_nvshmem kernels are built for sm_90a (Hopper); device {device_id} "
                        f"is sm_{major}{minor}")
    return ARCH


class KernelLibrary:
    """Loaded kernels of one process, keyed by (file, dtype, world, entry)."""

    def __init__(self, device_id: int):
        self.device_id = device_id
        self.arch = device_arch(device_id)
        self._modules = {}
        self._kernels = {}
        self._shmem = {}

    def kernel(self, file: str, entry: str, dtype: str | None = None, world: int = 1, *, shmem: int = 0):
        """The loaded kernel, allowed ``shmem`` bytes of dynamic shared memory (above 48 KB a
        kernel must opt in, once)."""
        key = (file, dtype, world, entry)
        k = self._kernels.get(key)
        if k is None:
            from cuda.core import ObjectCode

            mod_key = (file, dtype, world)
            mod = self._modules.get(mod_key)
            if mod is None:
                cubin = cubin_for(catalog.render(file, dtype, world), self.arch)
                mod = self._modules[mod_key] = ObjectCode.from_cubin(cubin, name=file)
            k = self._kernels[key] = mod.get_kernel(entry)
        if shmem > self._shmem.get(key, DEFAULT_SHMEM):
            self._allow_shmem(k, shmem)
            self._shmem[key] = shmem
        return k

    def _allow_shmem(self, kernel, nbytes: int) -> None:
        from cuda.bindings import driver

        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        h = kernel.handle
        if isinstance(h, driver.CUkernel):  # library-loaded (cuda.core's default): per device
            _check(driver.cuKernelSetAttribute(attr, nbytes, h, driver.CUdevice(self.device_id)), "cuKernelSetAttribute")
        else:
            _check(driver.cuFuncSetAttribute(h, attr, nbytes), "cuFuncSetAttribute")


_streams: dict = {}


def _core_stream(handle: int):
    """A non-owning cuda.core Stream for a raw handle (cached: torch/CuPy streams live long)."""
    s = _streams.get(handle)
    if s is None:
        from cuda.core import Stream

        s = _streams[handle] = Stream.from_handle(handle)
    return s


def stream_handle(stream) -> int:
    """Raw cudaStream_t of a torch stream, CuPy stream, stream-protocol object or int."""
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


def launch(stream, grid: int, block: int, kernel, *args, shmem: int = 0) -> None:
    """Launch ``kernel`` on ``stream`` (torch/CuPy/int/protocol) with ``shmem`` bytes of dynamic
    shared memory; args are numpy scalars."""
    from cuda.core import LaunchConfig, launch as _launch

    try:
        _launch(_core_stream(stream_handle(stream)), LaunchConfig(grid=grid, block=block, shmem_size=shmem),
                kernel, *args)
    except Exception as exc:  # noqa: BLE001
        raise CudaError(f"kernel launch failed: {exc}") from exc


class HostMappedWords:
    """Page-locked host u32 words the GPU can write (error records); ``.device_ptr`` for kernels."""

    def __init__(self, count: int):
        import numpy as np
        from cuda.bindings import driver

        nbytes = 4 * count
        flags = driver.CU_MEMHOSTALLOC_DEVICEMAP | driver.CU_MEMHOSTALLOC_PORTABLE
        self._ptr = _check(driver.cuMemHostAlloc(nbytes, flags), "cuMemHostAlloc")
        self.device_ptr = int(_check(driver.cuMemHostGetDevicePointer(self._ptr, 0), "cuMemHostGetDevicePointer"))
        import ctypes

        self.words = np.ctypeslib.as_array((ctypes.c_uint32 * count).from_address(int(self._ptr)))
        self.words[:] = 0

    def close(self):
        if self._ptr is not None:
            from cuda.bindings import driver

            self.words = None
            _check(driver.cuMemFreeHost(self._ptr), "cuMemFreeHost")
            self._ptr = None
