"""The example TP model on the CPU, one rank: the woven (split, two-stream) forward computes the same
function as the unsplit one, for splits that are odd and not multiples of the tile size."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import tp_llama  # noqa: E402


class LocalComm:
    """world = 1: the all-reduce is the identity; the fused op is add + RMSNorm, residual in place."""

    def fused_allreduce_rmsnorm(self, x, residual, weight, eps, ctas=None):
        residual.add_(x)
        return tp_llama.rms_norm(residual, weight, eps), residual


CFG = tp_llama.LlamaConfig(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=2, head_dim=16)


@pytest.mark.parametrize("tokens,split", [(7, 3), (20, 1), (20, 19), (33, 16)])
def test_woven_forward_equals_unsplit(tokens, split):
    model = tp_llama.TPModel(CFG, world=1, rank=0, device="cpu", dtype=torch.float32)
    x = torch.randn(tokens, CFG.hidden, generator=torch.Generator().manual_seed(tokens))
    ref = model.forward(x, tp_llama.Collective("nccl", CFG.eps))
    fused = model.forward(x, tp_llama.Collective("fused", CFG.eps, comm=LocalComm()))
    woven = model.forward(x, tp_llama.Collective("weave", CFG.eps, comm=LocalComm()), split=split)
    assert woven.shape == ref.shape
    assert torch.allclose(fused, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(woven, ref, rtol=1e-4, atol=1e-4)


def test_no_comm_and_bad_mode():
    model = tp_llama.TPModel(CFG, world=1, rank=0, device="cpu", dtype=torch.float32)
    x = torch.randn(5, CFG.hidden)
    assert torch.isfinite(model.forward(x, tp_llama.Collective("no_comm", CFG.eps))).all()
    with pytest.raises(ValueError, match="mode"):
        tp_llama.Collective("gloo", CFG.eps)
