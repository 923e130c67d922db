"""The compressed fused AllReduce + residual add + RMSNorm on the pull transport (algorithm="pull" with
compression=, compressed_fused_pull.ptx) at world sizes 2/4/8 on one GPU: bitwise equal to the
compressed two-shot fused op (compressed_fused.ptx) on the same inputs and to the model
(collectives/quantize.py, testing.quantized), rank-identical; both residual modes, residual=None,
both gathers, odd row counts (fewer rows than ranks, unequal segments) and hidden sizes whose rows'
scales are not 16-byte multiples, bf16/fp16/fp32, 1/3/8 CTAs, poisoned outputs, back-to-back calls,
graph replays and a missing rank's timeout (docs/compression.md, docs/transport.md)."""
import random

import pytest
import torch

from weave_nvshmem import CommOptions, PeerTimeoutError
from weave_nvshmem.collectives.compression import CompressionSpec
from weave_nvshmem.collectives.emulated import EmulatedWorld
from weave_nvshmem.testing import DTYPES, poison, poisoned, quantized, same_bits, sharded_residual
from conftest import finish, fit

EPS = 1e-6
SPECS = [CompressionSpec("fp8", 128, g) for g in ("compressed", "input")] + [
    CompressionSpec("fp8", 64, "input"), CompressionSpec("fp8", 256), CompressionSpec("int8", 64),
    CompressionSpec("int8", 256, "input"), CompressionSpec("mxfp4"), CompressionSpec("mxfp4", 32, "input")]
CTAS = (1, 3, 8)


def _sid(s):
    return f"{s.format}-b{s.block}-{s.gather}"


def run(emu, xs, res0, weight, spec, mode, algorithm, ctas):
    """Every rank's fused call into a poisoned out (sharded: a residual holding the sentinel in its
    foreign rows); returns (outs, residuals)."""
    w = emu.world
    res = [sharded_residual(res0, r, w) if mode == "sharded" else res0.clone() for r in range(w)]
    outs = [poisoned(tuple(xs[0].shape), xs[0].dtype) for _ in range(w)]
    emu.run(lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, EPS, residual_mode=mode, out=outs[r],
                                                   compression=spec, algorithm=algorithm, ctas=fit(emu, ctas)))
    return outs, res


@pytest.mark.parametrize("dtype, rows, hidden", [(d, r, h) for d in DTYPES for r, h in ((1, 1280), (7, 768), (37, 1280))]
                         + [("bfloat16", 300, 4096)])
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_fused_equals_the_compressed_twoshot(emu, dtype, rows, hidden, mode, spec):
    """hidden 768/1280: a row's scales are 12..40 bytes, so most rows' scale spans start unaligned."""
    dt, w = DTYPES[dtype], emu.world
    xs, res0, weight = quantized.fused_inputs(rows + hidden, w, rows, hidden, dt)
    two_out, two_res = run(emu, xs, res0, weight, spec, mode, "auto", None)
    pulls = [run(emu, xs, res0, weight, spec, mode, "pull", ctas) for ctas in CTAS]
    finish(emu)
    e = quantized.expected_fused(xs, res0, weight, EPS, spec, mode)
    for outs, res in pulls:
        found = quantized.fused_problems(list(zip(outs, res)), e, world=w, mode=mode, sentinel_rows=True)
        assert not found, found
        assert same_bits(two_out + outs), "the ranks or the two-shot differ (out)"
        if mode == "replicated":
            assert same_bits(two_res + res), "the ranks or the two-shot differ (residual)"
        else:
            for r in range(w):
                assert same_bits([res[r], two_res[r]]), f"rank {r}: residual differs from the two-shot"


