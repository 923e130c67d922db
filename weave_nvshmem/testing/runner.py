"""Fuzz calls on an emulated world (all ranks on one GPU): inputs (copied, or symmetric: zero
copy), poisoned outputs, eager and CUDA-graph execution, and the checks against the references
(compressed calls: the model's bits and its bound, ``quantized.py``) and across ranks.

Needs a CUDA device (and ``CUDA_DEVICE_MAX_CONNECTIONS=32`` set before CUDA starts, see
``collectives/emulated.py``); the generator it runs (``fuzz.py``) does not.
"""
from __future__ import annotations

import torch

from ..collectives.channel import workspace_bytes
from ..collectives.communicator import CommOptions
from ..collectives.emulated import EmulatedWorld
from . import quantized
from .fuzz import CHANNELS, MAX_BYTES, FuzzCall
from .numerics import (DTYPES, check_close, fused_problems, poison, rank_input, rank_inputs, reference_all_gather,
                       reference_all_reduce, reference_fused, reference_reduce_scatter, same_bits, sharded_residual)

#: replays of a captured call, each checked (the second shows a replay leaves nothing behind)
REPLAYS = 2
#: where the calls' tensors live (the CPU suite runs the host logic on a stand-in world on "cpu")
DEVICE = "cuda"


def emulated_world(world: int, staging: int, *, options=None, extra_bytes: int = 0) -> EmulatedWorld:
    """An EmulatedWorld whose every channel holds ``staging`` bytes of input, reserved here, so
    ops and graph captures up to that size never need to grow it.

    Parameters
    ----------
    world : int
        Virtual ranks, 1..8.
    staging : int
        Bytes of the largest op input (all_gather: output) any call will pass.
    options : CommOptions, dict or None
        Every rank's options (``channels`` of them are sized).
    extra_bytes : int
        Arena left for symmetric tensors (``world.empty``).

    Returns
    -------
    EmulatedWorld
        Its arenas hold every channel at its initial and at its reserved size (``reserve``
        replaces a channel while the other ranks still hold the old one) plus ``extra_bytes``.
    """
    opts = CommOptions.of(options)
    arena = (workspace_bytes(world, opts.initial_bytes, opts.channels) + workspace_bytes(world, staging, opts.channels)
             + extra_bytes)
    emu = EmulatedWorld(world, arena_bytes=arena, options=opts)
    emu.reserve(staging)
    return emu


class Fuzzer:
    """Runs ``FuzzCall``s of one world size on an emulated world sized for them (``MAX_BYTES`` of
    staging on each of ``CHANNELS`` channels, and ``MAX_BYTES`` of symmetric inputs), and builds
    a fresh world after a call that raised (a timed-out wait leaves the ranks' communicators
    broken). Close it when done.

    Parameters
    ----------
    world : int
        Ranks, 2..8 (the calls' ``world``).
    timeout_s : float
        ``CommOptions.timeout_s``: how long a rank waits for a peer before the call fails.
    """

    def __init__(self, world: int, *, timeout_s: float = 10.0):
        self.world, self.timeout_s = world, timeout_s
        self.emu = None
        self._build()

    def _build(self) -> None:
        self.emu = emulated_world(self.world, MAX_BYTES, extra_bytes=MAX_BYTES,
                                  options=CommOptions(timeout_s=self.timeout_s, channels=CHANNELS))
        self.side = torch.cuda.Stream()  # capture stream

    def run(self, call: FuzzCall) -> list[str]:
        """What went wrong in ``call`` (``[]``: it passed); an exception is one problem."""
        if call.world != self.world:
            raise ValueError(f"Fuzzer.run: call of world {call.world} on a world of {self.world}")
        try:
            return _run(self.emu, self.side, call)
        except Exception as exc:  # noqa: BLE001 - a valid call that raises is a failure to report
            try:
                self.close()
            except Exception:  # noqa: BLE001 - the world is dropped either way
                self.emu = None
            self._build()
            return [f"{type(exc).__name__}: {exc}"]

    def close(self) -> None:
        """Free the world (synchronises the device). Idempotent."""
        if self.emu is not None:
            emu, self.emu = self.emu, None
            emu.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _run(emu: EmulatedWorld, side, call: FuzzCall) -> list[str]:
    """Set up ``call``'s tensors and checks, then run it eagerly (and captured)."""
    if call.op == "barrier":
        return _execute(emu, side, call, lambda r, c: c.barrier(channel=call.channel), lambda got: None,
                        lambda got: [])
    xs = rank_inputs(call.data_seed, emu.world, call.shape, DTYPES[call.dtype], scale=call.scale, device=DEVICE)
    if not call.zero_copy:
        return _collective(emu, side, call, xs, xs)
    sym = emu.empty(call.shape, xs[0].dtype)  # the same arena offset on every rank: peers read it in place
    for s, x in zip(sym, xs):
        s.copy_(x)
    try:
        return _collective(emu, side, call, xs, sym)
    finally:
        emu.free(sym)


