"""The benchmark's pure parts for the reduce-scatter / all-gather microbenchmarks: sizes, speedups
vs NCCL, markdown tables and plots from a synthetic result document (no GPU)."""
import argparse

import pytest

from weave_nvshmem import bench


def _args(quick=False):
    return argparse.Namespace(quick=quick, calls=None, max_sets=None, warmup=None, replays=None, timeout_s=10.0,
                              budget_s=None)


def _doc(name):
    rows = []
    for tokens, ours, nccl in ((128, 10.0, 20.0), (8192, 400.0, 440.0)):
        nbytes = tokens * bench.AR_HIDDEN * 2
        for v, us in (("ours_auto", ours), ("ours_zerocopy", ours * 0.9), ("nccl", nccl)):
            if v in bench.SG_VARIANTS[name]:
                rows.append({"series": "tokens", "variant": v, "tokens": tokens, "hidden": bench.AR_HIDDEN,
                             "bytes": nbytes, "ctas": None, "us": us, "us_max_rank": us})
        for c in bench.AR_CTAS:
            rows.append({"series": "cta_sweep", "variant": "ours_auto", "tokens": tokens, "hidden": bench.AR_HIDDEN,
                         "bytes": nbytes, "ctas": c, "us": ours * 64 / c, "us_max_rank": ours * 64 / c})
    rows.append({"series": "tokens", "variant": "nccl", "tokens": 16, "hidden": bench.AR_HIDDEN, "bytes": 16 * 16384,
                 "ctas": None, "us": None, "error": "skipped: 16 tokens do not split over 3 ranks"})
    doc = {"name": name, "world_size": 4, "device": "NVIDIA H200", "git_commit": "abc", "results": rows}
    doc["speedups"] = bench.speedups(name, rows)
    return doc


def test_settings_and_sizes():
    s = bench._settings(_args())
    assert s["scatter_gather_tokens"] == list(bench.SG_TOKENS)
    assert all(t % 8 == 0 for t in bench.SG_TOKENS)  # every world size up to 8 splits them
    assert bench._max_bytes("reducescatter", s) == max(bench.SG_TOKENS) * bench.AR_HIDDEN * 2
    assert bench._symm_bytes("allgather", s) > 0  # no symmetric input sets, still a valid size
    quick = bench._settings(_args(quick=True))
    assert bench._symm_bytes("reducescatter", quick) >= max(bench.SG_TOKENS_QUICK) * bench.AR_HIDDEN * 2


@pytest.mark.parametrize("name", ["reducescatter", "allgather"])
def test_speedups_and_markdown(name, tmp_path):
    doc = _doc(name)
    sp = {x["tokens"]: x["vs"]["nccl"] for x in doc["speedups"]}
    assert sp[128] == pytest.approx(2.0) and sp[8192] == pytest.approx(1.1)
    md = bench.markdown(doc)
    assert ("reduce_scatter" if name == "reducescatter" else "all_gather") in md
    assert "| 8192 | 400.0 |" in md and "1.10x" in md and "2.00x" in md
    assert ("ours 2shot zero-copy us" in md) == (name == "reducescatter")
    assert "CTA sweep" in md and "do not split over 3 ranks" in md
    if bench.pyplot() is not None:
        assert bench.plot(doc, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0


def test_every_bench_is_a_cli_choice():
    choices = bench.parser()._actions[1].choices
    assert set(bench.BENCHES) | {"all", "tune", "plot"} <= set(choices)
