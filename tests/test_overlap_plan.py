"""Split planner (wave model, candidates) and tuner (measure once, cache, rank 0 decides)."""
import json

import pytest

from weave_nvshmem.overlap import Candidate, CommModel, LayerShape, SplitTuner, candidates, gemm_waves, predict_us

LLAMA70B_TP4 = LayerShape(hidden=8192, intermediate=28672, heads=64, kv_heads=8, world=4)
QWEN72B_TP4 = LayerShape(hidden=8192, intermediate=29568, heads=64, kv_heads=8, world=4)


def test_gemm_waves_counts_whole_waves():
    assert gemm_waves(0, 8192, 132) == 0
    assert gemm_waves(128, 256 * 132, 132) == 1  # exactly one full wave
    assert gemm_waves(129, 256 * 132, 132) == 2  # one row more: a second wave
    assert gemm_waves(1, 256, 132) == 1
    with pytest.raises(ValueError, match="sms"):
        gemm_waves(1, 1, 0)


def test_layer_shape_gemms_and_validation():
    assert LLAMA70B_TP4.gemms() == [(2560, 8192), (8192, 2048), (14336, 8192), (8192, 7168)]
    with pytest.raises(ValueError, match="divide"):
        LayerShape(8192, 28672, 64, 8, world=3)
    with pytest.raises(ValueError, match="hidden"):
        LayerShape(0, 28672, 64, 8, world=4)


@pytest.mark.parametrize("shape", [LLAMA70B_TP4, QWEN72B_TP4])
@pytest.mark.parametrize("tokens", [1, 7, 255, 256, 1000, 1024, 4096, 8191, 16384])
def test_candidates_are_valid_and_deterministic(shape, tokens):
    got = candidates(shape, tokens, sms=132, comm_ctas=8)
    assert got == candidates(shape, tokens, sms=132, comm_ctas=8)  # same on every rank
    assert got[:2] == [Candidate("fused"), Candidate("plain")]
    for c in got[2:]:
        assert c.mode == "weave" and 0 < c.split < tokens
        assert c.split % 128 == 0 or c.split == tokens // 2
    if tokens < 256:
        assert len(got) == 2  # too small to split


def test_weave_predicted_to_pay_only_for_large_batches():
    def best(t):
        return min(candidates(LLAMA70B_TP4, t, sms=132, comm_ctas=8),
                   key=lambda c: predict_us(LLAMA70B_TP4, t, c, sms=132, comm_ctas=8, comm=CommModel(),
                                            unit_us=0.011))

    assert best(64).mode == "fused"
    assert best(8192).mode == "weave" and abs(best(8192).split - 4096) <= 512


def test_bad_candidate_and_tokens():
    with pytest.raises(ValueError, match="mode"):
        Candidate("both")
    with pytest.raises(ValueError, match="tokens"):
        candidates(LLAMA70B_TP4, 0, sms=132, comm_ctas=8)


def test_tuner_measures_once_caches_and_follows_rank0(tmp_path):
    path = tmp_path / "splits.json"
    cands = [Candidate("fused"), Candidate("weave", 512), Candidate("weave", 640)]
    calls = []

    def measure(c):
        calls.append(c)
        return {"fused": 100.0, 512: 80.0, 640: 90.0}[c.split or c.mode]

    rank0 = SplitTuner("H200", path=path)
    key = rank0.key(tokens=1024, hidden=8192, world=4)
    assert rank0.choose(key, cands, measure) == Candidate("weave", 512)
    assert len(calls) == 3
    assert rank0.choose(key, cands, measure) == Candidate("weave", 512) and len(calls) == 3
    saved = json.loads(path.read_text())[key]
    assert saved["mode"] == "weave" and saved["measured_us"]["weave:640"] == 90.0
    # another rank measured differently but takes rank 0's verdict, and writes no file
    other = SplitTuner("H200", path=tmp_path / "other.json", rank=1, broadcast=lambda obj: ("weave", 512))
    assert other.choose(key, cands, lambda c: {"fused": 1.0}.get(c.mode, 50.0)) == Candidate("weave", 512)
    assert not (tmp_path / "other.json").exists()
    # a new process reads the cache
    assert SplitTuner("H200", path=path).cached(key) == Candidate("weave", 512)
    with pytest.raises(ValueError, match="no candidates"):
        rank0.choose("k2", [], measure)
