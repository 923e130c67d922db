"""A killed rank (run after the other failure tests): a process of a job of its own exits in the
middle of a collective, and every other process raises PeerTimeoutError naming it within the
timeout (tests/gpu/killed_rank_job.py, under a torchrun of its own, on up to 4 GPUs).

Under the multi-GPU suite rank 0 runs the job while the other ranks wait on a torch.distributed
barrier (the dying process must not be one of the suite's own, whose collective teardown it would
hang). Run directly (``python -m pytest tests/gpu/test_zz_killed_rank.py``) on a machine with >= 2
GPUs it runs the job itself. The job's environment is this process's, less the outer torchrun's
rank and rendezvous variables (its own torchrun sets them anew); nothing else is changed.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from weave_nvshmem.testing import all_true

JOB = Path(__file__).with_name("killed_rank_job.py")
TIMEOUT_S = 3.0
#: the outer launcher's variables, replaced by the job's own torchrun
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def run_job(ngpu: int) -> list:
    """Problems with the job's outcome ([] when every survivor named the dead rank in time)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ngpu}", str(JOB),
           str(TIMEOUT_S)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as exc:
        return [f"the job did not end within 180 s: {exc.stdout!s:.2000}"]
    out = proc.stdout
    rows = [dict(re.findall(r"(\w+)=(\S+)", ln)) for ln in out.splitlines() if ln.startswith("KILLED_RANK_RESULT")]
    victim = ngpu - 1
    problems = []
    if sorted(int(r["rank"]) for r in rows) != list(range(victim)):
        problems.append(f"expected a result line from each of ranks 0..{victim - 1}; stdout:\n{out[-3000:]}\n"
                        f"stderr:\n{proc.stderr[-3000:]}")
    for r in rows:
        if r.get("error") != "PeerTimeoutError" or r.get("peer") != str(victim):
            problems.append(f"rank {r['rank']}: expected PeerTimeoutError naming peer {victim}, got {r}")
        elif float(r["seconds"]) > TIMEOUT_S + 5.0:
            problems.append(f"rank {r['rank']}: the error took {r['seconds']} s (timeout {TIMEOUT_S} s)")
    return problems


def test_killed_rank_is_named_by_the_survivors():
    ngpu = torch.cuda.device_count()
    if ngpu < 2:
        pytest.skip("needs >= 2 GPUs")
    n = min(ngpu, 4)
    # under the suite's torchrun only its rank 0 runs the job (one job on the machine at a time)
    problems = run_job(n) if int(os.environ.get("RANK", "0")) == 0 else []
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        assert all_true(not problems), "\n".join(problems)
    else:
        assert not problems, "\n".join(problems)
