"""CPU test suite configuration.

``tests/gpu`` holds the multi-GPU suite, which runs one process per GPU under torchrun
(``tests/gpu/run.sh``); a plain ``pytest tests`` collects it only under torchrun with CUDA.
``tests/emulated`` (world sizes 2/4/8 emulated on one GPU) is collected wherever CUDA is, outside
torchrun. Named explicitly on a machine without CUDA, either folder is collected and skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# before anything starts CUDA (the check below does): load every kernel when a context starts. An
# emulated world's ranks share one GPU, and a lazy module load waits for the device, so a compute
# kernel first launched while another virtual rank's collective spins would stall until the wait
# times out (collectives/emulated.py).
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")

#: the suites that need a CUDA device
GPU_SUITES = ("gpu", "emulated")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() >= 1
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return False


if not _has_cuda():
    collect_ignore = list(GPU_SUITES)
elif "WORLD_SIZE" in os.environ:  # torchrun: every process runs the multi-GPU suite; the emulated one is single-process
    collect_ignore = ["emulated"]
else:
    collect_ignore = ["gpu"]


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device, tests of a GPU suite named on the command line are skipped."""
    if _has_cuda():
        return
    suites = [Path(__file__).parent / name for name in GPU_SUITES]
    for item in items:
        if any(suite in Path(item.path).parents for suite in suites):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
