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


def _row(tokens, ours, inductor, eager=None, residual=True, in_place=None):
    r = {"series": "norm", "tokens": tokens, "hidden": 8192, "dtype": "bfloat16", "residual": residual,
         "bytes": norm.call_bytes(tokens, 8192, 2, residual), "us": ours, "error": None,
         "inductor_in_place_us": in_place,
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
    assert r["speed_vs_inductor_in_place"] is None
    assert _row(128, 4.0, 3.8, in_place=4.6)["speed_vs_inductor_in_place"] == pytest.approx(4.6 / 4.0)
    assert _row(128, 4.0, 3.8, in_place="capture: boom")["speed_vs_inductor_in_place"] is None
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
    both = norm_tables.summary(_doc([_row(128, 4.0, 3.6, in_place=4.6), _row(8192, 150.0, 137.5, in_place=140.0)]))
    assert both["shortfall"] == ["bfloat16 H=8192 T=128", "bfloat16 H=8192 T=8192"]
    assert "residual in place (our contract): >= 0.95x at 1 of 2 rows, lowest 0.93x at bfloat16 H=8192 T=8192" \
        in both["text"]
    none = norm_tables.summary(_doc([]))
    assert not none["met"] and "not evaluated" in none["text"]


def test_markdown_and_outputs(tmp_path):
    doc = _doc([_row(1, 4.5, 4.4), _row(8192, 297.9, 137.5), _row(8192, 200.0, 190.0, residual=False)])
    paths = report.write_outputs(doc, tmp_path)
    assert paths["json"].endswith("norm-nvidia-h200.json")
    saved = report.load(paths["json"])
    assert saved["copy_gbps"] == pytest.approx(3904.9, rel=1e-3) and saved["summary"]["met"] is False
    md = open(paths["md"]).read()
    assert "shortfall" in md and "| bfloat16 | 8192 | 8192 | yes | 297.90 |" in md and "| short | - | - |" in md
    assert "Inductor (formula)" in md and "not installed" in md and "3905 GB/s" in md
    assert ("png" in paths) == (importlib.util.find_spec("matplotlib") is not None)


class _FakeComm:
    def plan(self, op, x, residual, weight, eps, out=None):
        from types import SimpleNamespace

        return SimpleNamespace(algorithm="local", grid=1, block=128, vpt=1, reason="rule: world 1")

    def fused_allreduce_rmsnorm(self, *args, **kw):
        raise AssertionError("the fake harness never calls it")


class _FakeHarness:
    """The harness surface the norm suite uses, on the CPU: every measurement is 2 us, ours 1 us."""
    world, rank, device, symm_flat, zc_flat, timeout_s = 1, 0, "cpu", None, None, 30.0
    symm_err = zc_err = "none here"

    def __init__(self):
        self.comm, self.comm_err, self.measured = None, None, 0

    def start_ours(self, nbytes):
        self.comm = _FakeComm()

    def budget_exhausted(self):
        return False

    def try_run(self, fn):
        fn()

    def first_error(self, err):
        return err

    def log(self, msg):
        pass

    def measure(self, call, refresh, n_sets, calls, warmup, replays):
        self.measured += 1
        return {"us": 1.0 if self.measured % 4 == 2 else 2.0, "us_max_rank": 2.0, "error": None}


def test_run_flow_on_a_fake_harness(tmp_path, monkeypatch):
    """The suite's flow: copy rate at start and end, one row per case with ours, every candidate and
    the verdict, and the document it writes. (Timings are fakes; the GPU run gives the figures.)"""
    from weave_nvshmem.bench import baselines

    monkeypatch.setattr(baselines, "fused_add_rmsnorm", baselines.FusedAddRMSNorm())
    monkeypatch.setattr(norm, "COPY_BYTES", 1 << 12)
    monkeypatch.setattr(norm, "release", lambda: None)  # torch.cuda.synchronize + empty_cache
    args = cli.parser().parse_args(["norm", "--nvshmem", "--tokens", "1", "2", "--hiddens", "64", "--dtypes",
                                    "bfloat16", "float32"])
    s = cli.settings(args)
    rows = norm.run(_FakeHarness(), s)
    assert [r["series"] for r in rows] == ["copy"] + ["norm"] * 6 + ["copy"]
    r = rows[1]
    assert (r["dtype"], r["hidden"], r["tokens"], r["residual"]) == ("bfloat16", 64, 1, True)
    assert r["plan"]["algorithm"] == "local" and r["fastest"] in baselines.NORM_CANDIDATES
    assert set(r["candidates_us"]) == set(baselines.NORM_CANDIDATES) and r["speed_vs_inductor"] is not None
    assert r["inductor_in_place_us"] in (1.0, 2.0) and r["speed_vs_inductor_in_place"] is not None
    assert not rows[-2]["residual"] and "inductor_in_place_us" not in rows[-2]
    assert s["ours_fabric"] == "NVSHMEM, world 1"
    doc = cli._document(type("H", (), {"device_name": "NVIDIA H200", "world": 1})(), "norm", s, rows, {"fatal": None})
    paths = report.write_outputs(doc, tmp_path)
    assert paths["json"].endswith("norm-nvidia-h200.json")
    saved = report.load(paths["json"])
    assert saved["summary"]["compared"] == 6 and len(saved["fused_norm"]) == 6
    assert all(rec["chosen"] for rec in saved["fused_norm"])  # which baseline ran, per key


@pytest.mark.parametrize("stem", ["norm-nvidia-h200", "norm-old-timing-nvidia-h200"])
def test_committed_records_render_their_md(stem):
    """bench/<stem>.md is what its committed JSON renders, and the record's verdict is its own."""
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench"
    doc = report.load(bench / f"{stem}.json")
    assert norm_tables.markdown(doc) == (bench / f"{stem}.md").read_text()
    assert norm_tables.summary(doc) == doc["summary"] and doc["world_size"] == 1 and doc["git_commit"]
