"""The example TP model on the CPU: the woven (split, two-stream) forward computes the same function
as the unsplit one, for splits that are odd and not multiples of the tile size; with several gloo
ranks, a sharded residual (emulated with the fused op's contract) gives the nccl result too."""
import json
import math
import os

import pytest

torch = pytest.importorskip("torch")

from examples import llama, tp_llama  # noqa: E402
from weave_nvshmem.bench.baselines import fused_add_rmsnorm  # noqa: E402
from weave_nvshmem.collectives.plan import owned_rows  # noqa: E402
from weave_nvshmem.collectives.work import completed  # noqa: E402


class LocalComm:
    """world = 1: the all-reduce is the identity; the fused op is add + RMSNorm (the shared baseline)."""

    def fused_allreduce_rmsnorm(self, x, residual, weight, eps, ctas=None, residual_mode="replicated", async_op=False):
        got = fused_add_rmsnorm(x, residual, weight, eps)
        return completed(got, "fused_allreduce_rmsnorm") if async_op else got


CFG = llama.LlamaConfig(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=2, head_dim=16)


@pytest.mark.parametrize("tokens,split", [(7, 3), (20, 1), (20, 19), (33, 16)])
def test_woven_forward_equals_unsplit(tokens, split):
    model = llama.TPModel(CFG, world=1, rank=0, device="cpu", dtype=torch.float32)
    x = torch.randn(tokens, CFG.hidden, generator=torch.Generator().manual_seed(tokens))
    ref = model.forward(x, llama.Collective("nccl", CFG.eps))
    fused = model.forward(x, llama.Collective("fused", CFG.eps, comm=LocalComm()))
    woven = model.forward(x, llama.Collective("weave", CFG.eps, comm=LocalComm()), split=split)
    assert woven.shape == ref.shape
    assert torch.allclose(fused, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(woven, ref, rtol=1e-4, atol=1e-4)


def test_attention_masks_agree():
    """The lower-right causal bias (what the woven B half uses) equals the explicit position mask."""
    q, k, v = (torch.randn(1, 4, n, 16, generator=torch.Generator().manual_seed(n)) for n in (5, 9, 9))
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, **llama._causal(5, 9, "cpu"))
    mask = torch.arange(9)[None, :] <= torch.arange(4, 9)[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(got, ref, atol=1e-6)
    assert llama._causal(7, 7, "cpu") == {"is_causal": True}


def test_no_comm_and_bad_modes():
    model = llama.TPModel(CFG, world=1, rank=0, device="cpu", dtype=torch.float32)
    x = torch.randn(5, CFG.hidden)
    assert torch.isfinite(model.forward(x, llama.Collective("no_comm", CFG.eps))).all()
    with pytest.raises(ValueError, match="mode"):
        llama.Collective("gloo", CFG.eps)
    with pytest.raises(ValueError, match="residual_mode"):
        llama.Collective("fused", CFG.eps, residual_mode="both")
    with pytest.raises(ValueError, match="sharded"):
        llama.Collective("nccl", CFG.eps, residual_mode="sharded")


def test_check_cases_cover_odd_splits_and_both_residual_modes():
    assert [tp_llama.odd_split(t) for t in (1, 2, 3, 7, 1000, 2049)] == [0, 1, 1, 3, 333, 683]
    for tokens in tp_llama.CHECK_TOKENS:
        cases = tp_llama.check_cases(tokens, planned=1024 if tokens > 2048 else 0)
        assert {(m, rm) for m, rm, _ in cases} == {(m, rm) for m in ("fused", "weave")
                                                    for rm in llama.RESIDUAL_MODES}
        splits = {s for m, _, s in cases if m == "weave"}
        assert all(0 < s < tokens for s in splits) or (tokens == 1 and splits == {0})
        if tokens > 1:
            assert any(s % 2 for s in splits)
    assert {s for m, _, s in tp_llama.check_cases(2049, planned=1024) if m == "weave"} == {683, 1024}
    assert {s for m, _, s in tp_llama.check_cases(7, planned=7) if m == "weave"} == {3}  # no empty half


def test_errors_flag_single_bad_row_and_non_finite():
    ref = torch.randn(2049, 64, dtype=torch.float64)
    out = ref.clone()
    out[17] *= 1.5
    rel, worst = tp_llama.errors(out, ref)
    assert rel < tp_llama.CHECK_TOL < tp_llama.CHECK_ROW_TOL < worst  # the normwise figure alone would pass
    out[3, 3] = float("nan")
    assert tp_llama.errors(out, ref) == (math.inf, math.inf)


def test_cli_parsing():
    p = tp_llama.parser()
    a = p.parse_args(["check"])
    assert (a.command, a.out, a.config, a.layers, a.ctas) == ("check", "bench", "llama3-70b", 2, 8)
    assert (a.tol, a.row_tol) == (tp_llama.CHECK_TOL, tp_llama.CHECK_ROW_TOL)
    a = p.parse_args(["check", "--out", "o", "--config", "small", "--ctas", "16"])
    assert (a.out, a.config, a.ctas) == ("o", "small", 16)
    a = p.parse_args(["bench", "--out", "bench/", "--quick", "--budget-s", "60"])
    assert (a.command, a.out, a.quick, a.budget_s, a.comm_ctas, a.layers, a.residual) == \
        ("bench", "bench/", True, 60.0, 8, 2, "replicated")
    a = p.parse_args(["bench", "--tokens", "1", "4096", "--comm-ctas", "4", "--residual", "sharded", "--layers", "1"])
    assert (a.tokens, a.comm_ctas, a.residual, a.layers, a.budget_s) == ([1, 4096], 4, "sharded", 1, None)
    for bad in ([], ["run"], ["check", "--config", "gpt"], ["bench", "--residual", "both"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


# ---- several ranks on gloo ---------------------------------------------------------------------
class GlooComm:
    """The fused op's contract on gloo: all-reduce + residual add + RMSNorm, the normed rows
    replicated; a sharded residual is read and written only in this rank's rows of the call's
    tensor, and its other rows are poisoned with NaN afterwards, so a read of them would show."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def fused_allreduce_rmsnorm(self, *args, async_op=False, **kwargs):
        got = self._fused(*args, **kwargs)
        return completed(got, "fused_allreduce_rmsnorm") if async_op else got

    def _fused(self, x, residual, weight, eps, ctas=None, residual_mode="replicated"):
        import torch.distributed as dist

        s = x.clone()
        dist.all_reduce(s)
        if residual_mode == "replicated":
            return fused_add_rmsnorm(s, residual, weight, eps)
        mine = owned_rows(x.shape[0], self.rank, self.world)
        mine = slice(mine.start, mine.stop)
        out = torch.zeros_like(x)
        kept = residual[mine] + s[mine]
        out[mine] = fused_add_rmsnorm(kept, None, weight, eps)[0]
        dist.all_reduce(out)  # each row is non-zero on its owner only: the sum gathers the rows exactly
        residual.fill_(float("nan"))
        residual[mine] = kept
        return out, residual


GLOO_WORLD = 3
GLOO_CFG = llama.LlamaConfig(hidden=64, intermediate=192, heads=6, kv_heads=3, layers=2, head_dim=16)
GLOO_TOKENS = (1, 2, 3, 7, 20, 33)


def _gloo_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = llama.TPModel(GLOO_CFG, world, rank, "cpu", dtype=torch.float32)
        comm = GlooComm(rank, world)
        rows = []
        for tokens in GLOO_TOKENS:
            x = torch.randn(tokens, GLOO_CFG.hidden, generator=torch.Generator().manual_seed(tokens))
            ref = model.forward(x, llama.Collective("nccl", GLOO_CFG.eps))
            for mode, rm, split in tp_llama.check_cases(tokens):
                out = model.forward(x, llama.Collective(mode, GLOO_CFG.eps, comm=comm, residual_mode=rm), split)
                rows.append({"tokens": tokens, "mode": mode, "residual_mode": rm, "split": split,
                             "errors": tp_llama.errors(out, ref), "out": out.tolist()})
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def test_sharded_residual_on_gloo_ranks_equals_nccl(tmp_path):
    """3 CPU ranks (so some halves have fewer rows than ranks): fused and woven, replicated and
    sharded, equal the nccl-mode forward, and every rank ends with the same output."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(GLOO_WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=GLOO_WORLD, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(GLOO_WORLD)]
    assert {(r["mode"], r["residual_mode"]) for r in ranks[0]} == {
        (m, rm) for m in ("fused", "weave") for rm in llama.RESIDUAL_MODES}
    for rows in zip(*ranks):
        what = {k: rows[0][k] for k in ("tokens", "mode", "residual_mode", "split")}
        for r in rows:
            rel, worst = r["errors"]
            assert rel < 1e-4 and worst < 1e-4, what
            # every rank ends with every row
            assert torch.allclose(torch.tensor(r["out"]), torch.tensor(rows[0]["out"]), atol=1e-5), what
