"""The scripts' reports (scripts/emulated_sweep.py, scripts/sm_bandwidth_probe.py, scripts/sm_write_probe.py,
...) on synthetic documents: emulated results are labelled and given as ratios, never as link figures (no GPU)."""
import importlib.util
import json
import shutil
from pathlib import Path

from weave_nvshmem.bench import report

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_emulated_sweep_reports_ratios_with_the_emulated_label(tmp_path):
    sweep = _load("emulated_sweep")
    doc = {"name": "emulated-sweep", "stem": "emulated-sweep-nvidia-h200", "device": "NVIDIA H200", "emulated": True,
           "git_commit": "abc", "hidden": 8192, "dtype": "bfloat16",
           "rows": [{"world": 4, "op": "fused_twoshot", "tokens": 8192, "us": {"8": 400.0, "64": 100.0}}]}
    md = sweep.markdown(doc)
    assert report.EMULATED_NOTE in md and "GB/s" not in md
    assert "| 4 | fused_twoshot | 8192 | 0.25 | 1.00 |" in md  # best / time, not microseconds
    paths = report.write_outputs(doc, tmp_path, markdown=sweep.markdown, plot=sweep.plot)
    assert paths["json"].endswith("emulated-sweep-nvidia-h200.json") and report.load(paths["json"])["emulated"]


def test_sm_probe_table():
    probe = _load("sm_bandwidth_probe")
    rows = [{"kind": k, "in_flight_per_thread": u, "blocks": b, "GB_s_per_sm": float(u + b)}
            for k in ("read", "copy") for u in probe.UNROLLS for b in probe.BLOCKS]
    md = probe.markdown({"device": "NVIDIA H200", "commit": "a6f9bec", "rows": rows})
    assert "commit a6f9bec" in md and "| copy | 16 | 128 | 17.0 |" in md


def test_transport_footprint_traffic_and_table():
    fp = _load("transport_footprint")
    n, w = 8192 * 8192 * 2, 4
    zc = fp.traffic("all_reduce", "pull", True, n, w)
    assert zc == {"read": n + 3 * n / 4, "written": 2 * n / 4 + 3 * n / 4, "remote_write": 0.0}
    staged = fp.traffic("all_reduce", "pull", False, n, w)
    assert staged["written"] == 2 * n and staged["remote_write"] == 0.0  # the copy into our own staging
    assert fp.traffic("all_reduce", "twoshot", False, n, w)["remote_write"] == 3 * n / 4  # pushed to peers
    assert ("fused", "pull") in fp.CASES and ("fused", "twoshot") in fp.CASES
    rep = fp.traffic("fused", "pull", True, n, w)
    assert rep == {"read": n + n / 4 + 3 * n / 4, "written": 3 * n / 4 + 2 * 3 * n / 4, "remote_write": 0.0}
    assert fp.traffic("fused", "twoshot", True, n, w)["read"] == n + 2 * n / 4 + 2 * 3 * n / 4  # s re-read
    shard = fp.traffic("fused", "pull", True, n, w, sharded=True)
    assert shard == {"read": n + n / 4 + 3 * n / 4, "written": 3 * n / 4 + 3 * n / 4, "remote_write": 0.0}
    assert fp.traffic("fused", "twoshot", True, n, w, sharded=True)["read"] == n + 2 * n / 4 + 3 * n / 4
    assert fp.traffic("fused", "pull", False, n, w)["remote_write"] == 0.0  # copied into our own staging
    assert fp.traffic("fused", "twoshot", False, n, w)["remote_write"] == 3 * n / 4
    # copyengine: the SMs only reduce; the device copies move the rest
    assert ("all_reduce", "copyengine") in fp.CASES and ("fused", "copyengine") in fp.CASES
    assert fp.traffic("all_reduce", "copyengine", False, n, w) == {"read": n, "written": 2 * n / 4, "remote_write": 0.0,
                                                                   "copied": 2 * 3 * n / 4}
    assert fp.traffic("fused", "copyengine", False, n, w) == {"read": n + 2 * n / 4, "written": 4 * n / 4,
                                                              "remote_write": 0.0, "copied": 3 * 3 * n / 4}
    assert fp.traffic("fused", "copyengine", False, n, w, sharded=True)["copied"] == 2 * 3 * n / 4
    row = {"op": "all_reduce", "algorithm": "pull", "zero_copy": True, "tokens": 8192, "ctas": 8, "us": 500.0,
           "cta_us": 4000.0, "read_per_sm_MB": 19.9, "written_per_sm_MB": 4.8, "remote_written_per_sm_MB": 0.0}
    doc = {"device": "NVIDIA H200", "git_commit": "abc", "world": 4, "dtype": "bfloat16", "hidden": 8192,
           "rates_GB_s": fp.RATES_GB_S, "rows": [row], "traffic_formula": fp.traffic.__doc__}
    md = fp.markdown(doc)
    assert report.EMULATED_NOTE in md and "not NVLink" in md
    assert "| all_reduce | pull | yes | 8192 | 8 | 500.0 | 4000 | 19.90 | 4.80 | 0.00 | 200 |" in md


