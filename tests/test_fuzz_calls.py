"""The fuzzer's host side on the CPU: calls are a pure function of (seed, world, index), cover every
op, dtype, algorithm, compression spec and zero copy, are valid (the ops' argument checks and the
planner accept them, shapes obey each op's rules, staging fits what the fuzz world reserves, grids
are resident), a reproducer line round-trips, and the runner's bookkeeping passes correct results
and names wrong ones (on a stand-in world)."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from types import SimpleNamespace

import torch

from weave_nvshmem import testing
from weave_nvshmem.collectives import calls as validate, compression, plan, quantize
from weave_nvshmem.collectives.compression import CompressionSpec
from weave_nvshmem.collectives.plan import owned_rows
from weave_nvshmem.ptx.catalog import LAMPORT_SLOT
from weave_nvshmem.testing import fuzz, runner

ROOT = Path(__file__).resolve().parents[1]
WORLDS = (2, 4, 8)
CALLS = 3000


@pytest.fixture(scope="module")
def calls():
    return {w: [fuzz.fuzz_call(11, w, k) for k in range(CALLS)] for w in WORLDS}


def test_calls_are_a_pure_function_of_seed_world_and_index():
    first = [next(k for k in range(100) if kind(fuzz.fuzz_call(5, 4, k)))
             for kind in (lambda c: c.compression, lambda c: c.zero_copy)]
    ks = (0, 1, 2, 999, 12345, *first)
    a = [fuzz.fuzz_call(5, 4, k) for k in ks]
    assert a == [fuzz.fuzz_call(5, 4, k) for k in ks]
    assert a[3] == fuzz.fuzz_call(5, 4, 999)  # alone, without the calls before it
    assert a[5].compression is not None and a[6].zero_copy
    assert fuzz.fuzz_call(5, 4, 0) != fuzz.fuzz_call(6, 4, 0) or fuzz.fuzz_call(5, 4, 1) != fuzz.fuzz_call(6, 4, 1)
    # ... and of nothing else: another process with another hash seed draws the same calls
    code = f"from weave_nvshmem.testing import fuzz; print([fuzz.fuzz_call(5, 4, k) for k in {ks}])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == repr(a)


def test_world_outside_2_to_8_is_refused():
    for w in (0, 1, 9):
        with pytest.raises(ValueError, match="world"):
            fuzz.fuzz_call(0, w, 0)


@pytest.mark.parametrize("world", WORLDS)
def test_calls_cover_every_op_dtype_algorithm_and_mode(calls, world):
    seen = fuzz.coverage(calls[world])
    want = {f"op={op}" for op in fuzz.OPS} | {"graph", "eager", "ctas=int", "0 elements", "1 element"}
    want |= {f"channel={c}" for c in range(fuzz.CHANNELS)}
    want |= {f"{op} dtype={dt}" for op in fuzz.OPS if op != "barrier" for dt in fuzz.DTYPES}
    want |= {f"{op} algorithm={a}" for op in fuzz.COMPRESSED_OPS for a in fuzz.algorithms(op, world)}
    # compression: every format:block on every op, both gathers where the op takes them, every dtype
    want |= {f"{op} compression={f}:{b}" for op in fuzz.COMPRESSED_OPS for f, blocks in compression.BLOCKS.items()
             for b in blocks}
    want |= {f"{op} compression gather={g}" for op in fuzz.COMPRESSED_OPS
             for g in (("compressed",) if op == "all_gather" else compression.GATHERS)}
    want |= {f"{op} compression dtype={dt}" for op in fuzz.COMPRESSED_OPS for dt in fuzz.DTYPES}
    want |= {f"fused_allreduce_rmsnorm compression residual_mode={m}" for m in fuzz.RESIDUAL_MODES}
    want |= {f"{op} compression algorithm={a}" for op in fuzz.COMPRESSED_OPS for a in compression.algorithms(op)}
    # zero copy: every op, and on every algorithm (twoshot and pull read the input in place)
    want |= {f"{op} zero_copy" for op in fuzz.COMPRESSED_OPS}
    want |= {f"{op} zero_copy algorithm={a}" for op in fuzz.COMPRESSED_OPS for a in fuzz.algorithms(op, world)}
    want |= {f"fused_allreduce_rmsnorm residual_mode={m} residual={r}" for m in fuzz.RESIDUAL_MODES
             for r in ("yes", "None")}
    if world == 2:
        want.add("ctas=None")
    missing = want - set(seen)
    assert not missing, missing
    assert all(seen[k] >= 5 for k in want), {k: seen[k] for k in want if seen[k] < 5}


def test_algorithm_lists_follow_the_planner():
    for op, names in (("all_reduce", plan.ALLREDUCE_ALGORITHMS), ("fused_allreduce_rmsnorm", plan.FUSED_ALGORITHMS)):
        for world in WORLDS:
            got = fuzz.algorithms(op, world)
            assert "auto" in got and set(got) <= set(names)
            assert set(names) - set(got) <= {"local"}


def _staging_bytes(call, es):
    n = math.prod(call.shape)
    total = n * (call.world if call.op == "all_gather" else 1)
    if call.compression is not None:
        row = call.shape[1] if call.op == "fused_allreduce_rmsnorm" else None
        return compression.staging_bytes(call.compression, total, es, call.world, row=row)
    if call.op == "all_reduce":
        return plan.staging_bytes(n * es)
    return total * es


def _validated(call):
    """The ops' own argument checks (collectives/calls.py) on CPU stand-ins of the call's tensors:
    the checked Call (raises ValueError/TypeError as the op would)."""
    comm = SimpleNamespace(world=call.world, device_id=0, channels=fuzz.CHANNELS)
    dt = testing.DTYPES[call.dtype]
    x = torch.empty(call.shape, dtype=dt)
    opts = dict(algorithm=call.algorithm, ctas=call.ctas, channel=call.channel, compression=call.compression)
    if call.op != "fused_allreduce_rmsnorm":
        return validate.VALIDATE[call.op](comm, x, **opts)
    res = torch.empty(call.shape, dtype=dt) if call.residual else None
    return validate.fused_allreduce_rmsnorm(comm, x, res, torch.empty(call.shape[1], dtype=dt), call.eps,
                                            residual_mode=call.residual_mode, **opts)


@pytest.mark.parametrize("world", WORLDS)
def test_every_call_is_valid(calls, world, monkeypatch):
    monkeypatch.setattr(validate, "_check_device", lambda op, t, device_id: None)  # CPU tensors stand in
    cap = fuzz.RESIDENT_BLOCKS // world
    for c in calls[world]:
        assert c.world == world and 0 <= c.channel < fuzz.CHANNELS, c
        if c.op == "barrier":
            assert c.algorithm is None and c.ctas is None and c.shape == () and c.compression is None, c
            assert not c.zero_copy, c
            continue
        assert (c.ctas is None and world == 2) or (c.ctas is not None and 1 <= c.ctas <= cap), c
        es = fuzz.element_size(c.dtype)
        assert es == {"bfloat16": 2, "float16": 2, "float32": 4}[c.dtype]
        ve, dt = 16 // es, plan.PTX_DTYPE[c.dtype]
        n = math.prod(c.shape)
        assert _staging_bytes(c, es) <= fuzz.MAX_BYTES, c
        assert n * es <= fuzz.MAX_BYTES, c  # a symmetric input fits the fuzz world's extra arena
        q = _validated(c).compression
        assert q == c.compression, c
        if q is not None:
            assert c.op in fuzz.COMPRESSED_OPS and c.algorithm in compression.algorithms(c.op), c
            assert q.block in compression.BLOCKS[q.format] and (c.op != "all_gather" or q.gather == "compressed"), c
            if c.op == "fused_allreduce_rmsnorm":
                assert c.shape[1] % q.block == 0, c
                if c.shape[0]:
                    launch = plan.plan_compressed_fused(*c.shape, dt, world, q, c.ctas, c.residual_mode == "sharded",
                                                        residual=c.residual)
                    assert launch.grid <= cap and launch.qblock == q.block, c
            else:
                total = n * (world if c.op == "all_gather" else 1)
                assert total % (q.block * (1 if c.op == "all_reduce" else world)) == 0, c
                if total:
                    launch = plan.plan_compressed(c.op, total, dt, world, q, c.ctas, c.algorithm)
                    assert launch.grid <= cap and (launch.fmt, launch.qblock) == (q.format, q.block), c
            continue
        if c.op == "all_reduce":
            assert c.algorithm in fuzz.algorithms(c.op, world), c
            if n:
                launch = plan.plan_all_reduce(n, dt, world, c.algorithm, c.ctas,
                                              zero_copy=c.zero_copy)  # raises if refused
                assert launch.grid <= cap, c
        elif c.op in ("reduce_scatter", "all_gather"):
            assert c.algorithm in fuzz.algorithms(c.op, world) and len(c.shape) >= 1, c
            total = n if c.op == "reduce_scatter" else n * world
            assert c.op == "all_gather" or c.shape[0] % world == 0, c
            assert (total // world * es) % 16 == 0, c  # each rank's chunk: whole 16-byte vectors
            if total:
                launch = plan.plan_scatter_gather(c.op, total, dt, world, c.ctas, zero_copy=c.zero_copy,
                                                  algorithm=c.algorithm)
                assert launch.grid <= cap, c
        else:
            tokens, hidden = c.shape
            assert 0 < hidden <= fuzz.MAX_HIDDEN and hidden % ve == 0, c
            assert c.residual_mode in fuzz.RESIDUAL_MODES and c.eps >= 0, c
            assert c.algorithm in fuzz.algorithms(c.op, world), c
            assert not (c.residual_mode == "sharded" and c.algorithm in fuzz.REPLICATED_ONLY), c
            assert c.algorithm != "lamport" or n * es <= LAMPORT_SLOT, c
            if tokens:
                launch = plan.plan_fused(tokens, hidden, dt, world, c.algorithm, c.ctas,
                                         sharded=c.residual_mode == "sharded", zero_copy=c.zero_copy)
                assert launch.grid <= cap, c


def test_shapes_include_odd_and_large_sizes(calls):
    sizes = [math.prod(c.shape) for w in WORLDS for c in calls[w] if c.op == "all_reduce"]
    assert any(n % 2 and n > 1000 for n in sizes)  # odd, beyond one vector per thread
    assert max(sizes) * 2 > fuzz.MAX_BYTES // 4  # some calls near the staging bound
    fused = [c.shape for w in WORLDS for c in calls[w] if c.op == "fused_allreduce_rmsnorm"]
    assert any(h % 16 for _, h in fused) and any(t == 1 for t, _ in fused) and any(t > 256 for t, _ in fused)


def test_reproducer_round_trips_through_the_command_line():
    call = fuzz.fuzz_call(42, 8, 1234)
    line = call.reproducer
    assert line == "python scripts/fuzz.py --world 8 --seed 42 --only 1234"
    world, seed, index = fuzz.parse_reproducer(line)
    assert fuzz.fuzz_call(seed, world, index) == call
    args = fuzz.parser().parse_args(line.split()[2:])
    assert (args.world, args.seed, args.only) == ([8], 42, 1234)
    with pytest.raises(ValueError, match="one world"):
        fuzz.parse_reproducer("python scripts/fuzz.py --world 2 4 --seed 1 --only 3")
    with pytest.raises(ValueError, match="not a"):
        fuzz.parse_reproducer("python other.py --world 2 --seed 1 --only 3")


def test_failure_line_is_one_line_ending_in_the_reproducer():
    call = fuzz.fuzz_call(3, 2, 7)
    line = fuzz.failure_line(call, ["rank 0 out: bad\nsecond line", "PeerTimeoutError: peer 1"])
    assert "\n" not in line and line.startswith("FAIL world 2: call 7 ")
    assert "bad second line; PeerTimeoutError: peer 1" in line
    assert line.endswith(f"| reproduce: {call.reproducer}")
    assert fuzz.parse_reproducer(line.rsplit("reproduce: ", 1)[1]) == (2, 3, 7)


def test_describe_names_the_options():
    fused = next(c for c in (fuzz.fuzz_call(0, 4, k) for k in range(200)) if c.op == "fused_allreduce_rmsnorm")
    text = fused.describe()
    for word in (fused.dtype, f"algorithm={fused.algorithm}", f"residual_mode={fused.residual_mode}",
                 "x".join(map(str, fused.shape)), f"channel={fused.channel}"):
        assert word in text
    assert fuzz.FuzzCall(0, 2, 5, "barrier", channel=1).describe() == "call 5 barrier channel=1 eager"
    both = next(c for c in (fuzz.fuzz_call(0, 4, k) for k in range(500)) if c.compression and c.zero_copy)
    q = both.compression
    assert f"compression={q.format}:{q.block}:{q.gather}" in both.describe()
    assert "zero_copy" in both.describe().split()
    plain = next(c for c in (fuzz.fuzz_call(0, 4, k) for k in range(500)) if c.op != "barrier" and not c.compression
                 and not c.zero_copy)
    assert "compression" not in plain.describe() and "zero_copy" not in plain.describe()
    # the reproducer rebuilds the call with its compression spec and zero copy
    world, seed, index = fuzz.parse_reproducer(both.reproducer)
    assert fuzz.fuzz_call(seed, world, index) == both
    assert CompressionSpec.parse(str(both.compression)) == both.compression


def test_script_parses_its_arguments_without_a_gpu():
    spec = importlib.util.spec_from_file_location("fuzz_script", ROOT / "scripts" / "fuzz.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0


# ---- the runner's host logic, on a stand-in world ----------------------------------------------

class _StandInRank:
    """Records each rank's call; ``_StandInWorld.run`` then writes what correct kernels would."""

    def __init__(self, world, rank, calls):
        self.world, self.rank, self._calls = world, rank, calls

    def _record(self, op, x, out, **extra):
        self._calls.append(dict(op=op, rank=self.rank, x=x, out=out, **extra))
        return out

    def all_reduce(self, x, *, out, algorithm, ctas, channel, compression):
        return self._record("all_reduce", x, out, q=compression)

    def reduce_scatter(self, x, *, out, algorithm, ctas, channel, compression):
        return self._record("reduce_scatter", x, out, q=compression)

    def all_gather(self, x, *, out, algorithm, ctas, channel, compression):
        return self._record("all_gather", x, out, q=compression)

    def fused_allreduce_rmsnorm(self, x, residual, weight, eps, *, residual_mode, algorithm, out, ctas, channel,
                                compression):
        new = residual if residual is not None else testing.poisoned(x.shape, x.dtype, device="cpu")
        self._record("fused", x, out, residual=residual, new=new, weight=weight, eps=eps, mode=residual_mode,
                     q=compression)
        return out, new

    def barrier(self, *, channel):
        return None


