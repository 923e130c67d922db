"""NVLink multicast views of symmetric tensors, where the platform and the user allow them.

Multicast is opt-in (``init(multicast=True)``) and refused whenever ``NVSHMEM_DISABLE_NVLS`` is
set to a true value, with one PE, or when NVSHMEM has no multicast object: callers get
``MulticastUnavailable`` with the reason and take the peer-to-peer path. Nothing here creates a
multicast object itself.
"""
from __future__ import annotations

import os

from ..errors import MulticastUnavailable
from .runtime import runtime


def unavailable_reason() -> str | None:
    """Why multicast cannot be used now, or None if it may be tried."""
    rt = runtime()
    if not rt.multicast_requested:
        return "not requested (pass multicast=True to weave_nvshmem.init())"
    flag = os.environ.get("NVSHMEM_DISABLE_NVLS", "").strip().lower()
    if flag not in ("", "0", "false", "no", "off"):
        return f"NVLink SHARP/multicast disabled by NVSHMEM_DISABLE_NVLS={os.environ['NVSHMEM_DISABLE_NVLS']}"
    if rt.world < 2:
        return "a single PE has no peers to multicast to"
    return None


def multicast_view(t):
    """A torch view of ``t``'s multicast address (device-only memory); raises MulticastUnavailable."""
    import torch
    import nvshmem.core as nvshmem

    from .heap import allocation_of

    reason = unavailable_reason()
    if reason:
        raise MulticastUnavailable(reason)
    a = allocation_of(t, op="multicast_view")
    try:
        mc = nvshmem.get_multicast_buffer(nvshmem.Teams.TEAM_NODE, a.buffer)
    except Exception as exc:  # noqa: BLE001 - NvshmemError / NvshmemInvalid
        raise MulticastUnavailable(f"NVSHMEM has no multicast object for this heap ({exc})") from exc
    raw = torch.utils.dlpack.from_dlpack(mc).view(torch.uint8)
    off = t.data_ptr() - a.base
    return raw[off:].view(t.dtype).as_strided(t.shape, t.stride())
