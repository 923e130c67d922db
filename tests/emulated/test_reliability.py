"""Reliability on emulated ranks (one GPU): ranks making different calls fail at once with
CallMismatchError naming both calls (the call signature, docs/reliability.md); a world whose
communicators failed (mismatch, missing rank) is rebuilt and computes correct results; graph
replays, eager calls, two channels on two streams and Lamport calls interleave on a channel."""
import time

import pytest
import torch

from weave_nvshmem import CommOptions
from weave_nvshmem.errors import CallMismatchError, PeerTimeoutError, WeaveError
from weave_nvshmem.testing import (check_close, poison, rank_input, rank_inputs, reference_all_reduce,
                                   reference_fused, reference_reduce_scatter, same_bits)
from weave_nvshmem.testing.runner import emulated_world

#: staging of these worlds (largest input: 64 x 4096 fp32 = 1 MB)
STAGING = 1 << 20
#: a mismatch must end the call long before this (the kernels stop at once, not at the timeout)
TIMEOUT = 4.0
EPS = 1e-6


def world_of(world, timeout=TIMEOUT, channels=2):
    return emulated_world(world, STAGING, options=CommOptions(timeout_s=timeout, channels=channels))


def warm(emu, *steps):
    """Run each ``step(r, comm)`` alone on every rank first: CUDA loads a kernel at its first launch
    and a load waits for the device, so a kernel must not be first launched while another rank's
    kernel spins waiting for this rank (collectives/emulated.py)."""
    for step in steps:
        emu.run(step)
        torch.cuda.synchronize()
        emu.check()


def run_all_reduce_checked(emu, n=4096, dtype=torch.bfloat16, **kw):
    """An all_reduce on every rank, checked against the float64 reference and across ranks."""
    xs = rank_inputs(11, emu.world, (n,), dtype)
    outs = [poison(torch.empty_like(x)) for x in xs]
    emu.run(lambda r, c: c.all_reduce(xs[r], out=outs[r], **kw))
    torch.cuda.synchronize()
    emu.check()
    problems = check_close(outs[0], reference_all_reduce(xs), "rank 0 out")
    assert not problems and same_bits(outs), problems


# ---- the call signature -----------------------------------------------------------------------
#: (what differs, rank 0's call, the other rank's call): all_reduce keyword arguments and numel
MISMATCHES = {
    "numel": (dict(n=4096, algorithm="twoshot", ctas=8), dict(n=8192, algorithm="twoshot", ctas=8)),
    "algorithm": (dict(n=4096, algorithm="twoshot", ctas=8), dict(n=4096, algorithm="oneshot", ctas=8)),
    "ctas": (dict(n=4096, algorithm="twoshot", ctas=16), dict(n=4096, algorithm="twoshot", ctas=8)),
    "dtype": (dict(n=4096, algorithm="oneshot", ctas=4), dict(n=4096, algorithm="oneshot", ctas=4,
                                                              dtype=torch.float32)),
}


def words_of(kw, seq):
    dt = {torch.float32: "float32"}.get(kw.get("dtype"), "bfloat16")
    return f"all_reduce(numel={kw['n']}, {dt}, {kw['algorithm']}, ctas={kw['ctas']}, channel 0, call #{seq})"


@pytest.mark.parametrize("what", MISMATCHES)
@pytest.mark.parametrize("world", (2, 4), ids=lambda w: f"w{w}")
def test_mismatch_raises_on_every_rank_naming_both_calls(what, world):
    """Rank ``odd`` calls differently from the others: every rank raises CallMismatchError at its
    next check, long before the timeout, naming rank odd's call and the others' in words; a new
    world then computes correct results."""
    same, other = MISMATCHES[what]
    odd = world - 1
    emu = world_of(world)
    try:
        kws = [dict(other if r == odd else same) for r in range(world)]
        xs = [torch.ones(kw.pop("n"), dtype=kw.pop("dtype", torch.bfloat16), device="cuda") for kw in kws]
        # both calls once on every rank (matching): calls #0 and #1; the mismatch is call #2
        warm(emu, lambda r, c: c.all_reduce(xs[0], **kws[0]), lambda r, c: c.all_reduce(xs[odd], **kws[odd]))
        t0 = time.perf_counter()
        emu.run(lambda r, c: c.all_reduce(xs[r], **kws[r]))
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        for r, c in enumerate(emu.ranks):
            with pytest.raises(CallMismatchError) as err:
                c.check()
            msg = str(err.value)
            assert f"rank {odd} called {words_of(other, 2)}" in msg, msg
            peer = err.value.peer
            assert f"rank {r if r != odd else peer} called {words_of(same, 2)}" in msg, msg
            assert (err.value.rank, r != odd or peer != odd) == (r, True)
            with pytest.raises(WeaveError, match="broken"):
                c.all_reduce(xs[r], **kws[r])  # refused before any launch
        assert elapsed < TIMEOUT / 4, f"the mismatch took {elapsed:.2f} s to surface (timeout {TIMEOUT} s)"
    finally:
        emu.close()
    emu = world_of(world)
    try:
        run_all_reduce_checked(emu, algorithm="twoshot", ctas=8)
    finally:
        emu.close()


