"""weave_nvshmem.testing on the CPU: the references against hand-computed values, the tolerance
table, rel_err on known vectors, poison, same-bits, the fused checks, and rank agreement over a
two-process gloo group."""
from __future__ import annotations

import math
import multiprocessing as mp

import numpy as np
import pytest
import torch
import torch.distributed as dist

from weave_nvshmem import testing
from weave_nvshmem.collectives.plan import owned_rows
from weave_nvshmem.testing import ranks

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def t(values, dtype=F32):
    return torch.tensor(values, dtype=dtype)


# ---- references ------------------------------------------------------------------------------

def test_all_reduce_sums_in_fp32_in_rank_order():
    # exact sum 1, but fp32 in order 0, 1, 2: (1e8 + 1) rounds back to 1e8 (spacing 8), then - 1e8
    xs = [t([1e8, 2.0]), t([1.0, 3.0]), t([-1e8, -4.0])]
    got = testing.reference_all_reduce(xs)
    assert got.dtype == F32 and got.tolist() == [0.0, 1.0]
    # another order of the same numbers gives the exact sum: the order is the ranks'
    assert testing.reference_all_reduce([xs[0], xs[2], xs[1]]).tolist() == [1.0, 1.0]


def test_all_reduce_rounds_once_to_the_dtype_half_to_even():
    # bf16 spacing at 1 is 2^-7: 1 + 2^-8 is a tie -> 1 (even); 1 + 3 * 2^-8 is a tie -> 1 + 2^-6 (even)
    got = testing.reference_all_reduce([t([1.0, 1.0], BF16), t([2 ** -8, 3 * 2 ** -8], BF16)])
    assert got.dtype == BF16 and got.float().tolist() == [1.0, 1.0 + 2 ** -6]
    # the sum is rounded once, from fp32: three ranks of 2^-9 each add up to 1 + 1.5 * 2^-8, nearer 1 + 2^-7
    got = testing.reference_all_reduce([t([1.0], BF16)] + [t([2 ** -9], BF16)] * 3)
    assert got.float().tolist() == [1.0 + 2 ** -7]
    assert testing.reference_all_reduce([t([60000.0], F16)] * 2).float().tolist() == [math.inf]  # fp16 overflow


def test_all_reduce_does_not_alias_its_input():
    x = t([1.0, 2.0])
    got = testing.reference_all_reduce([x])
    got.fill_(0)
    assert x.tolist() == [1.0, 2.0]


def test_references_refuse_mixed_shapes_or_dtypes():
    with pytest.raises(ValueError, match="one shape and dtype"):
        testing.reference_all_reduce([t([1.0]), t([1.0, 2.0])])
    with pytest.raises(ValueError, match="one shape and dtype"):
        testing.reference_fused([t([[1.0] * 4]), t([[1.0] * 4], BF16)], None, t([1.0] * 4), 1e-6)


def test_reduce_scatter_and_all_gather_references():
    xs = [torch.arange(8.0).view(4, 2) + 10 * r for r in range(2)]
    total = xs[0] + xs[1]
    assert torch.equal(testing.reference_reduce_scatter(xs, 0), total[:2])
    assert torch.equal(testing.reference_reduce_scatter(xs, 1), total[2:])
    assert torch.equal(testing.reference_all_gather(xs), torch.cat(xs))


def _rmsnorm(s, w, eps):
    rstd = 1.0 / math.sqrt(sum(v * v for v in s) / len(s) + eps)
    return [v * rstd * g for v, g in zip(s, w)]


@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_matches_hand_computed_fp32(with_residual):
    x0, x1, res = [[1.0, 2.0, 3.0, 4.0]], [[1.0, 0.0, -1.0, 2.0]], [[0.0, 1.0, 1.0, -2.0]]
    w, eps = [0.5, 1.0, 1.5, 2.0], 1e-5
    out, s = testing.reference_fused([t(x0), t(x1)], t(res) if with_residual else None, t(w), eps)
    s_hand = [a + b + (c if with_residual else 0.0) for a, b, c in zip(x0[0], x1[0], res[0])]
    assert s.dtype == out.dtype == F32 and s[0].tolist() == s_hand
    assert out[0].tolist() == np.float32(_rmsnorm(s_hand, w, eps)).tolist()  # rounded once from float64


