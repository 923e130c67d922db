"""Compressed all_reduce, reduce_scatter and all_gather on the pull transport (algorithm="pull" with
compression=, compressed_pull.ptx) at world sizes 2/4/8 on one GPU: bitwise equal to the compressed
two-shot (compressed.ptx) on the same inputs and to the float-exact model (collectives/quantize.py),
rank-identical, within the format's bound; odd sizes (fewer blocks than ranks, unequal segments,
partial last chunks), many chunks per CTA (every pipeline stage reused), 1/2/8 CTAs, bf16/fp16/fp32,
in place, poisoned outputs, the NaN policy, back-to-back calls, graph replays and a missing rank's
timeout (docs/compression.md, docs/transport.md)."""
import random

import pytest
import torch

from weave_nvshmem import CommOptions, PeerTimeoutError
from weave_nvshmem.collectives.compression import CompressionSpec
from weave_nvshmem.collectives.emulated import EmulatedWorld
from weave_nvshmem.ptx.table import COMPRESSED_VARIANTS
from weave_nvshmem.testing import DTYPES, poison, poisoned, rank_inputs, same_bits
from weave_nvshmem.testing.quantized import expected, problems
from conftest import finish, fit

SPECS = [CompressionSpec(f, b, g) for f, b in COMPRESSED_VARIANTS for g in ("compressed", "input")]
CTAS = (1, 2, 8)


def _sid(s):
    return f"{s.format}-b{s.block}-{s.gather}"


def run(emu, op, xs, spec, algorithm, ctas, shape):
    """Every rank's ``op(xs[r], compression=spec, algorithm=...)`` into a poisoned out of ``shape``."""
    outs = [poisoned(shape, xs[0].dtype) for _ in range(emu.world)]
    emu.run(lambda r, c: getattr(c, op)(xs[r], out=outs[r], compression=spec, algorithm=algorithm,
                                        ctas=fit(emu, ctas)))
    return outs


def check(op, xs, spec, twoshot, pulls):
    """``pulls`` (lists of every rank's outs) equal ``twoshot``'s bits, every rank's, and the model's."""
    exp = expected(op, xs, spec)
    got = torch.cat(pulls[0]) if op == "reduce_scatter" else pulls[0][0]
    assert problems(got, exp.model, exp.exact, exp.bound, f"{op} {_sid(spec)}") == []
    for outs in pulls:
        if op == "reduce_scatter":
            for r in range(len(outs)):
                assert same_bits([outs[r], twoshot[r]]), f"rank {r}: reduce_scatter differs from the two-shot"
        else:
            assert same_bits(twoshot + outs), f"{op}: the ranks or the two-shot differ"


@pytest.mark.parametrize("dtype, rows", [(d, r) for d in DTYPES for r in (1, 37, 1000) if r < 1000 or d == "bfloat16"])
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_all_reduce_equals_the_compressed_twoshot(emu, dtype, spec, rows):
    """Odd block counts: fewer blocks than ranks (rows 1), segments of unequal length."""
    dt, w = DTYPES[dtype], emu.world
    shape = (rows, 2 * spec.block + 256)
    xs = rank_inputs(rows + spec.block, w, shape, dt)
    twoshot = run(emu, "all_reduce", xs, spec, "auto", None, shape)
    pulls = [run(emu, "all_reduce", xs, spec, "pull", ctas, shape) for ctas in CTAS]
    finish(emu)
    check("all_reduce", xs, spec, twoshot, pulls)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("spec", [CompressionSpec("fp8"), CompressionSpec("int8", 64, "input"), CompressionSpec("mxfp4"),
                                  CompressionSpec("fp8", 256, "input")], ids=_sid)
def test_many_chunks_per_cta(emu, dtype, spec):
    """Hundreds of pipeline jobs on one CTA (each stage refilled many times), a partial last chunk
    (2049 rows), and the three phases of one grid of 3 CTAs."""
    dt, w = DTYPES[dtype], emu.world
    shape = (2049, 4096)
    xs = rank_inputs(31, w, shape, dt, scale=8.0)
    twoshot = run(emu, "all_reduce", xs, spec, "auto", None, shape)
    pulls = [run(emu, "all_reduce", xs, spec, "pull", ctas, shape) for ctas in (1, 3)]
    finish(emu)
    check("all_reduce", xs, spec, twoshot, pulls)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("fmt, block", COMPRESSED_VARIANTS)
@pytest.mark.parametrize("rows", [5, 300])
def test_reduce_scatter_and_all_gather(emu, dtype, fmt, block, rows):
    dt, w = DTYPES[dtype], emu.world
    spec = CompressionSpec(fmt, block)
    cols = block * 3
    xs = rank_inputs(block + rows, w, (w * rows, cols), dt)
    chunks = [x[:rows] for x in xs]
    rs_two = run(emu, "reduce_scatter", xs, spec, "auto", None, (rows, cols))
    ag_two = run(emu, "all_gather", chunks, spec, "auto", None, (w * rows, cols))
    rs = [run(emu, "reduce_scatter", xs, spec, "pull", ctas, (rows, cols)) for ctas in CTAS]
    ag = [run(emu, "all_gather", chunks, spec, "pull", ctas, (w * rows, cols)) for ctas in CTAS]
    finish(emu)
    check("reduce_scatter", xs, spec, rs_two, rs)
    check("all_gather", chunks, spec, ag_two, ag)


