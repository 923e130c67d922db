"""all_reduce, reduce_scatter, all_gather and the fused AllReduce-RMSNorm at world sizes 2/4/8 on one
GPU: references rounded as the kernels round, rank-identical bits, poisoned outputs, zero copy, graphs,
back-to-back calls."""
import random
import zlib

import pytest
import torch

from weave_nvshmem import CommOptions, PeerTimeoutError
from weave_nvshmem.collectives import plan
from weave_nvshmem.collectives.emulated import EmulatedWorld
from weave_nvshmem.testing import (DTYPES, algorithms, check_close, fused_problems, poison, poisoned, rank_input,
                                   rank_inputs, reference_all_gather, reference_all_reduce, reference_fused,
                                   reference_reduce_scatter, same_bits, sharded_residual)
from weave_nvshmem.testing.fuzz import REPLICATED_ONLY
from conftest import finish, fit

EPS = 1e-6
#: the planner's algorithms (every emulated world has more than one rank)
AR_ALGORITHMS = algorithms("all_reduce", world=2)
FUSED_ALGORITHMS = algorithms("fused_allreduce_rmsnorm", world=2)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("algorithm", AR_ALGORITHMS)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 5), (1000, 5120), (8191, 4096)])
def test_all_reduce(emu, dtype, algorithm, shape):
    dt, w = DTYPES[dtype], emu.world
    xs = rank_inputs(zlib.crc32(repr((shape, dtype)).encode()) % 997, w, shape, dt)
    outs = [poisoned(shape, dt) for _ in range(w)]
    n = xs[0].numel()
    if algorithm == "lamport" and n * xs[0].element_size() > plan.LAMPORT_SLOT:
        with pytest.raises(ValueError, match=algorithm):
            emu.ranks[0].all_reduce(xs[0], algorithm=algorithm)
        return
    emu.run(lambda r, c: c.all_reduce(xs[r], out=outs[r], algorithm=algorithm, ctas=fit(emu, None)))
    finish(emu)
    assert check_close(outs[0], reference_all_reduce(xs)) == []
    assert same_bits(outs)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rows", [1, 8, 1000, 4096])
def test_reduce_scatter_and_all_gather(emu, dtype, rows):
    dt, w = DTYPES[dtype], emu.world
    xs = rank_inputs(11, w, (w * rows, 64), dt)
    rs = [poisoned((rows, 64), dt) for _ in range(w)]
    ag = [poisoned((w * rows, 64), dt) for _ in range(w)]
    emu.run(lambda r, c: (c.reduce_scatter(xs[r], out=rs[r], ctas=fit(emu, None)),
                          c.all_gather(xs[r][:rows], out=ag[r], ctas=fit(emu, None))))
    finish(emu)
    gathered = reference_all_gather([x[:rows] for x in xs])
    for r in range(w):
        assert check_close(rs[r], reference_reduce_scatter(xs, r)) == []
        assert torch.equal(ag[r], gathered)


def run_fused(emu, dt, tokens, hidden, mode="replicated", algorithm="auto", ctas=None, residual=True, seed=0,
              sym=None):
    """Every rank's (out, residual) of one fused call; a sharded residual's rows a rank does not
    own hold RESIDUAL_SENTINEL (``sharded_residual``)."""
    w = emu.world
    xs = sym if sym is not None else rank_inputs(seed, w, (tokens, hidden), dt)
    res0 = rank_input(seed + 7, 0, (tokens, hidden), dt) if residual else None
    weight = rank_input(seed + 9, 0, (hidden,), dt)
    if res0 is None:
        res = [None] * w
    else:
        res = [sharded_residual(res0, r, w) if mode == "sharded" else res0.clone() for r in range(w)]
    outs = [poisoned((tokens, hidden), dt) for _ in range(w)]
    got = emu.run(lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, EPS, residual_mode=mode,
                                                         algorithm=algorithm, ctas=fit(emu, ctas), out=outs[r]))
    finish(emu)
    return xs, res0, weight, got