def test_fused_normalises_the_rounded_residual():
    # bf16: 256 + 1 = 257 is a tie between 256 and 258 -> s = 256; out follows from s = 256, not 257
    h, eps = 8, 1e-6
    x0 = t([[256.0] + [1.0] * (h - 1)], BF16)
    x1 = t([[1.0] + [0.0] * (h - 1)], BF16)
    out, s = testing.reference_fused([x0, x1], None, torch.ones(h, dtype=BF16), eps)
    rounded = [256.0] + [1.0] * (h - 1)
    assert s.dtype == BF16 and s[0].float().tolist() == rounded
    assert torch.equal(out[0], torch.tensor(_rmsnorm(rounded, [1.0] * h, eps), dtype=torch.float64).to(BF16))
    unrounded = torch.tensor(_rmsnorm([257.0] + rounded[1:], [1.0] * h, eps), dtype=torch.float64).to(BF16)
    assert not torch.equal(out[0], unrounded)


def test_fused_nan_and_inf_rows_propagate():
    x = t([[1.0, 2.0, 3.0, 4.0], [math.inf, 1.0, 1.0, 1.0], [math.nan, 1.0, 1.0, 1.0]])
    out, _ = testing.reference_fused([x, torch.zeros_like(x)], None, torch.ones(4), 1e-6)
    assert bool(torch.isfinite(out[0]).all())
    assert math.isnan(out[1, 0]) and out[1, 1:].tolist() == [0.0, 0.0, 0.0]  # rsqrt(inf) = 0
    assert bool(torch.isnan(out[2]).all())


# ---- tolerances, rel_err ---------------------------------------------------------------------

def test_tolerance_table():
    assert set(testing.TOLERANCE) == set(testing.DTYPES) == {"bfloat16", "float16", "float32"}
    assert testing.tolerance(F32) < testing.tolerance(F16) < testing.tolerance(BF16)
    for name, dt in testing.DTYPES.items():
        assert testing.tolerance(dt) == testing.tolerance(name) == testing.TOLERANCE[name]
        assert testing.dtype_name(dt) == name
    # each dtype's tolerance is above what rounding one sum to it costs (normwise, random data)
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, dt in testing.DTYPES.items():
        assert testing.rel_err(x.to(dt), x) < testing.tolerance(dt) / 2
    for bad in (torch.float64, torch.int32, "bf16"):
        with pytest.raises(TypeError, match="unsupported dtype"):
            testing.tolerance(bad)


