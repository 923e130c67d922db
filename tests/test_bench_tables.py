"""The microbenchmarks' pure parts: sizes, speedups vs the baselines, markdown tables and plots from
synthetic result documents, and the JSON fields every document carries (no GPU)."""
import importlib.util
import json
import types

import pytest

from weave_nvshmem.bench import cli, provenance, report, tables, variants


def _args(command="allreduce", *argv):
    return cli.parser().parse_args([command, *argv])


def _doc(name):
    rows = []
    for tokens, ours, nccl in ((128, 10.0, 20.0), (8192, 400.0, 440.0)):
        nbytes = tokens * variants.AR_HIDDEN * 2
        for v, us in (("ours_auto", ours), ("ours_zerocopy", ours * 0.9), ("nccl", nccl)):
            if v in variants.names(name):
                rows.append({"series": "tokens", "variant": v, "tokens": tokens, "hidden": variants.AR_HIDDEN,
                             "bytes": nbytes, "ctas": None, "us": us, "us_max_rank": us})
        for c in variants.SWEEP_CTAS:
            rows.append({"series": "cta_sweep", "variant": "ours_auto", "tokens": tokens, "hidden": variants.AR_HIDDEN,
                         "bytes": nbytes, "ctas": c, "us": ours * 64 / c, "us_max_rank": ours * 64 / c})
    rows.append({"series": "tokens", "variant": "nccl", "tokens": 16, "hidden": variants.AR_HIDDEN, "bytes": 16 * 16384,
                 "ctas": None, "us": None, "error": "skipped: 16 tokens do not split over 3 ranks"})
    doc = {"name": name, "world_size": 4, "device": "NVIDIA H200", "device_slug": "nvidia-h200", "git_commit": "abc",
           "results": rows, **variants.describe(name)}
    return tables.prepare(doc)


def test_settings_and_sizes():
    s = cli.settings(_args())
    assert s["scatter_gather_tokens"] == list(variants.SG_TOKENS)
    assert all(t % 8 == 0 for t in variants.SG_TOKENS)  # every world size up to 8 splits them
    assert cli.max_bytes(["reducescatter"], s) == max(variants.SG_TOKENS) * variants.AR_HIDDEN * 2
    assert cli.symm_bytes(["allgather"], s) > 0  # no symmetric input sets, still a valid size
    quick = cli.settings(_args("reducescatter", "--quick"))
    assert cli.symm_bytes(["reducescatter"], quick) >= max(variants.SG_TOKENS_QUICK) * variants.AR_HIDDEN * 2
    assert quick["raw_bytes"] == [] and quick["tokens"] == list(variants.TOKENS_QUICK)


def test_no_bulk_and_no_unfused_baseline_anywhere():
    for suite in variants.SUITES:
        assert not any("bulk" in v for v in variants.names(suite))
    assert "bulk" not in variants.TUNE_ALGORITHMS
    fused = {v.name: v for v in variants.SUITES["fused"]}
    assert set(variants.baselines("fused")) == {"nccl_norm", "symm_norm", "ours_ar_norm"}
    for name in ("nccl_norm", "symm_norm", "ours_ar_norm", "norm_only"):
        assert "fused_add_rmsnorm" in fused[name].what  # the shared fused norm, never add_ + F.rms_norm


def test_the_few_sm_transports_are_benchmarked_and_swept():
    """pull and copyengine have rows (and CTA sweeps) in the suites whose ops take them, and every
    variant's algorithm is one the planner knows for that op."""
    from weave_nvshmem.collectives import plan

    known = {"allreduce": plan.ALLREDUCE_ALGORITHMS, "fused": plan.FUSED_ALGORITHMS,
             "reducescatter": plan.SCATTER_GATHER_ALGORITHMS, "allgather": plan.SCATTER_GATHER_ALGORITHMS}
    for suite, algorithms in known.items():
        ours = [v.name for v in variants.SUITES[suite] if v.kind == "ours"]
        assert "ours_pull" in ours and "ours_pull" in variants.SWEPT[suite]
        assert all(variants.ALGORITHM.get(v, "auto") in algorithms for v in ours)
    for suite in ("allreduce", "fused"):
        assert {"ours_copyengine", "ours_twoshot"} <= set(variants.SWEPT[suite])