def check_fused(emu, mode, xs, res0, weight, got):
    ref_out, ref_s = reference_fused(xs, res0, weight, EPS)
    for r, (out, res) in enumerate(got):
        assert fused_problems(out, res, ref_out, ref_s, rank=r, world=emu.world, mode=mode,
                              sentinel_rows=res0 is not None) == []
    assert same_bits([o for o, _ in got])
    if mode == "replicated":
        assert same_bits([res for _, res in got])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
@pytest.mark.parametrize("tokens", [1, 3, 7, 1000])
@pytest.mark.parametrize("hidden", [8192, 5120])
def test_fused(emu, dtype, mode, tokens, hidden):
    dt = DTYPES[dtype]
    got = run_fused(emu, dt, tokens, hidden, mode, seed=tokens + hidden)
    check_fused(emu, mode, *got)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("algorithm", [a for a in FUSED_ALGORITHMS if a != "auto"])
@pytest.mark.parametrize("hidden", [4096, 7168])
def test_fused_every_algorithm(emu, dtype, algorithm, hidden):
    """Each kernel by name (auto above picks by size), both residual modes where it has them."""
    dt = DTYPES[dtype]
    for mode in (("replicated",) if algorithm in REPLICATED_ONLY else ("replicated", "sharded")):
        got = run_fused(emu, dt, 13, hidden, mode, algorithm=algorithm, seed=hidden)
        check_fused(emu, mode, *got)


@pytest.mark.parametrize("hidden", [4096, 7168])
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_fused_8191_tokens(emu, hidden, mode):
    got = run_fused(emu, torch.bfloat16, 8191, hidden, mode, seed=hidden)
    check_fused(emu, mode, *got)


def test_fused_without_residual(emu):
    for mode in ("replicated", "sharded"):
        got = run_fused(emu, torch.bfloat16, 129, 4096, mode, residual=False, seed=5)
        check_fused(emu, mode, *got)


@pytest.mark.parametrize("tokens, hidden", [(1, 8192), (37, 4096), (1000, 5120)])
def test_fused_algorithms_and_ctas_give_the_same_bits(emu, tokens, hidden):
    """The two-shot kernel reduces each row in the one-row kernels' order: identical bits whatever
    the algorithm and CTA count (so auto may switch between them freely)."""
    dt = torch.bfloat16
    variants = [(a, None) for a in FUSED_ALGORITHMS if a != "lamport" or tokens * hidden * 2 <= plan.LAMPORT_SLOT]
    variants += [("twoshot", 1), ("twoshot", 3), ("twoshot", 8)]
    results = [run_fused(emu, dt, tokens, hidden, algorithm=a, ctas=c, seed=tokens)[3] for a, c in variants]
    outs = [got[0][0] for got in results]
    assert same_bits(outs), variants
    assert same_bits([got[0][1] for got in results])


def test_fused_nan_and_inf_propagate(emu):
    dt, w = torch.bfloat16, emu.world
    xs = rank_inputs(77, w, (16, 4096), dt)
    xs[0][3, 10] = float("nan")
    xs[w - 1][5, 0] = float("inf")
    for algorithm in ("oneshot", "twoshot"):
        got = run_fused(emu, dt, 16, 4096, algorithm=algorithm, sym=xs, seed=77)
        outs = [o for o, _ in got[3]]
        nan_rows = torch.isnan(outs[0]).any(-1)
        assert bool(nan_rows[3]) and bool(nan_rows[5]) and not bool(nan_rows[[0, 1, 2, 4, 6]].any())
        assert check_close(outs[0], reference_fused(xs, got[1], got[2], EPS)[0]) == []
        assert same_bits(outs)


