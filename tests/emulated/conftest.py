"""Single-GPU suite: the kernels' cross-rank protocols at world sizes 2, 4 and 8 on one GPU
(weave_nvshmem.collectives.emulated). Collected whenever a CUDA device is present; needs no NVSHMEM.
Each test runs its op on every virtual rank (``world.run``), then compares every rank's result
with a float64 reference and with rank 0's bits."""
import os

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # one hardware queue per stream (emulated.py)

import pytest  # noqa: E402
import torch  # noqa: E402

from weave_nvshmem import CommOptions  # noqa: E402
from weave_nvshmem.collectives import reference  # noqa: E402
from weave_nvshmem.collectives.emulated import EmulatedWorld  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
WORLDS = (2, 4, 8)
#: staging every world reserves up front (virtual ranks do not grow it inside a step)
STAGING = 8191 * 4096 * 4


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"w{w}")
def emu(request):
    w = request.param
    world = EmulatedWorld(w, arena_bytes=2 * (2 * w + 3) * STAGING + (64 << 20) * w,
                          options=CommOptions(timeout_s=10.0))
    world.reserve(STAGING)
    yield world
    world.close()


def inputs(seed, world, shape, dtype, scale=1.0):
    """One input per rank, reproducible."""
    out = []
    for r in range(world):
        g = torch.Generator(device="cuda").manual_seed(seed * 1000 + r)
        out.append((torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) * scale).to(dtype))
    return out


def poisoned(shape, dtype, n):
    return [torch.full(shape, float("nan"), dtype=dtype, device="cuda") for _ in range(n)]


def finish(world):
    torch.cuda.synchronize()
    world.check()


def rel_err(got, ref) -> float:
    return reference.rel_error(got.double().cpu().numpy(), ref.double().cpu().numpy())


def tol(dtype) -> float:
    return reference.TOLERANCE[str(dtype).replace("torch.", "")]


def same_bits(tensors) -> bool:
    first = tensors[0].contiguous().view(torch.uint8)
    return all(torch.equal(first, t.contiguous().view(torch.uint8)) for t in tensors[1:])


def fit(world, ctas):
    """``ctas`` capped so every rank's grid is resident at once (the big kernels take 512 threads x
    128 registers: one block per SM); None (the planner's default grids) only at 2 ranks."""
    cap = 128 // world.world
    return (None if world.world == 2 else cap) if ctas is None else min(ctas, cap)
