"""World 1: the fused op is a local single-pass add + RMSNorm (ptx/kernels/fused_local.ptx).

Checked on one GPU against float64 (rounded as the kernels round), with poisoned outputs, odd
shapes, all three dtypes, both residual modes, no residual, every rendered kernel shape, the same
bits as the two-shot kernel at world 1, back-to-back calls and CUDA-graph replays.
"""
import pytest
import torch

from weave_nvshmem import CommOptions
from weave_nvshmem.collectives import plan
from weave_nvshmem.collectives.emulated import EmulatedWorld
from weave_nvshmem.testing import numerics as tn

EPS = 1e-6
#: (tokens, hidden): odd row counts, hidden sizes whose rows are not a whole number of blocks
SHAPES = [(1, 8192), (3, 5120), (7, 4096), (333, 4096), (1000, 8192), (5, 2056), (17, 12288), (2, 32768)]


@pytest.fixture(scope="module")
def comm():
    world = EmulatedWorld(1, arena_bytes=1 << 30, options=CommOptions(timeout_s=10.0))
    world.reserve(64 << 20)
    yield world.ranks[0]
    world.close()


def _problem(seed, tokens, hidden, dtype):
    x = tn.rank_input(seed, 0, (tokens, hidden), dtype)
    residual = tn.rank_input(seed, 1, (tokens, hidden), dtype)
    weight = (1 + 0.1 * tn.rank_input(seed, 2, (hidden,), torch.float32)).to(dtype)
    return x, residual, weight


def _fits(hidden, dtype):
    return hidden * torch.tensor([], dtype=dtype).element_size() <= 4096 * 16


@pytest.mark.parametrize("dtype", list(tn.DTYPES.values()), ids=list(tn.DTYPES))
@pytest.mark.parametrize("tokens,hidden", SHAPES, ids=[f"{t}x{h}" for t, h in SHAPES])
@pytest.mark.parametrize("mode", ["replicated", "sharded", "none"])
def test_local_matches_float64(comm, dtype, tokens, hidden, mode):
    if not _fits(hidden, dtype):
        pytest.skip("row larger than the fused kernels take")
    x, residual, weight = _problem(tokens * 7 + hidden, tokens, hidden, dtype)
    ref_out, ref_s = tn.reference_fused([x], None if mode == "none" else residual, weight, EPS)
    out = tn.poisoned((tokens, hidden), dtype)
    res = residual.clone() if mode != "none" else None
    got_out, got_res = comm.fused_allreduce_rmsnorm(x, res, weight, EPS, out=out,
                                                    residual_mode="sharded" if mode == "sharded" else "replicated")
    torch.cuda.synchronize()
    comm.check()
    assert got_out.data_ptr() == out.data_ptr()
    assert not tn.check_close(got_out, ref_out, "out")
    assert tn.same_bits([got_res, ref_s]), "the new residual must be round(x + residual) exactly"
    if mode == "none":  # world 1: the new residual is x itself, not a copy
        assert got_res.data_ptr() == x.data_ptr()


@pytest.mark.parametrize("dtype", list(tn.DTYPES.values()), ids=list(tn.DTYPES))
@pytest.mark.parametrize("tokens,hidden", [(1, 8192), (333, 5120), (1000, 4096), (9, 12288)])
def test_local_same_bits_as_twoshot(comm, dtype, tokens, hidden):
    """The local kernel reduces each row's squares in the one-row kernels' order."""
    if not _fits(hidden, dtype):
        pytest.skip("row larger than the fused kernels take")
    x, residual, weight = _problem(5, tokens, hidden, dtype)
    r1, r2 = residual.clone(), residual.clone()
    o1, _ = comm.fused_allreduce_rmsnorm(x, r1, weight, EPS)
    o2, _ = comm.fused_allreduce_rmsnorm(x, r2, weight, EPS, algorithm="twoshot")
    torch.cuda.synchronize()
    comm.check()
    assert tn.same_bits([o1, o2]) and tn.same_bits([r1, r2])


@pytest.mark.parametrize("hidden,dtype", [(8192, torch.bfloat16), (5120, torch.float16), (4096, torch.float32),
                                          (2056, torch.bfloat16)])
def test_every_local_grid(comm, hidden, dtype):
    """Every grid of the local kernel gives the same bits, with and without a residual (the grid is
    a tuning choice, never a numerics one; without a residual at VPT > 1 a block prefetches its
    next row, the planner's grid for those rows)."""
    from weave_nvshmem.collectives import communicator

    x, residual, weight = _problem(11, 77, hidden, dtype)
    for res in (residual, None):
        ref_out, ref_s = tn.reference_fused([x], res, weight, EPS)
        outs = []
        for grid in (77, 76, 10, 8, 3, 1):
            r = None if res is None else res.clone()
            o = tn.poisoned(x.shape, dtype)
            back = communicator.launch_local(comm, x, r, weight, EPS, out=o, grid=grid)
            torch.cuda.synchronize()
            assert not tn.check_close(o, ref_out, f"out (grid {grid})")
            assert tn.same_bits([back[1], ref_s])
            outs.append(o)
        assert tn.same_bits(outs)


def test_local_back_to_back_and_graph_replays(comm):
    """200 chained eager calls (the residual carried from call to call), then a captured call
    replayed 50 times on fresh inputs copied into its buffers."""
    dtype, tokens, hidden = torch.bfloat16, 129, 5120
    weight = (1 + 0.1 * tn.rank_input(3, 0, (hidden,), torch.float32)).to(dtype)
    residual = tn.rank_input(3, 1, (tokens, hidden), dtype)
    ref_res = residual.clone()
    for i in range(200):
        x = tn.rank_input(100 + i, 0, (tokens, hidden), dtype)
        ref_out, ref_res = tn.reference_fused([x], ref_res, weight, EPS)
        out, residual = comm.fused_allreduce_rmsnorm(x, residual, weight, EPS)
        if i % 50 == 49:
            torch.cuda.synchronize()
            assert not tn.check_close(out, ref_out, f"out of call {i}")
            assert tn.same_bits([residual, ref_res])
    torch.cuda.synchronize()
    comm.check()

    x_buf = torch.empty(tokens, hidden, dtype=dtype, device="cuda")
    r_buf = torch.empty_like(x_buf)
    o_buf = torch.empty_like(x_buf)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        comm.fused_allreduce_rmsnorm(x_buf, r_buf, weight, EPS, out=o_buf)  # warm-up (module load)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        comm.fused_allreduce_rmsnorm(x_buf, r_buf, weight, EPS, out=o_buf)
    for i in range(50):
        x = tn.rank_input(1000 + i, 0, (tokens, hidden), dtype)
        r = tn.rank_input(2000 + i, 0, (tokens, hidden), dtype)
        x_buf.copy_(x)
        r_buf.copy_(r)
        tn.poison(o_buf)
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_s = tn.reference_fused([x], r, weight, EPS)
        assert not tn.check_close(o_buf, ref_out, f"out of replay {i}")
        assert tn.same_bits([r_buf, ref_s])
    comm.check()
