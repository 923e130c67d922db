"""Multi-GPU suite: run with `bash tests/gpu/run.sh` (torchrun, one process per GPU).

Every test is collective: all ranks run the same tests in the same order, make all their
collective calls first and assert afterwards (on ``weave_nvshmem.testing.all_true``), so a failure
on one rank cannot hang the others.
"""
import os

import pytest
import torch
import torch.distributed as dist

import weave_nvshmem as wn
from weave_nvshmem.testing import rank_inputs, rank_world

#: world size of this run, known before the process group starts (parametrisations need it)
WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))


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
    return rank_world()[1]


def rank():
    return rank_world()[0]


def all_inputs(seed, shape, dtype, scale=1.0):
    """Every rank's input of a test (``rank_inputs``), built on every rank for the reference."""
    return rank_inputs(seed, world(), shape, dtype, scale=scale)