class _StandInWorld:
    """``world`` ranks whose collectives are computed from the references, or the compression
    model (``wrong``: rank ``world - 1`` leaves one element NaN), to run the runner's bookkeeping
    on the CPU. ``empty`` makes symmetric stand-ins; ``zero_copy_inputs`` counts the calls whose
    every rank passed one (and ``free`` must give each back)."""

    def __init__(self, world, wrong=False):
        self.world, self.wrong = world, wrong
        self.symmetric, self.zero_copy_inputs = [], 0

    def check(self):
        pass

    def empty(self, shape, dtype):
        self.symmetric.append([torch.empty(shape, dtype=dtype) for _ in range(self.world)])
        return self.symmetric[-1]

    def free(self, tensors):
        self.symmetric.remove(tensors)

    def run(self, fn):
        calls = []
        results = [fn(r, _StandInRank(self.world, r, calls)) for r in range(self.world)]
        if not calls:
            return results
        xs = [c["x"] for c in calls]
        op, q = calls[0]["op"], calls[0]["q"]
        self.zero_copy_inputs += any(all(x is s for x, s in zip(xs, sym)) for sym in self.symmetric)
        if op == "fused":
            full = None  # the residual before the call, each row from the rank that owns it
            if calls[0]["residual"] is not None:
                full = calls[0]["residual"].clone()
                for c in calls:
                    keep = owned_rows(full.shape[0], c["rank"], self.world)
                    full[keep.start:keep.stop] = c["residual"][keep.start:keep.stop]
            args = (xs, full, calls[0]["weight"], calls[0]["eps"])
            ref_out, ref_s = (testing.reference_fused(*args) if q is None else
                              quantize.compressed_fused(*args, q, calls[0]["mode"]))
        elif q is not None:
            ref = quantize.compressed_all_reduce(xs, q if op == "all_reduce" else CompressionSpec(q.format, q.block,
                                                                                                  "input"))
        for c in calls:
            r = c["rank"]
            n = c["out"].shape[0]
            if q is not None and op == "all_reduce":
                c["out"].copy_(ref)
            elif q is not None and op == "reduce_scatter":
                c["out"].copy_(ref[r * n:(r + 1) * n])
            elif q is not None and op == "all_gather":
                c["out"].copy_(torch.cat([quantize.roundtrip(x, q).to(x.dtype) for x in xs]))
            elif op == "all_reduce":
                c["out"].copy_(testing.reference_all_reduce(xs))
            elif op == "reduce_scatter":
                c["out"].copy_(testing.reference_reduce_scatter(xs, r))
            elif op == "all_gather":
                c["out"].copy_(testing.reference_all_gather(xs))
            else:
                c["out"].copy_(ref_out)
                rows = owned_rows(ref_s.shape[0], r, self.world) if c["mode"] == "sharded" else range(ref_s.shape[0])
                c["new"][rows.start:rows.stop] = ref_s[rows.start:rows.stop]
        if self.wrong and calls[-1]["out"].numel():
            calls[-1]["out"].view(-1)[0] = float("nan")
        return results


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(runner, "DEVICE", "cpu")
    monkeypatch.setattr(runner.torch.cuda, "synchronize", lambda: None)


