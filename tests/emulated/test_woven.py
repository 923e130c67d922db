"""The woven TP decoder (examples/llama.py on ``overlap.weave``, the fused all-reduces async on
every virtual rank's side stream) against the unsplit fused decoder, at world sizes 2/4/8 on one
GPU: odd splits, both residual modes, eager and under graph replay; and the chunked
all_gather_matmul / matmul_reduce_scatter against float64."""
import pytest
import torch
import torch.nn.functional as F

from examples import llama
from weave_nvshmem.collectives.work import completed
from weave_nvshmem.overlap import all_gather_matmul, matmul_reduce_scatter
from weave_nvshmem.testing import rank_inputs, same_bits
from conftest import finish, fit

CFG = llama.LlamaConfig(hidden=256, intermediate=512, heads=8, kv_heads=8, layers=2, head_dim=32)
TOKENS = 45


def plain_norm(x, residual, weight, eps):
    """Add + RMSNorm in float32 (the first norm only: the fused op does every other one)."""
    s = x if residual is None else residual.add_(x)
    return F.rms_norm(s.float(), (s.shape[-1],), weight.float(), eps).to(x.dtype), s


def close(got, ref):
    """bf16 after two layers whose GEMMs differ in shape (rounding differs): elementwise within a
    few bf16 ulps of values ~1, and small on average."""
    diff = (got.float() - ref.float()).abs()
    assert diff.max().item() <= 0.08 + 0.05 * ref.float().abs().max().item(), diff.max().item()
    assert diff.mean().item() < 0.01, diff.mean().item()


class LocalComm:
    """A communicator stand-in with no cross-rank wait (each op on this rank's data alone): the
    warm-ups below run every compute kernel of the tests' shapes once, rank by rank, so that none is
    first launched (and lazily loaded, which waits for the device) while another rank's collective
    spins (collectives/emulated.py)."""

    def __init__(self, world=1):
        self.world = world

    def all_gather(self, x, *, ctas=None, channel=0, async_op=False):
        got = torch.cat([x] * self.world)
        return completed(got) if async_op else got

    def reduce_scatter(self, x, *, out=None, ctas=None, channel=0, async_op=False):
        got = x[:x.shape[0] // self.world]
        got = got.clone() if out is None else out.copy_(got)
        return completed(got) if async_op else got

    def fused_allreduce_rmsnorm(self, x, residual, w, eps, *, ctas=None, residual_mode="replicated",
                                async_op=False):
        got = plain_norm(x, residual, w, eps)
        return completed(got) if async_op else got


@pytest.fixture(scope="module")
def models(emu):
    models = [llama.TPModel(CFG, emu.world, r, "cuda", torch.bfloat16, seed=1) for r in range(emu.world)]
    x = rank_inputs(7, 1, (TOKENS, CFG.hidden), torch.bfloat16)[0]
    for model in models:
        for split in (0, 1, 17, 19, 44):
            model.forward(x, llama.Collective("weave", CFG.eps, comm=LocalComm(), norm=plain_norm), split)
    torch.cuda.synchronize()
    return models


def forward(emu, models, x, mode, residual_mode, split, algorithm="auto"):
    colls = [llama.Collective(mode, CFG.eps, comm=c, ctas=fit(emu, 8), residual_mode=residual_mode, norm=plain_norm,
                              algorithm=algorithm) for c in emu.ranks]
    return emu.run(lambda r, c: models[r].forward(x, colls[r], split))


@pytest.mark.parametrize("residual_mode", llama.RESIDUAL_MODES)
@pytest.mark.parametrize("split", [1, 17, 44])
def test_woven_equals_unsplit(emu, models, residual_mode, split):
    x = rank_inputs(7, 1, (TOKENS, CFG.hidden), torch.bfloat16)[0]
    ref = forward(emu, models, x, "fused", residual_mode, 0)
    got = forward(emu, models, x, "weave", residual_mode, split)
    finish(emu)
    assert same_bits(ref) and same_bits(got)
    close(got[0], ref[0])


@pytest.mark.parametrize("algorithm", ["pull", "copyengine"])
def test_woven_on_the_few_sm_transports(emu, models, algorithm):
    """The weave's async fused ops on the pull / copy-engine transports give what the unsplit
    two-shot decoder gives (the transports have two-shot's bits; the split GEMMs round apart)."""
    x = rank_inputs(7, 1, (TOKENS, CFG.hidden), torch.bfloat16)[0]
    ref = forward(emu, models, x, "fused", "replicated", 0, "twoshot")
    got = forward(emu, models, x, "weave", "replicated", 17, algorithm)
    finish(emu)
    assert same_bits(got)
    close(got[0], ref[0])


@pytest.mark.parametrize("residual_mode", llama.RESIDUAL_MODES)
def test_woven_under_graph_replay(emu, models, residual_mode):
    x = torch.empty(TOKENS, CFG.hidden, dtype=torch.bfloat16, device="cuda")
    x.copy_(rank_inputs(8, 1, x.shape, x.dtype)[0])
    eager = [t.clone() for t in forward(emu, models, x, "weave", residual_mode, 19)]  # also the warm-up
    finish(emu)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static = forward(emu, models, x, "weave", residual_mode, 19)
    for seed in (8, 9):
        x.copy_(rank_inputs(seed, 1, x.shape, x.dtype)[0])
        g.replay()
        finish(emu)
        want = eager if seed == 8 else forward(emu, models, x, "weave", residual_mode, 19)
        finish(emu)
        assert same_bits(static)
        for r in range(emu.world):  # GEMM algorithms may differ between capture and eager: close, not bitwise
            close(static[r], want[r])
    del g


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunks", [1, 3])
def test_all_gather_matmul_vs_float64(emu, dtype, chunks):
    w, m, k, n = emu.world, 23, 64, 48
    shards = rank_inputs(31, w, (m, k), dtype)
    b = rank_inputs(32, 1, (k, n), dtype)[0]
    all_gather_matmul(LocalComm(w), shards[0], b, chunks=chunks)  # warm-up (LocalComm)
    torch.cuda.synchronize()
    outs = emu.run(lambda r, c: all_gather_matmul(c, shards[r], b, chunks=chunks, ctas=fit(emu, 8)))
    finish(emu)
    ref = torch.cat(shards).double() @ b.double()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for o in outs:
        torch.testing.assert_close(o.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    assert same_bits(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunks", [1, 3])
def test_matmul_reduce_scatter_vs_float64(emu, dtype, chunks):
    w, m, k, n = emu.world, 13, 32, 64
    a = rank_inputs(41, w, (w * m, k), dtype)
    b = rank_inputs(42, w, (k, n), dtype)
    matmul_reduce_scatter(LocalComm(w), a[0], b[0], chunks=chunks)  # warm-up (LocalComm)
    torch.cuda.synchronize()
    outs = emu.run(lambda r, c: matmul_reduce_scatter(c, a[r], b[r], chunks=chunks, ctas=fit(emu, 8)))
    finish(emu)
    full = sum(x.double() @ y.double() for x, y in zip(a, b))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for r, o in enumerate(outs):
        ref = full[r * m:(r + 1) * m]
        torch.testing.assert_close(o.double(), ref, rtol=tol, atol=tol * full.abs().max().item())