def _collective(emu, side, call: FuzzCall, xs, ins) -> list[str]:
    """``call`` on inputs ``ins`` (``xs`` or their symmetric copy), checked against ``xs``' references."""
    w, dt, q = emu.world, xs[0].dtype, call.compression
    opts = dict(algorithm=call.algorithm, ctas=call.ctas, channel=call.channel, compression=q)
    if call.op == "fused_allreduce_rmsnorm":
        return _fused(emu, side, call, xs, ins, opts)
    exp = None if q is None else quantized.expected(call.op, xs, q)
    if call.op == "all_reduce":
        outs = [torch.empty(call.shape, dtype=dt, device=DEVICE) for _ in range(w)]
        ref = reference_all_reduce(xs) if q is None else None

        def launch(r, c):
            return c.all_reduce(ins[r], out=outs[r], **opts)

        def check(got):
            problems = (check_close(outs[0], ref, "rank 0 out") if q is None else
                        quantized.problems(outs[0], exp.model, exp.exact, exp.bound, "rank 0 out"))
            return problems + ([] if same_bits(outs) else ["out differs across ranks"])
    elif call.op == "reduce_scatter":
        n = call.shape[0] // w
        outs = [torch.empty((n,) + call.shape[1:], dtype=dt, device=DEVICE) for _ in range(w)]
        refs = [reference_reduce_scatter(xs, r) for r in range(w)] if q is None else None

        def launch(r, c):
            return c.reduce_scatter(ins[r], out=outs[r], **opts)

        def check(got):
            if q is None:
                return [p for r in range(w) for p in check_close(outs[r], refs[r], f"rank {r} out")]
            return quantized.problems(torch.cat(outs), exp.model, exp.exact, exp.bound, "the ranks' outs in rank order")
    else:
        outs = [torch.empty((w * call.shape[0],) + call.shape[1:], dtype=dt, device=DEVICE) for _ in range(w)]
        ref = reference_all_gather(xs) if q is None else None

        def launch(r, c):
            return c.all_gather(ins[r], out=outs[r], **opts)

        def check(got):
            if q is None:
                return [f"rank {r} out differs from the ranks' inputs in rank order" for r in range(w)
                        if not same_bits([outs[r], ref])]
            return (quantized.problems(outs[0], exp.model, exp.exact, exp.bound, "rank 0 out")
                    + ([] if same_bits(outs) else ["out differs across ranks"]))

    def reset(got):
        for o in outs:
            poison(o)

    return _execute(emu, side, call, launch, reset, check)


def _fused(emu, side, call: FuzzCall, xs, ins, opts) -> list[str]:
    w, dt, q = emu.world, xs[0].dtype, call.compression
    hidden = call.shape[1]
    sharded = call.residual_mode == "sharded"
    res0 = rank_input(call.data_seed + 7, 0, call.shape, dt, device=DEVICE) if call.residual else None
    if q is None:
        weight = rank_input(call.data_seed + 9, 0, (hidden,), dt, device=DEVICE)
    else:  # 1 + N(0, 0.1^2): the bound on out grows with max|w| / min|w| (quantize.fused_bound)
        weight = (1 + rank_input(call.data_seed + 9, 0, (hidden,), torch.float32, scale=0.1, device=DEVICE)).to(dt)
    start = [None if res0 is None else sharded_residual(res0, r, w) if sharded else res0 for r in range(w)]
    res = [None if s is None else s.clone() for s in start]
    outs = [torch.empty(call.shape, dtype=dt, device=DEVICE) for _ in range(w)]
    if q is None:
        ref_out, ref_s = reference_fused(xs, res0, weight, call.eps)
    else:
        exp = quantized.expected_fused(xs, res0, weight, call.eps, q, call.residual_mode)

    def launch(r, c):
        return c.fused_allreduce_rmsnorm(ins[r], res[r], weight, call.eps, residual_mode=call.residual_mode,
                                         out=outs[r], **opts)

    def reset(got):
        for r in range(w):
            poison(outs[r])
            if res[r] is not None:
                res[r].copy_(start[r])
            elif got is not None:
                poison(got[r][1])  # the residual the call made (in the graph's pool)

    def check(got):
        if q is None:
            problems = [f"rank {r} {p}" for r, (o, s) in enumerate(got)
                        for p in fused_problems(o, s, ref_out, ref_s, rank=r, world=w, mode=call.residual_mode,
                                                sentinel_rows=call.residual)]
        else:
            problems = quantized.fused_problems(got, exp, world=w, mode=call.residual_mode,
                                                sentinel_rows=call.residual)
        if not same_bits([o for o, _ in got]):
            problems.append("out differs across ranks")
        if not sharded and not same_bits([s for _, s in got]):
            problems.append("residual differs across ranks")
        return problems

    return _execute(emu, side, call, launch, reset, check)


def _execute(emu, side, call: FuzzCall, launch, reset, check) -> list[str]:
    """Eager: reset, run, check. Graph (``call.graph``, after a clean eager run, which also loads
    the kernels outside the capture): capture once, then ``REPLAYS`` x (reset, replay, check)."""
    reset(None)
    got = emu.run(launch)
    torch.cuda.synchronize()
    emu.check()
    problems = [f"eager: {p}" for p in check(got)]
    if problems or not call.graph:
        return problems
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(graph, stream=side):
        got = emu.run(launch)
    for i in range(REPLAYS):
        reset(got)
        graph.replay()
        torch.cuda.synchronize()
        emu.check()
        problems = [f"graph replay {i}: {p}" for p in check(got)]
        if problems:
            break
    del graph
    return problems