@pytest.mark.parametrize("world", WORLDS)
def test_runner_passes_correct_results_and_names_wrong_ones(on_cpu, world):
    pool = [c for c in (fuzz.fuzz_call(1, world, k) for k in range(2000))
            if not c.graph and math.prod(c.shape) <= 1 << 14]
    kinds = [lambda c, op=op: c.op == op and c.compression for op in fuzz.COMPRESSED_OPS]
    kinds += [lambda c, op=op: c.op == op and c.zero_copy for op in fuzz.COMPRESSED_OPS]
    kinds += [lambda c, m=m: c.op == "fused_allreduce_rmsnorm" and c.compression and c.residual_mode == m
              for m in fuzz.RESIDUAL_MODES]
    small = pool[:40] + [c for kind in kinds for c in [c for c in pool if kind(c)][:2]]
    assert {c.op for c in small} == set(fuzz.OPS)
    assert {c.op for c in small if c.compression} == set(fuzz.COMPRESSED_OPS)
    assert {c.op for c in small if c.zero_copy} == set(fuzz.COMPRESSED_OPS)
    assert {c.residual_mode for c in small if c.compression and c.op == "fused_allreduce_rmsnorm"} == {
        "replicated", "sharded"}
    right, wrong = _StandInWorld(world), _StandInWorld(world, wrong=True)
    for c in small:
        assert runner._run(right, None, c) == [], c.describe()
        problems = runner._run(wrong, None, c)
        if c.op == "barrier" or math.prod(c.shape) == 0:
            assert problems == [], c.describe()
        else:
            assert problems and all(p.startswith("eager: ") for p in problems), c.describe()
            if c.op in ("all_reduce", "fused_allreduce_rmsnorm") or (c.op == "all_gather" and c.compression):
                assert "eager: out differs across ranks" in problems, (c.describe(), problems)
            if c.compression is not None and c.op != "reduce_scatter":  # rank 0 holds the model's bits
                assert not any("differ from the model" in p for p in problems), (c.describe(), problems)
    # every zero-copy call ran on symmetric inputs, given back after the call
    assert right.zero_copy_inputs == sum(c.zero_copy for c in small)
    assert right.symmetric == [] and wrong.symmetric == []


