"""NVSHMEM bootstrap from torch.distributed (or a single process), and its teardown.

``init()`` first checks what it needs (``weave_nvshmem.preflight``: a Hopper GPU, NVSHMEM, the
peers), changing nothing when a check fails; then it binds the CUDA device (``LOCAL_RANK`` under
torchrun, else the current device), broadcasts an NVSHMEM unique id from rank 0 over the
torch.distributed group, and initialises one PE per process. Multicast stays opt-in: unless
``multicast=True``, ``NVSHMEM_DISABLE_NVLS=1`` is set when the environment has no value; a value
already there is never overridden.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import NotInitializedError


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device_id: int
    multicast_requested: bool


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The live runtime, or NotInitializedError telling the user to call init()."""
    if _runtime is None:
        raise NotInitializedError("weave_nvshmem is not initialised: call weave_nvshmem.init() on every rank first")
    return _runtime


def is_initialized() -> bool:
    return _runtime is not None


def _default_multicast_env(multicast: bool, environ=None) -> None:
    """Keep multicast opt-in: without ``multicast``, default ``NVSHMEM_DISABLE_NVLS`` to ``1``.

    A value already in the environment is never overridden (either way).
    """
    env = os.environ if environ is None else environ
    if not multicast:
        env.setdefault("NVSHMEM_DISABLE_NVLS", "1")


def init(group=None, *, multicast: bool = False) -> Runtime:
    """Initialise NVSHMEM, one PE per process. Collective over ``group`` (default: WORLD).

    Without torch.distributed initialised this runs as a single PE. Idempotent.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The ranks that form the NVSHMEM job (rank 0 of it broadcasts the unique id).
    multicast : bool
        Leave NVLink multicast to NVSHMEM's own default instead of disabling it.

    Returns
    -------
    Runtime
        ``rank``, ``world``, ``device_id`` of this process.

    Raises
    ------
    WeaveError
        Before anything is changed, naming what is missing (``weave_nvshmem.preflight``):
        ``NoCudaDeviceError``, ``UnsupportedDeviceError`` (not Hopper), ``MissingDependencyError``
        (cuda-bindings, cuda-core, nvshmem4py, libnvshmem_host), ``PeersUnavailableError``.
    """
    global _runtime
    if _runtime is not None:
        return _runtime
    from .. import preflight

    device_id = preflight.check_init("init", group)  # raises before the environment or a device is touched
    import torch
    import torch.distributed as dist

    _default_multicast_env(multicast)
    torch.cuda.set_device(device_id)

    from cuda.core import Device
    import nvshmem.core as nvshmem

    dev = Device(device_id)
    dev.set_current()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(group), dist.get_world_size(group)
    else:
        rank, world = 0, 1
    uid = nvshmem.get_unique_id(empty=rank != 0)
    if world > 1:
        payload = [bytes(uid._data.view("uint8")) if rank == 0 else None]
        dist.broadcast_object_list(payload, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        uid._data.view("uint8")[:] = memoryview(payload[0])
    nvshmem.init(device=dev, uid=uid, rank=rank, nranks=world, initializer_method="uid")
    _runtime = Runtime(rank=rank, world=world, device_id=device_id, multicast_requested=multicast)
    return _runtime


#: what upper layers close before the heap goes (``on_finalize``), in registration order
_finalize_hooks: list = []


def on_finalize(hook) -> None:
    """Have ``finalize()`` call ``hook()`` before it frees the heap (registered once per hook).

    Upper layers register what they own on the heap (``collectives`` closes its default
    communicator), so this lowest layer never imports them. Hooks run last-registered first.
    """
    if hook not in _finalize_hooks:
        _finalize_hooks.append(hook)


def finalize() -> list:
    """Run the ``on_finalize`` hooks (the default communicator closes), free what is left on the
    heap, finalise NVSHMEM.

    Collective. Returns the leak report: descriptions of symmetric allocations the user never
    freed (they are freed here). Idempotent.
    """
    global _runtime
    if _runtime is None:
        return []
    from . import heap

    for hook in reversed(_finalize_hooks):
        hook()
    leaks = heap.release_all()
    import nvshmem.core as nvshmem

    nvshmem.finalize()
    _runtime = None
    return leaks


class session:
    """Context manager: ``with weave_nvshmem.session(): ...`` = init() ... finalize()."""

    def __init__(self, group=None, *, multicast: bool = False):
        self._group = group
        self._multicast = multicast

    def __enter__(self) -> Runtime:
        return init(self._group, multicast=self._multicast)

    def __exit__(self, *exc):
        finalize()
        return False
