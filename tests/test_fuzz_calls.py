"""The fuzzer's host side on the CPU: calls are a pure function of (seed, world, index), cover every
op, dtype and algorithm, are valid (the planner accepts them, shapes obey each op's rules, staging
fits what the fuzz world reserves, grids are resident), a reproducer line round-trips, and the
runner's bookkeeping passes correct results and names wrong ones (on a stand-in world)."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weave_nvshmem import testing
from weave_nvshmem.collectives import plan
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
    a = [fuzz.fuzz_call(5, 4, k) for k in (0, 1, 2, 999, 12345)]
    assert a == [fuzz.fuzz_call(5, 4, k) for k in (0, 1, 2, 999, 12345)]
    assert a[3] == fuzz.fuzz_call(5, 4, 999)  # alone, without the calls before it
    assert fuzz.fuzz_call(5, 4, 0) != fuzz.fuzz_call(6, 4, 0) or fuzz.fuzz_call(5, 4, 1) != fuzz.fuzz_call(6, 4, 1)
    # ... and of nothing else: another process with another hash seed draws the same calls
    code = "from weave_nvshmem.testing import fuzz; print([fuzz.fuzz_call(5, 4, k) for k in (0, 1, 2, 999, 12345)])"
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
    want |= {f"{op} algorithm={a}" for op in ("all_reduce", "fused_allreduce_rmsnorm")
             for a in fuzz.algorithms(op, world)}
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
    if call.op == "all_reduce":
        return plan.staging_bytes(n * es)
    return n * es * (call.world if call.op == "all_gather" else 1)


@pytest.mark.parametrize("world", WORLDS)
def test_every_call_is_valid(calls, world):
    cap = fuzz.RESIDENT_BLOCKS // world
    for c in calls[world]:
        assert c.world == world and 0 <= c.channel < fuzz.CHANNELS, c
        if c.op == "barrier":
            assert c.algorithm is None and c.ctas is None and c.shape == (), c
            continue
        assert (c.ctas is None and world == 2) or (c.ctas is not None and 1 <= c.ctas <= cap), c
        es = fuzz.element_size(c.dtype)
        assert es == {"bfloat16": 2, "float16": 2, "float32": 4}[c.dtype]
        ve, dt = 16 // es, plan.PTX_DTYPE[c.dtype]
        n = math.prod(c.shape)
        assert _staging_bytes(c, es) <= fuzz.MAX_BYTES, c
        if c.op == "all_reduce":
            assert c.algorithm in fuzz.algorithms(c.op, world), c
            if n:
                launch = plan.plan_all_reduce(n, dt, world, c.algorithm, c.ctas)  # raises if refused
                assert launch.grid <= cap, c
        elif c.op in ("reduce_scatter", "all_gather"):
            assert c.algorithm is None and len(c.shape) >= 1, c
            total = n if c.op == "reduce_scatter" else n * world
            assert c.op == "all_gather" or c.shape[0] % world == 0, c
            assert (total // world * es) % 16 == 0, c  # each rank's chunk: whole 16-byte vectors
            if total:
                assert plan.plan_scatter_gather(c.op, total, dt, world, c.ctas).grid <= cap, c
        else:
            tokens, hidden = c.shape
            assert 0 < hidden <= fuzz.MAX_HIDDEN and hidden % ve == 0, c
            assert c.residual_mode in fuzz.RESIDUAL_MODES and c.eps >= 0, c
            assert c.algorithm in fuzz.algorithms(c.op, world), c
            assert not (c.residual_mode == "sharded" and c.algorithm in fuzz.REPLICATED_ONLY), c
            assert c.algorithm != "lamport" or n * es <= LAMPORT_SLOT, c
            if tokens:
                launch = plan.plan_fused(tokens, hidden, dt, world, c.algorithm, c.ctas,
                                         sharded=c.residual_mode == "sharded")
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

    def all_reduce(self, x, *, out, algorithm, ctas, channel):
        return self._record("all_reduce", x, out)

    def reduce_scatter(self, x, *, out, ctas, channel):
        return self._record("reduce_scatter", x, out)

    def all_gather(self, x, *, out, ctas, channel):
        return self._record("all_gather", x, out)

    def fused_allreduce_rmsnorm(self, x, residual, weight, eps, *, residual_mode, algorithm, out, ctas, channel):
        new = residual if residual is not None else testing.poisoned(x.shape, x.dtype, device="cpu")
        self._record("fused", x, out, residual=residual, new=new, weight=weight, eps=eps, mode=residual_mode)
        return out, new

    def barrier(self, *, channel):
        return None


class _StandInWorld:
    """``world`` ranks whose collectives are computed from the references (``wrong``: rank
    ``world - 1`` leaves one element NaN), to run the runner's bookkeeping on the CPU."""

    def __init__(self, world, wrong=False):
        self.world, self.wrong = world, wrong

    def check(self):
        pass

    def run(self, fn):
        calls = []
        results = [fn(r, _StandInRank(self.world, r, calls)) for r in range(self.world)]
        if not calls:
            return results
        xs = [c["x"] for c in calls]
        op = calls[0]["op"]
        if op == "fused":
            full = None  # the residual before the call, each row from the rank that owns it
            if calls[0]["residual"] is not None:
                full = calls[0]["residual"].clone()
                for c in calls:
                    keep = owned_rows(full.shape[0], c["rank"], self.world)
                    full[keep.start:keep.stop] = c["residual"][keep.start:keep.stop]
            ref_out, ref_s = testing.reference_fused(xs, full, calls[0]["weight"], calls[0]["eps"])
        for c in calls:
            r = c["rank"]
            if op == "all_reduce":
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
    eager = [c for c in (fuzz.fuzz_call(1, world, k) for k in range(300)) if not c.graph]
    small = [c for c in eager if math.prod(c.shape) <= 1 << 14][:40]
    assert {c.op for c in small} == set(fuzz.OPS)
    right, wrong = _StandInWorld(world), _StandInWorld(world, wrong=True)
    for c in small:
        assert runner._run(right, None, c) == [], c.describe()
        problems = runner._run(wrong, None, c)
        if c.op == "barrier" or math.prod(c.shape) == 0:
            assert problems == [], c.describe()
        else:
            assert problems and all(p.startswith("eager: ") for p in problems), c.describe()
            if c.op in ("all_reduce", "fused_allreduce_rmsnorm"):
                assert "eager: out differs across ranks" in problems, (c.describe(), problems)


# ---- the long run's options --------------------------------------------------------------------

def test_algorithms_come_from_the_kernel_table():
    """A new algorithm in ptx/table.py is fuzzed without an edit here (the compressed kernels,
    "twoshot_q", are chosen by ``compression=``, not by name)."""
    from weave_nvshmem.ptx import table

    for op in ("all_reduce", "fused_allreduce_rmsnorm"):
        for world in WORLDS:
            assert set(fuzz.algorithms(op, world)) == ({"auto"} | set(table.algorithms(op))) - {"local", "twoshot_q"}


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