def test_mismatched_ops_name_both():
    """all_reduce on rank 0, the fused op on rank 1 (same bytes, two-shot both)."""
    emu = world_of(2)
    try:
        x = torch.ones(4, 4096, dtype=torch.bfloat16, device="cuda")
        w = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
        res = [torch.zeros_like(x) for _ in range(2)]
        warm(emu, lambda r, c: c.all_reduce(x, algorithm="twoshot", ctas=4),
             lambda r, c: c.fused_allreduce_rmsnorm(x, res[r], w, algorithm="twoshot", ctas=4))
        emu.run(lambda r, c: c.all_reduce(x, algorithm="twoshot", ctas=4) if r == 0 else
                c.fused_allreduce_rmsnorm(x, res[r], w, algorithm="twoshot", ctas=4))
        torch.cuda.synchronize()
        for c in emu.ranks:
            with pytest.raises(CallMismatchError) as err:
                c.check()
            msg = str(err.value)
            assert "rank 0 called all_reduce(numel=16384, bfloat16, twoshot, ctas=4, channel 0, call #2)" in msg
            assert "rank 1 called fused_allreduce_rmsnorm(rows=4, hidden=4096, bfloat16, twoshot, ctas=4" in msg
    finally:
        emu.close()


def test_skipped_call_is_named():
    """Rank 1 skips a barrier that rank 0 makes: rank 0's barrier meets rank 1's next call (an
    all_reduce) and both ranks name the two calls, instead of pairing unrelated calls."""
    emu = world_of(2)
    try:
        x = torch.ones(4096, dtype=torch.float32, device="cuda")
        warm(emu, lambda r, c: c.barrier(), lambda r, c: c.all_reduce(x, algorithm="oneshot", ctas=2))
        emu.run(lambda r, c: c.barrier() if r == 0 else None)
        emu.run(lambda r, c: c.all_reduce(x, algorithm="oneshot", ctas=2))
        torch.cuda.synchronize()
        for c in emu.ranks:
            with pytest.raises((CallMismatchError, PeerTimeoutError)) as err:
                c.check()
        # rank 0's barrier met rank 1's all_reduce: a mismatch, not a timeout
        assert isinstance(err.value, CallMismatchError)
        assert "rank 0 called barrier(ctas=1, channel 0, call #2)" in str(err.value)
        assert "rank 1 called all_reduce(numel=4096, float32, oneshot, ctas=2, channel 0, call #2)" in str(err.value)
    finally:
        emu.close()


def test_signature_off_still_computes():
    """CommOptions(call_signature=False) (what signature_overhead.py times): the plain handshake."""
    emu = emulated_world(2, STAGING, options=CommOptions(timeout_s=TIMEOUT, call_signature=False))
    try:
        for alg in ("oneshot", "twoshot", "lamport"):
            run_all_reduce_checked(emu, algorithm=alg, ctas=4)
    finally:
        emu.close()


# ---- recovery ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world", (2, 4), ids=lambda w: f"w{w}")
def test_rebuild_after_a_missing_rank(world):
    """The last rank never calls: the others raise PeerTimeoutError naming it; the communicators
    refuse further ops; closing the world and building a new one on all ranks works and its
    calls (every op) are correct."""
    emu = world_of(world, timeout=0.3)
    x = torch.ones(4096, dtype=torch.float32, device="cuda")
    try:
        emu.run(lambda r, c: c.all_reduce(x, algorithm="twoshot", ctas=2) if r != world - 1 else None)
        torch.cuda.synchronize()
        for c in emu.ranks[:-1]:
            with pytest.raises(PeerTimeoutError) as err:
                c.check()
            assert err.value.peer == world - 1 and err.value.op == "all_reduce"
            with pytest.raises(WeaveError, match="broken"):
                c.barrier()
    finally:
        emu.close()
    emu = world_of(world)
    try:
        for alg in ("lamport", "oneshot", "twoshot"):
            run_all_reduce_checked(emu, algorithm=alg, ctas=4)
        xs = rank_inputs(5, world, (world * 64, 32), torch.float32)
        outs = emu.run(lambda r, c: c.reduce_scatter(xs[r], ctas=2))
        torch.cuda.synchronize()
        emu.check()
        for r in range(world):
            assert not check_close(outs[r], reference_reduce_scatter(xs, r), f"rank {r}")
        emu.run(lambda r, c: c.barrier(channel=1))
        torch.cuda.synchronize()
        emu.check()
    finally:
        emu.close()


