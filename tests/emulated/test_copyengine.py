"""The copy-engine transport (algorithm "copyengine": collectives/copyengine.py, ce.ptx, cewait.ptx)
at world sizes 2/4/8 on one GPU: all_reduce and the fused AllReduce + residual + RMSNorm against
the float64 references AND bitwise equal to "twoshot" on every rank (poisoned outputs, odd sizes,
bf16/fp16/fp32, both residual modes, no residual, 1/2/8 CTAs), graph replays, 1000 back-to-back
calls interleaved with other algorithms on the same channel, a missing rank's timeout naming it, and
ranks making different calls failing at once with CallMismatchError naming both calls.
On one GPU the device copies run on the SMs: these tests show correctness, not copy-engine speed."""
import random
import time
import zlib

import pytest
import torch

from weave_nvshmem import CommOptions, PeerTimeoutError
from weave_nvshmem.errors import CallMismatchError
from weave_nvshmem.collectives.emulated import EmulatedWorld
from weave_nvshmem.testing import (DTYPES, check_close, poison, rank_input, rank_inputs, reference_all_reduce,
                                   same_bits, sharded_residual)
from conftest import finish, fit
from test_pull import (EPS, FUSED_SHAPES, all_reduce, fused, reference_problems, replay_mismatches, same_fused_bits,
                       symmetric)

