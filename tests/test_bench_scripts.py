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
