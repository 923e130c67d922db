"""The shared fused add + RMSNorm baseline: choice by measurement (fake timings), caching, the
records the JSON keeps, and the candidates' numerics on the CPU against float64 (no GPU)."""
import pytest

torch = pytest.importorskip("torch")

from weave_nvshmem.bench import baselines  # noqa: E402


def test_pick_fastest_ignores_failures_and_breaks_ties_in_order():
    times = {"inductor_formula": 5.0, "inductor_rms_norm": 4.0, "eager_rms_norm": 9.0, "vllm": "not installed",
             "flashinfer": None}
    assert baselines.pick_fastest(times) == "inductor_rms_norm"
    assert baselines.pick_fastest({"eager_rms_norm": 3.0, "inductor_formula": 3.0}) == "inductor_formula"
    assert baselines.pick_fastest({"vllm": "replay: rank 0: boom", "x": 0.0}) is None


class FakeCandidates(baselines.FusedAddRMSNorm):
    """Candidates whose "callables" are their names; vLLM not installed."""

    def fn(self, name, key):
        if name == "vllm":
            raise baselines.Unavailable("not installed (ModuleNotFoundError: No module named 'vllm')")
        return name


def test_choose_measures_once_per_key_and_records_every_candidate():
    norm = FakeCandidates()
    timed = []
    fake = {"inductor_formula": 4.4, "inductor_rms_norm": 4.6, "eager_rms_norm": 9.2, "flashinfer": "capture: boom"}

    def timer(fn):
        timed.append(fn)
        return fake[fn]

    rec = norm.choose(8192, 8192, torch.bfloat16, timer)
    assert rec["chosen"] == "inductor_formula" and rec["label"] == baselines.NORM_LABELS["inductor_formula"]
    assert rec["us"]["vllm"].startswith("not installed") and rec["us"]["flashinfer"] == "capture: boom"
    assert rec["us"]["eager_rms_norm"] == 9.2
    assert norm.choose(8192, 8192, torch.bfloat16, timer) is rec and len(timed) == 4  # cached
    other = norm.choose(8192, 8192, torch.bfloat16, lambda fn: 1.0 if fn == "eager_rms_norm" else 2.0, residual=False)
    assert other["chosen"] == "eager_rms_norm"
    recs = norm.records()
    assert [(r["tokens"], r["hidden"], r["dtype"], r["residual"], r["chosen"]) for r in recs] == \
        [(8192, 8192, "bfloat16", True, "inductor_formula"), (8192, 8192, "bfloat16", False, "eager_rms_norm")]


def test_choose_takes_rank0s_verdict():
    norm = FakeCandidates()
    rec = norm.choose(1, 64, torch.float16, lambda fn: 1.0,
                      decide=lambda r: dict(r, chosen="eager_rms_norm"))  # what rank 0 measured
    assert rec["chosen"] == "eager_rms_norm"
    assert norm.chosen_name(torch.empty(1, 64, dtype=torch.float16), torch.empty(1, 64)) == "eager_rms_norm"


def test_unmeasured_shapes_run_the_default_and_match_float64():
    norm = baselines.FusedAddRMSNorm()
    x, r = torch.randn(7, 64), torch.randn(7, 64)
    w = 1 + 0.1 * torch.randn(64)
    s64 = x.double() + r.double()
    ref = s64 * torch.rsqrt(s64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    assert norm.chosen_name(x, r) == baselines.DEFAULT_NORM
    out, new_r = norm(x.clone(), r.clone(), w, 1e-6)
    assert torch.allclose(out.double(), ref, atol=1e-5) and torch.allclose(new_r.double(), s64, atol=1e-6)
    # the compiled candidates' Python bodies compute the same (run eagerly here only to check them)
    for body in (baselines._formula, baselines._compiled_rms_norm):
        got, s = body(x, r, w, 1e-6)
        assert torch.allclose(got.double(), ref, atol=1e-5) and torch.allclose(s.double(), s64, atol=1e-6)
    # the in-place reference returns the residual it was given, updated to the sum
    r2 = r.clone()
    got, same_r = baselines._formula_in_place(x, r2, w, 1e-6)
    assert same_r is r2 and torch.allclose(r2.double(), s64, atol=1e-6) and torch.allclose(got.double(), ref, atol=1e-5)
    assert baselines.INDUCTOR_IN_PLACE not in baselines.NORM_CANDIDATES
    out1, same = norm(x, None, w, 1e-6)
    assert same is x and out1.shape == x.shape


def test_optional_kernels_are_reported_when_missing():
    for name in ("vllm", "flashinfer"):
        try:
            baselines.make_candidate(name)
        except baselines.Unavailable as exc:
            assert str(exc).startswith("not installed")
    with pytest.raises(ValueError, match="unknown candidate"):
        baselines.make_candidate("chain")


def test_window_and_fused_symm_status_say_why():
    st = baselines.nccl_window_status()
    assert set(st) == {"available", "reason"} and st["reason"]
    assert isinstance(baselines.symm_fused_ops(), list)


def test_then_norm_composes_all_reduce_and_the_shared_norm():
    seen = []
    fn = baselines.then_norm(lambda x: seen.append("ar") or x * 2,
                             lambda x, r, w, eps: seen.append("norm") or (x + r, r))
    out, _ = fn(torch.ones(2), torch.ones(2), None, 0.0)
    assert seen == ["ar", "norm"] and out.tolist() == [3.0, 3.0]
