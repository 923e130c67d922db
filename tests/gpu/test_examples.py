"""The examples on GPUs: the TP Llama woven forward (replicated and sharded residual, odd splits)
equals the nccl forward, its CUDA graph replays reproduce it, and the CuPy pipeline matches float64.
A 2-layer model of hidden 4096 keeps it quick; the 70B-shape run is `tp_llama.py check`."""
import os
import sys

import pytest
import torch

from weave_nvshmem.testing import all_true
from conftest import rank, world

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

import cupy_pipeline  # noqa: E402
import tp_llama  # noqa: E402


@pytest.fixture(scope="module")
def model(comm):
    return tp_llama.TPModel(tp_llama.SMALL, world(), rank(), torch.device("cuda", torch.cuda.current_device()))


def test_woven_and_fused_match_nccl(comm, model):
    rows = tp_llama.check_modes(model, comm, (1, 3, 7, 1000))
    bad = [r for r in rows if not r["ok"]]
    assert all_true(not bad), bad
    assert {(r["tokens"], r["split"]) for r in rows if r["mode"] == "weave" and r["residual_mode"] == "sharded"} >= \
        {(3, 1), (7, 3), (1000, 333)}


@pytest.mark.parametrize("residual_mode", tp_llama.RESIDUAL_MODES)
def test_woven_forward_in_cuda_graph(comm, model, residual_mode):
    row = tp_llama.check_graph(model, comm, 1000, tp_llama.odd_split(1000), residual_mode)
    assert all_true(row["ok"]), row


def test_cupy_pipeline(comm):
    pytest.importorskip("cupy")
    results = cupy_pipeline.pipeline(comm, rank(), world())
    assert all_true(all(r["ok"] for r in results)), results