CTAS = (1, 2, 8)
SHAPES = [(1,), (7,), (13, 5), (1000, 5120), (8191, 4096)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_all_reduce_matches_reference_and_twoshot_bits(emu, dtype, shape):
    dt, w = DTYPES[dtype], emu.world
    if shape == (8191, 4096) and dtype == "float16":
        pytest.skip("the largest shape runs in bf16 and fp32 (fp16 rounds as bf16 does: same code path)")
    xs = rank_inputs(zlib.crc32(repr((shape, dtype, "ce")).encode()) % 997, w, shape, dt)
    ref = reference_all_reduce(xs)
    twoshot = all_reduce(emu, xs, "twoshot", fit(emu, 4))
    got = []
    for ctas in CTAS:
        got += all_reduce(emu, xs, "copyengine", fit(emu, ctas))
    finish(emu)
    assert check_close(got[0], ref) == []
    assert same_bits(twoshot + got)  # twoshot's bits, on every rank and CTA count


def test_all_reduce_in_place_and_symmetric_input(emu):
    dt, w = torch.bfloat16, emu.world
    xs = rank_inputs(5, w, (1000, 4096), dt)
    ref = reference_all_reduce(xs)
    ins = [x.clone() for x in xs]
    sym = symmetric(emu, xs)  # copied like any input (the peers do not read it in place)
    emu.run(lambda r, c: c.all_reduce(ins[r], out=ins[r], algorithm="copyengine", ctas=fit(emu, 2)))
    from_sym = all_reduce(emu, sym, "copyengine", fit(emu, 2))
    finish(emu)
    assert check_close(ins[0], ref) == [] and same_bits(ins + from_sym)
    assert torch.equal(ins[0], all_reduce(emu, xs, "twoshot", fit(emu, 2))[0])
    emu.free(sym)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("tokens, hidden", FUSED_SHAPES, ids=str)
def test_fused_matches_reference_and_twoshot_bits(emu, dtype, tokens, hidden):
    """Both residual modes, with and without a residual, 1/2/8 CTAs: the float64 reference, and
    exactly twoshot's bits on every rank (out, and the residual rows each rank keeps)."""
    dt, w = DTYPES[dtype], emu.world
    if tokens == 2049 and dtype == "float16":
        pytest.skip("the largest shape runs in bf16 and fp32 (fp16 rounds as bf16 does: same code path)")
    seed = zlib.crc32(repr((tokens, hidden, dtype, "ce")).encode()) % 997
    xs = rank_inputs(seed, w, (tokens, hidden), dt)
    weight = rank_input(seed + 9, 0, (hidden,), dt)
    for residual in (True, False):
        res0 = rank_input(seed + 7, 0, (tokens, hidden), dt) if residual else None
        for mode in ("replicated", "sharded"):
            twoshot = fused(emu, xs, res0, weight, mode, "twoshot", fit(emu, 4))
            got = [fused(emu, xs, res0, weight, mode, "copyengine", fit(emu, ctas)) for ctas in CTAS]
            finish(emu)
            assert reference_problems(w, mode, xs, res0, weight, got[0]) == [], (mode, residual)
            assert reference_problems(w, mode, xs, res0, weight, got[-1]) == [], (mode, residual)
            assert same_fused_bits(w, mode, [twoshot] + got), (mode, residual)
            if residual:  # the rows a rank does not own: as twoshot left them (sharded: untouched)
                assert all(same_bits([twoshot[r][1]] + [g[r][1] for g in got]) for r in range(w))


def test_cuda_graph_replays(emu):
    """One graph holds every rank's copyengine calls of a step (all_reduce, fused replicated, fused
    sharded, fused without a residual) beside twoshot ones on the same channel; 100 replays with
    fresh inputs reproduce the eager bits, which equal twoshot's."""
    w, dt = emu.world, torch.bfloat16
    shape = (w * 37 + 3, 4096)
    pool = [rank_inputs(600 + i, w, shape, dt) for i in range(3)]
    res_pool = [rank_input(610 + i, 0, shape, dt) for i in range(3)]
    weight = rank_input(620, 0, (shape[1],), dt)
    xb = [torch.empty(shape, dtype=dt, device="cuda") for _ in range(w)]
    rb = [[torch.empty(shape, dtype=dt, device="cuda") for _ in range(3)] for _ in range(w)]
    ob = [[torch.empty(shape, dtype=dt, device="cuda") for _ in range(6)] for _ in range(w)]
    ctas = fit(emu, 4)

    def step(r, c):
        o, res = ob[r], rb[r]
        c.all_reduce(xb[r], out=o[0], algorithm="copyengine", ctas=ctas)
        c.all_reduce(xb[r], out=o[1], algorithm="twoshot", ctas=ctas)
        c.fused_allreduce_rmsnorm(xb[r], res[0], weight, EPS, algorithm="copyengine", ctas=ctas, out=o[2])
        c.fused_allreduce_rmsnorm(xb[r], res[1], weight, EPS, residual_mode="sharded", algorithm="copyengine",
                                  ctas=2, out=o[3])
        c.fused_allreduce_rmsnorm(xb[r], res[2], weight, EPS, algorithm="twoshot", ctas=ctas, out=o[4])
        c.fused_allreduce_rmsnorm(xb[r], None, weight, EPS, algorithm="copyengine", ctas=1, out=o[5])

    def load(k):
        for r in range(w):
            xb[r].copy_(pool[k][r])
            rb[r][0].copy_(res_pool[k])
            rb[r][1].copy_(sharded_residual(res_pool[k], r, w))
            rb[r][2].copy_(res_pool[k])
            for o in ob[r]:
                poison(o)

    expected = []
    for k in range(3):
        load(k)
        emu.run(step)
        finish(emu)
        expected.append([[t.clone() for t in ob[r] + rb[r]] for r in range(w)])
        for r in range(w):
            assert torch.equal(ob[r][0], ob[r][1])  # twoshot's bits
            assert torch.equal(ob[r][2], ob[r][4]) and torch.equal(ob[r][3], ob[r][4])
            assert torch.equal(rb[r][0], rb[r][2]) and torch.equal(ob[r][5], expected[k][0][5])
    assert replay_mismatches(emu, step, load, lambda r: ob[r] + rb[r], expected, 100) == 0


def test_back_to_back_calls_are_deterministic(emu):
    """1000 randomized calls (copyengine interleaved with twoshot, oneshot and pull on the same
    channel; all_reduce and the fused op in both residual modes; CTA counts; odd sizes) with no host
    sync between them: every result equals its first call's bits."""
    rng = random.Random(13)
    w = emu.world
    ar_cases, fused_cases = [], []
    for i, shape in enumerate([(w * 1,), (w * 9, 8), (w * 512 + 3, 64)]):
        dt = (torch.bfloat16, torch.float16, torch.float32)[i]
        xs = rank_inputs(930 + i, w, shape, dt)
        ar_cases.append((xs, emu.run(lambda r, c: c.all_reduce(xs[r], algorithm="twoshot", ctas=fit(emu, None)))))
    for i, (t_, h) in enumerate([(1, 4096), (w * 5 + 1, 8192), (300, 5120)]):
        dt = (torch.bfloat16, torch.float32, torch.float16)[i]
        xs = rank_inputs(940 + i, w, (t_, h), dt)
        res0 = rank_input(945 + i, 0, (t_, h), dt)
        weight = rank_input(948 + i, 0, (h,), dt)
        fused_cases.append((xs, res0, weight, fused(emu, xs, res0, weight, "replicated", "twoshot", fit(emu, 4))[0][0]))
    finish(emu)
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(1000):
        ctas = fit(emu, rng.choice([None, 1, 2, 3, 8]))
        if rng.random() < 0.5:
            xs, first = ar_cases[rng.randrange(len(ar_cases))]
            alg = rng.choice(["copyengine", "copyengine", "twoshot", "oneshot", "pull"])
            for g in emu.run(lambda r, c: c.all_reduce(xs[r], algorithm=alg, ctas=ctas)):
                bad += (g.view(torch.uint8) != first[0].view(torch.uint8)).sum()
        else:
            xs, res0, weight, first = fused_cases[rng.randrange(len(fused_cases))]
            mode = rng.choice(["replicated", "sharded"])
            alg = rng.choice(["copyengine", "copyengine", "twoshot", "pull"])
            for out, _ in fused(emu, xs, res0, weight, mode, alg, ctas):
                bad += (out.view(torch.uint8) != first.view(torch.uint8)).sum()
    finish(emu)
    assert bad.item() == 0


@pytest.mark.parametrize("op", ["all_reduce", "fused_allreduce_rmsnorm"])
def test_missing_rank_times_out_naming_it(op):
    """A rank that never arrives: the bounded wait gives up after timeout_s, the error names the op
    and the missing peer, and nothing hangs (the failed call waits one timeout, not two)."""
    timeout = 0.2
    with EmulatedWorld(4, arena_bytes=64 << 20, options=CommOptions(timeout_s=timeout)) as world:
        xs = rank_inputs(3, 4, (64, 4096), torch.bfloat16)
        weight = torch.ones(4096, dtype=torch.bfloat16, device="cuda")

        def call(r, c):
            if op == "all_reduce":
                return c.all_reduce(xs[r], algorithm="copyengine", ctas=2)
            return c.fused_allreduce_rmsnorm(xs[r], None, weight, EPS, algorithm="copyengine", ctas=2)

        world.run(lambda r, c: call(r, c) if r != 3 else None)  # kernels loaded once (CUDA_MODULE_LOADING)
        t0 = time.perf_counter()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        with pytest.raises(PeerTimeoutError) as err:
            world.check()
        assert err.value.op == op and err.value.peer == 3
        assert elapsed < 2 * timeout + 1.0, f"the failed call took {elapsed:.2f} s (timeout {timeout} s)"



@pytest.mark.parametrize("world", (2, 4), ids=lambda w: f"w{w}")
def test_mismatch_raises_on_every_rank_naming_both_calls(world):
    """The last rank reduces 8192 elements, the others 4096: every rank's bounded wait finds a flag
    holding another call's signature and records a mismatch long before the timeout; the error
    names both calls (cewait.ptx reads the peer's descriptor)."""
    timeout, odd = 4.0, world - 1
    with EmulatedWorld(world, arena_bytes=64 << 20, options=CommOptions(timeout_s=timeout)) as emu:
        xs = [torch.ones(8192 if r == odd else 4096, dtype=torch.bfloat16, device="cuda") for r in range(world)]
        for n in (4096, 8192):  # both calls once on every rank (matching): every kernel loaded
            emu.run(lambda r, c, n=n: c.all_reduce(xs[odd][:n], algorithm="copyengine", ctas=2))
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emu.run(lambda r, c: c.all_reduce(xs[r], algorithm="copyengine", ctas=2))
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        for r, c in enumerate(emu.ranks):
            with pytest.raises(CallMismatchError) as err:
                c.check()
            msg = str(err.value)
            for n in (4096, 8192):
                assert f"called all_reduce(numel={n}, bfloat16, copyengine, ctas=2, channel 0)" in msg, msg
        assert elapsed < timeout / 4, f"the mismatch took {elapsed:.2f} s to surface (timeout {timeout} s)"
