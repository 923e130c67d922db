"""The overlap layer's host side on the CPU: the weave scheduler's order and results with a fake
communicator, the Work handle of synchronous results, the async keywords of the Communicator ops
(on test_launch_abi's recording fabric), and all_gather_matmul / matmul_reduce_scatter with W
threaded CPU ranks against a float64 reference."""
from __future__ import annotations

import inspect
import threading

import pytest

torch = pytest.importorskip("torch")

from test_launch_abi import make_comm  # noqa: E402,F401  (the recording-communicator fixture)
from weave_nvshmem.collectives.communicator import Communicator  # noqa: E402
from weave_nvshmem.collectives.work import Work, completed  # noqa: E402
from weave_nvshmem.overlap import (Candidate, SplitTuner, Step, all_gather_matmul, chunks,  # noqa: E402
                                   matmul_reduce_scatter, row_chunks, variants, weave)


# ---- chunks and the scheduler ----------------------------------------------------------------
def test_chunks_cut_at_the_splits_and_refuse_bad_ones():
    assert chunks(10, []) == [(0, 10)]
    assert chunks(10, [3, 7]) == [(0, 3), (3, 7), (7, 10)]
    for bad in ([0], [10], [5, 5], [7, 3], [-1]):
        with pytest.raises(ValueError, match="chunks: splits must increase"):
            chunks(10, bad)


class Log:
    """A fake collective: records the order of issue and returns Works (async) or values (sync)."""

    def __init__(self, async_op):
        self.events, self.async_op = [], async_op

    def compute(self, name, scale):
        def run(value, chunk):
            self.events.append(f"{name}({chunk.index})")
            return value * scale + chunk.start
        return run

    def coll(self, name):
        def run(y, chunk):
            self.events.append(f"{name}({chunk.index})")
            return completed(y + 1) if self.async_op else y + 1
        return run


@pytest.mark.parametrize("async_op", [False, True])
@pytest.mark.parametrize("splits", [[], [3], [1, 6], [2, 4, 5]])
def test_weave_issues_step_major_and_equals_the_unsplit_chain(async_op, splits):
    x = torch.arange(7.0)[:, None].repeat(1, 3)
    log = Log(async_op)
    steps = [Step(log.compute("attn", 2.0), log.coll("ar1")), (log.compute("mlp", 0.5), log.coll("ar2")),
             Step(log.compute("tail", 1.0))]
    parts = weave(steps, x, splits)
    n = len(splits) + 1
    assert len(parts) == n
    # step-major: every chunk's step k (compute, then its collective) before any chunk's step k + 1
    expect = [f"{name}({c})" for pair in (("attn", "ar1"), ("mlp", "ar2")) for c in range(n) for name in pair]
    assert log.events == expect + [f"tail({c})" for c in range(n)]
    # chunk-local rows: the value depends on rows and the chunk start, as computed row by row
    spans = chunks(7, splits)
    for (a, b), p in zip(spans, parts):
        rows = x[a:b]
        ref = ((rows * 2 + a + 1) * 0.5 + a + 1) * 1.0 + a
        assert torch.equal(p, ref)


def test_weave_state_and_shared():
    x = torch.ones(6, 2)
    seen = []

    def first(value, chunk):
        chunk.shared.setdefault("starts", []).append(chunk.start)
        seen.append(list(chunk.shared["starts"]))
        chunk.state["r"] = chunk.state["r"] + value
        return value

    parts = weave([Step(first)], x, [2, 4], state=lambda a, b: {"r": torch.full((b - a, 2), float(a))})
    assert seen == [[0], [0, 2], [0, 2, 4]]  # later chunks see the earlier ones (attention's keys)
    assert [p.shape[0] for p in parts] == [2, 2, 2]


def test_weave_rejects_bad_splits_before_any_compute():
    called = []
    with pytest.raises(ValueError, match="chunks"):
        weave([Step(lambda v, c: called.append(1))], torch.ones(4, 1), [4])
    assert called == []


# ---- the Work handle and the async keywords --------------------------------------------------
def test_completed_work_is_its_outputs():
    t = torch.ones(3)
    w = completed(t, "all_reduce")
    assert w.wait() is t and w.synchronize() is t and w.is_completed() and w.outputs is t
    assert repr(w) == "Work(all_reduce, done)"


def test_wait_orders_the_given_stream_on_the_event():
    class FakeStream:
        cuda_stream = 0x42

        def __init__(self):
            self.waited = []

        def wait_event(self, ev):
            self.waited.append(ev)

    class FakeEvent:
        def __init__(self):
            self.done = False

        def query(self):
            return self.done

        def synchronize(self):
            self.done = True

    ev, s, t = FakeEvent(), FakeStream(), torch.ones(2)
    w = Work("all_gather", t, ev, stream=None)
    assert repr(w) == "Work(all_gather, pending)" and not w.is_completed()
    assert w.wait(s) is t and w.wait(s) is t and s.waited == [ev, ev]  # device-side waits only
    assert w.synchronize() is t and w.is_completed()


