"""Single-GPU suite: the kernels' cross-rank protocols at world sizes 2, 4 and 8 on one GPU
(weave_nvshmem.collectives.emulated). Collected whenever a CUDA device is present; needs no NVSHMEM.
Each test runs its op on every virtual rank (``world.run``), then compares every rank's result
with the reference (weave_nvshmem.testing) and with the other ranks' bits."""
import os

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # one hardware queue per stream (emulated.py)
# load every kernel when the context starts: a lazy load waits for the device, so a compute kernel
# first launched while another rank's collective spins would stall until the wait times out
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")

import pytest  # noqa: E402
import torch  # noqa: E402

from weave_nvshmem import CommOptions  # noqa: E402
from weave_nvshmem.testing.fuzz import RESIDENT_BLOCKS  # noqa: E402
from weave_nvshmem.testing.runner import emulated_world  # noqa: E402

WORLDS = (2, 4, 8)
#: staging every world reserves up front (virtual ranks do not grow it inside a step)
STAGING = 8191 * 4096 * 4


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"w{w}")
def emu(request):
    world = emulated_world(request.param, STAGING, options=CommOptions(timeout_s=10.0), extra_bytes=STAGING)
    yield world
    world.close()
    torch.cuda.empty_cache()  # the next world size (or test module) gets the arena memory back


def finish(world):
    torch.cuda.synchronize()
    world.check()


def fit(world, ctas):
    """``ctas`` capped so every rank's grid is resident at once (the big kernels take 512 threads x
    128 registers: one block per SM); None (the planner's default grids) only at 2 ranks."""
    cap = RESIDENT_BLOCKS // world.world
    return (None if world.world == 2 else cap) if ctas is None else min(ctas, cap)