@pytest.mark.parametrize("tokens, hidden", [(7, 8192), (1000, 5120), (4099, 8192)])
def test_zero_copy(emu, tokens, hidden):
    """Symmetric inputs: the peers read them in place; same bits as the staged path."""
    dt, w = torch.bfloat16, emu.world
    xs = rank_inputs(41, w, (tokens, hidden), dt)
    sym = emu.empty((tokens, hidden), dt)
    for s, x in zip(sym, xs):
        s.copy_(x)
    ctas = fit(emu, 3)
    staged = emu.run(lambda r, c: c.all_reduce(xs[r], algorithm="twoshot", ctas=ctas))
    direct = emu.run(lambda r, c: c.all_reduce(sym[r], out=poisoned(xs[r].shape, dt), algorithm="twoshot",
                                               ctas=ctas))
    finish(emu)
    assert same_bits(staged + direct)
    assert check_close(direct[0], reference_all_reduce(xs)) == []
    if tokens % w == 0:
        rs = emu.run(lambda r, c: c.reduce_scatter(sym[r], ctas=ctas))
        finish(emu)
        for r in range(w):
            assert torch.equal(rs[r], staged[0][r * tokens // w:(r + 1) * tokens // w])
    for mode in ("replicated", "sharded"):
        a = run_fused(emu, dt, tokens, hidden, mode, algorithm="twoshot", seed=41, sym=xs)
        b = run_fused(emu, dt, tokens, hidden, mode, algorithm="twoshot", seed=41, sym=sym)
        check_fused(emu, mode, *b)
        assert same_bits([o for o, _ in a[3]] + [o for o, _ in b[3]])
    emu.free(sym)


def test_empty_symmetric_tensor_is_freed(emu):
    """A zero-element symmetric tensor (torch gives it no address): empty() takes no arena block,
    free() accepts it, and the ops run on it."""
    sym = emu.empty((3, 0, 8), torch.bfloat16)
    got = emu.run(lambda r, c: c.all_reduce(sym[r]))
    finish(emu)
    assert all(g.shape == (3, 0, 8) for g in got)
    emu.free(sym)
    again = emu.empty((4,), torch.float32)  # the arena is intact
    emu.free(again)


def test_back_to_back_calls_are_deterministic(emu):
    """2k randomized calls (op, algorithm, CTAs) with no host sync between them: every result
    equals the first call's bits on every rank."""
    rng = random.Random(1234)
    w = emu.world
    cases = []
    for i, shape in enumerate([(1,), (9,), (4096,), (333, 77), (64, 8192)]):
        for dt in DTYPES.values():
            xs = rank_inputs(100 + i, w, shape, dt)
            first = emu.run(lambda r, c: c.all_reduce(xs[r]))
            cases.append(("ar", xs, first, None))
    for i, (t, h) in enumerate([(1, 4096), (5, 8192), (64, 5120), (300, 4096)]):
        xs, res0, weight, got = run_fused(emu, torch.bfloat16, t, h, seed=500 + i)
        cases.append(("fused", xs, [o for o, _ in got], (res0, weight)))
    finish(emu)
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(2000):
        kind, xs, first, extra = cases[rng.randrange(len(cases))]
        ctas = fit(emu, rng.choice([None, 1, 3, 8]))
        if kind == "ar":
            nbytes = xs[0].numel() * xs[0].element_size()
            alg = rng.choice([a for a in AR_ALGORITHMS if a != "lamport" or nbytes <= plan.LAMPORT_SLOT])
            got = emu.run(lambda r, c: c.all_reduce(xs[r], algorithm=alg, ctas=ctas))
        else:
            res0, weight = extra
            alg = rng.choice([a for a in FUSED_ALGORITHMS if a != "lamport" or xs[0].numel() * 2 <= plan.LAMPORT_SLOT])
            got = emu.run(lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res0.clone(), weight, EPS, algorithm=alg,
                                                                 ctas=ctas)[0])
        for g in got:
            bad += (g.view(torch.uint8) != first[0].view(torch.uint8)).sum()
    finish(emu)
    assert bad.item() == 0


def test_cuda_graph_replays(emu):
    """One graph holds every rank's ops of a step (forked onto the ranks' streams); 300 replays
    with fresh inputs reproduce the eager bits."""
    w, dt = emu.world, torch.bfloat16
    pool = [rank_inputs(200 + i, w, (512, 1024), dt) for i in range(3)]
    res_pool = [rank_input(300 + i, 0, (512, 1024), dt) for i in range(3)]
    weight = rank_input(400, 0, (1024,), dt)
    ctas = fit(emu, 4)

    def step(r, c, x, res, o1, o2, o3, o4):
        c.all_reduce(x, out=o1, algorithm="oneshot", ctas=ctas)
        c.all_reduce(x, out=o2, algorithm="twoshot", ctas=ctas)
        c.all_reduce(x[:64], out=o3, algorithm="lamport")
        c.all_reduce(x[:64], out=o3, algorithm="lamport", ctas=2)  # back to back, no barrier
        c.fused_allreduce_rmsnorm(x, res, weight, EPS, algorithm="twoshot", ctas=ctas, out=o4)

    def eager(k):
        outs = [[torch.empty_like(pool[k][r]) if j != 2 else torch.empty_like(pool[k][r][:64]) for j in range(4)]
                for r in range(w)]
        res = [res_pool[k].clone() for _ in range(w)]
        emu.run(lambda r, c: step(r, c, pool[k][r], res[r], *outs[r]))
        return outs, res

    expected = [eager(k) for k in range(3)]
    finish(emu)
    xb = [torch.empty_like(pool[0][r]) for r in range(w)]
    rb = [torch.empty_like(res_pool[0]) for _ in range(w)]
    ob = [[torch.empty_like(xb[r]) if j != 2 else torch.empty_like(xb[r][:64]) for j in range(4)] for r in range(w)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        emu.run(lambda r, c: step(r, c, xb[r], rb[r], *ob[r]))
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for i in range(300):
        k = i % 3
        for r in range(w):
            xb[r].copy_(pool[k][r])
            rb[r].copy_(res_pool[k])
            for o in ob[r]:
                poison(o)
        g.replay()
        outs, res = expected[k]
        for r in range(w):
            for o, e in zip(ob[r] + [rb[r]], outs[r] + [res[r]]):
                bad += (o.view(torch.int16) != e.view(torch.int16)).sum()
    finish(emu)
    assert bad.item() == 0


def test_refuses_grids_that_cannot_be_resident():
    """8 ranks x 128 blocks of 512 threads exceed what one GPU holds: refused before launch."""
    with EmulatedWorld(8, arena_bytes=64 << 20) as world:
        x = torch.ones(1 << 16, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(ValueError, match="resident"):
            world.ranks[0].all_reduce(x, algorithm="twoshot", ctas=128)


def test_missing_rank_times_out_naming_it():
    """A rank that never arrives: the waiting ranks' kernels give up after timeout_s and the
    error names the op and the missing peer; nothing hangs."""
    with EmulatedWorld(4, arena_bytes=64 << 20, options=CommOptions(timeout_s=0.2)) as world:
        x = torch.ones(4096, dtype=torch.float32, device="cuda")
        world.run(lambda r, c: c.all_reduce(x, algorithm="twoshot", ctas=2) if r != 3 else None)
        torch.cuda.synchronize()
        with pytest.raises(PeerTimeoutError) as err:
            world.check()
        assert err.value.op == "all_reduce" and err.value.peer == 3


def test_staging_must_be_reserved_for_the_whole_world():
    with EmulatedWorld(2, arena_bytes=256 << 20) as world:
        x = torch.ones(1 << 20, dtype=torch.float32, device="cuda")
        with pytest.raises(Exception, match=r"world.reserve\(4194304\)"):
            world.ranks[0].all_reduce(x)
        world.reserve(4 << 20)
        ys = world.run(lambda r, c: c.all_reduce(x))
        finish(world)
        assert torch.equal(ys[0], torch.full_like(x, 2.0)) and torch.equal(ys[1], ys[0])
