"""Compressed all_reduce, reduce_scatter and all_gather (compression=, compressed.ptx) at world sizes
2/4/8 on one GPU: every rank's bits equal the float-exact model (collectives/quantize.py), the error
against the float64 sum is within the format's bound (the test fails above it), rank-identical
bits, poisoned outputs, odd sizes, bf16/fp16/fp32, the NaN policy, back-to-back calls and graph
replays (docs/compression.md)."""
import pytest
import torch

from weave_nvshmem.collectives.compression import CompressionSpec
from weave_nvshmem.ptx.table import COMPRESSED_VARIANTS
from weave_nvshmem.testing import DTYPES, poison, poisoned, quantized, rank_inputs, same_bits, sharded_residual
from conftest import finish, fit

SPECS = [CompressionSpec(f, b, g) for f, b in COMPRESSED_VARIANTS for g in ("compressed", "input")]


def _sid(s):
    return f"{s.format}-b{s.block}-{s.gather}"


def check_all_reduce(emu, xs, spec, outs):
    """Rank 0's out has the model's bits and is within its bound (testing.quantized); every rank's
    bits are rank 0's."""
    e = quantized.expected("all_reduce", xs, spec)
    assert not (found := quantized.problems(outs[0], e.model, e.exact, e.bound, f"{_sid(spec)} rank 0 out")), found
    assert same_bits(outs), "ranks differ"


@pytest.mark.parametrize("dtype, rows", [(d, r) for d in DTYPES for r in (1, 37, 1000) if r < 1000 or d == "bfloat16"])
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_all_reduce(emu, dtype, spec, rows):
    """Odd block counts: fewer blocks than ranks (rows 1), segments of unequal length."""
    dt, w = DTYPES[dtype], emu.world
    shape = (rows, 2 * spec.block + 256)
    xs = rank_inputs(rows + spec.block, w, shape, dt)
    outs = [poisoned(shape, dt) for _ in range(w)]
    emu.run(lambda r, c: c.all_reduce(xs[r], out=outs[r], compression=spec, ctas=fit(emu, None)))
    finish(emu)
    check_all_reduce(emu, xs, spec, outs)


@pytest.mark.parametrize("spec", [CompressionSpec("fp8"), CompressionSpec("int8", 64), CompressionSpec("mxfp4")],
                         ids=_sid)
