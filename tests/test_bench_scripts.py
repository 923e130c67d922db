"""The scripts' reports (scripts/emulated_sweep.py, scripts/sm_bandwidth_probe.py) on synthetic
documents: emulated results are labelled and given as ratios, never as link figures (no GPU)."""
import importlib.util
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