@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather", "fused_allreduce_rmsnorm"])
def test_every_op_takes_async_op_and_after(op):
    params = inspect.signature(getattr(Communicator, op)).parameters
    assert params["async_op"].default is False and params["after"].default is None
    assert params["async_op"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "async_op" in getattr(Communicator, op).__doc__


def test_async_op_on_cpu_tensors_runs_in_order_and_returns_a_work(make_comm):
    comm, rec = make_comm(2)
    x = torch.ones(64, dtype=torch.bfloat16)
    work = comm.all_reduce(x, async_op=True)
    assert isinstance(work, Work) and work.event is None and len(rec.launches) == 1
    assert work.wait().shape == x.shape
    res, wt = torch.zeros(4, 64, dtype=torch.bfloat16), torch.ones(64, dtype=torch.bfloat16)
    out, r = comm.fused_allreduce_rmsnorm(torch.ones(4, 64, dtype=torch.bfloat16), res, wt, async_op=True,
                                          after=work).wait()
    assert r is res and out.shape == (4, 64) and len(rec.launches) == 2


def test_async_keywords_are_checked_before_any_launch(make_comm):
    comm, rec = make_comm(2)
    x = torch.ones(64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="all_reduce: after= orders an async op"):
        comm.all_reduce(x, after=completed(x))
    with pytest.raises(TypeError, match="all_gather: async_op must be a bool"):
        comm.all_gather(x, async_op=1)
    with pytest.raises(ValueError, match="reduce_scatter: channel must be an int in 0..0"):
        comm.reduce_scatter(x, channel=3, async_op=True)
    with pytest.raises(TypeError, match="all_reduce: after must be a Work or None"):
        comm.all_reduce(x, async_op=True, after=object())
    assert rec.launches == []


# ---- chunked GEMM overlap with W threaded CPU ranks -----------------------------------------
class ThreadWorld:
    """W ranks in W threads: all_gather / reduce_scatter by a barrier and a shared slot list,
    computed in float64 and rounded once (as the kernels' references round)."""

    def __init__(self, world):
        self.world, self.slots, self.bar = world, [None] * world, threading.Barrier(world)

    def comm(self, rank):
        world = self

        class Comm:
            def __init__(self):
                self.rank, self.world = rank, world.world

            def _exchange(self, x):
                world.slots[rank] = x
                world.bar.wait()
                got = list(world.slots)
                world.bar.wait()
                return got

            def all_gather(self, x, *, ctas=None, channel=0, async_op=False, out=None):
                got = torch.cat(self._exchange(x.clone()))
                return completed(got) if async_op else got

            def reduce_scatter(self, x, *, out=None, ctas=None, channel=0, async_op=False):
                parts = self._exchange(x.clone())
                n = x.shape[0] // self.world
                s = sum(p.double() for p in parts)[rank * n:(rank + 1) * n].to(x.dtype)
                out = s if out is None else out.copy_(s)
                return completed(out) if async_op else out

        return Comm()

    def run(self, fn):
        results, errors = [None] * self.world, []

        def go(r):
            try:
                results[r] = fn(r, self.comm(r))
            except Exception as exc:  # noqa: BLE001 (re-raised below)
                errors.append(exc)
                self.bar.abort()

        threads = [threading.Thread(target=go, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("chunks_", [1, 2, 3, 5])
def test_all_gather_matmul_matches_float64(world, chunks_):
    m, k, n = 7, 16, 9
    g = torch.Generator().manual_seed(world * 10 + chunks_)
    shards = [torch.randn(m, k, generator=g) for _ in range(world)]
    b = torch.randn(k, n, generator=g)
    outs = ThreadWorld(world).run(lambda r, c: all_gather_matmul(c, shards[r], b, chunks=chunks_))
    ref = torch.cat(shards).double() @ b.double()
    for o in outs:
        assert o.shape == (world * m, n)
        torch.testing.assert_close(o.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("chunks_", [1, 2, 3])
def test_matmul_reduce_scatter_matches_float64(world, chunks_):
    m, k, n = 5, 12, 8
    g = torch.Generator().manual_seed(world * 7 + chunks_)
    a = [torch.randn(world * m, k, generator=g) for _ in range(world)]
    b = [torch.randn(k, n, generator=g) for _ in range(world)]
    outs = ThreadWorld(world).run(lambda r, c: matmul_reduce_scatter(c, a[r], b[r], chunks=chunks_))
    full = sum(x.double() @ y.double() for x, y in zip(a, b))
    for r, o in enumerate(outs):
        torch.testing.assert_close(o.double(), full[r * m:(r + 1) * m], rtol=1e-5, atol=1e-5)


def test_gemm_overlap_refuses_bad_shapes():
    c = ThreadWorld(1).comm(0)
    with pytest.raises(ValueError, match="all_gather_matmul: a's columns"):
        all_gather_matmul(c, torch.ones(2, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="matmul_reduce_scatter: a's rows"):
        matmul_reduce_scatter(ThreadWorld(2).comm(0), torch.ones(3, 4), torch.ones(4, 2))
    with pytest.raises(ValueError, match="row_chunks: chunks"):
        row_chunks(4, 0)
    assert row_chunks(5, 3) == [(0, 1), (1, 3), (3, 5)] and row_chunks(2, 5) == [(0, 1), (1, 2)]


# ---- tuner axes --------------------------------------------------------------------------------
def test_variants_cross_budget_and_algorithm_and_the_cache_keeps_them(tmp_path):
    base = [Candidate("fused"), Candidate("plain"), Candidate("weave", 512)]
    got = variants(base, ctas=(8, 16), algorithms=("twoshot",))
    assert Candidate("plain") in got and Candidate("weave", 512, 16, "twoshot") in got
    assert len(got) == len(set(got)) == 3 + 2 + 2
    with pytest.raises(ValueError, match="Candidate: ctas"):
        Candidate("weave", 5, 0)
    tuner = SplitTuner("H200", path=tmp_path / "s.json")
    best = Candidate("weave", 512, 8, "twoshot")
    assert tuner.choose("k", got, lambda c: 1.0 if c == best else 9.0) == best
    again = SplitTuner("H200", path=tmp_path / "s.json")
    assert again.cached("k") == best
    assert "weave:512:ctas=8:twoshot" in again._cache["k"]["measured_us"]
