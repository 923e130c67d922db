"""torch.compile on one GPU at world 1 (an EmulatedWorld rank: no NVSHMEM needed):

- the functional fused op under ``torch.compile(fullgraph=True, mode="reduce-overhead")``: Inductor
  CUDA-graphs it (no "skipping cudagraphs", a graph recorded), results match the float64 reference;
- the compile pass on a Llama-style model (tests/llama_standin.py; transformers' own classes where
  installed) under Inductor with CUDA graphs: every chain replaced, results match eager.

Run: ``CUDA_DEVICE_MAX_CONNECTIONS=32 python3 -m pytest tests/emulated/test_compile.py -q``.
"""
import contextlib
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # one hardware queue per stream (emulated.py)

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import weave_nvshmem as wn  # noqa: E402
from weave_nvshmem.compile import FuseAllReduceRMSNorm  # noqa: E402
from weave_nvshmem.testing import reference_fused, rel_err, tolerance  # noqa: E402
from weave_nvshmem.testing.runner import emulated_world  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the Llama stand-in
import llama_standin as L  # noqa: E402

EPS = 1e-6
STAGING = 8 << 20  # bytes of staging per channel: the largest op here moves 1 MiB
#: relative-norm tolerances of a compiled model against eager (fp32: looser than the kernels' own,
#: as compiled GPU reductions run in another order)
TOL = {torch.float32: 1e-4, torch.bfloat16: tolerance(torch.bfloat16)}


@pytest.fixture(scope="module")
def comm():
    """Rank 0 of a one-rank EmulatedWorld, the current communicator for the whole module."""
    world = emulated_world(1, STAGING, options=wn.CommOptions(timeout_s=10.0))
    with wn.use_communicator(world.ranks[0]):
        yield world.ranks[0]
    world.close()


@pytest.fixture(scope="module")
def nccl_world1():
    """A one-rank NCCL group: the eager models' torch.distributed all-reduces (the identity here)."""
    mine = not dist.is_initialized()
    if mine:
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device("cuda", torch.cuda.current_device()))
    yield
    if mine:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def fresh_compile():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._inductor.config.patch(fx_graph_cache=False):  # so the pass runs (and is counted) every time
        yield
    torch._dynamo.reset()


@contextlib.contextmanager
def cudagraph_log():
    """Every record the cudagraph and perf-hint loggers emit while the block runs."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("torch", "torch._inductor", "torch._inductor.cudagraph_utils")]
    torch._logging.set_logs(cudagraphs=True, perf_hints=True)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        torch._logging.set_logs()


def assert_cudagraphed(records):
    skips = [m for m in records if "skipping cudagraphs" in m]
    assert skips == [] and torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0, skips
    from torch._inductor import cudagraph_trees

    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and any(manager.roots.values()), "no CUDA graph was recorded"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(64, 4096), (3, 17, 1024)])
def test_functional_op_is_cudagraphed(comm, dtype, shape):
    def step(x, residual, weight):
        return torch.ops.weave_nvshmem.fused_allreduce_rmsnorm_functional(x, residual, weight, EPS)

    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    g = torch.Generator(device="cuda").manual_seed(0)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=g, device="cuda")).to(dtype)
    with cudagraph_log() as records:
        for _ in range(4):  # warm-up, record, replays: fresh data every step
            x, residual = (torch.randn(shape, generator=g, device="cuda").to(dtype) for _ in range(2))
            before = residual.clone()
            torch.compiler.cudagraph_mark_step_begin()
            out, new = (t.clone() for t in compiled(x, residual, weight))
            torch.cuda.synchronize()
            comm.check()
            ref_out, ref_s = reference_fused([x], before, weight, EPS)
            assert torch.equal(residual, before)  # the functional form writes no input
            assert rel_err(new, ref_s) <= tolerance(dtype)
            assert rel_err(out, ref_out) <= tolerance(dtype)
    assert_cudagraphed(records)


def llama(kind, dtype):
    if kind == "transformers":
        pytest.importorskip("transformers")
        model = L.hf_model(hidden=1024, heads=8, inter=2048)
    else:
        model = L.TinyLlama(hidden=1024, heads=8, inter=2048, norm=kind, reduce="dist")
    return L.randomize(model).to("cuda", dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("kind", ["hf", "functional", "fp32", "transformers"])
def test_pass_on_a_llama_matches_eager(comm, nccl_world1, kind, dtype):
    model = llama(kind, dtype)
    fuse = FuseAllReduceRMSNorm()
    compiled = torch.compile(model, fullgraph=True, options=fuse.options(cudagraphs=True))
    g = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad(), cudagraph_log() as records:
        for _ in range(4):
            x = torch.randn(2, 32, 1024, generator=g, device="cuda").to(dtype)
            ref = model(x)
            torch.compiler.cudagraph_mark_step_begin()
            got = compiled(x).clone()
            torch.cuda.synchronize()
            comm.check()
            assert rel_err(got, ref) <= TOL[dtype]
    assert fuse.replaced == [4]  # 2 layers x (attention + post-attention norm, MLP + next norm)
    assert_cudagraphed(records)