def test_interference_proxy_reports_ratios_only():
    ip = _load("interference_proxy")
    doc = {"device": "NVIDIA H200", "git_commit": "abc", "world": 4, "gemm": [4096, 8192, 14336],
           "all_reduce_shape": [4096, 8192], "dtype": "bfloat16",
           "rows": [{"algorithm": "pull", "ctas": 4, "slowdown": 1.041, "gemm_ms_alone": 1.2, "gemm_ms_beside": 1.25}]}
    md = ip.markdown(doc)
    assert "| pull | 4 | 1.041x |" in md and report.EMULATED_NOTE in md and " ms" not in md


def test_signature_overhead_statistics_and_verdicts():
    so = _load("signature_overhead")
    flat = so.paired_summary([0.05] * 40)
    assert flat["added"] == flat["lo"] == flat["hi"] == flat["q1"] == flat["q3"] == 0.05
    assert flat["verdict"] == "within target"
    assert so.paired_summary([0.5 + 0.01 * (i % 3) for i in range(40)])["verdict"] == "above target"
    # the same noise around a median at the target is not resolved; around 0 it is within
    noise = [0.2 * ((i * 7) % 11 - 5) / 5 for i in range(41)]  # -0.2..+0.2, median 0
    wide = so.paired_summary([so.TARGET_US + d for d in noise])
    assert wide["lo"] < so.TARGET_US < wide["hi"] and wide["verdict"] == "not resolved"
    near0 = so.paired_summary(noise)
    assert near0["added"] == 0.0 and near0["q1"] < 0 < near0["q3"] and near0["hi"] <= so.TARGET_US
    assert near0 == so.paired_summary(noise)  # seeded: the same rounds give the same interval
    assert near0["lo"] <= near0["added"] <= near0["hi"]


def test_signature_overhead_report():
    so = _load("signature_overhead")

    def row(ran, added, lo, hi, verdict, tokens=1):
        return {"op": "all_reduce", "algorithm": ran, "ran": ran, "grid": 2, "tokens": tokens, "hidden": 8192,
                "us_on": 6.5, "us_off": 6.4, "added": added, "q1": added - 0.02, "q3": added + 0.03,
                "lo": lo, "hi": hi, "verdict": verdict}

    rows = [row("lamport", -0.21, -0.25, -0.17, "within target"), row("oneshot", 0.02, -0.01, 0.05, "within target"),
            row("twoshot", 0.25, 0.1, 0.4, "not resolved", tokens=16)]
    s = so.summary(rows)
    assert s["handshake_cases"] == 2 and s["verdict"] == "not resolved" and s["worst_hi_us"] == 0.4
    assert s["verdicts"] == {"within target": 1, "above target": 0, "not resolved": 1}
    assert s["control_abs_added_us"] == 0.21  # the Lamport row: no handshake, its added time is noise
    assert so.summary(rows + [row("oneshot", 0.5, 0.4, 0.6, "above target")])["verdict"] == "above target"
    doc = {"device": "NVIDIA H200", "git_commit": "abc1234", "world_size": 2, "dtype": "bfloat16", "hidden": 8192,
           "steps_per_graph": 20, "rounds": 60, "replays": 50, "level": 0.9, "rows": rows, "summary": s}
    md = so.markdown(doc)
    assert "| all_reduce | twoshot | twoshot (2) | 16 | 6.50 | 6.40 | +0.250 | +0.230..+0.280 | +0.100..+0.400 | " \
           "not resolved |" in md
    assert "| lamport (2) | 1 |" in md and md.count("| control |") == 1
    assert "commit abc1234" in md.lower() and "overall **not resolved**" in md and "90% interval" in md


def test_sm_write_probe_replot_round_trip(tmp_path):
    probe = _load("sm_write_probe")
    base = {1: 63.0, 2: 63.0, 4: 63.0, 8: 62.5, 16: 62.0, 32: 59.0}  # TMA: 4 KB chunks -0.5, issuers / 4 at 32
    rows = [{"kind": k, "chunk_kb": ck, "issuers": i, "wait_depth": d, "ctas": c, "GB_s": 60.0 * c,
             "GB_s_per_sm": base[c] - (k == "tma") * ((ck == 4) * 0.5 + (c == 32) * (i or 0) / 4)}
            for c in probe.CTAS for k, ck, i, d in probe.METHODS]
    doc = {"name": "sm-write", "stem": "sm-write-nvidia-h200", "device": "NVIDIA H200", "git_commit": "99d106b",
           "nbytes": probe.NBYTES, "ctas": list(probe.CTAS), "rows": rows}
    path = tmp_path / "sm-write-nvidia-h200.json"
    path.write_text(json.dumps(doc))
    assert probe.main(["--replot", str(path)]) == 0
    md = (tmp_path / "sm-write-nvidia-h200.md").read_text()
    assert "commit 99d106b" in md and "over 1 GiB" in md
    assert "tops out at 62-63 GB/s per SM from 1 to 16 blocks (best of each family; 59 at 32)" in md
    assert "at most 1.000x the best vector store: TMA bulk stores do not raise" in md
    assert "TMA 4 KB, 16 warps, wait 2 at 32 blocks, writes 54.5 GB/s" in md
    assert "| 32 | 59.0 | 58.8 | 54.5 | 0.996x |" in md
    assert "| TMA 64 KB, 4 warps, wait 8 | 63.0 | 63.0 | 63.0 | 62.5 | 62.0 | 58.0 |" in md
    assert report.load(path)["rows"] == rows
    rows[-1]["GB_s_per_sm"] = 59.0 * 1.05  # a TMA row 5% above the vector stores at 32 blocks
    assert "TMA bulk stores raise an SM's write rate by up to 5%" in probe.markdown(doc)


