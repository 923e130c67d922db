"""Compile PTX to cubin once, cache it on disk, load it, and launch kernels on any stream.

The CUDA layer of the package: linking, loading and launching go through ``cuda.core``; the few raw
``cuda.bindings`` driver calls (an attribute, stream-ordered copies and flag writes) live here only.
Compilation goes through ``cuda.core``
(``ObjectCode.from_ptx`` -> ``Linker`` -> cubin, nvJitLink where present); cubins are cached per
(source hash, architecture) in ``settings.cache_dir()``. Kernels are named by the kernel table
(``ptx/table.py``): ``KernelLibrary.kernel(spec, dtype, world, variant)`` renders the spec's file
and loads the variant's entry.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

from ..errors import CudaError
from ..memory.interop import stream_handle
from ..settings import cache_dir
from . import catalog
from .table import KernelSpec

__all__ = ["ARCH", "KernelLibrary", "cache_key", "copy_async", "cubin_for", "device_arch", "launch", "link_cubin",
           "opt_in_shared_memory", "write_value32"]

#: the PTX targets sm_90a (Hopper); other architectures are refused with a clear error
ARCH = "sm_90a"
#: dynamic shared memory a kernel may use without opting in; above it (pull.ptx) the loader sets the
#: entry's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES once, when it loads the entry
DEFAULT_SHMEM = 48 * 1024
#: the most dynamic shared memory a Hopper block may opt in to (227 KB), less what the static
#: shared variables of our kernels may take (1 KB)
MAX_SHMEM = 227 * 1024 - 1024


def cache_key(ptx: str, arch: str) -> str:
    """File-name key of the cubin of ``ptx`` for ``arch`` (any change in either is a new key)."""
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


def device_arch(device_id: int) -> str:
    """``ARCH`` if ``device_id`` is a Hopper GPU; CudaError naming its architecture otherwise."""
    from cuda.core import Device

    major, minor = Device(device_id).compute_capability
    if (major, minor) != (9, 0):
        raise CudaError(f"weave_nvshmem kernels are built for sm_90a (Hopper); device {device_id} "
                        f"is sm_{major}{minor}")
    return ARCH


class KernelLibrary:
    """Loaded kernels of one process (one device), keyed by the rendering and the entry.

    Parameters
    ----------
    device_id : int
        The CUDA device; it must be Hopper (sm_90a).
    """

    def __init__(self, device_id: int):
        self.device_id = device_id
        self.arch = device_arch(device_id)
        self._modules = {}
        self._kernels = {}

    def kernel(self, spec: KernelSpec, dtype: str | None, world: int, variant: dict):
        """The loaded entry of ``spec`` for ``dtype``, ``world`` ranks and ``variant``.

        The spec's file is rendered (``spec.render_args``), linked once (disk cache) and loaded
        once per process; CUDA loads the module lazily, at its first launch.
        """
        if spec.smem > MAX_SHMEM:
            raise ValueError(f"{spec.entry}: {spec.smem} bytes of dynamic shared memory (at most {MAX_SHMEM})")
        render = spec.render_args(dtype, world)
        entry = spec.entry_name(dtype, world, variant)
        k = self._kernels.get((render, entry))
        if k is None:
            from cuda.core import ObjectCode

            mod = self._modules.get(render)
            if mod is None:
                cubin = cubin_for(catalog.render(*render), self.arch)
                mod = self._modules[render] = ObjectCode.from_cubin(cubin, name=spec.file)
            k = mod.get_kernel(entry)
            if spec.smem > DEFAULT_SHMEM:
                opt_in_shared_memory(k, spec.smem, self.device_id)
            self._kernels[(render, entry)] = k
        return k


def opt_in_shared_memory(kernel, nbytes: int, device_id: int) -> None:
    """Allow ``kernel`` (a cuda.core Kernel) ``nbytes`` of dynamic shared memory (> 48 KB needs it).

    cuda.core loads modules as libraries (CUkernel handles: cuKernelSetAttribute per device);
    a CUfunction handle takes cuFuncSetAttribute. CudaError if the driver refuses.
    """
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    handle = getattr(kernel, "handle", None) or kernel._handle
    if isinstance(handle, driver.CUkernel):
        (err,) = driver.cuKernelSetAttribute(attr, nbytes, handle, driver.CUdevice(device_id))
    else:
        (err,) = driver.cuFuncSetAttribute(handle, attr, nbytes)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise CudaError(f"setting {nbytes} bytes of dynamic shared memory failed: {err}")


_streams: dict = {}


def _core_stream(handle: int):
    """A non-owning cuda.core Stream for a raw handle (cached: torch/CuPy streams live long)."""
    s = _streams.get(handle)
    if s is None:
        from cuda.core import Stream

        s = _streams[handle] = Stream.from_handle(handle)
    return s


def launch(stream, grid: int, block: int, kernel, args: tuple, shmem: int = 0) -> None:
    """Launch ``kernel`` on ``stream``.

    Parameters
    ----------
    stream : torch/CuPy stream, int handle, ``__cuda_stream__`` object, or None (torch's current)
    grid, block : int
        1-D grid and block sizes.
    kernel : cuda.core Kernel
        From ``KernelLibrary.kernel``.
    args : tuple of numpy scalars
        ``KernelSpec.pack``'s result.
    shmem : int
        Bytes of dynamic shared memory.
    """
    from cuda.core import LaunchConfig, launch as _launch

    try:
        _launch(_core_stream(stream_handle(stream)), LaunchConfig(grid=grid, block=block, shmem_size=shmem),
                kernel, *args)
    except Exception as exc:  # noqa: BLE001
        raise CudaError(f"kernel launch failed: {exc}") from exc


def _check(err, what: str) -> None:
    from cuda.bindings import driver

    if err != driver.CUresult.CUDA_SUCCESS:
        raise CudaError(f"{what} failed: {err}")


def copy_async(stream, dst: int, src: int, nbytes: int) -> None:
    """Enqueue a copy of ``nbytes`` from device address ``src`` to ``dst`` on ``stream``
    (``cuMemcpyAsync``; capturable). Either address may be a peer mapping: between GPUs joined by
    NVLink the copy engines move the bytes; within one GPU the copy runs on the SMs."""
    from cuda.bindings import driver

    (err,) = driver.cuMemcpyAsync(driver.CUdeviceptr(dst), driver.CUdeviceptr(src), nbytes,
                                  driver.CUstream(stream_handle(stream)))
    _check(err, f"cuMemcpyAsync of {nbytes} bytes")


def write_value32(stream, addr: int, value: int) -> None:
    """Enqueue a write of the u32 ``value`` to device address ``addr`` (a peer mapping may be one)
    on ``stream``, after everything before it on the stream, with a memory fence before the write
    (``cuStreamWriteValue32``, default flags; capturable)."""
    from cuda.bindings import driver

    (err,) = driver.cuStreamWriteValue32(driver.CUstream(stream_handle(stream)), driver.CUdeviceptr(addr),
                                         driver.cuuint32_t(value),
                                         driver.CUstreamWriteValue_flags.CU_STREAM_WRITE_VALUE_DEFAULT)
    _check(err, "cuStreamWriteValue32")
