"""Async ops (``async_op=True``) at world sizes 2/4/8 on one GPU: bitwise equal to the synchronous
ops, ordered after the caller's stream at call time (or ``after``), seen by a consumer on the
caller's stream after ``Work.wait``, two channels in flight at once, and an async chain captured
into a CUDA graph (fork to the side streams and join back by events) and replayed."""
import pytest
import torch

from weave_nvshmem.collectives.work import Work
from weave_nvshmem.testing import poison, poisoned, rank_inputs, same_bits
from conftest import finish, fit

EPS = 1e-6
OPS = ("all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm")


def op_args(emu, op, dtype, seed=3):
    """Per rank: (args, kwargs) of ``op`` on fresh inputs (odd rows: 37 per rank)."""
    w, rows, hidden = emu.world, 37, 256
    xs = rank_inputs(seed, w, (w * rows, hidden), dtype)
    if op == "all_gather":
        return [((x[:rows].contiguous(),), {}) for x in xs]
    if op == "fused_allreduce_rmsnorm":
        res = rank_inputs(seed + 1, 1, (w * rows, hidden), dtype)[0]  # replicated: the same on every rank
        weight = rank_inputs(seed + 2, 1, (hidden,), dtype)[0]
        return [((x, res.clone(), weight, EPS), {}) for x in xs]
    return [((x,), {}) for x in xs]


def flat(outputs):
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("op", OPS)
def test_async_equals_sync_bitwise_and_the_consumer_sees_it(emu, op, dtype):
    ctas = fit(emu, 8)
    sync_args, async_args = op_args(emu, op, dtype), op_args(emu, op, dtype)
    want = emu.run(lambda r, c: flat(getattr(c, op)(*sync_args[r][0], ctas=ctas)))
    finish(emu)
    seen = [None] * emu.world

    def fn(r, c):
        args = list(async_args[r][0])
        src = args[0].clone()
        poison(args[0])
        # the caller's stream writes x just before the call: the op must see the write (default after)
        torch.cuda._sleep(2_000_000)
        args[0].copy_(src)
        work = getattr(c, op)(*args, ctas=ctas, async_op=True)
        assert isinstance(work, Work) and work.event is not None
        outs = flat(work.wait())
        seen[r] = [t.clone() for t in outs]  # a consumer on the caller's stream
        return outs

    got = emu.run(fn)
    finish(emu)
    for r in range(emu.world):
        for g, s, ref in zip(got[r], seen[r], want[r]):
            assert torch.equal(g, ref), (op, r)
            assert torch.equal(s, ref), (op, r)
    if op != "reduce_scatter":  # every rank holds the same result
        assert same_bits([g[0] for g in got])


def test_async_waits_for_the_after_event(emu):
    """``after`` is an event recorded once the input is written: the op waits for it, not for the
    stream at call time."""
    ctas, w = fit(emu, 8), emu.world
    xs = rank_inputs(5, w, (513, 64), torch.float32)
    outs = [poisoned((513, 64), torch.float32) for _ in range(w)]
    want = torch.stack([x.double() for x in xs]).sum(0)
    aside = [torch.cuda.Stream() for _ in range(w)]

    def fn(r, c):
        src = xs[r].clone()
        poison(xs[r])
        aside[r].wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(aside[r]):
            torch.cuda._sleep(2_000_000)
            xs[r].copy_(src)
            ready = torch.cuda.current_stream().record_event()
        work = c.all_reduce(xs[r], out=outs[r], ctas=ctas, async_op=True, after=ready)
        work.wait()
        torch.cuda.current_stream().wait_stream(aside[r])

    emu.run(fn)
    finish(emu)
    for o in outs:
        torch.testing.assert_close(o.double(), want, rtol=1e-5, atol=1e-4)
    assert same_bits(outs)


def test_two_channels_in_flight(emu):
    """An all_reduce on channel 0 and an all_gather on channel 1, both pending, then both waited."""
    ctas, w = max(1, fit(emu, 8) // 2), emu.world
    xs = rank_inputs(9, w, (64, 128), torch.bfloat16)
    want_ar = emu.run(lambda r, c: c.all_reduce(xs[r].clone(), ctas=ctas))
    want_ag = emu.run(lambda r, c: c.all_gather(xs[r], ctas=ctas))

    def fn(r, c):
        a = c.all_reduce(xs[r].clone(), ctas=ctas, channel=0, async_op=True)
        g = c.all_gather(xs[r], ctas=ctas, channel=1, async_op=True)
        assert a.stream is not g.stream
        return a.wait(), g.wait()

    got = emu.run(fn)
    finish(emu)
    for r in range(w):
        assert torch.equal(got[r][0], want_ar[r]) and torch.equal(got[r][1], want_ag[r])


def test_graph_capture_and_replay_of_an_async_chain(emu):
    """all_reduce -> (main: scale) -> fused op -> (main: copy out), all async, in one CUDA graph."""
    ctas, w, rows, hidden = fit(emu, 8), emu.world, 29, 256
    dt = torch.bfloat16
    x = [torch.empty(rows, hidden, dtype=dt, device="cuda") for _ in range(w)]
    res = [torch.empty(rows, hidden, dtype=dt, device="cuda") for _ in range(w)]
    weight = rank_inputs(21, 1, (hidden,), dt)[0]
    out = [poisoned((rows, hidden), dt) for _ in range(w)]

    def chain(r, c, *, async_op):
        kw = {"async_op": True} if async_op else {}
        s = c.all_reduce(x[r], ctas=ctas, **kw)
        s = (s.wait() if async_op else s) * 0.5
        got = c.fused_allreduce_rmsnorm(s, res[r], weight, EPS, ctas=ctas, **kw)
        out[r].copy_((got.wait() if async_op else got)[0])

    def load(seed):
        residual = rank_inputs(seed + 50, 1, (rows, hidden), dt)[0]  # replicated: one residual on every rank
        for r, a in enumerate(rank_inputs(seed, w, (rows, hidden), dt)):
            x[r].copy_(a)
            res[r].copy_(residual)

    load(1)
    emu.run(lambda r, c: chain(r, c, async_op=True))  # warm-up: side streams made, kernels loaded
    finish(emu)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        emu.run(lambda r, c: chain(r, c, async_op=True))
    for seed in (2, 3):
        load(seed)
        for o in out:
            poison(o)
        g.replay()
        finish(emu)
        got = [o.clone() for o in out]
        load(seed)
        emu.run(lambda r, c: chain(r, c, async_op=False))
        finish(emu)
        for r in range(w):
            assert torch.equal(got[r], out[r]), (seed, r)
        assert same_bits(got)
    del g