@pytest.mark.parametrize("spec", [CompressionSpec("fp8"), CompressionSpec("int8", 128, "input"), CompressionSpec("mxfp4")],
                         ids=_sid)
def test_all_reduce_in_place(emu, spec):
    w, dt = emu.world, torch.bfloat16
    xs = rank_inputs(5, w, (1000, 4096), dt)
    want = run(emu, "all_reduce", xs, spec, "auto", None, (1000, 4096))
    ins = [x.clone() for x in xs]
    emu.run(lambda r, c: c.all_reduce(ins[r], out=ins[r], compression=spec, algorithm="pull", ctas=fit(emu, 2)))
    finish(emu)
    assert same_bits(want + ins)


@pytest.mark.parametrize("fmt, block", COMPRESSED_VARIANTS)
def test_a_nan_poisons_its_block_on_every_rank(emu, fmt, block):
    w = emu.world
    xs = rank_inputs(9, w, (4, 4 * block), torch.float32)
    xs[w - 1][2, block + 1] = float("nan")
    outs = run(emu, "all_reduce", xs, CompressionSpec(fmt, block), "pull", 2, (4, 4 * block))
    finish(emu)
    assert same_bits(outs)
    nan = torch.isnan(outs[0]).view(-1, block)
    assert nan[9].all() and int(nan.sum()) == block  # block 9 = row 2, second block


def test_back_to_back_and_graph_replays(emu):
    """Pull and two-shot compressed calls of every op interleaved on one channel with no host sync
    (the parity buffers alternate), then captured in one graph: 30 replays with fresh inputs give
    the eager bits, and every pull result is the two-shot's."""
    w, dt = emu.world, torch.bfloat16
    specs = [CompressionSpec("fp8"), CompressionSpec("int8", 256, "input"), CompressionSpec("mxfp4")]
    shape = (w * 48, 2048)
    pool = [rank_inputs(700 + i, w, shape, dt) for i in range(3)]
    xb = [torch.empty(shape, dtype=dt, device="cuda") for _ in range(w)]
    outs = [[torch.empty(shape, dtype=dt, device="cuda") for _ in range(2 * len(specs))]
            + [torch.empty((48, 2048), dtype=dt, device="cuda") for _ in range(2)]
            + [torch.empty(shape, dtype=dt, device="cuda") for _ in range(2)] for _ in range(w)]
    ctas = fit(emu, 8)

    def step(r, c):
        o = outs[r]
        for i, spec in enumerate(specs):
            c.all_reduce(xb[r], out=o[2 * i], compression=spec, algorithm="pull", ctas=ctas)
            c.all_reduce(xb[r], out=o[2 * i + 1], compression=spec, ctas=ctas)
        for i, alg in enumerate(("pull", "auto")):
            c.reduce_scatter(xb[r], out=o[6 + i], compression=specs[0], algorithm=alg, ctas=ctas)
            c.all_gather(xb[r][:48], out=o[8 + i], compression=specs[2], algorithm=alg, ctas=fit(emu, 1 + i))

    def load(k):
        for r in range(w):
            xb[r].copy_(pool[k][r])
            for o in outs[r]:
                poison(o)

    expected_bits = []
    for k in range(3):
        load(k)
        emu.run(step)
        finish(emu)
        expected_bits.append([[o.clone() for o in outs[r]] for r in range(w)])
        for r in range(w):
            for i in range(0, len(outs[r]), 2):  # pull == two-shot, on every rank
                assert same_bits(expected_bits[k][r][i:i + 2]), (k, r, i)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        emu.run(step)
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    rng = random.Random(3)
    for _ in range(30):
        k = rng.randrange(3)
        load(k)
        g.replay()
        for r in range(w):
            for o, e in zip(outs[r], expected_bits[k][r]):
                bad += (o.view(torch.int16) != e.view(torch.int16)).sum()
    finish(emu)
    assert bad.item() == 0


@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather"])
def test_missing_rank_times_out_naming_it(op):
    """A rank that never arrives: the waits give up after timeout_s, the error names the op and
    the missing peer; nothing hangs."""
    with EmulatedWorld(4, arena_bytes=64 << 20, options=CommOptions(timeout_s=0.2)) as world:
        x = torch.ones(4096, 128, dtype=torch.float32, device="cuda")
        world.run(lambda r, c: getattr(c, op)(x, compression="fp8", algorithm="pull", ctas=2) if r != 3 else None)
        torch.cuda.synchronize()
        with pytest.raises(PeerTimeoutError) as err:
            world.check()
        assert err.value.op == op and err.value.peer == 3
