"""fused_allreduce_rmsnorm: every dtype x residual mode x odd shape vs the reference; graphs; NaN."""
import pytest
import torch

import weave_nvshmem as wn
from weave_nvshmem.testing import (DTYPES, algorithms, all_true, fused_problems, poison, poisoned, rank_input,
                                   reference_fused, rel_err, same_on_ranks, sharded_residual, tolerance)
from conftest import WORLD_SIZE, all_inputs, rank, world

EPS = 1e-6
FUSED_ALGORITHMS = algorithms("fused_allreduce_rmsnorm", WORLD_SIZE)


def run_case(comm, dt, tokens, hidden, mode, algorithm="auto", with_residual=True, seed=0) -> list:
    """What went wrong in one fused call on this rank (``[]``: nothing). Collective."""
    xs = all_inputs(seed, (tokens, hidden), dt)
    res0 = rank_input(seed + 7, 0, (tokens, hidden), dt) if with_residual else None  # same on all ranks
    weight = rank_input(seed + 9, 0, (hidden,), dt)
    if res0 is None:
        residual = None
    else:  # sharded: rows this rank does not own hold a sentinel, which must stay
        residual = sharded_residual(res0, rank(), world()) if mode == "sharded" else res0.clone()
    out = poisoned((tokens, hidden), dt)
    o, r = comm.fused_allreduce_rmsnorm(xs[rank()], residual, weight, EPS, residual_mode=mode,
                                        algorithm=algorithm, out=out)
    comm.synchronize()
    ref_out, ref_s = reference_fused(xs, res0, weight, EPS)
    problems = fused_problems(o, r, ref_out, ref_s, rank=rank(), world=world(), mode=mode,
                              sentinel_rows=with_residual)
    if not same_on_ranks(o):
        problems.append("out differs across ranks")
    if mode == "replicated" and not same_on_ranks(r):
        problems.append("residual differs across ranks")
    if o is not out:
        problems.append("returned a new tensor, not out")
    return problems


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
@pytest.mark.parametrize("tokens", [1, 3, 7, 1000, 8191])
@pytest.mark.parametrize("hidden", [8192, 5120])
def test_fused_matches_reference(comm, dtype, mode, tokens, hidden):
    problems = run_case(comm, DTYPES[dtype], tokens, hidden, mode, seed=tokens + hidden)
    assert all_true(not problems), problems


@pytest.mark.parametrize("hidden", [1024, 4096, 7168, 16384])
@pytest.mark.parametrize("algorithm", [a for a in FUSED_ALGORITHMS if a != "auto"])
def test_fused_hidden_sizes_and_algorithms(comm, hidden, algorithm):
    if algorithm == "lamport" and 37 * hidden * 2 > wn.collectives.plan.LAMPORT_SLOT:
        with pytest.raises(ValueError, match=algorithm):  # lamport: small inputs only
            run_case(comm, torch.bfloat16, 37, hidden, "replicated", algorithm, seed=hidden)
        return
    problems = run_case(comm, torch.bfloat16, 37, hidden, "replicated", algorithm, seed=hidden)
    assert all_true(not problems), problems


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_fused_without_residual(comm, mode):
    problems = run_case(comm, torch.bfloat16, 129, 4096, mode, with_residual=False, seed=5)
    assert all_true(not problems), problems


def test_fused_cupy_entry(comm):
    import cupy

    dt = torch.float16
    xs = all_inputs(41, (9, 2048), dt)
    res0 = rank_input(42, 0, (9, 2048), dt)
    weight = rank_input(43, 0, (2048,), dt)
    o, r = wn.fused_allreduce_rmsnorm(cupy.from_dlpack(xs[rank()]), cupy.from_dlpack(res0.clone()),
                                      cupy.from_dlpack(weight), EPS)
    cupy.cuda.get_current_stream().synchronize()
    ref_out, _ = reference_fused(xs, res0, weight, EPS)
    assert isinstance(o, cupy.ndarray)
    assert all_true(rel_err(torch.from_dlpack(o), ref_out) <= tolerance(dt))


