"""A job in which the last rank dies in the middle of a collective (tests/gpu/test_zz_killed_rank.py
runs it under its own torchrun): every rank makes one good call, then the survivors make CALLS
two-shot all_reduces while the last rank launches two of them and exits (``os._exit``) with its
kernels in flight. Each survivor prints one line, ``KILLED_RANK_RESULT rank=R error=E peer=P
op=O seconds=S`` (what its ``synchronize`` raised, and after how long), then exits without
closing: ``close()`` is collective and the dead rank will never join it.

    torchrun --nproc-per-node=2 tests/gpu/killed_rank_job.py [TIMEOUT_S]
"""
import os
import sys
import time

import torch
import torch.distributed as dist

import weave_nvshmem as wn

CALLS = 5


def main() -> None:
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    wn.init()
    rank, world = dist.get_rank(), dist.get_world_size()
    victim = world - 1
    c = wn.Communicator(wn.CommOptions(timeout_s=timeout, channels=1))
    x = torch.ones(1 << 16, device="cuda")
    y = c.all_reduce(x, algorithm="twoshot")
    c.synchronize()
    assert bool((y == world).all()), "the first call must be right on every rank"
    dist.barrier()
    torch.cuda.synchronize()
    if rank == victim:
        c.all_reduce(x, algorithm="twoshot")
        c.all_reduce(x, algorithm="twoshot")
        print(f"KILLED_RANK_VICTIM rank={rank} exits with its kernels in flight", flush=True)
        os._exit(0)
    t0 = time.perf_counter()
    line = f"KILLED_RANK_RESULT rank={rank} error=none"
    try:
        for _ in range(CALLS):
            c.all_reduce(x, algorithm="twoshot")
        c.synchronize()
    except wn.PeerTimeoutError as exc:
        line = f"KILLED_RANK_RESULT rank={rank} error=PeerTimeoutError peer={exc.peer} op={exc.op}"
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        line = f"KILLED_RANK_RESULT rank={rank} error={type(exc).__name__} message={' '.join(str(exc).split())}"
    print(f"{line} seconds={time.perf_counter() - t0:.2f}", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