@pytest.mark.parametrize("spec", [CompressionSpec("fp8"), CompressionSpec("mxfp4", 32, "input")], ids=_sid)
def test_residual_none(emu, spec):
    """residual=None: the new residual is the (compressed) sum, the two-shot's bits on every rank."""
    w, dt = emu.world, torch.bfloat16
    xs, _, weight = quantized.fused_inputs(11, w, 45, 2048, dt)
    got = {a: emu.run(lambda r, c: c.fused_allreduce_rmsnorm(xs[r], None, weight, EPS, compression=spec,
                                                             algorithm=a, ctas=fit(emu, 2)))
           for a in ("auto", "pull")}
    finish(emu)
    e = quantized.expected_fused(xs, None, weight, EPS, spec, "replicated")
    found = quantized.fused_problems(got["pull"], e, world=w, mode="replicated", sentinel_rows=False)
    assert not found, found
    outs = [o for a in got for o, _ in got[a]]
    sums = [s for a in got for _, s in got[a]]
    assert same_bits(outs) and same_bits(sums)


def test_back_to_back_and_graph_replays(emu):
    """Pull and two-shot compressed fused calls interleaved on one channel with no host sync (the
    parity buffers alternate), then captured in one graph: 20 replays with fresh inputs give the
    eager bits, and every pull result is the two-shot's."""
    w, dt = emu.world, torch.bfloat16
    specs = [CompressionSpec("fp8"), CompressionSpec("int8", 256, "input"), CompressionSpec("mxfp4")]
    rows, hidden = 8 * w + 3, 2048
    pool = [quantized.fused_inputs(900 + i, w, rows, hidden, dt) for i in range(3)]
    weight = pool[0][2]
    xb = [torch.empty((rows, hidden), dtype=dt, device="cuda") for _ in range(w)]
    rb = [[torch.empty((rows, hidden), dtype=dt, device="cuda") for _ in range(2 * len(specs))] for _ in range(w)]
    ob = [[torch.empty((rows, hidden), dtype=dt, device="cuda") for _ in range(2 * len(specs))] for _ in range(w)]

    def step(r, c):
        for i, spec in enumerate(specs):
            for k, alg in enumerate(("pull", "auto")):
                c.fused_allreduce_rmsnorm(xb[r], rb[r][2 * i + k], weight, EPS, out=ob[r][2 * i + k],
                                          compression=spec, algorithm=alg, ctas=fit(emu, 2 + k))

    def load(k):
        for r in range(w):
            xb[r].copy_(pool[k][0][r])
            for res, o in zip(rb[r], ob[r]):
                res.copy_(pool[k][1])
                poison(o)

    want = []
    for k in range(3):
        load(k)
        emu.run(step)
        finish(emu)
        want.append([[t.clone() for t in ob[r] + rb[r]] for r in range(w)])
        for i in range(len(specs)):
            assert same_bits([ob[r][2 * i + j] for r in range(w) for j in (0, 1)]), (k, i)
            assert same_bits([rb[r][2 * i + j] for r in range(w) for j in (0, 1)]), (k, i)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        emu.run(step)
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    rng = random.Random(5)
    for _ in range(20):
        k = rng.randrange(3)
        load(k)
        g.replay()
        for r in range(w):
            for t, e in zip(ob[r] + rb[r], want[k][r]):
                bad += (t.view(torch.int16) != e.view(torch.int16)).sum()
    finish(emu)
    assert bad.item() == 0


def test_missing_rank_times_out_naming_it():
    """A rank that never arrives: the waits give up after timeout_s, the error names the op and
    the missing peer; nothing hangs."""
    with EmulatedWorld(4, arena_bytes=64 << 20, options=CommOptions(timeout_s=0.2)) as world:
        x = torch.ones(64, 1024, dtype=torch.float32, device="cuda")
        wt = torch.ones(1024, dtype=torch.float32, device="cuda")
        world.run(lambda r, c: c.fused_allreduce_rmsnorm(x, None, wt, EPS, compression="fp8", algorithm="pull",
                                                         ctas=2) if r != 3 else None)
        torch.cuda.synchronize()
        with pytest.raises(PeerTimeoutError) as err:
            world.check()
        assert err.value.op == "fused_allreduce_rmsnorm" and err.value.peer == 3
