"""Signal pads: zeroed symmetric u32 flag arrays that kernels use to synchronise ranks."""
from __future__ import annotations

from . import heap
from .runtime import runtime


def signal_pad(nwords: int, *, label: str = "weave:signal-pad"):
    """Allocate ``nwords`` zeroed u32 flags on every PE (collective, returns after all zeroed)."""
    import torch

    pad = heap.empty((nwords,), torch.int32, label=label)
    pad.zero_()
    torch.cuda.synchronize()
    rt = runtime()
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return pad
