"""Preflight checks: what ``init()`` and the entry points need, named before anything is changed.

Each check raises a :class:`~weave_nvshmem.errors.WeaveError` subclass whose message starts with
the entry point (``op``) and names the missing piece and what to do about it. The checks only
query: they set no environment variable, bind no device and start no NVSHMEM, so a failed check
leaves the process as it was (``init()`` sets ``NVSHMEM_DISABLE_NVLS`` only after they pass).

Callers: ``weave_nvshmem.init()`` runs :func:`check_init`; a command-line entry point that needs a
GPU (the benchmarks) calls :func:`require_gpu` first and prints the error's one-line message.
"""
from __future__ import annotations

import importlib
import os

from .errors import MissingDependencyError, NoCudaDeviceError, PeersUnavailableError, UnsupportedDeviceError

#: the compute capability the kernels are built for (``sm_90a``: Hopper)
HOPPER = (9, 0)

#: what runtime needs, in load order: (module, names it must export, pip requirement)
RUNTIME_MODULES = (
    ("cuda.bindings.driver", (), "cuda-bindings>=13,<14"),
    ("cuda.core", ("Device", "Linker", "LinkerOptions", "ObjectCode", "LaunchConfig", "launch", "Stream"),
     "cuda-core>=0.5,<2"),
    ("nvshmem.core", ("init", "get_unique_id", "finalize"), "nvshmem4py-cu13>=0.4.1,<0.5"),
)


def _torch(op: str):
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(f"{op}: needs torch (pip install 'torch>=2.9'): {exc}", "torch>=2.9") from exc
    return torch


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "" if value is None else f" (CUDA_VISIBLE_DEVICES={value!r})"


def require_gpu(op: str = "weave_nvshmem") -> int:
    """Check that this process has a Hopper GPU; return its CUDA device index.

    The device is ``LOCAL_RANK`` when that is set (one process per GPU, as under torchrun), else
    torch's current device.

    Parameters
    ----------
    op : str
        The entry point, first word of every message (e.g. ``"init"``, ``"bench allreduce"``).

    Returns
    -------
    int
        The CUDA device index the caller should bind.

    Raises
    ------
    NoCudaDeviceError
        torch has no CUDA (a CPU build) or sees no device.
    PeersUnavailableError
        ``LOCAL_RANK`` is not an integer or names a device this process cannot see.
    UnsupportedDeviceError
        The device is not compute capability 9.0 (Hopper).
    """
    torch = _torch(op)
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = (f"torch {torch.__version__} was built without CUDA; install a CUDA 13 build of torch "
                   "(e.g. torch==2.11.0+cu130)")
        else:
            why = f"torch (CUDA {torch.version.cuda}) sees no CUDA device{_visible()}; check the NVIDIA driver"
        raise NoCudaDeviceError(f"{op}: needs an NVIDIA Hopper GPU: {why}")
    count = torch.cuda.device_count()
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        index = torch.cuda.current_device()
    else:
        try:
            index = int(local)
        except ValueError:
            raise PeersUnavailableError(f"{op}: LOCAL_RANK must be an integer (got {local!r})") from None
        if not 0 <= index < count:
            raise PeersUnavailableError(
                f"{op}: LOCAL_RANK={index} names cuda:{index}, but this process sees {count} CUDA "
                f"device(s){_visible()}; start at most {count} process(es) per node, one per GPU")
    capability = tuple(torch.cuda.get_device_capability(index))
    if capability != HOPPER:
        raise UnsupportedDeviceError(
            f"{op}: needs a Hopper GPU (compute capability 9.0; the kernels are built for sm_90a); cuda:{index} "
            f"is {torch.cuda.get_device_name(index)} (compute capability {capability[0]}.{capability[1]})")
    return index


def require_dependencies(op: str = "weave_nvshmem") -> None:
    """Check that cuda-bindings, cuda-core, nvshmem4py and the NVSHMEM host library load.

    Raises
    ------
    MissingDependencyError
        Naming the first one that is missing or too old, and the requirement to install.
    """
    for module, names, requirement in RUNTIME_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(f"{op}: needs {module} (pip install '{requirement}'): {exc}",
                                         requirement) from exc
        missing = [n for n in names if not hasattr(mod, n)]
        if missing:
            raise MissingDependencyError(f"{op}: {module} has no {', '.join(missing)}: too old; "
                                         f"pip install '{requirement}'", requirement)
    load_nvshmem_library(op)


def load_nvshmem_library(op: str = "weave_nvshmem") -> None:
    """Load ``libnvshmem_host`` as nvshmem4py will (loading reads no NVSHMEM setting; init does).

    Raises
    ------
    MissingDependencyError
        The library is not found (the ``nvidia-nvshmem-cu13`` wheel or a system NVSHMEM).
    """
    requirement = "nvidia-nvshmem-cu13>=3.4,<4"
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvshmem_host")
    except Exception as exc:  # noqa: BLE001 - pathfinder raises its own error classes, ImportError or OSError
        raise MissingDependencyError(f"{op}: cannot load the NVSHMEM host library libnvshmem_host "
                                     f"(pip install '{requirement}'): {exc}", requirement) from exc


def require_cupy(op: str = "weave_nvshmem"):
    """Import CuPy, the ``[cupy]`` extra (CuPy is never needed otherwise).

    Returns
    -------
    module
        ``cupy``.

    Raises
    ------
    MissingDependencyError
        CuPy is not installed.
    """
    requirement = "weave_nvshmem[cupy]"
    try:
        import cupy
    except ImportError as exc:
        raise MissingDependencyError(f"{op}: needs CuPy (pip install '{requirement}', which brings cupy-cuda13x): "
                                     f"{exc}", requirement) from exc
    return cupy


def require_peers(op: str = "weave_nvshmem", group=None) -> None:
    """Check that the ranks of the job can meet: torch.distributed is up when several were launched.

    Parameters
    ----------
    op : str
        The entry point, first word of the message.
    group : torch.distributed.ProcessGroup, optional
        The group the caller will bootstrap over (needs torch.distributed initialised).

    Raises
    ------
    PeersUnavailableError
        ``WORLD_SIZE`` > 1 (or a ``group`` was given) but torch.distributed is not initialised.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if group is not None:
        raise PeersUnavailableError(f"{op}: a process group was given but torch.distributed is not initialised; "
                                    "call torch.distributed.init_process_group() first")
    world = os.environ.get("WORLD_SIZE", "1")
    try:
        several = int(world) > 1
    except ValueError:
        raise PeersUnavailableError(f"{op}: WORLD_SIZE must be an integer (got {world!r})") from None
    if several:
        raise PeersUnavailableError(
            f"{op}: WORLD_SIZE={world} processes were launched but torch.distributed is not initialised, so the "
            "ranks cannot exchange the NVSHMEM id; call torch.distributed.init_process_group() before init()")


def check_init(op: str = "init", group=None) -> int:
    """Everything ``init()`` needs, in the order a user would fix it; returns the device index.

    Raises
    ------
    WeaveError
        One of :class:`NoCudaDeviceError`, :class:`UnsupportedDeviceError`,
        :class:`PeersUnavailableError`, :class:`MissingDependencyError`.
    """
    device = require_gpu(op)
    require_dependencies(op)
    require_peers(op, group)
    return device