def test_runner_names_a_compressed_result_off_the_model(on_cpu):
    """A result within the tolerance of the float reference but not the model's bits fails."""
    call = next(c for c in (fuzz.fuzz_call(2, 4, k) for k in range(500)) if c.op == "all_reduce" and c.compression
                and not c.graph and 256 <= math.prod(c.shape) <= 1 << 14)

    class Uncompressed(_StandInWorld):
        def run(self, fn):
            return super().run(lambda r, c: fn(r, _Uncompress(c)))

    class _Uncompress:
        def __init__(self, comm):
            self.comm = comm

        def all_reduce(self, x, **kw):
            return self.comm.all_reduce(x, **{**kw, "compression": None})

    problems = runner._run(Uncompressed(4), None, call)
    assert any("differ from the model" in p for p in problems), (call.describe(), problems)


# ---- the long run's options --------------------------------------------------------------------

def test_algorithms_come_from_the_kernel_table():
    """A new algorithm in ptx/table.py is fuzzed without an edit here (the compressed kernels,
    "twoshot_q" and "pull_q", are chosen by ``compression=``, not by name)."""
    from weave_nvshmem.ptx import table

    for op in ("all_reduce", "fused_allreduce_rmsnorm"):
        for world in WORLDS:
            assert set(fuzz.algorithms(op, world)) == ({"auto"} | set(table.algorithms(op))) - {
                "local", *compression.ALGORITHMS.values()}


def test_long_run_options():
    args = fuzz.parser().parse_args(["--out", "bench/fuzz.log", "--budget-s", "90"])
    assert (args.calls, args.out, args.budget_s, args.world) == (10000, "bench/fuzz.log", 90.0, [2, 4, 8])
    assert fuzz.parser().parse_args(["--log", "x.log"]).out == "x.log"  # the old spelling
    assert fuzz.parser().parse_args([]).budget_s is None


def test_world_deadline_shares_what_is_left():
    assert fuzz.world_deadline(0.0, 0.0, None, 3) is None
    assert fuzz.world_deadline(100.0, 100.0, 90.0, 3) == pytest.approx(130.0)
    # the first world stopped early at 110 s: the two left share the remaining 80 s
    assert fuzz.world_deadline(100.0, 110.0, 90.0, 2) == pytest.approx(150.0)
    assert fuzz.world_deadline(100.0, 200.0, 90.0, 1) == pytest.approx(200.0)  # over budget: stop now
