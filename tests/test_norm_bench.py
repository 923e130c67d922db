"""The norm suite's pure parts: sizes, bytes, per-row ratios and the target verdict, the markdown
and the document it writes (synthetic rows, no GPU)."""
import importlib.util

import pytest

from weave_nvshmem.bench import cli, norm_tables, report, variants
from weave_nvshmem.bench.suites import norm


def test_cases_order_and_bytes():
    s = cli.settings(cli.parser().parse_args(["norm"]))
    cases = norm.cases(s)
    assert len(cases) == len(variants.NORM_TOKENS) * (len(variants.NORM_HIDDENS) * len(variants.NORM_DTYPES) + 1)
    assert cases[0] == ("bfloat16", 4096, 1, True) and cases[-1] == ("bfloat16", 8192, 16384, False)
    assert norm.call_bytes(2, 8, 2, True) == (4 * 16 + 8) * 2
    assert norm.call_bytes(2, 8, 4, False) == (2 * 16 + 8) * 4


def _row(tokens, ours, inductor, eager=None, residual=True):
    r = {"series": "norm", "tokens": tokens, "hidden": 8192, "dtype": "bfloat16", "residual": residual,
         "bytes": norm.call_bytes(tokens, 8192, 2, residual), "us": ours, "error": None,
         "candidates_us": {"inductor_formula": inductor, "inductor_rms_norm": inductor * 1.1,
                           "eager_rms_norm": eager or inductor * 1.4, "vllm": "not installed (ImportError)"},
         "fastest": "inductor_formula"}
    return norm.summarise(r)


def test_summarise_ratios_and_target():
    r = _row(8192, 140.0, 137.5)
    assert r["inductor"] == "inductor_formula" and r["inductor_us"] == 137.5
    assert r["speed_vs_inductor"] == pytest.approx(137.5 / 140.0) and r["target_met"]
    assert r["ours_gbps"] == pytest.approx(r["bytes"] / 140.0 / 1e3)
    slow = _row(8192, 297.9, 137.5)
    assert not slow["target_met"] and slow["speed_vs_fastest"] == pytest.approx(137.5 / 297.9)
    failed = norm.summarise(dict(_row(1, 5.0, 4.4), us=None, error="replay: rank 0: boom"))
    assert failed["target_met"] is None and failed["ours_gbps"] is None


def _doc(rows):
    copy = [{"series": "copy", "bytes": 2 << 30, "us": 550.0, "gbps": (2 << 30) / 550.0 / 1e3, "when": "start"}]
    return {"name": "norm", "stem": "norm-nvidia-h200", "device": "NVIDIA H200", "device_slug": "nvidia-h200",
            "world_size": 1, "git_commit": "0123456789ab", "results": copy + rows,
            "settings": {"ours_fabric": "EmulatedWorld(1) (one process, no NVSHMEM)"}}


def test_summary_met_and_shortfall():
    met = norm_tables.summary(_doc([_row(1, 4.5, 4.4), _row(8192, 138.0, 137.5)]))
    assert met["met"] and met["text"].startswith("target met") and met["compared"] == 2
    short = norm_tables.summary(_doc([_row(1, 4.5, 4.4), _row(8192, 297.9, 137.5)]))
    assert not short["met"] and short["shortfall"] == ["bfloat16 H=8192 T=8192"]
    assert short["text"].startswith("shortfall: ours below 0.95x") and "0.46x" in short["text"]
    none = norm_tables.summary(_doc([]))
    assert not none["met"] and "not evaluated" in none["text"]


def test_markdown_and_outputs(tmp_path):
    doc = _doc([_row(1, 4.5, 4.4), _row(8192, 297.9, 137.5), _row(8192, 200.0, 190.0, residual=False)])
    paths = report.write_outputs(doc, tmp_path)
    assert paths["json"].endswith("norm-nvidia-h200.json")
    saved = report.load(paths["json"])
    assert saved["copy_gbps"] == pytest.approx(3904.9, rel=1e-3) and saved["summary"]["met"] is False
    md = open(paths["md"]).read()
    assert "shortfall" in md and "| bfloat16 | 8192 | 8192 | yes | 297.90 |" in md and "| short |" in md
    assert "Inductor (formula)" in md and "not installed" in md and "3905 GB/s" in md
    assert ("png" in paths) == (importlib.util.find_spec("matplotlib") is not None)
