"""The layer benchmark's host side (examples/bench_layer.py): settings, SplitTuner wiring, the
JSON / markdown / PNG writers on synthetic rows, and that every mode's norm is the shared fused
baseline (never an unfused chain)."""
import importlib.util
import inspect
import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from examples import bench_layer, llama, tp_llama  # noqa: E402
from weave_nvshmem.bench import baselines  # noqa: E402
from weave_nvshmem.bench.suites import fused as fused_suite  # noqa: E402
from weave_nvshmem.collectives.work import completed  # noqa: E402
from weave_nvshmem.overlap import Candidate, LayerShape, SplitTuner, candidates  # noqa: E402


def _args(*argv):
    return tp_llama.parser().parse_args(["bench", *argv])


def test_settings_defaults_and_overrides():
    s = bench_layer.settings(_args())
    assert s["tokens"] == list(bench_layer.TOKENS_FULL) == [1, 16, 128, 512, 1024, 2048, 4096, 8192, 16384]
    assert (s["replays"], s["tune_replays"], s["comm_ctas"], s["residual_mode"], s["layers"]) == \
        (20, 6, 8, "replicated", 2)
    assert (s["config"]["hidden"], s["config"]["intermediate"], s["config"]["heads"], s["config"]["kv_heads"]) == \
        (8192, 28672, 64, 8)
    q = bench_layer.settings(_args("--quick", "--layers", "1", "--comm-ctas", "16", "--residual", "sharded"))
    assert (q["tokens"], q["replays"], q["layers"], q["config"]["layers"]) == ([1, 128, 1024, 8192], 10, 1, 1)
    assert (q["comm_ctas"], q["residual_mode"]) == (16, "sharded")
    assert bench_layer.settings(_args("--tokens", "3", "5", "--replays", "7"))["tokens"] == [3, 5]
    assert [bench_layer.graph_calls(t) for t in (1, 1024, 1025, 4096, 8192)] == [4, 4, 2, 2, 1]


def test_tune_picks_fastest_candidate_and_records_all(tmp_path):
    s = bench_layer.settings(_args())
    shape = LayerShape(8192, 28672, 64, 8, 4)
    tuner = SplitTuner("dev", path=tmp_path / "splits.json")
    cost = {"fused": 900.0, "nccl": 1000.0}
    calls = []

    def timed(mode, split, replays):
        calls.append((mode, split, replays))
        if split == 1024:
            return {"error": "replay: rank 1: boom"}
        return {"us": cost.get(mode, 700.0 + split / 100), "error": None}

    chosen, tried = bench_layer._tune(s, tuner, shape, 132, 2048, timed)
    cands = candidates(shape, 2048, sms=132, comm_ctas=8)
    assert [(t["mode"], t["split"]) for t in tried] == [(c.mode, c.split) for c in cands]
    assert all(r == s["tune_replays"] for *_, r in calls)
    assert ("nccl", 0, s["tune_replays"]) in calls  # "plain" runs as the nccl mode
    weave_ok = [c for c in cands if c.mode == "weave" and c.split != 1024]
    assert chosen == min(weave_ok, key=lambda c: c.split)
    assert any(t["error"] for t in tried) == any(c.split == 1024 for c in cands)
    small, _ = bench_layer._tune(s, tuner, shape, 132, 16, timed)  # no split below 2 x 128 tokens
    assert small == Candidate("fused")


def _doc():
    rows = []
    us = {1: {"nccl": 600.0, "fused": 500.0, "weave": 500.0, "no_comm": 400.0},
          2048: {"nccl": 9000.0, "fused": 8000.0, "weave": 6000.0, "no_comm": 5000.0}}
    for tokens, modes in us.items():
        for mode, u in modes.items():
            row = {"tokens": tokens, "mode": mode, "layers": 2, "hidden": 8192, "us": u, "us_max_rank": u * 1.01,
                   "error": None, "us_per_layer": u / 2, "tokens_per_s_per_layer": tokens / (u / 2) * 1e6,
                   "norm": {"residual": "inductor_formula" if tokens == 1 else "vllm", "first": "eager_rms_norm"}}
            if mode == "weave":
                row["schedule"] = {"mode": "fused", "split": 0} if tokens == 1 else {"mode": "weave", "split": 683}
                row["candidates"] = [{"mode": "fused", "split": 0, "us": 510.0, "error": None},
                                     {"mode": "weave", "split": 1024, "us": None, "error": "capture: rank 0: boom"}]
            rows.append(row)
    for mode in llama.MODES:
        rows.append({"tokens": 16384, "mode": mode, "layers": 2, "hidden": 8192, "us": None,
                     "error": "skipped: --budget-s exhausted"})
    settings = bench_layer.settings(_args())
    return {"schema": bench_layer.SCHEMA, "name": "layer", "device": "NVIDIA H200", "device_slug": "nvidia-h200",
            "world_size": 4, "git_commit": "0123456789abcdef", "versions": {"torch": "x"}, "settings": settings,
            "results": rows, "fatal": None}


