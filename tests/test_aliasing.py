"""Aliasing of an op's tensors without a GPU: overlaps that would give wrong results are refused in
the validate step (ValueError naming the op and both arguments, nothing launched or grown, the
communicator still usable); the allowed forms (all_reduce in place, distinct tensors, adjacent
slices of one buffer, x and weight sharing bytes in the fused op) still launch.

Runs on the recording fabric of test_launch_abi (CPU tensors: only addresses and shapes matter).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_launch_abi import make_comm  # noqa: E402,F401  (the recording-communicator fixture)

BF16 = torch.bfloat16
T, H = 6, 64  # a row is 128 bytes: row slices of one buffer stay 16-byte aligned


def refused(comm, rec, op, names, call, fix="pass a separate"):
    """``call()`` raises ValueError naming ``op`` and both ``names``, and launches nothing."""
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    a, b = names
    assert msg.startswith(f"{op}: {a} and {b} overlap ({a} [0x"), msg
    assert f"{b} [0x" in msg and fix in msg, msg
    assert rec.launches == []


def launches(rec, call):
    """``call()`` launches exactly one kernel."""
    call()
    assert len(rec.launches) == 1
    rec.launches.clear()


# ---- all_reduce ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world, algorithm", [(1, "auto"), (2, "oneshot"), (2, "twoshot"), (2, "lamport"),
                                              (2, "auto"), (4, "twoshot")])
def test_all_reduce_in_place_is_allowed_a_partial_overlap_is_not(make_comm, world, algorithm):
    comm, rec = make_comm(world)
    n = 4096
    buf = torch.zeros(3 * n, dtype=BF16)
    x = buf[n:2 * n]
    for out in (buf[n + 8:2 * n + 8], buf[n - 8:2 * n - 8]):  # starts 16 bytes into x / ends 16 bytes into x
        refused(comm, rec, "all_reduce", ("out", "x"),
                lambda o=out: comm.all_reduce(x, out=o, algorithm=algorithm), "pass out=x (in place)")
        with pytest.raises(ValueError, match="all_reduce: out and x overlap"):
            comm.plan("all_reduce", x, out=out, algorithm=algorithm)  # plan() validates alike
    kernels = int(world > 1)  # world 1: a device copy (none in place), no kernel
    for out in (x, buf[:n], buf[2 * n:]):  # in place, and the slices either side of x
        assert comm.all_reduce(x, out=out, algorithm=algorithm) is out
        assert len(rec.launches) == kernels
        rec.launches.clear()


def test_refused_call_grows_nothing_and_the_communicator_stays_usable(make_comm, monkeypatch):
    comm, rec = make_comm(2)
    comm._channels[0].cap = 16  # any launch must grow the staging first
    grown = []
    monkeypatch.setattr(comm, "reserve", lambda nbytes, channel=None: grown.append(nbytes))
    buf = torch.zeros(2 * 4096, dtype=BF16)
    refused(comm, rec, "all_reduce", ("out", "x"), lambda: comm.all_reduce(buf[:4096], out=buf[8:4104]),
            "pass out=x (in place)")
    assert grown == []
    launches(rec, lambda: comm.all_reduce(buf[:4096], out=buf[:4096]))
    assert grown  # the valid call did grow


# ---- reduce_scatter / all_gather ----------------------------------------------------------------
def test_reduce_scatter_out_must_not_overlap_x(make_comm):
    comm, rec = make_comm(2)
    buf = torch.zeros(3 * T, H, dtype=BF16)
    x = buf[:2 * T]
    for out in (x[:T], x[T:], buf[T // 2:T // 2 + T]):  # either chunk of x in place, or a straddle
        refused(comm, rec, "reduce_scatter", ("out", "x"), lambda o=out: comm.reduce_scatter(x, out=o))
    launches(rec, lambda: comm.reduce_scatter(x, out=buf[2 * T:]))
    launches(rec, lambda: comm.reduce_scatter(x))


def test_all_gather_out_must_not_overlap_x(make_comm):
    comm, rec = make_comm(2)
    buf = torch.zeros(3 * T, H, dtype=BF16)
    out = buf[:2 * T]
    for x in (out[:T], out[T:], buf[T // 2:T // 2 + T]):  # x as this or the other rank's chunk of out
        refused(comm, rec, "all_gather", ("out", "x"), lambda x=x: comm.all_gather(x, out=out))
    launches(rec, lambda: comm.all_gather(buf[2 * T:], out=out))
    launches(rec, lambda: comm.all_gather(buf[2 * T:]))


@pytest.mark.parametrize("op", ["reduce_scatter", "all_gather"])
def test_world_one_scatter_gather_in_place_is_allowed(make_comm, op):
    """At world 1 the op is a device copy, none when out is x; a partial overlap is still refused."""
    comm, rec = make_comm(1)
    buf = torch.zeros(T + 1, H, dtype=BF16)
    x = buf[:T]
    assert getattr(comm, op)(x, out=x) is x
    refused(comm, rec, op, ("out", "x"), lambda: getattr(comm, op)(x, out=buf[1:]))


# ---- fused_allreduce_rmsnorm ----------------------------------------------------------------------
FUSED = [(w, a, m) for w, a in [(1, "local"), (2, "oneshot"), (2, "twoshot"), (2, "lamport"), (2, "auto"),
                                 (4, "twoshot")]
         for m in ("replicated", "sharded") if m == "replicated" or a not in ("oneshot", "lamport")]


@pytest.mark.parametrize("world, algorithm, mode", FUSED)
def test_fused_refuses_every_overlap_with_a_written_tensor(make_comm, world, algorithm, mode):
    comm, rec = make_comm(world)
    op = "fused_allreduce_rmsnorm"
    buf = torch.zeros(4 * T, H, dtype=BF16)
    x, res, out = buf[:T], buf[T:2 * T], buf[2 * T:3 * T]
    w = torch.ones(H, dtype=BF16)

    def fused(x=x, res=res, w=w, out=out):
        return comm.fused_allreduce_rmsnorm(x, res, w, 1e-6, residual_mode=mode, algorithm=algorithm, out=out)

    cases = [
        (("out", "residual"), dict(out=res)),
        (("out", "residual"), dict(out=buf[T + 1:2 * T + 1])),  # one row off
        (("out", "x"), dict(out=x)),
        (("out", "x"), dict(out=buf[T - 1:2 * T - 1], res=buf[3 * T:])),
        (("out", "weight"), dict(w=out[2])),
        (("residual", "x"), dict(res=x)),
        (("residual", "x"), dict(res=buf[1:T + 1])),
        (("residual", "weight"), dict(w=res[-1])),
    ]
    for names, kw in cases:
        refused(comm, rec, op, names, lambda kw=kw: fused(**kw))
        launches(rec, fused)  # still usable: adjacent slices of one buffer launch
    launches(rec, lambda: fused(w=x[0]))  # x and weight are both only read
    launches(rec, lambda: fused(res=None))  # a new residual
    launches(rec, lambda: fused(out=None))  # a new out


def test_fused_messages_name_both_ranges(make_comm):
    comm, rec = make_comm(2)
    x, res = torch.zeros(T, H, dtype=BF16), torch.zeros(T, H, dtype=BF16)
    with pytest.raises(ValueError) as info:
        comm.fused_allreduce_rmsnorm(x, res, torch.ones(H, dtype=BF16), out=res)
    n = T * H * 2
    assert str(info.value) == (f"fused_allreduce_rmsnorm: out and residual overlap (out [{res.data_ptr():#x}, "
                               f"+{n} bytes), residual [{res.data_ptr():#x}, +{n} bytes)); pass a separate out")


def test_empty_tensors_never_overlap(make_comm):
    comm, rec = make_comm(2)
    x, res = torch.zeros(0, H, dtype=BF16), torch.zeros(0, H, dtype=BF16)
    out, _ = comm.fused_allreduce_rmsnorm(x, res, torch.ones(H, dtype=BF16), out=res)
    assert out is res and rec.launches == []
    y = torch.zeros(0, dtype=BF16)
    assert comm.all_reduce(y, out=y) is y and rec.launches == []