def test_outlier_channels_and_ctas(emu, spec):
    """LLM-like partials (a few channels 30-100x larger), every grid from 1 CTA up."""
    w = emu.world
    xs = rank_inputs(5, w, (257, 4096), torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(3)
    cols = torch.randint(0, 4096, (6,), generator=g, device="cuda")
    for x in xs:
        x[:, cols] *= torch.linspace(30, 100, 6, device="cuda").to(x.dtype)
    for ctas in (1, 3, 16):
        outs = [poisoned(xs[0].shape, torch.bfloat16) for _ in range(w)]
        emu.run(lambda r, c: c.all_reduce(xs[r], out=outs[r], compression=spec, ctas=fit(emu, ctas)))
        finish(emu)
        check_all_reduce(emu, xs, spec, outs)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("fmt, block", COMPRESSED_VARIANTS)
def test_reduce_scatter_and_all_gather(emu, dtype, fmt, block):
    dt, w = DTYPES[dtype], emu.world
    spec = CompressionSpec(fmt, block)
    rows = 5
    xs = rank_inputs(block, w, (w * rows, block * 3), dt)
    rs = [poisoned((rows, block * 3), dt) for _ in range(w)]
    ag = [poisoned((w * rows, block * 3), dt) for _ in range(w)]
    emu.run(lambda r, c: (c.reduce_scatter(xs[r], out=rs[r], compression=spec, ctas=fit(emu, None)),
                          c.all_gather(xs[r][:rows], out=ag[r], compression=spec, ctas=fit(emu, None))))
    finish(emu)
    # reduce-scatter: the owner's fp32 sum rounded = the model's input gather, chunk by chunk
    e = quantized.expected("reduce_scatter", xs, spec)
    assert not (found := quantized.problems(torch.cat(rs), e.model, e.exact, e.bound, "the ranks' outs")), found
    # all-gather: every rank (the owner too) holds the dequantized chunks
    e = quantized.expected("all_gather", [x[:rows] for x in xs], spec)
    for r in range(w):
        assert not (found := quantized.problems(ag[r], e.model, e.exact, e.bound, f"rank {r} out")), found


@pytest.mark.parametrize("fmt, block", COMPRESSED_VARIANTS)
def test_a_nan_poisons_its_block_on_every_rank(emu, fmt, block):
    w = emu.world
    xs = rank_inputs(9, w, (4, 4 * block), torch.float32)
    xs[w - 1][2, block + 1] = float("nan")
    outs = [poisoned(xs[0].shape, torch.float32) for _ in range(w)]
    emu.run(lambda r, c: c.all_reduce(xs[r], out=outs[r], compression=CompressionSpec(fmt, block)))
    finish(emu)
    assert same_bits(outs)
    nan = torch.isnan(outs[0]).view(-1, block)
    assert nan[9].all() and int(nan.sum()) == block  # block 9 = row 2, second block


def test_back_to_back_and_graph_replays(emu):
    """Calls of every format back to back on one channel (the parity buffers alternate), captured
    in one graph; 30 replays with fresh inputs give the eager bits."""
    w, dt = emu.world, torch.bfloat16
    specs = [CompressionSpec("fp8"), CompressionSpec("int8", 256, "input"), CompressionSpec("mxfp4")]
    pool = [rank_inputs(700 + i, w, (96, 2048), dt) for i in range(3)]
    ctas = fit(emu, 8)

    def step(r, c, x, outs):
        for spec, o in zip(specs, outs):
            c.all_reduce(x, out=o, compression=spec, ctas=ctas)

    expected = []
    for k in range(3):
        outs = [[torch.empty_like(pool[k][r]) for _ in specs] for r in range(w)]
        emu.run(lambda r, c: step(r, c, pool[k][r], outs[r]))
        expected.append(outs)
    finish(emu)
    for k in range(3):
        for j, spec in enumerate(specs):
            check_all_reduce(emu, pool[k], spec, [expected[k][r][j] for r in range(w)])
    xb = [torch.empty_like(pool[0][r]) for r in range(w)]
    ob = [[torch.empty_like(xb[r]) for _ in specs] for r in range(w)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        emu.run(lambda r, c: step(r, c, xb[r], ob[r]))
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for i in range(30):
        k = i % 3
        for r in range(w):
            xb[r].copy_(pool[k][r])
            for o in ob[r]:
                poison(o)
        g.replay()
        for r in range(w):
            for o, e in zip(ob[r], expected[k][r]):
                bad += (o.view(torch.int16) != e.view(torch.int16)).sum()
    finish(emu)
    assert bad.item() == 0


# ---- the fused AllReduce + residual add + RMSNorm ------------------------------------------------------
EPS = 1e-6
FUSED_SPECS = [CompressionSpec("fp8", 128, g) for g in ("compressed", "input")] + [
    CompressionSpec("int8", 64), CompressionSpec("int8", 256, "input"), CompressionSpec("fp8", 256),
    CompressionSpec("mxfp4")]


@pytest.mark.parametrize("dtype, rows", [(d, r) for d in DTYPES for r in (7, 300) if r < 300 or d == "bfloat16"])
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
@pytest.mark.parametrize("spec", FUSED_SPECS, ids=_sid)
def test_fused(emu, dtype, mode, spec, rows):
    dt, w = DTYPES[dtype], emu.world
    hidden = 2048 if rows < 300 else 4096
    xs, res0, weight = quantized.fused_inputs(rows, w, rows, hidden, dt)
    # sharded: a rank's other rows hold the sentinel, and must still hold it after the call
    res = [sharded_residual(res0, r, w) if mode == "sharded" else res0.clone() for r in range(w)]
    outs = [poisoned((rows, hidden), dt) for _ in range(w)]
    emu.run(lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, EPS, residual_mode=mode, out=outs[r],
                                                   compression=spec, ctas=fit(emu, None)))
    finish(emu)
    e = quantized.expected_fused(xs, res0, weight, EPS, spec, mode)
    found = quantized.fused_problems(list(zip(outs, res)), e, world=w, mode=mode, sentinel_rows=True)
    assert not found, found
    assert same_bits(outs), "ranks differ"
    if mode == "replicated":
        assert same_bits(res), "residuals differ across ranks"


def test_fused_without_residual_and_graph_replays(emu):
    w, dt = emu.world, torch.bfloat16
    spec = CompressionSpec("fp8")
    pool = [rank_inputs(800 + i, w, (64, 4096), dt) for i in range(2)]
    weight = torch.ones(4096, dtype=dt, device="cuda")
    xb = [torch.empty_like(pool[0][r]) for r in range(w)]
    ob = [torch.empty_like(xb[r]) for r in range(w)]
    rb = [torch.empty_like(xb[r]) for r in range(w)]
    def step(r, c):
        c.fused_allreduce_rmsnorm(xb[r], rb[r], weight, EPS, out=ob[r], compression=spec, ctas=fit(emu, 4))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    for r in range(w):
        xb[r].copy_(pool[0][r])
        rb[r].zero_()
    emu.run(step)  # warm up
    finish(emu)
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        emu.run(step)
    for i in range(10):
        k = i % 2
        for r in range(w):
            xb[r].copy_(pool[k][r])
            rb[r].zero_()
            poison(ob[r])
        g.replay()
        finish(emu)
        e = quantized.expected_fused(pool[k], torch.zeros_like(pool[k][0]), weight, EPS, spec, "replicated")
        found = quantized.fused_problems(list(zip(ob, rb)), e, world=w, mode="replicated", sentinel_rows=False)
        assert not found and same_bits(ob), (i, found)
    # residual=None: a new residual holding the (compressed) sum, the same on every rank
    outs = emu.run(lambda r, c: c.fused_allreduce_rmsnorm(pool[0][r], None, weight, EPS, compression=spec))
    finish(emu)
    e = quantized.expected_fused(pool[0], None, weight, EPS, spec, "replicated")
    assert not (found := quantized.fused_problems(outs, e, world=w, mode="replicated", sentinel_rows=False)), found
    assert same_bits([o for o, _ in outs]) and same_bits([s for _, s in outs])