def test_fused_nan_inf_propagate(comm):
    dt = torch.bfloat16
    xs = all_inputs(77, (16, 4096), dt)
    xs[0][3, 10] = float("nan")
    xs[world() - 1][5, 0] = float("inf")
    res = torch.zeros_like(xs[0]) + 0.5
    weight = torch.ones(4096, dtype=dt, device="cuda")
    o, r = comm.fused_allreduce_rmsnorm(xs[rank()], res.clone(), weight, EPS)
    comm.synchronize()
    ref_out, _ = reference_fused(xs, res, weight, EPS)
    nan_rows = torch.isnan(o).any(-1)
    ok = bool(nan_rows[3]) and bool(nan_rows[5]) and rel_err(o, ref_out) <= tolerance(dt)
    ok &= not bool(nan_rows[[0, 1, 2, 4, 6]].any())
    assert all_true(ok)


def test_fused_bad_inputs(comm):
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="hidden"):
        comm.fused_allreduce_rmsnorm(torch.randn(4, 12, device="cuda", dtype=torch.bfloat16), None,
                                     torch.ones(12, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="weight"):
        comm.fused_allreduce_rmsnorm(x, None, w.float())
    with pytest.raises(ValueError, match="residual"):
        comm.fused_allreduce_rmsnorm(x, x[:2].clone(), w)
    with pytest.raises(ValueError, match="residual_mode"):
        comm.fused_allreduce_rmsnorm(x, None, w, residual_mode="both")
    with pytest.raises(ValueError, match="oneshot"):
        comm.fused_allreduce_rmsnorm(x, x.clone(), w, residual_mode="sharded", algorithm="oneshot")
    with pytest.raises(ValueError, match="2-D"):
        comm.fused_allreduce_rmsnorm(x.view(-1), None, w)


def test_fused_10k_back_to_back_and_1k_graph_replays(comm):
    import random

    rng = random.Random(99)
    dt = torch.bfloat16
    cases = []
    for i, (t, h) in enumerate([(1, 4096), (5, 8192), (64, 5120), (300, 4096)]):
        xs = all_inputs(500 + i, (t, h), dt)
        res0 = rank_input(600 + i, 0, (t, h), dt)
        w = rank_input(700 + i, 0, (h,), dt)
        o, r = comm.fused_allreduce_rmsnorm(xs[rank()], res0.clone(), w, EPS)
        cases.append((xs[rank()], res0, w, o.clone(), r.clone()))
    comm.synchronize()
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(10_000):
        x, res0, w, o_first, r_first = cases[rng.randrange(len(cases))]
        r = res0.clone()
        algs = [a for a in FUSED_ALGORITHMS if a != "lamport" or x.numel() * 2 <= wn.collectives.plan.LAMPORT_SLOT]
        o, r = comm.fused_allreduce_rmsnorm(x, r, w, EPS, algorithm=rng.choice(algs),
                                            ctas=rng.choice([None, 2, 8]))
        bad += (o.view(torch.int16) != o_first.view(torch.int16)).sum()
        bad += (r.view(torch.int16) != r_first.view(torch.int16)).sum()
    # graph: 1k replays of the largest case
    x, res0, w, o_first, r_first = cases[-1]
    rbuf, obuf = res0.clone(), torch.empty_like(o_first)
    rbuf2, obuf2 = res0.clone(), torch.empty_like(o_first)
    x0, res00, w0, o_first0, r_first0 = cases[0]  # decode size: the Lamport kernel, twice back to back
    rbuf3, obuf3 = res00.clone(), torch.empty_like(o_first0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(g, stream=stream):
        comm.fused_allreduce_rmsnorm(x, rbuf, w, EPS, out=obuf)
        comm.fused_allreduce_rmsnorm(x, rbuf2, w, EPS, out=obuf2, algorithm="oneshot", ctas=3)
        for _ in range(2):
            comm.fused_allreduce_rmsnorm(x0, rbuf3, w0, EPS, out=obuf3, algorithm="lamport")
            rbuf3.copy_(res00)
    for _ in range(1000):
        rbuf.copy_(res0)
        rbuf2.copy_(res0)
        for o in (obuf, obuf2, obuf3):
            poison(o)
        g.replay()
        for o, r in ((obuf, rbuf), (obuf2, rbuf2)):
            bad += (o.view(torch.int16) != o_first.view(torch.int16)).sum()
            bad += (r.view(torch.int16) != r_first.view(torch.int16)).sum()
        bad += (obuf3.view(torch.int16) != o_first0.view(torch.int16)).sum()
    comm.synchronize()
    assert all_true(bad.item() == 0), bad.item()
