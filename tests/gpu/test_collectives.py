"""all_reduce (every algorithm the planner offers), reduce_scatter, all_gather vs the references."""
import zlib

import pytest
import torch

import weave_nvshmem as wn
from weave_nvshmem.testing import (DTYPES, algorithms, all_true, poison, poisoned, reference_all_gather,
                                   reference_all_reduce, reference_reduce_scatter, rel_err, same_on_ranks, tolerance)
from conftest import WORLD_SIZE, all_inputs, rank, world

SHAPES = [(1,), (7,), (13, 5), (1000, 5120), (8191, 4096)]
AR_ALGORITHMS = algorithms("all_reduce", WORLD_SIZE)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("algorithm", AR_ALGORITHMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_all_reduce_matches_reference(comm, dtype, algorithm, shape):
    dt = DTYPES[dtype]
    xs = all_inputs(zlib.crc32(repr((shape, dtype)).encode()) % 997, shape, dt)
    out = poisoned(shape, dt)
    if algorithm == "lamport" and xs[0].numel() * xs[0].element_size() > wn.collectives.plan.LAMPORT_SLOT:
        with pytest.raises(ValueError, match=algorithm):  # lamport: small inputs only
            comm.all_reduce(xs[rank()], out=out, algorithm=algorithm)
        return
    y = comm.all_reduce(xs[rank()], out=out, algorithm=algorithm)
    comm.synchronize()
    err = rel_err(y, reference_all_reduce(xs))
    same = same_on_ranks(y)
    assert y is out
    assert all_true(err <= tolerance(dt) and same), (err, same)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_all_reduce_in_place_and_cupy(comm, dtype):
    import cupy

    dt = DTYPES[dtype]
    xs = all_inputs(5, (3, 1001), dt)
    ref = reference_all_reduce(xs)
    x = xs[rank()].clone()
    comm.all_reduce(x, out=x)
    c = cupy.from_dlpack(xs[rank()].clone())
    yc = wn.all_reduce(c)
    comm.synchronize()
    cupy.cuda.get_current_stream().synchronize()
    ok = rel_err(x, ref) <= tolerance(dt) and isinstance(yc, cupy.ndarray)
    ok &= rel_err(torch.from_dlpack(yc), ref) <= tolerance(dt)
    assert all_true(ok)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rows", [8, 1000, 4096])
def test_reduce_scatter_and_all_gather(comm, dtype, rows):
    dt = DTYPES[dtype]
    w, r = world(), rank()
    xs = all_inputs(11, (w * rows, 64), dt)
    rs = comm.reduce_scatter(xs[r], out=poisoned((rows, 64), dt))
    ag = comm.all_gather(xs[r][:rows], out=poisoned((w * rows, 64), dt))
    comm.synchronize()
    ref_ag = reference_all_gather([x[:rows] for x in xs])
    same = same_on_ranks(ag)
    ok = rel_err(rs, reference_reduce_scatter(xs, r)) <= tolerance(dt) and torch.equal(ag, ref_ag) and same
    assert all_true(ok)


def test_bad_inputs_raise_before_launch(comm):
    x = all_inputs(3, (64,), torch.bfloat16)[0]  # the same on every rank
    with pytest.raises(TypeError, match="all_reduce"):
        comm.all_reduce(torch.ones(8, dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError, match="cuda"):
        comm.all_reduce(torch.ones(8))
    with pytest.raises(ValueError, match="contiguous"):
        comm.all_reduce(torch.randn(8, 8, device="cuda").t())
    with pytest.raises(ValueError, match="out must be"):
        comm.all_reduce(x, out=torch.empty(63, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="algorithm"):
        comm.all_reduce(x, algorithm="threeshot")
    with pytest.raises(ValueError, match="ctas"):
        comm.all_reduce(x, ctas=0)
    if world() > 1:
        with pytest.raises(ValueError, match="divisible"):
            comm.reduce_scatter(torch.randn(world() * 8 + 1, 8, device="cuda"))
    with pytest.raises(ValueError, match="not on the symmetric heap"):
        wn.peer_view(x, 0)
    with pytest.raises(ValueError, match="symmetric"):
        wn.free(x)
    # nothing was launched or corrupted: a normal call still works
    y = comm.all_reduce(x.float())
    comm.synchronize()
    assert all_true(rel_err(y, x.double() * world()) < 1e-6)


def test_10k_randomized_back_to_back_calls_are_deterministic(comm):
    import random

    rng = random.Random(1234)  # same sequence on every rank
    shapes = [(1,), (9,), (4096,), (333, 77), (64, 8192)]
    dts = [torch.bfloat16, torch.float16, torch.float32]
    cases = []
    for i, shape in enumerate(shapes):
        for dt in dts:
            xs = all_inputs(100 + i, shape, dt)
            first = comm.all_reduce(xs[rank()])
            cases.append((xs[rank()], first, reference_all_reduce(xs)))
    comm.synchronize()
    ok = all(rel_err(f, ref) <= tolerance(x.dtype) for x, f, ref in cases)
    mismatches = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(10_000):
        x, first, _ = cases[rng.randrange(len(cases))]
        nbytes = x.numel() * x.element_size()
        algs = [a for a in AR_ALGORITHMS if a != "lamport" or nbytes <= wn.collectives.plan.LAMPORT_SLOT]
        y = comm.all_reduce(x, algorithm=rng.choice(algs), ctas=rng.choice([None, 1, 3, 8]))
        mismatches += (y.view(torch.uint8) != first.view(torch.uint8)).sum()
    comm.synchronize()
    assert all_true(ok and mismatches.item() == 0), mismatches.item()


def test_1k_cuda_graph_replays(comm):
    shape, dt = (512, 1024), torch.bfloat16
    pool = [all_inputs(200 + i, shape, dt) for i in range(4)]
    refs = [reference_all_reduce(xs) for xs in pool]
    first = [comm.all_reduce(xs[rank()]) for xs in pool]
    comm.synchronize()
    ok = all(rel_err(f, r) <= tolerance(dt) for f, r in zip(first, refs))
    x = torch.empty(shape, dtype=dt, device="cuda")
    out1 = torch.empty_like(x)
    out2 = torch.empty_like(x)
    out3 = torch.empty_like(x)
    out4 = torch.empty_like(x[:64])
    comm.reserve(x.numel() * x.element_size())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(g, stream=stream):
        comm.all_reduce(x, out=out1, algorithm="oneshot")
        comm.all_reduce(x, out=out2, algorithm="twoshot", ctas=4)
        comm.all_reduce(x, out=out3, algorithm="auto", ctas=3)
        comm.all_reduce(x[:64], out=out4, algorithm="lamport")
        comm.all_reduce(x[:64], out=out4, algorithm="lamport", ctas=2)  # back to back, no barrier between
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for i in range(1000):
        k = i % 4
        x.copy_(pool[k][rank()])
        for o in (out1, out2, out3, out4):
            poison(o)
        g.replay()
        bad += (out1.view(torch.int16) != first[k].view(torch.int16)).sum()
        bad += (out2.view(torch.int16) != first[k].view(torch.int16)).sum()
        bad += (out3.view(torch.int16) != first[k].view(torch.int16)).sum()
        bad += (out4.view(torch.int16) != first[k][:64].view(torch.int16)).sum()
    comm.synchronize()
    assert all_true(ok and bad.item() == 0), bad.item()


def test_torch_custom_op_in_graph(comm):
    import weave_nvshmem.collectives.ops  # noqa: F401 - registers torch.ops.weave_nvshmem

    xs = all_inputs(300, (256, 512), torch.bfloat16)
    y = torch.ops.weave_nvshmem.all_reduce(xs[rank()])
    comm.synchronize()
    assert all_true(rel_err(y, reference_all_reduce(xs)) <= tolerance(torch.bfloat16))