def test_ratios():
    r = {x["tokens"]: x for x in bench_layer.ratios(_doc()["results"])}
    assert r[2048]["nccl_over_weave"] == pytest.approx(1.5)
    assert r[2048]["nccl_over_fused"] == pytest.approx(9000 / 8000)
    assert r[2048]["weave_over_no_comm"] == pytest.approx(1.2)
    assert r[16384] == {"tokens": 16384, "weave_over_no_comm": None, "nccl_over_weave": None, "nccl_over_fused": None}


def test_markdown_table():
    md = bench_layer.markdown(_doc())
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| tokens"))
    assert lines[head] == ("| tokens | NCCL us | fused us | weave us | no comm us | weave schedule | NCCL / weave | "
                           "NCCL / fused | weave / no comm | weave tokens/s per layer |")
    assert lines[head + 2] == "| 1 | 300.0 | 250.0 | 250.0 | 200.0 | fused | 1.20x | 1.20x | 1.25x | 4.0k |"
    assert lines[head + 3] == ("| 2048 | 4500.0 | 4000.0 | 3000.0 | 2500.0 | split 683 | 1.50x | 1.12x | 1.20x "
                               "| 682.7k |")
    assert lines[head + 4].startswith("| 16384 | err | err | err | err | - | - | - | - | - |")
    assert "shared fused norm by token count: 1: inductor_formula, 2048: vllm" in md
    assert "- weave at tokens [16384]: skipped: --budget-s exhausted" in md
    assert "- weave candidate split 1024 at tokens [1, 2048]: capture: rank 0: boom" in md
    assert "4x NVIDIA H200" in md and "0123456789" in md and "8 comm CTAs" in md
    assert bench_layer.schedule_text({"mode": "plain", "split": 0}) == "plain (NCCL)"


def test_write_outputs(tmp_path):
    doc = _doc()
    paths = bench_layer.write_outputs(doc, tmp_path / "out")
    assert paths["json"].endswith("layer-nvidia-h200-w4.json")
    saved = json.loads(open(paths["json"]).read())
    assert saved["ratios"] == bench_layer.ratios(doc["results"])
    assert saved["results"][2]["schedule"] == {"mode": "fused", "split": 0}
    assert open(paths["md"]).read() == bench_layer.markdown(doc)
    if importlib.util.find_spec("matplotlib") is None:
        assert "png" not in paths
    else:
        assert os.path.getsize(paths["png"]) > 1000
    assert "png" not in bench_layer.write_outputs(doc, tmp_path / "partial", plotted=False)


def test_plot_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    paths = bench_layer.write_outputs(_doc(), tmp_path)
    assert set(paths) == {"json", "md"}
    assert "matplotlib unavailable" in capsys.readouterr().err


def test_settings_modes_subset_and_world1_label():
    s = bench_layer.settings(_args("--modes", "no_comm", "nccl", "--shard-of", "4"))
    assert s["modes"] == ["nccl", "no_comm"] and s["shard_of"] == 4  # table order, whatever the order given
    doc = _doc()
    doc["world_size"] = 1
    doc["settings"]["shard_of"] = 4
    md = bench_layer.markdown(doc)
    assert "no-op" in md and "1x NVIDIA H200 (rank 0's shard of TP=4)" in md


# ---- every mode's norm is the shared baseline -------------------------------------------------
CFG = llama.LlamaConfig(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=2, head_dim=16)


class _Identity:
    """The fused op's contract at world 1, by the shared baseline (as the world-1 kernel computes)."""

    def fused_allreduce_rmsnorm(self, x, residual, weight, eps, ctas=None, residual_mode="replicated", async_op=False):
        got = baselines.fused_add_rmsnorm(x, residual, weight, eps)
        return completed(got) if async_op else got


