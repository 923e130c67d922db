"""Multi-GPU suite: run with `bash tests/gpu/run.sh` (torchrun, one process per GPU).

Every test is collective: all ranks run the same tests in the same order, make all their
collective calls first and assert afterwards, so a failure on one rank cannot hang the others.
"""
import hashlib
import os

import pytest
import torch
import torch.distributed as dist

import weave_nvshmem as wn
from weave_nvshmem.collectives import reference

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@pytest.fixture(scope="session")
def comm():
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    wn.init()
    c = wn.Communicator(wn.CommOptions(timeout_s=30.0))
    yield c
    c.close()
    leaks = wn.finalize()
    if dist.is_initialized():
        dist.destroy_process_group()
    assert leaks == [], f"symmetric allocations leaked: {leaks}"


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def rank_input(seed, r, shape, dtype, scale=1.0):
    """Rank r's input of a test, reproducible on every rank (so each can build the reference)."""
    g = torch.Generator(device="cuda").manual_seed(seed * 1000 + r)
    return (torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) * scale).to(dtype)


def all_inputs(seed, shape, dtype, scale=1.0):
    return [rank_input(seed, r, shape, dtype, scale) for r in range(world())]


def poison(t):
    if t.dtype.is_floating_point:
        t.fill_(float("nan"))
    else:
        t.fill_(-1)
    return t


def digest(t) -> str:
    return hashlib.sha1(t.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def same_on_all_ranks(t) -> bool:
    """True when ``t`` has identical bytes on every rank."""
    mine = digest(t)
    got = [None] * world()
    dist.all_gather_object(got, mine) if world() > 1 else got.__setitem__(0, mine)
    return len(set(got)) == 1


def rel_err(got, ref) -> float:
    got = got.double()
    ref = ref.double()
    fin_g, fin_r = torch.isfinite(got), torch.isfinite(ref)
    if not torch.equal(fin_g, fin_r):
        return float("inf")
    num = torch.linalg.vector_norm((got - ref)[fin_r]).item()
    den = torch.linalg.vector_norm(ref[fin_r]).item()
    return num / den if den else num


def tol(dtype) -> float:
    return reference.TOLERANCE[str(dtype).replace("torch.", "")]


def all_ranks_true(flag: bool) -> bool:
    t = torch.tensor([1 if flag else 0], device="cuda")
    if world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