@pytest.mark.parametrize("name", ["reducescatter", "allgather"])
def test_speedups_and_markdown(name, tmp_path):
    doc = _doc(name)
    sp = {x["tokens"]: x["vs"]["nccl"] for x in doc["speedups"]}
    assert sp[128] == pytest.approx(2.0) and sp[8192] == pytest.approx(1.1)
    md = tables.markdown(doc)
    assert ("reduce_scatter" if name == "reducescatter" else "all_gather") in md
    assert "| 8192 | 400.0 |" in md and "1.10x" in md and "2.00x" in md
    assert ("ours 2shot zero-copy us" in md) == (name == "reducescatter")
    assert "CTA sweep" in md and "do not split over 3 ranks" in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert tables.plot(doc, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0


def test_legacy_document_still_renders():
    """A bench.py document (schema 1, no variants list, old unfused baseline names) redraws."""
    doc = _doc("fused")
    for k in ("variants", "baselines", "labels", "variant_info", "speedups"):
        doc.pop(k)
    for r in doc["results"]:
        r["hidden"] = 8192
    doc["results"].append({"series": "tokens", "variant": "nccl_add_rmsnorm", "tokens": 128, "hidden": 8192,
                           "bytes": 128 * 8192 * 2, "us": 30.0, "us_max_rank": 30.0})
    md = tables.markdown(tables.prepare(doc))
    assert "(old, unfused)" in md and "3.00x" in md


def test_emulated_documents_are_labelled():
    doc = _doc("allreduce")
    assert report.EMULATED_NOTE not in tables.markdown(doc)
    doc["emulated"] = True
    assert report.EMULATED_NOTE in tables.markdown(doc)
    assert "not link figures" in report.scope_note(doc)
    assert "no-op" in report.scope_note({"world_size": 1, "name": "fused"})


def test_document_fields_and_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("WEAVE_NVSHMEM_COMMIT", "0123456789abcdef")
    h = types.SimpleNamespace(device_name="NVIDIA H200", world=4)
    rows = _doc("fused")["results"]
    for r in rows:
        r["norm"] = "inductor_formula"
    doc = cli._document(h, "fused", cli.settings(_args("fused")), rows, {"fatal": None})
    assert (doc["device"], doc["device_slug"], doc["world_size"], doc["git_commit"]) == \
        ("NVIDIA H200", "nvidia-h200", 4, "0123456789abcdef")
    assert doc["schema"] == variants.SCHEMA and doc["variants"] == list(variants.names("fused"))
    assert "torch" in doc["versions"] and "fused_norm" in doc
    paths = report.write_outputs(doc, tmp_path)
    assert paths["json"].endswith("fused-nvidia-h200-w4.json")
    saved = report.load(paths["json"])
    assert saved["speedups"] and saved["results"][0]["us"] == 10.0 and saved["results"][0]["norm"] == "inductor_formula"
    assert "shared fused add+RMSNorm used by the baselines" in open(paths["md"]).read()
    assert report.replot([paths["json"]]) == 0
    assert json.loads(open(paths["json"]).read())["labels"]["nccl_norm"].startswith("A: NCCL + fused norm")


def test_provenance_commit_override(monkeypatch):
    monkeypatch.setenv("WEAVE_NVSHMEM_COMMIT", "feedbeef")
    assert provenance.git_commit() == "feedbeef"
    monkeypatch.delenv("WEAVE_NVSHMEM_COMMIT")
    assert provenance.git_commit()  # HEAD of this checkout, or "unknown"
    assert provenance.device_slug("NVIDIA H200 NVL") == "nvidia-h200-nvl"


def test_tune_pick_prefers_few_ctas_within_tolerance():
    from weave_nvshmem.bench.suites import tune

    times = {("twoshot", 64): 100.0, ("twoshot", 8): 102.0, ("oneshot", 4): 110.0, ("lamport", 2): None}
    assert tune.tune_pick(times) == ("twoshot", 8)
    assert tune.tune_pick({("x", 1): None}) is None
    rows = [{"op": "all_reduce", "bytes": 2, "algorithm": "twoshot", "ctas": 8},
            {"op": "all_reduce", "bytes": 1, "algorithm": "lamport", "ctas": 4}, {"op": "all_reduce", "bytes": 3}]
    doc = {"world_size": 2, "device": "NVIDIA H200", "git_commit": "abc",
           "results": rows[:2] + [{"op": "fused_allreduce_rmsnorm", "tokens": 1, "error": "no configuration ran"}]}
    for r in doc["results"]:
        r.setdefault("tokens", 1)
    assert "no configuration ran" in tables.tune_markdown(doc)


def test_timing_settings_are_rank_independent():
    from weave_nvshmem.bench.harness import plan_sets, timing_settings

    s = timing_settings(quick=False)
    assert plan_sets(16 * 1024, s) == (128, 128, 3, 25)  # small sets: many, beyond 2x L2 in all
    assert plan_sets(128 << 20, s) == (2, 10, 2, 10)  # large: 2 sets, 10 calls, at most 10 replays