@pytest.mark.parametrize("mode", llama.MODES)
def test_each_mode_norms_with_the_shared_baseline(mode, monkeypatch):
    """Spy on the shared instance's type: nccl / no_comm normalise every layer with it; fused and
    weave hand the norm to the fused op and use the baseline only for the first norm."""
    calls = []
    real = baselines.FusedAddRMSNorm.__call__

    def spy(self, x, residual, weight, eps):
        calls.append((self is baselines.fused_add_rmsnorm, residual is None))
        return real(self, x, residual, weight, eps)

    monkeypatch.setattr(baselines.FusedAddRMSNorm, "__call__", spy)
    coll = llama.Collective(mode, CFG.eps, comm=_Identity() if mode in ("fused", "weave") else None)
    assert coll.norm is baselines.fused_add_rmsnorm
    model = llama.TPModel(CFG, world=1, rank=0, device="cpu", dtype=torch.float32)
    model.forward(torch.randn(5, CFG.hidden), coll, split=2 if mode == "weave" else 0)
    assert all(shared for shared, _ in calls)
    first = [c for c in calls if c[1]]
    assert len(first) == 1  # the first layer's input norm
    if mode in ("nccl", "no_comm"):
        assert len(calls) == 1 + 2 * CFG.layers


def test_microbenchmark_baselines_norm_with_the_shared_baseline(monkeypatch):
    """The fused suite's baseline rows (NCCL / symm / ours all-reduce, then the norm; the norm
    alone) all end in the shared fused norm."""
    calls = []
    monkeypatch.setattr(baselines.FusedAddRMSNorm, "__call__", lambda self, x, r, w, eps: calls.append(self) or (x, r))
    monkeypatch.setattr(baselines, "symm_two_shot", lambda y, group_name: y)

    class H:
        group_name = "g"

        class comm:
            @staticmethod
            def all_reduce(x, out=None):
                return x

    x = torch.randn(3, 8)
    for v in fused_suite.NORMED:
        fused_suite.baseline_fn(H, v)(x, x.clone(), torch.ones(8), 1e-6)
    assert calls == [baselines.fused_add_rmsnorm] * len(fused_suite.NORMED)


def test_no_mode_uses_an_unfused_chain():
    """No benchmark mode or example computes an RMSNorm by hand: the only formula is the
    Inductor-compiled candidate in baselines."""
    from weave_nvshmem.bench.suites import fused, norm

    for mod in (llama, tp_llama, bench_layer, fused, norm):
        src = inspect.getsource(mod)
        assert "rsqrt" not in src and ".pow(2)" not in src and "F.rms_norm" not in src, mod.__name__
    assert not hasattr(tp_llama, "rms_norm") and not hasattr(llama, "rms_norm")


def test_tune_tries_the_further_cta_budgets(tmp_path):
    s = bench_layer.settings(_args("--tune-ctas", "16", "24"))
    assert s["tune_ctas"] == [16, 24]
    shape = LayerShape(8192, 28672, 64, 8, 4)
    calls = []

    def timed(mode, split, replays, ctas=None):
        calls.append((mode, split, ctas))
        return {"us": 500.0 if (split, ctas) == (1280, 16) else 900.0, "error": None}

    chosen, tried = bench_layer._tune(s, SplitTuner("dev", path=tmp_path / "s.json"), shape, 132, 2048, timed)
    assert chosen == Candidate("weave", 1280, 16)
    assert ("nccl", 0, None) in calls and ("fused", 0, 24) in calls
    assert {"mode": "weave", "split": 1280, "ctas": 16, "us": 500.0, "error": None} in tried


def test_tune_tries_the_fused_op_algorithms(tmp_path):
    s = bench_layer.settings(_args("--tune-algorithms", "twoshot"))
    assert s["tune_algorithms"] == ["twoshot"]
    few_sm = bench_layer.settings(_args("--tune-algorithms", "pull", "copyengine"))
    assert few_sm["tune_algorithms"] == ["pull", "copyengine"] and "local" not in bench_layer.TUNE_ALGORITHMS
    shape = LayerShape(8192, 28672, 64, 8, 4)
    calls = []

    def timed(mode, split, replays, ctas=None, algorithm="auto"):
        calls.append((mode, split, algorithm))
        return {"us": 400.0 if (split, algorithm) == (768, "twoshot") else 900.0, "error": None}

    chosen, tried = bench_layer._tune(s, SplitTuner("dev", path=tmp_path / "s.json"), shape, 132, 2048, timed)
    assert chosen == Candidate("weave", 768, None, "twoshot")
    assert ("nccl", 0, "auto") in calls and ("fused", 0, "twoshot") in calls and ("fused", 0, "auto") in calls
    calls.clear()
    chosen, _ = bench_layer._tune(few_sm, SplitTuner("dev", path=tmp_path / "t.json"), shape, 132, 2048, timed)
    tried_algorithms = {a for mode, _, a in calls if mode in ("fused", "weave")}
    assert tried_algorithms == {"auto", "pull", "copyengine"} and chosen.algorithm in tried_algorithms