def test_rel_err_known_vectors():
    ref = t([3.0, 4.0])
    assert testing.rel_err(ref, ref) == 0.0
    assert testing.rel_err(t([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert testing.rel_err(ref * 1.01, [3.0, 4.0]) == pytest.approx(0.01)  # array-likes too
    assert testing.rel_err(torch.zeros(2), torch.zeros(2)) == 0.0
    assert testing.rel_err(t([3.0, 4.0]), torch.zeros(2)) == pytest.approx(5.0)  # zero ref: absolute norm
    assert testing.rel_err(t([1.0, 2.0], BF16), np.array([1.0, 2.0])) == 0.0


@pytest.mark.filterwarnings("error")  # inf - inf where both are inf is masked, not warned about
def test_rel_err_nonfinite():
    both = t([1.0, math.inf, -math.inf, math.nan], BF16)
    assert testing.rel_err(both, both) == 0.0  # non-finite exactly where the reference is: skipped
    assert [testing.rel_err(t([1.0, 2.0, v]), t([1.0, 2.0, 3.0])) for v in (math.nan, math.inf)] == [math.inf] * 2
    assert testing.rel_err(t([1.0, 1.0, 1.0, 1.0]), both) == math.inf  # finite where it is not


def test_rel_err_refuses_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match="shape"):
        testing.rel_err(torch.ones(1, 4), torch.ones(4))


def test_check_close_names_the_error():
    ref = torch.ones(8)
    assert testing.check_close(ref.to(BF16), ref) == []
    (why,) = testing.check_close((ref * 1.1).to(BF16), ref, "out")
    assert why.startswith("out: normwise relative error 0.1") and "bfloat16" in why


# ---- inputs, poison, bits --------------------------------------------------------------------

def test_rank_inputs_are_reproducible_per_rank_and_never_zero():
    a = testing.rank_inputs(3, 4, (5, 7), BF16, device="cpu")
    b = testing.rank_inputs(3, 4, (5, 7), BF16, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (5, 7) and x.dtype == BF16 and bool(x.ne(0).any()) for x in a)
    assert not any(torch.equal(a[i], a[j]) for i in range(4) for j in range(i))
    assert not torch.equal(testing.rank_input(4, 0, (5, 7), BF16, device="cpu"), a[0])
    # the seed of rank r is seed * 1000 + r (the data the GPU suites have always used)
    want = torch.randn(6, generator=torch.Generator().manual_seed(3 * 1000 + 2)) * 2.0
    assert torch.equal(testing.rank_input(3, 2, (6,), F32, scale=2.0, device="cpu"), want)


def test_poison_floats_and_integer_sentinels():
    p = testing.poisoned((3, 4), BF16, device="cpu")
    assert bool(torch.isnan(p).all()) and testing.still_poisoned(p) == 12
    p[0] = 1.0
    assert testing.still_poisoned(p) == 8
    assert testing.poison(torch.zeros(4, dtype=torch.int32)).tolist() == [-1] * 4
    assert testing.poison(torch.zeros(4, dtype=torch.uint8)).tolist() == [255] * 4
    assert testing.still_poisoned(torch.tensor([7, 255, 255], dtype=torch.uint8)) == 2
    with pytest.raises(TypeError, match="bool"):
        testing.poison(torch.zeros(2, dtype=torch.bool))


def test_poison_left_in_an_output_fails_the_check():
    ref = torch.ones(6)
    out = testing.poisoned((6,), F32, device="cpu")
    out[:5] = 1.0  # one element never written
    assert testing.rel_err(out, ref) == math.inf
    (why,) = testing.check_close(out, ref)
    assert "1 of 6 elements NaN" in why


def test_same_bits():
    a = torch.randn(4, 3)
    assert testing.same_bits([a]) and testing.same_bits([a, a.clone(), a.clone()])
    b = a.clone()
    b.view(torch.int32)[0, 0] += 1  # one ulp
    assert not testing.same_bits([a, b])
    assert not testing.same_bits([t([0.0]), t([-0.0])])  # equal values, different bits
    nan = torch.full((2,), math.nan)
    assert testing.same_bits([nan, nan.clone()])  # NaN == NaN bitwise (torch.equal says no)
    assert not testing.same_bits([torch.zeros(2, dtype=BF16), torch.zeros(2, dtype=torch.int16)])  # same bytes
    assert not testing.same_bits([torch.zeros(4), torch.zeros(2, 2)])
    assert testing.same_bits([a.t(), a.t().contiguous()])  # compared in logical order
    assert testing.same_bits([torch.empty(0, 5), torch.empty(0, 5)])
    assert testing.same_bits([torch.tensor(1.5, dtype=BF16), torch.tensor(1.5, dtype=BF16)])  # 0-d


# ---- the fused residual modes ----------------------------------------------------------------

def _fused_case(tokens=7, hidden=8, world=3):
    xs = testing.rank_inputs(1, world, (tokens, hidden), F32, device="cpu")
    res0 = testing.rank_input(2, 0, (tokens, hidden), F32, device="cpu")
    weight = testing.rank_input(3, 0, (hidden,), F32, device="cpu")
    return xs, res0, testing.reference_fused(xs, res0, weight, 1e-6)


def test_sharded_residual_keeps_owned_rows():
    res0 = torch.arange(14.0).view(7, 2)
    for r in range(3):
        keep = owned_rows(7, r, 3)
        got = testing.sharded_residual(res0, r, 3)
        for i in range(7):
            want = res0[i] if i in keep else torch.full((2,), testing.RESIDUAL_SENTINEL)
            assert torch.equal(got[i], want)


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_fused_problems(mode):
    world = 3
    _, res0, (ref_out, ref_s) = _fused_case(world=world)
    for r in range(world):
        res = ref_s.clone() if mode == "replicated" else testing.sharded_residual(ref_s, r, world)
        ok = testing.fused_problems(ref_out, res, ref_out, ref_s, rank=r, world=world, mode=mode, sentinel_rows=True)
        assert ok == []
        bad_out = testing.fused_problems(ref_out * 1.5, res, ref_out, ref_s, rank=r, world=world, mode=mode,
                                         sentinel_rows=True)
        assert len(bad_out) == 1 and bad_out[0].startswith("out:")
        keep = owned_rows(7, r, world)
        wrong = res.clone()
        wrong[keep.start] += 1.0
        assert testing.fused_problems(ref_out, wrong, ref_out, ref_s, rank=r, world=world, mode=mode,
                                      sentinel_rows=True)[0].startswith("residual:")
    if mode == "sharded":
        written = ref_s.clone()  # rank 0 wrote rows it does not own
        problems = testing.fused_problems(ref_out, written, ref_out, ref_s, rank=0, world=world, mode=mode,
                                          sentinel_rows=True)
        assert problems and "not rank 0's" in problems[0]
        assert testing.fused_problems(ref_out, written, ref_out, ref_s, rank=0, world=world, mode=mode,
                                      sentinel_rows=False) == []


# ---- rank agreement --------------------------------------------------------------------------

def test_agreement_in_one_process():
    assert not dist.is_initialized()
    assert ranks.rank_world() == (0, 1)
    assert ranks.gather({"a": 1}) == [{"a": 1}]
    assert ranks.all_true(True) and not ranks.all_true(False) and ranks.all_true(torch.tensor([1]))
    assert ranks.first_error(None) is None and ranks.first_error("") is None
    assert ranks.first_error("boom") == "rank 0: boom"
    assert ranks.rank0(7) == 7
    assert ranks.same_on_ranks(torch.randn(3))


def test_digest_sees_dtype_shape_and_bits():
    a = torch.zeros(4)
    assert ranks.digest(a) == ranks.digest(a.clone())
    assert len({ranks.digest(a), ranks.digest(a.view(2, 2)), ranks.digest(a.view(torch.int32)),
                ranks.digest(-a)}) == 4


def _agreement_worker(rank, world, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        queue.put((rank, {
            "rank_world": ranks.rank_world(),
            "gather": ranks.gather(rank * 10),
            "all_true": ranks.all_true(True),
            "one_false": ranks.all_true(rank == 0),
            "first_error": ranks.first_error("boom" if rank == 1 else None),
            "no_error": ranks.first_error(""),
            "rank0": ranks.rank0(f"from {rank}"),
            "same": ranks.same_on_ranks(torch.arange(6.0)),
            "nan_same": ranks.same_on_ranks(torch.full((3,), math.nan)),
            "differ": ranks.same_on_ranks(torch.tensor([float(rank)])),
        }))
    finally:
        dist.destroy_process_group()


def test_agreement_across_two_processes(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_agreement_worker, args=(r, 2, tmp_path / "init", queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(2):
        g = got[r]
        assert g["rank_world"] == (r, 2) and g["gather"] == [0, 10]
        assert g["all_true"] and not g["one_false"]
        assert g["first_error"] == "rank 1: boom" and g["no_error"] is None
        assert g["rank0"] == "from 0"
        assert g["same"] and g["nan_same"] and not g["differ"]