# ---- interleaving ------------------------------------------------------------------------------
def _fused_inputs(world, tokens=8, hidden=1024, dtype=torch.bfloat16, seed=40):
    xs = rank_inputs(seed, world, (tokens, hidden), dtype)
    res0 = rank_input(seed + 1, 0, (tokens, hidden), dtype)
    weight = rank_input(seed + 2, 0, (hidden,), dtype)
    return xs, res0, weight


@pytest.mark.parametrize("world", (2, 4), ids=lambda w: f"w{w}")
def test_graph_replays_interleaved_with_eager_calls(world):
    """A captured step (two-shot all_reduce + Lamport all_reduce + fused) on channel 0, replayed
    between eager calls of the same and other ops on channel 0; every result checked."""
    emu = world_of(world)
    try:
        dt = torch.bfloat16
        xs = rank_inputs(1, world, (4096,), dt)
        ref = reference_all_reduce(xs)
        fx, res0, weight = _fused_inputs(world)
        ref_out, ref_s = reference_fused(fx, res0, weight, EPS)
        g_ar = [torch.empty_like(x) for x in xs]
        g_lp = [torch.empty_like(x[:512]) for x in xs]
        g_out = [torch.empty_like(f) for f in fx]
        g_res = [res0.clone() for _ in range(world)]

        def step(r, c):
            c.all_reduce(xs[r], out=g_ar[r], algorithm="twoshot", ctas=4)
            c.all_reduce(xs[r][:512], out=g_lp[r], algorithm="lamport", ctas=2)
            c.fused_allreduce_rmsnorm(fx[r], g_res[r], weight, EPS, algorithm="twoshot", ctas=4, out=g_out[r])

        warm(emu, lambda r, c: c.all_reduce(xs[r], out=g_ar[r], algorithm="twoshot", ctas=4),
             lambda r, c: c.all_reduce(xs[r][:512], out=g_lp[r], algorithm="lamport", ctas=2),
             lambda r, c: c.fused_allreduce_rmsnorm(fx[r], g_res[r], weight, EPS, algorithm="twoshot", ctas=4,
                                                    out=g_out[r]),
             lambda r, c: c.all_reduce(xs[r], algorithm="oneshot", ctas=3),
             lambda r, c: c.all_reduce(xs[r], algorithm="twoshot", ctas=3),
             lambda r, c: c.all_reduce(xs[r][:512], algorithm="lamport"),
             lambda r, c: c.reduce_scatter(xs[r], ctas=2), lambda r, c: c.barrier())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
            emu.run(step)
        ref_lp = reference_all_reduce([x[:512] for x in xs])
        problems = []
        for i in range(6):
            for r in range(world):
                for t in (g_ar[r], g_lp[r], g_out[r]):
                    poison(t)
                g_res[r].copy_(res0)
            g.replay()
            e_out = [poison(torch.empty_like(x)) for x in xs]
            alg = ("oneshot", "twoshot", "lamport")[i % 3]
            emu.run(lambda r, c: c.all_reduce(xs[r], out=e_out[r], algorithm=alg, ctas=3)
                    if alg != "lamport" else c.all_reduce(xs[r][:512], out=e_out[r][:512], algorithm=alg))
            if i % 2:
                e_rs = emu.run(lambda r, c: c.reduce_scatter(xs[r], ctas=2))
                emu.run(lambda r, c: c.barrier())
            torch.cuda.synchronize()
            emu.check()
            problems += check_close(g_ar[0], ref, f"replay {i} twoshot") + check_close(g_lp[0], ref_lp, f"replay {i} lamport")
            problems += check_close(g_out[0], ref_out, f"replay {i} fused out")
            problems += check_close(g_res[0], ref_s, f"replay {i} fused residual")
            if alg == "lamport":
                problems += check_close(e_out[0][:512], ref_lp, f"eager {i} lamport")
            else:
                problems += check_close(e_out[0], ref, f"eager {i} {alg}")
            if i % 2:
                problems += [p for r in range(world)
                             for p in check_close(e_rs[r], reference_reduce_scatter(xs, r), f"eager {i} rs {r}")]
            for name, ts in (("twoshot", g_ar), ("lamport", g_lp), ("fused", g_out), ("eager", e_out)):
                if not same_bits(ts):
                    problems.append(f"step {i}: {name} differs across ranks")
        assert not problems, problems
    finally:
        emu.close()