def _committed_md_replotted(script: str, stem: str, tmp_path) -> str:
    """The md ``script --replot`` writes from the committed bench/<stem>.json, checked equal to the
    committed bench/<stem>.md."""
    committed = SCRIPTS.parent / "bench" / f"{stem}.json"
    shutil.copy(committed, tmp_path / committed.name)
    assert _load(script).main(["--replot", str(tmp_path / committed.name)]) == 0
    md = (tmp_path / f"{stem}.md").read_text()
    assert md == committed.with_suffix(".md").read_text()
    return md


def test_sm_write_probe_committed_report_is_its_json_replotted(tmp_path):
    md = _committed_md_replotted("sm_write_probe", "sm-write-nvidia-h200", tmp_path)
    assert "tops out at 62-63 GB/s per SM from 1 to 16 blocks" in md and "TMA bulk stores do not raise" in md


def test_compression_throughput_committed_report_is_its_json_replotted(tmp_path):
    md = _committed_md_replotted("compression_throughput", "compression-throughput", tmp_path)
    assert report.EMULATED_NOTE in md and "| fused | 8192 | mxfp4/32 | 4.25 |" in md


def test_norm_local_grid_committed_report_is_its_json_replotted(tmp_path):
    md = _committed_md_replotted("norm_local_grid", "norm-local-grid-nvidia-h200", tmp_path)
    assert "every grid gave the same bits: yes" in md


def test_norm_local_grid_report(tmp_path):
    """scripts/norm_local_grid.py: speed against Inductor per rows-per-CTA and at the planner's grid."""
    script = _load("norm_local_grid")
    row = {"dtype": "bfloat16", "hidden": 8192, "tokens": 2048, "residual": False, "inductor_us": 18.0, "planner_grid": 256,
           "same_bits": True, "planner_us": 18.0}
    row.update({f"R{r}_us": 18.0 * (2 if r == 1 else 1) for r in script.ROWS_PER_CTA})
    doc = {"device": "NVIDIA H200", "git_commit": "0123456789abcdef", "rows_per_cta": list(script.ROWS_PER_CTA),
           "rows": [row], "stem": "norm-local-grid-test"}
    md = script.markdown(doc)
    assert "| bfloat16 | 8192 | 2048 | no | 18.00 | 36.00 (0.50x) | 18.00 (1.00x)" in md and "| 256 |" in md
    assert "same bits: yes" in md
    (tmp_path / "norm-local-grid-test.json").write_text(json.dumps(doc))
    assert script.main(["--replot", str(tmp_path / "norm-local-grid-test.json")]) == 0
    assert (tmp_path / "norm-local-grid-test.md").read_text() == md


def test_norm_launch_stats_parses_ncu_and_renders_the_committed_table():
    """scripts/norm_launch_stats.py: ncu's report lines -> one row per launch; the committed
    bench/norm-local-registers md holds the table of the committed ncu log; a log of the wrong
    number of launches is refused."""
    import pytest

    mod = _load("norm_launch_stats")
    snippet = ("  wn_fused_local_bf16_v1 (512, 1, 1)x(512, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n"
               "    Duration                         us         6.40\n"
               "    Registers Per Thread             register/thread              40\n"
               "    Waves Per SM                                                1.29\n"
               "    Achieved Occupancy                        %        61.27\n"
               "  triton_red_x (16384, 1, 1)x(512, 1, 1), Context 1\n"
               "    Duration                         ms         1.25\n")
    rows = mod.parse(snippet)
    assert rows[0] == {"kernel": "wn_fused_local_bf16_v1", "grid": 512, "block": 512, "us": 6.40, "registers": 40.0,
                       "waves": 1.29, "occupancy": 61.27}
    assert rows[1]["grid"] == 16384 and rows[1]["us"] == 1250.0
    with pytest.raises(ValueError, match="expected 45 launches"):
        mod.table(rows)
    bench = SCRIPTS.parent / "bench"
    committed = mod.table(mod.parse((bench / "norm-launch-stats-nvidia-h200.ncu.log").read_text()))
    assert committed in (bench / "norm-local-registers-nvidia-h200.md").read_text()
    assert "| wn_fused_local_bf16_v1 | 512 x 512 | 40 | 1.29 |" in committed