def test_two_channels_on_two_streams_at_once():
    """Each rank runs a two-shot all_reduce on channel 0 on its stream and a fused op on channel 1
    on a second stream at the same time (the overlap case), eight times; all results correct."""
    world = 2
    emu = world_of(world)
    try:
        seconds = [torch.cuda.Stream() for _ in range(world)]
        xs = rank_inputs(3, world, (64, 4096), torch.float32)
        ref = reference_all_reduce(xs)
        fx, res0, weight = _fused_inputs(world, tokens=16, hidden=2048)
        ref_out, ref_s = reference_fused(fx, res0, weight, EPS)
        warm(emu, lambda r, c: c.all_reduce(xs[r], algorithm="twoshot", ctas=6),
             *[lambda r, c, a=a: c.fused_allreduce_rmsnorm(fx[r], res0.clone(), weight, EPS, algorithm=a, ctas=4,
                                                           channel=1) for a in ("twoshot", "oneshot")])
        problems = []
        for i in range(8):
            outs = [poison(torch.empty_like(x)) for x in xs]
            f_out = [poison(torch.empty_like(f)) for f in fx]
            f_res = [res0.clone() for _ in range(world)]

            def both(r, c):
                s2 = seconds[r]
                s2.wait_stream(torch.cuda.current_stream())
                c.all_reduce(xs[r], out=outs[r], algorithm="twoshot", ctas=6, channel=0)
                with torch.cuda.stream(s2):
                    c.fused_allreduce_rmsnorm(fx[r], f_res[r], weight, EPS, algorithm=("twoshot", "oneshot")[i % 2],
                                              ctas=4, out=f_out[r], channel=1)
                torch.cuda.current_stream().wait_stream(s2)

            emu.run(both)
            torch.cuda.synchronize()
            emu.check()
            problems += check_close(outs[0], ref, f"step {i} all_reduce") + check_close(f_out[0], ref_out, f"step {i} fused")
            problems += check_close(f_res[0], ref_s, f"step {i} residual")
            problems += [] if same_bits(outs) and same_bits(f_out) else [f"step {i}: differs across ranks"]
        assert not problems, problems
    finally:
        emu.close()


@pytest.mark.parametrize("world", (2, 8), ids=lambda w: f"w{w}")
def test_lamport_interleaved_with_twoshot(world):
    """Lamport all_reduce and fused calls (which rotate the three Lamport buffers) between
    two-shot calls on one channel, fifteen rounds: every result correct, and the call counters
    agree (a later mismatch would say otherwise)."""
    emu = world_of(world)
    try:
        xs = rank_inputs(8, world, (3000,), torch.float16)
        ref = reference_all_reduce(xs)
        fx, res0, weight = _fused_inputs(world, tokens=4, hidden=1024, dtype=torch.float16)
        ref_out, ref_s = reference_fused(fx, res0, weight, EPS)
        warm(emu, lambda r, c: c.all_reduce(xs[r], algorithm="lamport"),
             lambda r, c: c.all_reduce(xs[r], algorithm="lamport", ctas=2),
             lambda r, c: c.all_reduce(xs[r], algorithm="twoshot", ctas=2),
             lambda r, c: c.fused_allreduce_rmsnorm(fx[r], res0.clone(), weight, EPS, algorithm="lamport"))
        problems = []
        for i in range(15):
            lp = [poison(torch.empty_like(x)) for x in xs]
            ts = [poison(torch.empty_like(x)) for x in xs]
            f_out = [poison(torch.empty_like(f)) for f in fx]
            f_res = [res0.clone() for _ in range(world)]

            def mixed(r, c):
                c.all_reduce(xs[r], out=lp[r], algorithm="lamport")
                if i % 3 == 0:
                    c.all_reduce(xs[r], out=lp[r], algorithm="lamport", ctas=2)  # back to back
                c.all_reduce(xs[r], out=ts[r], algorithm="twoshot", ctas=2)
                c.fused_allreduce_rmsnorm(fx[r], f_res[r], weight, EPS, algorithm="lamport", out=f_out[r])

            emu.run(mixed)
            torch.cuda.synchronize()
            emu.check()
            problems += check_close(lp[0], ref, f"round {i} lamport") + check_close(ts[0], ref, f"round {i} twoshot")
            problems += check_close(f_out[0], ref_out, f"round {i} fused lamport")
            problems += [] if same_bits(lp) and same_bits(ts) and same_bits(f_out) else [f"round {i}: rank bits differ"]
        assert not problems, problems
    finally:
        emu.close()
